"""Which claims a policy looks at: the part of an identity a decision depends on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from authserver.policy.model import Policy, Var


def referenced_claims(policy: Policy) -> frozenset[str]:
    """The groups claim plus every `{claims.NAME}` used by a topic or a clientIds template.

    The clientIds claims belong here as much as the topics' do: they decide which clientIds
    an identity may use, so two identities differing only in them must never share an answer.
    """
    names = {policy.groups_claim}
    templates = [t for rule in policy.rules for t in rule.topics]
    templates.extend(t for ids in policy.client_id_lists for t in ids.templates)
    for template in templates:
        for part in template.parts:
            if isinstance(part, Var) and part.claim is not None:
                names.add(part.claim)
    return frozenset(names)


def relevant_claims(names: frozenset[str], claims: Mapping[str, Any]) -> dict[str, Any]:
    """The claims among `names` that the identity carries."""
    return {name: claims[name] for name in names if name in claims}
