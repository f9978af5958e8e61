"""The byte bounds' estimates against what tracemalloc sees, for the caches of one device each.

A fleet like the benchmark's (bench/policy.yaml, one JWT and two tokens a device) fills a
verifier, a policy holder and a memory store; each cache's own estimate (`bytes`) must stay
within 10% of the memory it grew by, so that a byte bound means what its setting says.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import jwt
import pytest

from authserver.clock import ManualClock
from authserver.identity import JWTSettings, JWTVerifier
from authserver.policy.holder import PolicyHolder
from authserver.tokens.model import TokenRecord, token_key
from authserver.tokens.store import MemoryStore

DEVICES = 2000
SECRET = "a-test-secret-long-enough-for-hs256-keys"
ISSUER = "https://id.test"
POLICY = Path(__file__).resolve().parent.parent / "bench" / "policy.yaml"


@pytest.fixture
def traced() -> Iterator[Callable[[], int]]:
    """Bytes traced since the fixture started."""
    gc.collect()
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    yield lambda: tracemalloc.get_traced_memory()[0] - start
    tracemalloc.stop()


def near(estimate: int, measured: int) -> bool:
    return abs(estimate - measured) <= 0.1 * measured


async def test_estimates_follow_tracemalloc(traced: Callable[[], int]) -> None:
    clock = ManualClock(start=1_800_000_000.0)
    now = int(clock.time())
    tokens = [
        jwt.encode(
            {"iss": ISSUER, "sub": f"dev-{n:06d}", "iat": now, "exp": now + 3600, "jti": f"{n}"},
            SECRET,
            algorithm="HS256",
        )
        for n in range(DEVICES)
    ]
    verifier = JWTVerifier(
        JWTSettings(algorithms=("HS256",), issuer=ISSUER, secret=SECRET), clock=clock
    )
    holder = PolicyHolder.load(POLICY)
    store = MemoryStore(clock)
    before = traced()
    identities = [await verifier.verify(token) for token in tokens]
    after_verifier = traced()
    plans = [holder.plan(i.subject, i.claims, None, None, None) for i in identities]
    after_plans = traced()
    expire_ms = now * 1000 + 3_600_000
    for n, (identity, plan) in enumerate(zip(identities, plans, strict=True)):
        for kind, resources in (("R", plan.read), ("W", plan.write)):
            record = TokenRecord(
                token=f"{n:06d}{kind}" + "t" * 121,
                type=kind,
                resources=resources,
                expire_ms=expire_ms + n,
                refresh_at_ms=expire_ms - 600_000 + n,
                issued_ms=now * 1000 + n,
                subject=identity.subject,
                instance_id="post-cn-test",
                claims=plan.claims,
            )
            key = token_key("post-cn-test", identity.subject, kind, resources, 3600)
            await store.put(key, record)
    after_store = traced()
    assert near(verifier._cache.bytes, after_verifier - before)
    assert near(holder._plans.bytes, after_plans - after_verifier)
    assert near(store._records.bytes, after_store - after_plans)


class _Text(str):
    """A str subclass: weighed as a string, past the exact-class fast path."""


def test_weight_gives_each_kind_of_value_its_estimate() -> None:
    from authserver.bounded import weight

    assert [weight(v) for v in (None, True, False)] == [0, 0, 0]
    assert [weight(v) for v in ("ab", b"ab", _Text("ab"))] == [42, 42, 42]
    assert [weight(v) for v in (7, 7.5, 10**30)] == [32, 32, 32]
    assert weight(("ab", 1)) == 40 + 8 + 42 + 8 + 32
    assert weight({"k": ["ab"]}) == 64 + 16 + (40 + 8 + 42)
    assert weight(object()) == 32


@pytest.mark.parametrize("subject", ["d-1", "设备-" * 40, "\U0001f4a1" * 40], ids=str.isascii)
async def test_a_verified_jwt_weighs_what_its_claims_weigh(subject: str) -> None:
    # The verifier weighs its Claims from their values tuple rather than through Mapping's
    # views: the same figure as `weight` of the claims, nested values included, and a
    # non-ASCII subject at its real width (four bytes a character for emoji).
    from authserver.bounded import weight
    from authserver.identity.verifier import VERIFIED_OVERHEAD, _verified_weight

    clock = ManualClock()
    verifier = JWTVerifier(
        JWTSettings(algorithms=("HS256",), issuer=ISSUER, secret=SECRET), clock=clock
    )
    claims = {"iss": ISSUER, "sub": subject, "exp": int(clock.time()) + 600, "groups": ["ops"]}
    claims["nested"] = {"a": [1, "two", None]}
    identity = await verifier.verify(jwt.encode(claims, SECRET, algorithm="HS256"))
    expected = VERIFIED_OVERHEAD + weight(dict(identity.claims))
    assert _verified_weight(b"", identity) == expected
    assert verifier._cache.bytes == expected
    assert subject.isascii() or weight(subject) == sys.getsizeof(subject)
