"""The policy in force: plans and claims keys cached, and forgotten on a swap."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

from authserver.policy.loader import parse_policy
from authserver.policy_holder import PolicyHolder
from tests.fixtures.gateway import EXAMPLE_POLICY


def test_claims_key_keeps_types_apart_and_ignores_other_claims() -> None:
    holder = PolicyHolder.load(EXAMPLE_POLICY)
    base = {"groups": ["ops"], "tenant": "t1", "jti": "a"}
    assert holder.claims_key(dict(base)) == holder.claims_key({**base, "jti": "b"})
    assert holder.claims_key({**base, "tenant": 1}) != holder.claims_key({**base, "tenant": True})
    assert holder.claims_key({**base, "tenant": 1}) != holder.claims_key({**base, "tenant": "1"})


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
