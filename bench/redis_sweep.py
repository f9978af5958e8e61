"""How long the Redis store takes over many records: a policy sweep, a listing, a delete.

Run: `python -m bench.redis_sweep` (starts its own redis-server on a free loopback port).
5,000 records of 1,000 subjects, all handed to one clientId; the sweep (`all_tokens`, what a
policy reload reads) is timed 5 times and its median printed, then one listing of the
clientId's tokens and one `delete_many` of them (what revoking the clientId does). The
figures are quoted in README.md (Policy reload).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

import redis.asyncio as aioredis

from authserver.clock import ManualClock
from authserver.tokens.model import TokenRecord
from authserver.tokens.store import RedisStore

RECORDS = 5000
SUBJECTS = 1000
RUNS = 5


def record(i: int, expire_ms: int) -> TokenRecord:
    """One cached token of subject `s{i % SUBJECTS}`, handed to the clientId `fleet`."""
    return TokenRecord(
        token=f"t{i}",
        type="R",
        resources=("a/#",),
        expire_ms=expire_ms,
        refresh_at_ms=expire_ms - 1000,
        issued_ms=expire_ms - 60_000,
        subject=f"s{i % SUBJECTS}",
        instance_id="bench",
        client_id="fleet",
    )


async def measure(url: str) -> None:
    """Fill the store, then print the median sweep and one listing and delete."""
    client = aioredis.Redis.from_url(url)
    clock = ManualClock(start=1000.0)
    store = RedisStore(client, clock)
    expire_ms = int(clock.time() * 1000) + 600_000
    for i in range(RECORDS):
        await store.put(f"k{i}", record(i, expire_ms))
    sweeps = []
    for _ in range(RUNS):
        start = time.perf_counter()
        seen = [key async for key, _record in store.all_tokens()]
        sweeps.append(time.perf_counter() - start)
        assert len(seen) == RECORDS
    start = time.perf_counter()
    listed = await store.client_tokens("fleet")
    listing = time.perf_counter() - start
    assert len(listed) == RECORDS
    start = time.perf_counter()
    await store.delete_many(listed)
    deleting = time.perf_counter() - start
    print(
        f"{RECORDS} records: sweep median {statistics.median(sweeps) * 1000:.0f} ms "
        f"(of {RUNS}), clientId listing {listing * 1000:.0f} ms, delete {deleting * 1000:.0f} ms"
    )
    await client.aclose()


def main() -> None:
    """Start a throwaway redis-server and measure against it."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    with tempfile.TemporaryDirectory() as workdir:
        server = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
            stdout=subprocess.DEVNULL,
        )
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            asyncio.run(measure(f"redis://127.0.0.1:{port}/0"))
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
