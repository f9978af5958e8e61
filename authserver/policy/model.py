"""The parsed policy and the decision it yields for one subject: plain frozen data."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from authserver.errors import PolicyDenied
from authserver.topics import covers

# <GroupId>@@@<DeviceId>; GroupId per 002 section 11.1, DeviceId letters, digits and -_.:
# ASCII ranges only (no re.IGNORECASE, no \w): a look-alike letter never matches.
CLIENT_ID = re.compile(r"GID[_-][A-Za-z0-9_-]{3,60}@@@[A-Za-z0-9_.:-]{1,64}")

READ = "R"
WRITE = "W"
ACTIONS = (READ, WRITE)

# The lifetimes the cloud API accepts for a token (ApplyToken ExpireTime), defined only here:
# the policy's bounds, the token service's clamp and the request shapes all use them.
MIN_TTL_SECONDS = 60
MAX_TTL_SECONDS = 30 * 24 * 3600
DEFAULT_TTL_SECONDS = 3600
DEFAULT_GROUPS_CLAIM = "groups"


class PolicyLoadError(Exception):
    """A policy file is invalid; ``problems`` lists every problem, each naming file and entry."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class TopicNotGranted(PolicyDenied):
    """A topic the request names lies outside what the policy grants for an action."""

    title = "Topic not granted"


class DeviceCredentialNotAllowed(PolicyDenied):
    """No ``deviceCredentials: true`` entry of the policy applies to this identity."""

    code = "device_credential_not_allowed"
    title = "Device credential not allowed"


class ClientIdNotAllowed(PolicyDenied):
    """The request's clientId is not one the policy's ``clientIds`` give this identity."""

    code = "client_id_not_allowed"
    title = "Client id not allowed"


@dataclass(frozen=True)
class Var:
    """A template placeholder: ``sub``, ``client_id`` or ``claims.NAME``."""

    name: str

    @property
    def claim(self) -> str | None:
        """The claim name for ``claims.NAME``, else None."""
        return self.name[len("claims.") :] if self.name.startswith("claims.") else None


@dataclass(frozen=True)
class Template:
    """A topic filter or clientId from the policy, split into literal text and placeholders."""

    source: str
    parts: tuple[str | Var, ...]

    @property
    def is_literal(self) -> bool:
        """Whether the template has no placeholder."""
        return all(isinstance(p, str) for p in self.parts)

    @property
    def uses_client_id(self) -> bool:
        """Whether the template contains ``{client_id}``."""
        return any(isinstance(p, Var) and p.name == "client_id" for p in self.parts)


@dataclass(frozen=True)
class Rule:
    """One entry of a policy section: topic templates and the actions they grant."""

    label: str  # "everyone[0]", "groups.ops[1]", "users.alice[0]": how problems and logs name it
    topics: tuple[Template, ...]
    actions: frozenset[str]


@dataclass(frozen=True)
class ClientIds:
    """One ``clientIds`` list: the clientIds an entry's subjects may ask tokens for."""

    label: str  # "clientIds", "groups.ops.clientIds", "users.alice.clientIds"
    templates: tuple[Template, ...]


@dataclass(frozen=True, eq=False)
class Policy:
    """A validated policy file; ``version_id`` changes whenever the file's bytes change.

    Compared and hashed by identity: use ``version_id`` to tell two loads of a file apart.
    """

    source: str
    version_id: str
    ttl_seconds: int
    max_ttl_seconds: int
    groups_claim: str
    everyone: tuple[Rule, ...]
    groups: Mapping[str, tuple[Rule, ...]] = field(default_factory=dict)
    users: Mapping[str, tuple[Rule, ...]] = field(default_factory=dict)
    client_ids: ClientIds | None = None  # the top-level list: every subject
    group_client_ids: Mapping[str, ClientIds] = field(default_factory=dict)
    user_client_ids: Mapping[str, ClientIds] = field(default_factory=dict)
    # Entries saying ``deviceCredentials: true``: who may hold a device credential.
    device_credential_groups: frozenset[str] = frozenset()
    device_credential_users: frozenset[str] = frozenset()

    @property
    def client_id_lists(self) -> tuple[ClientIds, ...]:
        """Every ``clientIds`` list of the policy, top level first, then groups, then users."""
        lists = [self.client_ids] if self.client_ids is not None else []
        lists.extend(self.group_client_ids.values())
        lists.extend(self.user_client_ids.values())
        return tuple(lists)

    @property
    def rules(self) -> tuple[Rule, ...]:
        """Every rule of the policy, in file order by section."""
        out = list(self.everyone)
        for rules in self.groups.values():
            out.extend(rules)
        for rules in self.users.values():
            out.extend(rules)
        return tuple(out)


@dataclass(frozen=True)
class RuleMatch:
    """A rule that applied to the subject, and the topics it expanded to."""

    rule: str
    actions: tuple[str, ...]
    topics: tuple[str, ...]


@dataclass(frozen=True)
class Refusal:
    """A topic (or claim value) that was not granted because a substitution was refused."""

    rule: str
    template: str
    reason: str


@dataclass(frozen=True)
class Decision:
    """What the policy grants one subject; ``read``/``write`` are normalized filter sets.

    ``client_ids`` are the clientIds the identity may use; ``client_id`` is the one asked for
    (None when the request names none), which ``{client_id}`` expanded to only if allowed.
    """

    subject: str
    policy_version: str
    read: tuple[str, ...]
    write: tuple[str, ...]
    matched: tuple[RuleMatch, ...]
    refused: tuple[Refusal, ...]
    ttl_seconds: int
    max_ttl_seconds: int
    client_ids: tuple[str, ...] = ()
    client_id: str | None = None

    @property
    def client_id_allowed(self) -> bool:
        """Whether the requested clientId (if any) is one the identity may use."""
        return self.client_id is None or self.client_id in self.client_ids

    def grants(self, action: str) -> tuple[str, ...]:
        """The resources granted for ``action`` ("R" or "W")."""
        if action == READ:
            return self.read
        if action == WRITE:
            return self.write
        raise ValueError(f"unknown action {action!r}")

    def granted_by(self, action: str, resource: str) -> tuple[str, ...]:
        """Labels of the rules whose topics for ``action`` contain ``resource``."""
        return tuple(
            m.rule
            for m in self.matched
            if action in m.actions and any(covers(t, resource) for t in m.topics)
        )

    @property
    def is_empty(self) -> bool:
        """Whether nothing at all is granted (default deny)."""
        return not self.read and not self.write


@dataclass(frozen=True)
class TokenRequest:
    """One ApplyToken call: ``actions`` is "R", "W" or "R,W"; resources are normalized."""

    actions: str
    resources: tuple[str, ...]

    @property
    def resources_param(self) -> str:
        """The ``Resources`` parameter: the sorted filters joined by commas."""
        return ",".join(self.resources)
