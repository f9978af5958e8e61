"""What a claim value counts as for revocation by claim (tokens/revocable.py), table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from authserver.clock import ManualClock
from authserver.settings import SettingsError, load_settings
from authserver.tokens.model import TokenRecord
from authserver.tokens.revocable import (
    MAX_MARKED_VALUES,
    MAX_VALUE_CHARS,
    carried_marks,
    mark,
    marks_of,
    overflow_mark,
    value_texts,
)
from authserver.tokens.store import MemoryStore
from tests.test_settings import GOOD


@pytest.mark.parametrize(
    ("value", "texts"),
    [
        ("acme", ["acme"]),
        (42, ["42"]),
        (-7, ["-7"]),
        (["ops", "field", "ops", 3], ["ops", "field", "3"]),
        # Never matched: nothing an admin could name, nothing that matches everything.
        ("", []),
        (None, []),
        (True, []),
        (1.5, []),
        ({"tenant": "acme"}, []),
        ([["nested"], {"a": 1}, None, False, ""], []),
        ("a\x00b", []),
        ("x" * (MAX_VALUE_CHARS + 1), []),
        # An integer's text is held to the same length: no admin value could name it.
        (10**MAX_VALUE_CHARS, []),
        ([10 ** (MAX_VALUE_CHARS - 1), 10**MAX_VALUE_CHARS], ["1" + "0" * (MAX_VALUE_CHARS - 1)]),
    ],
)
def test_what_a_claim_value_counts_as(value: Any, texts: list[str]) -> None:
    assert list(value_texts(value)) == texts


def test_marks_are_sorted_and_only_for_the_named_claims() -> None:
    claims = {"tenant": "acme", "roles": ["ops", "field"], "model": 200, "other": "x"}
    assert marks_of(claims, ("tenant", "roles", "model", "absent")) == (
        "model=200",
        "roles=field",
        "roles=ops",
        "tenant=acme",
    )
    assert marks_of(claims, ()) == ()


def test_too_many_values_are_recorded_under_the_overflow_mark() -> None:
    groups = [f"g{n}" for n in range(MAX_MARKED_VALUES + 1)]
    claims = {"roles": groups, "tenant": "acme"}
    assert marks_of(claims, ("roles", "tenant")) == (overflow_mark("roles"), "tenant=acme")
    # A block still sees every value the JWT carries.
    assert mark("roles", groups[-1]) in set(carried_marks(claims, ("roles",)))
    assert marks_of({"roles": groups[:MAX_MARKED_VALUES]}, ("roles",))[0] == "roles=g0"


def test_the_overflow_mark_is_no_value_s_mark() -> None:
    assert overflow_mark("roles") not in {mark("roles", t) for t in ("", "\x00", "*")}


def test_revocable_claims_setting() -> None:
    assert load_settings(GOOD).revocable_claims == frozenset()
    env = {**GOOD, "AUTHSERVER_REVOCABLE_CLAIMS": " tenant, roles ,model,"}
    assert load_settings(env).revocable_claims == {"tenant", "roles", "model"}


def test_bad_revocable_claims_are_all_reported() -> None:
    env = {
        **GOOD,
        "AUTHSERVER_REVOCABLE_CLAIMS": "tenant,ten=ant,sub,exp,9lives",
        "AUTHSERVER_LOG_LEVEL": "LOUD",
    }
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    problems = "\n".join(caught.value.problems)
    assert "'ten=ant', '9lives' not claim name(s)" in problems
    assert "exp, sub cannot be revoked by value" in problems
    assert "LOG_LEVEL" in problems  # every problem at once


def _record(token: str, expire_ms: int, marks: tuple[str, ...]) -> TokenRecord:
    return TokenRecord(
        token=token,
        type="R",
        resources=("t/acme/#",),
        expire_ms=expire_ms,
        refresh_at_ms=expire_ms - 1000,
        issued_ms=expire_ms - 3_600_000,
        subject="sam",
        instance_id="post-cn-test",
        marks=marks,
    )


async def test_the_memory_store_s_claim_index_leaves_with_its_records() -> None:
    clock = ManualClock(start=1_900_000_000.0)
    store = MemoryStore(clock)
    now_ms = int(clock.time() * 1000)
    kept = _record("tok-1", now_ms + 60_000, ("roles=ops", "tenant=acme"))
    expiring = _record("tok-2", now_ms + 1_000, ("tenant=acme",))
    await store.put("k1", kept)
    await store.put("k2", expiring)
    assert {k for k, _ in await store.claim_tokens("tenant=acme")} == {"k1", "k2"}
    assert await store.claim_tokens("tenant=other") == []

    clock.advance(2)  # tok-2 expires: found no more, and its entry goes when met
    assert [k for k, _ in await store.claim_tokens("tenant=acme")] == ["k1"]
    await store.delete("k1", kept)
    assert await store.claim_tokens("roles=ops") == []
    assert store._by_claim == {}  # nothing left behind for a revoked or gone record


def test_marks_survive_the_shared_store_s_json() -> None:
    record = _record("tok-1", 1_900_000_060_000, ("tenant=acme",))
    assert TokenRecord.from_json(record.to_json()).marks == ("tenant=acme",)
    plain = _record("tok-2", 1_900_000_060_000, ())
    assert "marks" not in plain.to_json()  # records without marks are stored as before
    assert TokenRecord.from_json(plain.to_json()).marks == ()
