"""Quick paired comparison: baseline and gateway W1 (and W2) alternating, medians and ratios.

    python bench/ab.py                 # 5 rounds of 3 s: baseline, W1, W2 in turn
    python bench/ab.py --rounds 9 --duration 2 --no-w2
    python bench/ab.py --body          # also W1 with a {"clientId": ...} body each round

For iterating on the hot path: one gateway, one baseline, both kept running, measured in
turns so that a noisy neighbour hits both alike. Prints per-round figures and the medians of
the per-round ratios. `bench/run.py` stays the benchmark of record.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import harness as h  # noqa: E402
from bench.jwts import client_id_bodies, make_jwts, subjects, write_jwt_file  # noqa: E402
from bench.run import (  # noqa: E402
    HIGH_QUOTA,
    fill,
    start_baseline_app,
    start_emulator,
    start_gateway,
)


def main() -> int:
    """Run the rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--subjects", type=int, default=10_000)
    parser.add_argument("--no-w2", action="store_true")
    parser.add_argument(
        "--body", action="store_true", help='also W1 with a {"clientId": ...} body (W1b)'
    )
    args = parser.parse_args()
    if h.wrk_path() is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="authserver-ab-"))
    names = subjects("bench", args.subjects)
    w1_tokens = make_jwts(names, tag="w1")
    w1_file = write_jwt_file(workdir / "w1.txt", w1_tokens)
    bodies = client_id_bodies(names)
    w1b_file = write_jwt_file(workdir / "w1b.txt", w1_tokens, bodies)
    rows: list[tuple[float, float, float | None]] = []
    body_rows: list[tuple[float, float]] = []
    with h.fleet(workdir) as fleet:
        emulator = start_emulator(fleet, "emulator", HIGH_QUOTA)
        base = start_baseline_app(fleet)
        gateway = start_gateway(
            fleet, "gateway", emulator, quota=HIGH_QUOTA, account_quota=HIGH_QUOTA
        )
        fill(gateway, w1_tokens)
        if args.body:
            for _ in range(2):  # minted and answered, then remembered as repeats
                h.post_all(gateway.url, w1_tokens, bodies=bodies)
            h.run_wrk(gateway.url, w1b_file, duration=1, connections=64)
        for url in (base.url, gateway.url):
            h.run_wrk(url, w1_file, duration=1, connections=64)
        for i in range(args.rounds):
            b = h.run_wrk(base.url, w1_file, duration=args.duration, connections=64)["rps"]
            w1 = h.run_wrk(gateway.url, w1_file, duration=args.duration, connections=64)["rps"]
            w2: float | None = None
            if not args.no_w2:
                needed = math.ceil(w1 * args.duration * 1.5)
                fresh = make_jwts((names * math.ceil(needed / len(names)))[:needed], tag=f"w2-{i}")
                w2_file = write_jwt_file(workdir / f"w2-{i}.txt", fresh)
                w2 = h.run_wrk(gateway.url, w2_file, duration=args.duration, connections=64)["rps"]
            rows.append((b, w1, w2))
            extra = "" if w2 is None else f"  W2 {w2:8.0f} ({w2 / b:.1%})"
            if args.body:
                w1b = h.run_wrk(gateway.url, w1b_file, duration=args.duration, connections=64)
                body_rows.append((b, w1b["rps"]))
                extra += f"  W1b {w1b['rps']:8.0f} ({w1b['rps'] / b:.1%})"
            print(
                f"round {i + 1}: baseline {b:8.0f}  W1 {w1:8.0f} ({w1 / b:.1%}){extra}", flush=True
            )
    med = statistics.median
    print(f"median baseline {med(r[0] for r in rows):.0f} req/s")
    w1_ratio = med(r[1] / r[0] for r in rows)
    print(f"median W1 {med(r[1] for r in rows):.0f} req/s, W1/baseline {w1_ratio:.1%}")
    if body_rows:
        w1b_ratio = med(w1b / b for b, w1b in body_rows)
        print(
            f"median W1b (clientId body) {med(w1b for _, w1b in body_rows):.0f} req/s, "
            f"W1b/baseline {w1b_ratio:.1%}"
        )
    w2s = [(r[0], r[2]) for r in rows if r[2] is not None]
    if w2s:
        w2_ratio = med(w2 / b for b, w2 in w2s)
        print(f"median W2 {med(w2 for _, w2 in w2s):.0f} req/s, W2/baseline {w2_ratio:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
