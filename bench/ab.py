"""Quick paired comparison: each gateway workload right after a baseline run, medians and ratios.

    python bench/ab.py                      # 5 rounds of 3 s: W1, W1b and W2, each paired
    python bench/ab.py --rounds 9 --duration 2 --only W1 W1b
    python bench/ab.py --loop uvloop        # gateway and baseline both on uvloop
    python bench/ab.py --profile /tmp/ab    # then py-spy each workload: /tmp/ab-W1b.txt, ...

For iterating on the hot path: one gateway, one baseline, both kept running. Each round runs,
per workload, a baseline run and then the workload's run, so a noisy neighbour hits both
alike. Workloads: W1 (warm JWTs, no body), W1b (the same JWTs, each with the body most
devices send, `{"clientId": "GID_bench@@@<subject>"}`), W2 (a JWT never seen on every
request). Besides requests/s and p99 it prints the server's CPU time per request (from
/proc/PID/stat, user + system), which a busy machine disturbs far less than throughput: on a
shared machine, compare those. `bench/run.py` stays the benchmark of record.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import harness as h  # noqa: E402
from bench.jwts import client_id_bodies, make_jwts, subjects, write_jwt_file  # noqa: E402
from bench.pyspy_summary import report as pyspy_report  # noqa: E402
from bench.run import (  # noqa: E402
    HIGH_QUOTA,
    fill,
    start_baseline_app,
    start_emulator,
    start_gateway,
)

WORKLOADS = ("W1", "W1b", "W2")


@dataclass
class Sample:
    """One wrk run against one server: requests/s, p99 and CPU microseconds per request."""

    rps: float
    p99_ms: float
    cpu_us: float


@dataclass
class Paired:
    """A workload's runs and the baseline run made just before each."""

    name: str
    runs: list[Sample] = field(default_factory=list)
    base: list[Sample] = field(default_factory=list)

    def summary(self) -> str:
        """Medians of the runs and of the per-pair ratios."""
        med = statistics.median
        ratio = med(r.rps / b.rps for r, b in zip(self.runs, self.base, strict=True))
        cpu = med(r.cpu_us / b.cpu_us for r, b in zip(self.runs, self.base, strict=True))
        p99 = med(r.p99_ms / b.p99_ms for r, b in zip(self.runs, self.base, strict=True))
        base_rps = med(b.rps for b in self.base)
        p99_ms = med(r.p99_ms for r in self.runs)
        cpu_us = med(r.cpu_us for r in self.runs)
        base_cpu = med(b.cpu_us for b in self.base)
        return (
            f"{self.name:4} {med(r.rps for r in self.runs):8.0f} req/s = {ratio:6.1%} of the "
            f"baseline ({base_rps:.0f}); p99 {p99_ms:.2f} ms = {p99:.2f}x; CPU {cpu_us:.1f} "
            f"us/req, baseline {base_cpu:.1f} (baseline/gateway {1 / cpu:.1%})"
        )


def sample(server: h.Server, url: str, jwt_file: Path, duration: float) -> Sample:
    """One wrk run of `duration` seconds at 64 connections, with `server`'s CPU time."""
    before = server.cpu_seconds()
    result = h.run_wrk(url, jwt_file, duration=duration, connections=64)
    cpu = server.cpu_seconds() - before
    requests = max(1, int(result["requests"]))
    if result["non_2xx"] or result["socket_errors"]:
        print(f"  ! {url}: {result['statuses']}, socket errors {result['socket_errors']}")
    return Sample(result["rps"], result["latency_us"]["p99"] / 1000, 1e6 * cpu / requests)


def profile(server: h.Server, jwt_file: Path, seconds: int, raw: Path, native: bool) -> str:
    """py-spy `server` during one more run of `jwt_file`; the summary of its samples."""
    spy = subprocess.Popen(
        h.pinned(
            h.LOAD_CORE,
            [
                sys.executable.rsplit("/", 1)[0] + "/py-spy",
                "record",
                *(["--native"] if native else []),
                "--pid",
                str(server.pid),
                "--duration",
                str(seconds),
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                str(raw),
            ],
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    h.run_wrk(server.url, jwt_file, duration=seconds, connections=64)
    _, err = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0 or not raw.exists():
        return f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-500:]}\n"
    return pyspy_report(raw.read_text(), 30)


def main() -> int:
    """Run the rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--subjects", type=int, default=10_000)
    parser.add_argument("--only", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--profile", metavar="PREFIX", help="py-spy each workload afterwards")
    parser.add_argument("--native", action="store_true", help="py-spy C frames too (GC, parser)")
    args = parser.parse_args()
    if h.wrk_path() is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="authserver-ab-"))
    names = subjects("bench", args.subjects)
    w1_tokens = make_jwts(names, tag="w1")
    bodies = client_id_bodies(names)
    files = {
        "W1": write_jwt_file(workdir / "w1.txt", w1_tokens),
        "W1b": write_jwt_file(workdir / "w1b.txt", w1_tokens, bodies),
    }
    paired = {name: Paired(name) for name in args.only}
    with h.fleet(workdir) as fleet:
        emulator = start_emulator(fleet, "emulator", HIGH_QUOTA)
        base = start_baseline_app(fleet, args.loop)
        gateway = start_gateway(
            fleet,
            "gateway",
            emulator,
            quota=HIGH_QUOTA,
            account_quota=HIGH_QUOTA,
            event_loop=args.loop,
        )
        fill(gateway, w1_tokens)
        h.post_all(gateway.url, w1_tokens)  # the second sight of each JWT: now a repeat
        if "W1b" in paired:
            for _ in range(2):  # minted and answered, then remembered as repeats
                h.post_all(gateway.url, w1_tokens, bodies=bodies)
        for name in ("W1", "W1b"):
            if name in paired:
                h.run_wrk(gateway.url, files[name], duration=1, connections=64)
        h.run_wrk(base.url, files["W1"], duration=1, connections=64)
        pace = 0.0

        def w2_file(tag: str) -> Path:
            # As many never-seen JWTs as the gateway could take in a run, plus half.
            needed = math.ceil(max(pace, 5000) * args.duration * 1.5)
            fresh = make_jwts((names * math.ceil(needed / len(names)))[:needed], tag=tag)
            return write_jwt_file(workdir / f"{tag}.txt", fresh)

        jobs: dict[str, Callable[[int], Path]] = {
            "W1": lambda _i: files["W1"],
            "W1b": lambda _i: files["W1b"],
            "W2": lambda i: w2_file(f"w2-{i}"),
        }
        for i in range(args.rounds):
            line = []
            for name, work in paired.items():
                jwt_file = jobs[name](i)
                b = sample(base, base.url, files["W1"], args.duration)
                g = sample(gateway, gateway.url, jwt_file, args.duration)
                work.base.append(b)
                work.runs.append(g)
                pace = max(pace, g.rps)
                line.append(
                    f"{name} {g.rps:6.0f}/{b.rps:6.0f} = {g.rps / b.rps:6.1%}"
                    f" (CPU {g.cpu_us:.1f}/{b.cpu_us:.1f} us)"
                )
            print(f"round {i + 1}: " + "  ".join(line), flush=True)
        print(f"\n{args.rounds} rounds of {args.duration:g} s, event loop {args.loop}:")
        for work in paired.values():
            print(work.summary())
        if args.profile:
            for name in paired:
                raw = Path(f"{args.profile}-{name}.txt")
                text: Any = profile(gateway, jobs[name](99), 8, raw, args.native)
                print(f"\n### {name} under py-spy ({raw})\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
