"""The finished-answer cache: reuse while fresh, dropped by any invalidation of its tokens."""

from __future__ import annotations

from authserver.tokens.answers import Answer, AnswerCache


def answer(*keys: str, version: str = "v1", fresh_until: int = 2000) -> Answer:
    return Answer(b"{}", version, fresh_until, keys, None)


def test_fresh_checks_version_and_time() -> None:
    cache = AnswerCache(10)
    cache.put("jwt", b"", answer("k1"), cache.generation)
    assert cache.fresh("jwt", b"", "v1", 1999) is not None
    assert cache.fresh("jwt", b"", "v1", 2000) is None  # due for renewal
    assert cache.fresh("jwt", b"", "v2", 1000) is None  # another policy
    assert cache.fresh("jwt", b'{"x":1}', "v1", 1000) is None  # another body
    assert (cache.hits, cache.misses) == (1, 3)


def test_drop_by_token_key_forgets_every_answer_holding_it() -> None:
    cache = AnswerCache(10)
    cache.put("a", b"", answer("k1", "k2"), cache.generation)
    cache.put("b", b"", answer("k2"), cache.generation)
    cache.put("c", b"", answer("k3"), cache.generation)
    cache.drop(["k2"])
    assert cache.fresh("a", b"", "v1", 0) is None
    assert cache.fresh("b", b"", "v1", 0) is None
    assert cache.fresh("c", b"", "v1", 0) is not None
    assert len(cache) == 1


def test_an_answer_built_across_an_invalidation_is_not_kept() -> None:
    cache = AnswerCache(10)
    generation = cache.generation
    cache.drop(["k1"])  # a revocation lands while the answer is being built
    cache.put("a", b"", answer("k1"), generation)
    assert len(cache) == 0


def test_bounded_oldest_first() -> None:
    cache = AnswerCache(2)
    for name in ("a", "b", "c"):
        cache.put(name, b"", answer(f"k-{name}"), cache.generation)
    assert len(cache) == 2
    assert cache.fresh("a", b"", "v1", 0) is None
    assert cache.fresh("c", b"", "v1", 0) is not None
    cache.drop(["k-a"])  # the evicted entry left no index behind
    assert len(cache) == 2


def test_size_zero_disables() -> None:
    cache = AnswerCache(0)
    cache.put("a", b"", answer("k"), cache.generation)
    assert len(cache) == 0
