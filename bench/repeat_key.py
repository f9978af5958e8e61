"""What keying the repeats by a digest costs a repeat hit, paired against keying by the strings.

Run: `python -m bench.repeat_key`. Two real `AnswerCache`s hold the same 20,000 repeats (a
bench-sized JWT in each header, an empty body): one keyed as the gateway keys them (a 16-byte
keyed blake2b digest of header and body), the other by the (header, body) pair itself, the
way it was before (`repeat_key` overridden). Each round looks up the same 200 repeats in both
(in a shuffled order), each request with a header string of its own, as aiohttp hands them
over (a fresh string has no hash cached). Prints the median microseconds a hit of each, and
the median of the per-round differences: a loaded machine slows both alike within a round.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from types import MappingProxyType
from typing import Any

from authserver.identity import Identity
from authserver.tokens.answers import Answer, AnswerCache, Repeat

REPEATS = 20_000
PER_ROUND = 200


class ByStrings(AnswerCache):
    """The repeats keyed by the header and body themselves (before the digest)."""

    def repeat_key(self, authorization: str, body: bytes) -> Any:
        return (authorization, body)


def header(n: int) -> bytes:
    # The length of bench/jwts.py's JWTs (about 330 characters), each its own.
    return (
        b"Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + b"x" * 240 + b"%08d.sig" % n + b"s" * 40
    )


def fill(cache: AnswerCache, headers: list[bytes]) -> None:
    for n, raw in enumerate(headers):
        who = f"dev-{n}"
        cache.put(who, "asked", Answer(b"{}", "v1", 10**15, (f"k-{n}",), None))
        answer = cache.fresh(who, "asked", "v1", 0)
        assert answer is not None
        identity = Identity(who, MappingProxyType({}), None, 9e9, f"{n:08x}")
        cache.remember_repeat(raw.decode(), b"", Repeat(answer, identity, 0))
    assert cache.repeats == len(headers)


def main() -> None:
    """Print the medians and the paired difference."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=401)
    args = parser.parse_args()
    headers = [header(n) for n in range(REPEATS)]
    caches: dict[str, AnswerCache] = {
        "digest": AnswerCache(REPEATS, 1 << 40),
        "strings": ByStrings(REPEATS, 1 << 40),
    }
    for cache in caches.values():
        fill(cache, headers)
    took: dict[str, list[float]] = {name: [] for name in caches}
    rng = random.Random(1)
    for _ in range(args.rounds):
        sample = rng.sample(range(REPEATS), PER_ROUND)
        names = list(caches)
        rng.shuffle(names)
        for name in names:
            cache = caches[name]
            fresh = [headers[i].decode() for i in sample]
            started = time.perf_counter_ns()
            for authorization in fresh:
                if cache.repeat(authorization, b"", "v1", 1.0, 0) is None:
                    raise RuntimeError("a repeat was not found")
            took[name].append((time.perf_counter_ns() - started) / PER_ROUND / 1000)
    for name, values in took.items():
        print(f"{name:8s} median {statistics.median(values):.3f} us a hit, min {min(values):.3f}")
    paired = [d - s for d, s in zip(took["digest"], took["strings"], strict=True)]
    median = statistics.median(paired)
    print(f"digest - strings, median of {args.rounds} paired rounds: {median:+.3f} us")


if __name__ == "__main__":
    main()
