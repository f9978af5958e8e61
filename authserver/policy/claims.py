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


class KeptClaims(dict[str, Any]):
    """Some of an identity's claims, and the claim names they answer for.

    A record normally keeps its identity's whole claim set, so that a later policy reading
    any claim can be evaluated against it. When that set is too large to keep, only the claims
    the policy of the day reads are kept: `names` says which names they cover (a name in
    `names` missing from the dict was absent from the identity; any other is unknown).
    """

    __slots__ = ("names",)

    def __init__(self, claims: Mapping[str, Any], names: frozenset[str]) -> None:
        super().__init__(claims)
        self.names = names
