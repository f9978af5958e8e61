"""The policy in force: loaded from its file, swapped atomically on reload."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authserver.bounded import ExpiringMap, weight
from authserver.policy.claims import KeptClaims, referenced_claims, relevant_claims
from authserver.policy.engine import allowed_client_ids, check_limits, evaluate, restrict
from authserver.policy.loader import load_policy
from authserver.policy.model import Policy

# A token record keeps its identity's whole claim set up to this size (as compact JSON), so a
# policy reload that reads another claim can still tell whether the token stays allowed. A
# larger set is cut to the claims the policy in force reads (see KeptClaims).
KEEP_CLAIMS_MAX_BYTES = 1024
# What a plan or a clientId list costs beyond what `weight` counts of its key and resources:
# the map's slot and the Plan object (calibrated with tracemalloc, tests/test_bounded.py).
PLAN_OVERHEAD = 80
# Distinct claims keys kept as one object each; past this the sharing starts over.
SHARED_KEYS_MAX = 4096
DEFAULT_PLAN_CACHE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Plan:
    """What to ask the upstream for: the decided resource sets, lifetime and claims kept.

    `claims` are what the token records keep of the identity: its whole claim set, or a
    KeptClaims cut to the claims the policy reads when the set is too large.
    """

    read: tuple[str, ...]
    write: tuple[str, ...]
    ttl_seconds: int
    max_ttl_seconds: int
    claims: Mapping[str, Any]
    policy_version: str


class _NotKeptYet:
    """The type of NOT_KEPT_YET: a memo whose kept claims nobody asked for yet."""

    __slots__ = ()


NOT_KEPT_YET = _NotKeptYet()
# (the holder's tag, the claims key, the kept claims: None for the claims themselves, or
# NOT_KEPT_YET), kept on the claims object (`Claims.memo`).
_Memo = tuple[object, tuple[Any, ...], "Mapping[str, Any] | _NotKeptYet | None"]


def _freeze(value: Any) -> Any:
    """A hashable stand-in for a JSON value; types kept apart (1, 1.0 and True differ)."""
    if value is None or value.__class__ is str:  # the common cases first: absent, a string
        return value
    if isinstance(value, list):
        return ("list", tuple([_freeze(v) for v in value]))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), _freeze(v)) for k, v in value.items())))
    if isinstance(value, str):  # a str subclass
        return str(value)
    return (type(value).__name__, value if isinstance(value, int | float | bool) else None)


class PolicyHolder:
    """Holds the current Policy; `policy.watch` swaps a new one in, a failed reload keeps it.

    Decisions are cached per (policy version, subject, client id, the claims the policy
    looks at, requested topics and actions), so a device that comes back skips evaluation;
    a reload changes the version and so every key. The clientIds an identity may use (what a
    clientId block is checked against) are cached the same way, without the request.
    """

    def __init__(
        self,
        path: Path,
        policy: Policy,
        plan_cache_size: int = 20_000,
        plan_cache_bytes: int = DEFAULT_PLAN_CACHE_BYTES,
    ) -> None:
        self.path = path
        self.current = policy
        self.claim_names = referenced_claims(policy)
        self._claim_order = tuple(sorted(self.claim_names))
        # What the claims of an identity are worth to this policy (their key, what records
        # keep of them) is memoised on the claims object itself (`Claims.memo`), tagged with
        # this object, which a swap replaces: 8 bytes an identity where two maps keyed by
        # the object's id cost about 120 bytes a token.
        self._memo_tag = object()
        self._shared_keys: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        # Least recently used first out, bounded by entries and by bytes (both by settings).
        self._plans: ExpiringMap[tuple[Any, ...], Plan] = ExpiringMap(
            plan_cache_size, max_bytes=plan_cache_bytes, weigh=_plan_weight, touch=True
        )
        self._client_ids: ExpiringMap[tuple[Any, ...], tuple[str, ...]] = ExpiringMap(
            plan_cache_size, max_bytes=plan_cache_bytes, weigh=_ids_weight, touch=True
        )

    def plan(
        self,
        subject: str,
        claims: Mapping[str, Any],
        client_id: str | None,
        topics: Sequence[str] | None,
        actions: Sequence[str] | None,
    ) -> Plan:
        """The decision for one request; PolicyDenied / GrantTooBroad / BadRequest raise.

        A clientId the identity may not use raises ClientIdNotAllowed (a PolicyDenied).
        """
        policy = self.current
        key = (
            policy.version_id,
            subject,
            client_id,
            self.claims_key(claims),
            tuple(topics) if topics is not None else None,
            tuple(sorted(actions)) if actions is not None else None,
        )
        kept = self.kept_claims(claims)
        found = self._plans.get(key, 0)
        if found is not None:
            # The decision is shared by identities with the same relevant claims; the claims
            # kept are this identity's own.
            return found if found.claims is kept else dataclasses.replace(found, claims=kept)
        decision = restrict(evaluate(policy, subject, claims, client_id), topics, actions)
        check_limits(decision)
        made = Plan(
            decision.read,
            decision.write,
            decision.ttl_seconds,
            decision.max_ttl_seconds,
            kept,
            policy.version_id,
        )
        self._plans.put(key, made)
        return made

    def client_ids(
        self, subject: str, claims: Mapping[str, Any], *, remember: bool = True
    ) -> tuple[str, ...]:
        """Every clientId the current policy lets this identity use, whatever it asks for.

        `remember=False` for a caller that asks once (a mint's confirmation): memoised only
        for the asking of every request (with clientId blocks, `Revoker.check`).
        """
        policy = self.current
        key = (policy.version_id, subject, self.claims_key(claims))
        found = self._client_ids.get(key, 0)
        if found is None:
            found, _ = allowed_client_ids(policy, subject, claims)
            if remember:
                self._client_ids.put(key, found)
        return found

    def claims_key(self, claims: Mapping[str, Any]) -> tuple[Any, ...]:
        """A hashable key of the claims the policy looks at (what a decision depends on).

        Memoised on the claims object: the verifier hands out the same (immutable) claims for
        a JWT it has seen, so a returning device costs one attribute read here.
        """
        return self._memo(claims, keep=False)[1]

    def _memo(self, claims: Mapping[str, Any], *, keep: bool) -> _Memo:
        """(tag, claims key, kept claims: None when they are `claims` themselves).

        What records keep is worked out only once `keep` asks (a mint): sizing the claims
        as JSON cost 10 of the 13 us a new JWT's claims key took, on a path (a cached
        answer) that never needs it. Until then the memo holds NOT_KEPT_YET there.
        """
        memo: _Memo | None = getattr(claims, "memo", None)
        if memo is not None and memo[0] is self._memo_tag:
            if not keep or memo[2] is not NOT_KEPT_YET:
                return memo
            key = memo[1]
        else:
            key = tuple([(name, _freeze(claims.get(name))) for name in self._claim_order])
            if len(self._shared_keys) >= SHARED_KEYS_MAX:
                self._shared_keys.clear()
            # One object per distinct key: most identities share their relevant claims (a
            # fleet of one tenant), and answers and plans of every device hold the key
            # (about 170 bytes a token when each identity had its own).
            key = self._shared_keys.setdefault(key, key)
        kept: Mapping[str, Any] | _NotKeptYet | None = NOT_KEPT_YET
        if keep:
            worked_out = self._keep(claims)
            # None for the claims themselves: a memo pointing back at its claims would make
            # every identity a reference cycle, freed only by the cyclic collector.
            kept = None if worked_out is claims else worked_out
        made = (self._memo_tag, key, kept)
        with contextlib.suppress(AttributeError):  # a plain mapping (tests, the admin API)
            claims.memo = made  # type: ignore[attr-defined]
        return made

    def kept_claims(self, claims: Mapping[str, Any]) -> Mapping[str, Any]:
        """What a token record keeps of these claims: all of them, unless they are too large.

        Memoised on the claims object, as `claims_key` is; the whole set is kept by reference
        (the verifier's read-only claims), not copied.
        """
        kept = self._memo(claims, keep=True)[2]
        if kept is None:
            return claims
        assert not isinstance(kept, _NotKeptYet)  # `keep=True` worked it out
        return kept

    def _keep(self, claims: Mapping[str, Any]) -> Mapping[str, Any]:
        size = len(json.dumps(dict(claims), separators=(",", ":"), ensure_ascii=False, default=str))
        kept: Mapping[str, Any] = claims
        if size > KEEP_CLAIMS_MAX_BYTES:
            kept = KeptClaims(relevant_claims(self.claim_names, claims), self.claim_names)
        return kept

    def swap(self, policy: Policy) -> None:
        """Put a validated policy in force (on the event loop's thread)."""
        self.claim_names = referenced_claims(policy)
        self._claim_order = tuple(sorted(self.claim_names))
        self._memo_tag = object()
        self._shared_keys.clear()
        self.current = policy
        self._plans.clear()
        self._client_ids.clear()

    @classmethod
    def load(
        cls,
        path: Path,
        plan_cache_size: int = 20_000,
        plan_cache_bytes: int = DEFAULT_PLAN_CACHE_BYTES,
    ) -> PolicyHolder:
        """Load the policy at start-up; PolicyLoadError propagates."""
        return cls(path, load_policy(path), plan_cache_size, plan_cache_bytes)


# The policy version and the claims key in a key are objects every entry shares: not counted.
def _plan_weight(key: tuple[Any, ...], plan: Plan) -> int:
    return PLAN_OVERHEAD + weight(key[1:3]) + weight(key[4:]) + weight((plan.read, plan.write))


def _ids_weight(key: tuple[Any, ...], ids: tuple[str, ...]) -> int:
    return PLAN_OVERHEAD + weight(key[1]) + weight(ids)
