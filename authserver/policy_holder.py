"""The policy in force: loaded from its file, swapped atomically on reload."""

from __future__ import annotations

import logging
from pathlib import Path

from authserver.policy.claims import referenced_claims
from authserver.policy.loader import load_policy
from authserver.policy.model import Policy, PolicyLoadError

log = logging.getLogger(__name__)


class PolicyHolder:
    """Holds the current Policy; a failed reload keeps the previous one."""

    def __init__(self, path: Path, policy: Policy) -> None:
        self.path = path
        self.current = policy
        self.claim_names = referenced_claims(policy)
        self.last_error: list[str] = []

    @classmethod
    def load(cls, path: Path) -> PolicyHolder:
        """Load the policy at start-up; PolicyLoadError propagates."""
        return cls(path, load_policy(path))

    def reload(self) -> bool:
        """Re-read the file; swap only when it is valid. True when the policy changed."""
        try:
            policy = load_policy(self.path)
        except (PolicyLoadError, OSError) as err:
            problems = err.problems if isinstance(err, PolicyLoadError) else [str(err)]
            self.last_error = problems
            log.error(
                "policy reload failed, keeping version %s: %s",
                self.current.version_id,
                "; ".join(problems),
            )
            return False
        self.last_error = []
        if policy.version_id == self.current.version_id:
            return False
        self.claim_names = referenced_claims(policy)
        self.current = policy
        log.info("policy reloaded: version %s", policy.version_id)
        return True
