"""What a token record's kept claims cost in memory once the verifier has let go of the JWT.

Run: `python -m bench.claims_memory`. Compares keeping the claims a policy reads (before) with
keeping the whole claim set (what records keep now, up to 1 KiB of JSON), for 100,000
identities with a typical 7-claim app JWT. The figure is quoted in README.md (Policy reload).
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from authserver.policy.claims import relevant_claims

IDENTITIES = 100_000
READ_BY_POLICY = frozenset({"groups", "tenant"})


def claims(i: int) -> Mapping[str, Any]:
    """The verified claims of one device's JWT, as the verifier holds them."""
    raw = json.dumps(
        {
            "iss": "https://app.example.test",
            "aud": "mqtt-gateway",
            "iat": 1_900_000_000 + i,
            "exp": 1_900_003_600 + i,
            "sub": f"device-{i}",
            "groups": ["ops"],
            "tenant": "t1",
        }
    )
    return MappingProxyType(json.loads(raw))


def main() -> None:
    """Print the bytes per identity of each way of keeping claims."""
    for mode in ("referenced claims only", "whole claim set"):
        tracemalloc.start()
        kept: list[Mapping[str, Any]] = []
        for i in range(IDENTITIES):
            one = claims(i)
            kept.append(relevant_claims(READ_BY_POLICY, one) if mode.startswith("ref") else one)
        current, _peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"{mode}: {current / IDENTITIES:.0f} bytes per identity")
        del kept


if __name__ == "__main__":
    main()
