"""The finished-answer cache: reuse while fresh, dropped by any invalidation of its tokens."""

from __future__ import annotations

from types import MappingProxyType

from authserver.identity import Identity
from authserver.tokens.answers import (
    REPEAT_OVERHEAD,
    Answer,
    AnswerCache,
    Repeat,
    answer_size,
)


def answer(*keys: str, version: str = "v1", fresh_until: int = 2000) -> Answer:
    return Answer(b"{}", version, fresh_until, keys, None)


def test_fresh_checks_version_and_time() -> None:
    cache = AnswerCache(10)
    cache.put("jwt", b"", answer("k1"))
    assert cache.fresh("jwt", b"", "v1", 1999) is not None
    assert cache.fresh("jwt", b"", "v1", 2000) is None  # due for renewal
    assert cache.fresh("jwt", b"", "v2", 1000) is None  # another policy
    assert cache.fresh("jwt", b'{"x":1}', "v1", 1000) is None  # another body
    assert (cache.hits, cache.misses) == (1, 3)


def test_drop_by_token_key_forgets_every_answer_holding_it() -> None:
    cache = AnswerCache(10)
    cache.put("a", b"", answer("k1", "k2"))
    cache.put("b", b"", answer("k2"))
    cache.put("c", b"", answer("k3"))
    cache.forget_keys(["k2"])
    assert cache.fresh("a", b"", "v1", 0) is None
    assert cache.fresh("b", b"", "v1", 0) is None
    assert cache.fresh("c", b"", "v1", 0) is not None
    assert len(cache) == 1


def test_a_key_held_by_answers_that_come_and_go_stays_indexed() -> None:
    # The index holds one slot per key, or a list while several answers share it.
    cache = AnswerCache(10)
    for who in ("a", "b", "c"):
        cache.put(who, b"", answer("shared"))
    cache.put("b", b"", answer("other"))  # b no longer holds it
    cache.forget_keys(["other"])
    cache.put("a", b"", answer("k-a"))  # nor does a: c is the last
    assert cache._by_key["shared"] == ("c", b"")
    cache.forget_keys(["shared"])
    assert cache.fresh("c", b"", "v1", 0) is None
    assert cache.fresh("a", b"", "v1", 0) is not None
    assert "shared" not in cache._by_key


def test_bounded_oldest_first() -> None:
    cache = AnswerCache(2)
    for name in ("a", "b", "c"):
        cache.put(name, b"", answer(f"k-{name}"))
    assert len(cache) == 2
    assert cache.fresh("a", b"", "v1", 0) is None
    assert cache.fresh("c", b"", "v1", 0) is not None
    cache.forget_keys(["k-a"])  # the evicted entry left no index behind
    assert len(cache) == 2


def test_size_zero_disables() -> None:
    cache = AnswerCache(0)
    cache.put("a", b"", answer("k"))
    assert len(cache) == 0


def repeat_of(cache: AnswerCache, who: str, *keys: str) -> Repeat:
    cache.put(who, b"", answer(*keys))
    held = cache.fresh(who, b"", "v1", 0)
    assert held is not None
    identity = Identity(who, MappingProxyType({}), None, 9e9, "fp")
    return Repeat(held, identity, verifier_epoch=0)


def test_repeats_follow_their_answers() -> None:
    cache = AnswerCache(2)
    cache.remember_repeat("Bearer a", b"", repeat_of(cache, "a", "k-a"))
    cache.remember_repeat("Bearer b", b"", repeat_of(cache, "b", "k-b"))
    assert cache.repeat("Bearer a", b"", "v1", 1.999, 0) is not None
    assert cache.repeat("Bearer a", b"", "v2", 0.0, 0) is None  # another policy: forgotten
    assert cache.repeats == 1
    cache.forget_keys(["k-b"])
    assert cache.repeat("Bearer b", b"", "v1", 0.0, 0) is None
    cache.remember_repeat("Bearer c", b"", repeat_of(cache, "c", "k-c"))
    cache.put("d", b"", answer("k-d"))
    cache.put("e", b"", answer("k-e"))  # c's answer is evicted
    assert cache.repeat("Bearer c", b"", "v1", 0.0, 0) is None
    assert cache.repeats == 0


def test_an_answer_not_held_is_not_remembered_and_clear_forgets_repeats() -> None:
    cache = AnswerCache(10)
    identity = Identity("x", MappingProxyType({}), None, 9e9, "fp")
    cache.remember_repeat("Bearer x", b"", Repeat(answer("k"), identity, 0))  # never put
    assert cache.repeats == 0
    cache.remember_repeat("Bearer y", b"", repeat_of(cache, "y", "k-y"))
    cache.clear()
    assert cache.repeats == 0


def test_repeats_are_bounded_oldest_first() -> None:
    cache = AnswerCache(2)
    for name in ("a", "b", "c"):
        cache.remember_repeat(f"Bearer {name}", b"", repeat_of(cache, name, f"k-{name}"))
    assert cache.repeats <= 2
    assert cache.repeat("Bearer a", b"", "v1", 0.0, 0) is None
    assert cache.repeat("Bearer c", b"", "v1", 0.0, 0) is not None


def test_an_answer_that_goes_takes_its_repeats_with_it() -> None:
    cache = AnswerCache(10)
    cache.remember_repeat("Bearer a", b"", repeat_of(cache, "a", "k-a"))
    cache.remember_repeat("Bearer b", b"", repeat_of(cache, "b", "k-b"))
    cache.put("a", b"", answer("k-a2"))  # replaced: a's repeat goes now
    cache.forget_keys(["k-b"])  # the store let go of b's tokens
    assert cache.repeats == 0


