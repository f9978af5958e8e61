"""What a cached token costs the gateway: its bytes per token, measured with tracemalloc.

The same measurement as `bench/memory.py` (which gives the per-layer table), on a fleet small
enough for the suite: devices with their own JWTs each ask twice, and the Python memory the
gateway holds afterwards, divided by the tokens it minted, stays within the budget.
"""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

from aiohttp.test_utils import TestClient

from authserver import appkeys
from tests.fixtures.emulator import MakeEmulator
from tests.fixtures.gateway import MakeGateway, bearer, make_jwt

DEVICES = 200
# Measured by this test: 4,769 bytes a token before the memory work of issue 16 (main at
# 70c16ef), 2,585 at 5283366, 2,235 with repeats keyed by a digest, slimmer answers and
# indexes, shared token times and no clientId memo per mint.
BYTES_PER_TOKEN = 2_400


async def ask_twice(client: TestClient[Any, Any], jwts: list[str]) -> None:
    # Through the client's session, not TestClient.post, which keeps every response.
    url = client.make_url("/v1/token")
    for _ in range(2):
        for jwt in jwts:
            async with client.session.post(url, headers=bearer(jwt)) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()


def gateway_bytes(snapshot: tracemalloc.Snapshot) -> int:
    """What the snapshot holds, less the emulator's and the test's own (same process)."""
    outside = [
        tracemalloc.Filter(False, "*/authserver/emulator/*", all_frames=True),
        tracemalloc.Filter(False, "*/tests/*", all_frames=True),
    ]
    return sum(stat.size for stat in snapshot.filter_traces(outside).statistics("filename"))


async def test_a_cached_token_costs_under_the_budget(
    make_emulator: MakeEmulator, make_gateway: MakeGateway
) -> None:
    emulator = await make_emulator()
    client = await make_gateway(emulator)
    tokens = client.server.app[appkeys.TOKENS]
    # Warm up what every device shares (pools, per-process caches) before measuring.
    await ask_twice(client, [make_jwt(f"warm-{i}") for i in range(8)])
    jwts = [make_jwt(f"device-{i:05d}", jti=f"m-{i}") for i in range(DEVICES)]
    minted = tokens.minted
    gc.collect()
    tracemalloc.start(16)  # deep enough to tell the emulator's frames from the gateway's
    try:
        await ask_twice(client, jwts)
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
        grown = gateway_bytes(snapshot)
    finally:
        tracemalloc.stop()
    count = tokens.minted - minted
    assert count == 2 * DEVICES  # R and W for each device
    assert grown / count < BYTES_PER_TOKEN, f"{grown / count:.0f} bytes a token"
