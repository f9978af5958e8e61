"""The policy in force: plans and claims keys cached, and forgotten on a swap."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import MappingProxyType

from authserver.policy.claims import KeptClaims
from authserver.policy.holder import PolicyHolder
from authserver.policy.loader import parse_policy
from authserver.tokens.model import TokenRecord, claim_names_of
from tests.fixtures.gateway import EXAMPLE_POLICY


def test_claims_key_keeps_types_apart_and_ignores_other_claims() -> None:
    holder = PolicyHolder.load(EXAMPLE_POLICY)
    base = {"groups": ["ops"], "tenant": "t1", "jti": "a"}
    assert holder.claims_key(dict(base)) == holder.claims_key({**base, "jti": "b"})
    assert holder.claims_key({**base, "tenant": 1}) != holder.claims_key({**base, "tenant": True})
    assert holder.claims_key({**base, "tenant": 1}) != holder.claims_key({**base, "tenant": "1"})


def test_identities_with_the_same_relevant_claims_share_one_key_object() -> None:
    # Every answer and plan of a device holds its claims key: a fleet of one tenant, each
    # device with its own JWT, holds one key, not one per device.
    holder = PolicyHolder.load(EXAMPLE_POLICY)
    keys = [holder.claims_key({"groups": ["ops"], "tenant": "t1", "jti": str(i)}) for i in range(3)]
    assert keys[0] is keys[1] is keys[2]
    assert holder.claims_key({"groups": ["ops"], "tenant": "t2"}) is not keys[0]


def test_plans_and_keys_follow_a_swap(tmp_path: Path) -> None:
    holder = PolicyHolder.load(EXAMPLE_POLICY)
    claims = MappingProxyType({"groups": ["ops"], "tenant": "t1", "region": "eu"})
    before = holder.claims_key(claims)
    assert holder.claims_key(claims) is before  # memoised per claims object
    plan = holder.plan("alice", claims, None, None, None)
    assert "fleet/t1/+/status" in plan.read

    text = "version: 1\neveryone:\n  - topics: ['region/{claims.region}/#']\n    actions: [R]\n"
    holder.swap(parse_policy(text, str(tmp_path / "p.yaml")))
    after = holder.claims_key(claims)
    assert after != before  # the new policy looks at other claims
    assert holder.plan("alice", claims, None, None, None).read == ("region/eu/#",)


def test_plans_keep_each_identitys_own_claims_and_cut_large_ones() -> None:
    holder = PolicyHolder.load(EXAMPLE_POLICY)
    one = MappingProxyType({"groups": ["ops"], "tenant": "t1", "site": "s1"})
    two = MappingProxyType({"groups": ["ops"], "tenant": "t1", "site": "s2"})
    # Same relevant claims, so one shared decision; each plan keeps its own whole claim set.
    assert holder.plan("alice", one, None, None, None).claims is one
    assert holder.plan("alice", two, None, None, None).claims is two
    assert claim_names_of(one) is None

    large = MappingProxyType({"groups": ["ops"], "tenant": "t1", "blob": "x" * 2000})
    kept = holder.plan("alice", large, None, None, None).claims
    assert isinstance(kept, KeptClaims)
    assert dict(kept) == {"groups": ["ops"], "tenant": "t1"}
    assert claim_names_of(kept) == holder.claim_names == {"groups", "tenant"}


def test_records_carry_their_claim_names_through_json() -> None:
    base = TokenRecord("t", "R", ("a/#",), 2000, 1000, 0, "ann", "post-cn-test")
    whole = dataclasses.replace(base, claims={"site": "s1"})
    cut = dataclasses.replace(base, claims={"tenant": "t1"}, claim_names=frozenset({"tenant", "x"}))
    assert TokenRecord.from_json(whole.to_json()).claim_names is None
    assert TokenRecord.from_json(cut.to_json()).claim_names == {"tenant", "x"}
    # A record written before records said which claims they answer for: only its own.
    legacy = json.loads(cut.to_json())
    del legacy["claim_names"]
    assert TokenRecord.from_json(json.dumps(legacy)).claim_names == {"tenant"}


def test_the_claims_memo_makes_no_reference_cycle() -> None:
    # An identity forgotten by the verifier must be freed at once, not by the cyclic collector:
    # the memo on its claims holds no reference back to them.
    import sys

    from authserver.identity.model import Claims

    holder = PolicyHolder.load(EXAMPLE_POLICY)
    claims = Claims({"groups": 0, "tenant": 1}, (["ops"], "t1"))
    held = sys.getrefcount(claims)
    assert holder.kept_claims(claims) is claims
    key = holder.claims_key(claims)
    assert holder.claims_key(claims) is key
    assert claims.memo is not None
    assert sys.getrefcount(claims) == held


def test_a_claims_key_alone_does_not_size_the_claims_and_a_mint_then_cuts_them() -> None:
    # A cached answer needs only the claims key; what records keep (sizing the claims as JSON)
    # is worked out when a plan asks, on the same memo, and still cuts a large claim set.
    from authserver.identity.model import Claims
    from authserver.policy.holder import NOT_KEPT_YET

    holder = PolicyHolder.load(EXAMPLE_POLICY)
    large = Claims({"groups": 0, "tenant": 1, "blob": 2}, (["ops"], "t1", "x" * 2000))
    key = holder.claims_key(large)
    assert large.memo[1] is key
    assert large.memo[2] is NOT_KEPT_YET
    kept = holder.plan("alice", large, None, None, None).claims
    assert isinstance(kept, KeptClaims)
    assert dict(kept) == {"groups": ["ops"], "tenant": "t1"}
    assert holder.kept_claims(large) is kept  # memoised, and the key kept with it
    assert holder.claims_key(large) is key

    small = Claims({"groups": 0, "tenant": 1}, (["ops"], "t1"))
    holder.claims_key(small)
    assert holder.plan("alice", small, None, None, None).claims is small
    assert small.memo[2] is None  # the claims themselves, without a cycle