def test_answers_past_their_freshness_go_as_new_ones_come_not_when_full() -> None:
    # The answer of a device that left is never asked for again: kept until the cache
    # filled, the memory followed every device ever seen (bench/soak.py showed it).
    cache = AnswerCache(100)
    for name in "abcd":
        cache.remember_repeat(f"Bearer {name}", b"", repeat_of(cache, name, f"k-{name}"))
    assert (len(cache), cache.repeats) == (4, 4)
    cache.put("e", b"", answer("k-e", fresh_until=9000), 1000)
    assert len(cache) == 5  # all still fresh at 1000
    cache.put("f", b"", answer("k-f", fresh_until=9000), 2000)
    cache.put("g", b"", answer("k-g", fresh_until=9000), 2000)
    assert len(cache) == 3  # a to d were fresh until 2000: two go with each new answer
    assert cache.repeats == 0  # and their repeats with them
    assert cache.fresh("e", b"", "v1", 2000) is not None
    assert_consistent(cache)


def assert_consistent(cache: AnswerCache) -> None:
    """No half-state: the byte count, the index and the repeats agree with the answers held."""
    entries, repeats = cache._entries, cache._repeats
    held = sum(answer_size(*e) for e in entries.items()) + REPEAT_OVERHEAD * len(repeats)
    assert cache.bytes == held
    assert cache.bytes <= cache._max_bytes
    assert all(a.live for a in entries.values())
    for key, repeat in repeats.items():
        assert repeat.answer.live
        assert key in repeat.answer.repeat_keys
    indexed = {
        (key, slot)
        for key, held in cache._by_key.items()
        for slot in (held if isinstance(held, list) else [held])
    }
    # A list only for a key that several answers hold.
    assert all(len(held) > 1 for held in cache._by_key.values() if isinstance(held, list))
    assert indexed == {(key, slot) for slot, a in entries.items() for key in a.keys}


def sized(name: str, body_bytes: int) -> Answer:
    return Answer(b"x" * body_bytes, "v1", 2000, (f"k-{name}",), None)


def test_answers_are_bounded_by_bytes_oldest_first() -> None:
    cache = AnswerCache(100, max_bytes=10_000)
    for n in range(20):
        cache.put(f"w{n}", b"", sized(f"{n}", 2000))
        assert_consistent(cache)
    assert 3 <= len(cache) <= 4  # about 2.5 KB each
    assert cache.fresh("w19", b"", "v1", 0) is not None
    assert cache.fresh("w0", b"", "v1", 0) is None
    cache.put("huge", b"", sized("huge", 20_000))  # never fits: not kept
    assert cache.fresh("huge", b"", "v1", 0) is None
    assert cache.fresh("w19", b"", "v1", 0) is not None  # and it evicted nothing
    cache.forget_keys(["k-19"])
    assert_consistent(cache)
    cache.clear()
    assert cache.bytes == 0


def test_repeats_share_the_byte_bound_and_give_way_to_answers() -> None:
    cache = AnswerCache(100, max_bytes=6_000)
    identity = Identity("x", MappingProxyType({}), None, 9e9, "fp")
    cache.put("a", b"", sized("a", 1000))
    held = cache.fresh("a", b"", "v1", 0)
    assert held is not None
    for n in range(20):  # REPEAT_OVERHEAD bytes each, one JWT each: the oldest make room
        jwt_n = Identity("x", MappingProxyType({}), None, 9e9, f"fp{n}")
        cache.remember_repeat(f"Bearer {n}", b'{"n": 1}', Repeat(held, jwt_n, 0))
        assert_consistent(cache)
    assert 3 <= cache.repeats < 20
    assert cache.repeat("Bearer 19", b'{"n": 1}', "v1", 0.0, 0) is not None
    assert cache.repeat("Bearer 0", b'{"n": 1}', "v1", 0.0, 0) is None
    # An answer that needs the room evicts answers (and their repeats), never half of one.
    cache.put("b", b"", sized("b", 5400))
    assert_consistent(cache)
    assert cache.fresh("b", b"", "v1", 0) is not None
    assert cache.fresh("a", b"", "v1", 0) is None
    assert cache.repeats == 0
    # With the answers filling the budget a repeat is simply not remembered.
    big = cache.fresh("b", b"", "v1", 0)
    assert big is not None
    cache.remember_repeat("Bearer x" * 100, b"{}", Repeat(big, identity, 0))
    assert cache.repeats == 0
    assert_consistent(cache)


def test_working_tells_the_first_of_identical_requests_in_flight() -> None:
    cache = AnswerCache(10)
    with cache.working("a", b"") as first:
        with cache.working("a", b"") as second, cache.working("b", b"") as other:
            assert (first, second, other) == (True, False, True)
        with cache.working("a", b"") as third:
            assert not third
    with cache.working("a", b"") as again:  # the earlier ones are done
        assert again
    assert cache._working == {}


def test_equal_requests_are_held_as_one_object() -> None:
    # Nearly every device asks the policy's defaults: 20,000 answers hold one request.
    cache = AnswerCache(10)
    cache.put("a", tuple(["defaults", 3600]), answer("k-a"))  # two equal, separate objects
    cache.put("b", tuple(["defaults", 3600]), answer("k-b"))
    (_, first), (_, second) = cache._entries
    assert first is second
