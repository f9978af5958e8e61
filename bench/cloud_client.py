"""Benchmark: the cost of one ApplyToken through CloudClient against the emulator on loopback.

Not a test. Starts the emulator as a subprocess (pinned to its own core when there are two,
its ApplyToken QPS limit raised out of the way), then measures, over several repeats:

- sequential: one call after another, median wall-clock microseconds per call (round trip);
- concurrent: `--concurrency` callers at once, calls per second;
- client CPU: CPU time of this process (the client only) per call, from the concurrent runs;
- signing only: building and signing one form body, no I/O.

Run from the repository root: `python bench/cloud_client.py [--calls 2000] [--repeats 5]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from authserver.cloud.client import CloudClient, make_session  # noqa: E402
from authserver.cloud.credentials import Credentials  # noqa: E402
from authserver.cloud.quota import QuotaGovernor  # noqa: E402

KEY_ID = "LTAIbench"
SECRET = "bench-secret"
INSTANCE = "post-cn-bench"
UNLIMITED = 1e9


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_emulator(port: int) -> subprocess.Popen[bytes]:
    """The emulator in its own process, on core 1 when the machine has two or more."""
    command = [
        sys.executable,
        "-m",
        "authserver.emulator.cli",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--access-key-id",
        KEY_ID,
        "--access-key-secret",
        SECRET,
        "--instance-id",
        INSTANCE,
        "--qps-apply-token",
        str(UNLIMITED),
    ]
    cores = os.cpu_count() or 1
    if cores >= 2:
        command = ["taskset", "-c", "1", *command]
        os.sched_setaffinity(0, {0})
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("the emulator did not start")


def make_client(session: object, url: str) -> CloudClient:
    """A client whose governor does not pace (we measure the client, not the quota)."""
    governor = QuotaGovernor({"ApplyToken": UNLIMITED}, account_limit=UNLIMITED)
    return CloudClient(
        session,  # type: ignore[arg-type]
        Credentials(KEY_ID, SECRET),
        endpoint=url,
        governor=governor,
        max_attempts=1,
        default_deadline=30,
    )


async def apply(client: CloudClient, expire_ms: int) -> None:
    """One ApplyToken with three topics."""
    await client.apply_token(
        INSTANCE, ["devices/7/#", "devices/7/cmd", "devices/7/status"], "R,W", expire_ms
    )


async def sequential(client: CloudClient, calls: int, expire_ms: int) -> float:
    """Median wall-clock microseconds of one call, one at a time."""
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        await apply(client, expire_ms)
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


async def concurrent(
    client: CloudClient, calls: int, concurrency: int, expire_ms: int
) -> tuple[float, float]:
    """(calls per second, client CPU microseconds per call) with `concurrency` callers."""
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await apply(client, expire_ms)

    cpu = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return calls / wall, (time.process_time() - cpu) / calls * 1e6


def signing_only(client: CloudClient, rounds: int = 20000) -> float:
    """Microseconds to build and sign one ApplyToken form body."""
    params = {
        "InstanceId": INSTANCE,
        "Resources": "devices/7/#,devices/7/cmd,devices/7/status",
        "Actions": "R,W",
        "ExpireTime": "1900000000000",
    }
    started = time.perf_counter()
    for _ in range(rounds):
        client._signed_form("ApplyToken", params, "2020-04-20")
    return (time.perf_counter() - started) / rounds * 1e6


async def run(calls: int, repeats: int, concurrency: int) -> None:
    """Start the emulator, measure, print the table."""
    port = free_port()
    emulator = start_emulator(port)
    try:
        async with make_session() as session:
            client = make_client(session, f"http://127.0.0.1:{port}")
            expire_ms = int((time.time() + 3600) * 1000)
            await sequential(client, 200, expire_ms)  # warm up: connections, caches
            seq, rate, cpu = [], [], []
            for _ in range(repeats):
                seq.append(await sequential(client, calls // 4, expire_ms))
                r, c = await concurrent(client, calls, concurrency, expire_ms)
                rate.append(r)
                cpu.append(c)
            sign = statistics.median(signing_only(client) for _ in range(repeats))
            results = client.stats()["results"]["ApplyToken"]
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    rows = [
        ("sequential round trip (us/call)", f"{statistics.median(seq):.0f}"),
        (f"concurrent x{concurrency} throughput (calls/s)", f"{statistics.median(rate):.0f}"),
        ("client CPU per call, concurrent (us)", f"{statistics.median(cpu):.0f}"),
        ("build + sign one form body (us)", f"{sign:.1f}"),
    ]
    print(f"CloudClient ApplyToken vs emulator on loopback ({repeats} repeats, median)")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; client core 0, emulator 1")
    print()
    print(f"| {'measure':<40} | {'value':>10} |")
    print(f"| {'-' * 40} | {'-' * 9}: |")
    for name, value in rows:
        print(f"| {name:<40} | {value:>10} |")
    print()
    print(f"results: {results}")


def main() -> None:
    """Parse the options and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per concurrent run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(run(args.calls, args.repeats, args.concurrency))


if __name__ == "__main__":
    main()
