"""The gateway benchmark: baseline, W1 warm, W1b with a body, W2 new JWTs, W1 on Redis, the
same on uvloop, W3 cold, memory.

    python bench/run.py            # 3 runs of 10 s per workload, medians (about 10 minutes)
    python bench/run.py --quick    # 1 run of 3 s per workload
    python bench/run.py --profile /tmp/w1   # also py-spy the gateway during one more W1 and W1b run

Everything runs on this machine: the gateway (`authserver serve`, one worker) and the baseline
app pinned to core 0; wrk (1 thread), the emulator, redis-server and this script on core 1.
Prints a markdown table and writes it to bench/results.md. Needs wrk (`apt-get install -y
wrk`) and redis-server; `--profile` needs py-spy (`pip install py-spy`).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import harness as h  # noqa: E402
from bench.jwts import client_id_bodies, make_jwts, subjects, write_jwt_file  # noqa: E402
from bench.pyspy_summary import report as pyspy_report  # noqa: E402

RESULTS = ROOT / "bench" / "results.md"
HIGH_QUOTA = 100_000.0
COLD_QUOTA = 100.0
MEMORY_TARGET_MB = 300.0


@dataclass(frozen=True)
class Plan:
    """How long and how hard each workload runs."""

    runs: int
    duration: float
    warmup: float
    connections: int
    subjects: int
    cold_runs: int
    cold_duration: float
    cold_connections: int
    memory_subjects: int
    profile_seconds: float


FULL = Plan(
    runs=3,
    duration=10,
    warmup=3,
    connections=64,
    subjects=10_000,
    cold_runs=3,
    cold_duration=10,
    cold_connections=16,
    memory_subjects=50_000,
    profile_seconds=10,
)
QUICK = Plan(
    runs=1,
    duration=3,
    warmup=1,
    connections=64,
    subjects=10_000,
    cold_runs=1,
    cold_duration=3,
    cold_connections=16,
    memory_subjects=50_000,
    profile_seconds=5,
)


@dataclass
class Workload:
    """The wrk runs of one workload and what the upstream saw meanwhile."""

    name: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    upstream_calls: int = 0
    notes: list[str] = field(default_factory=list)
    # The baseline run made just before each of `runs` (same order): the ratios pair them.
    paired: list[dict[str, Any]] = field(default_factory=list)

    def ratio(self) -> float | None:
        """Median over runs of this run's req/s over its paired baseline run's."""
        if not self.runs or len(self.paired) != len(self.runs):
            return None
        return statistics.median(
            float(r["rps"]) / float(b["rps"]) for r, b in zip(self.runs, self.paired, strict=True)
        )

    def paired_p99_ms(self) -> float:
        """Median p99 of the paired baseline runs, in milliseconds."""
        return statistics.median(b["latency_us"]["p99"] for b in self.paired) / 1000

    def median(self, key: str) -> float:
        """Median over runs of a top-level number (e.g. rps)."""
        return statistics.median(float(r[key]) for r in self.runs)

    def latency_ms(self, percentile: str) -> float:
        """Median over runs of a latency percentile, in milliseconds."""
        return statistics.median(r["latency_us"][percentile] for r in self.runs) / 1000

    def total(self, key: str) -> int:
        """Sum over runs of a top-level count."""
        return sum(int(r[key]) for r in self.runs)

    def status_count(self, predicate: Any) -> int:
        """Responses, over all runs, whose status code satisfies `predicate`."""
        return sum(
            n for r in self.runs for code, n in r["statuses"].items() if predicate(int(code))
        )


@dataclass
class Cold:
    """W3: what the upstream received against what was asked for."""

    workload: Workload
    keys_requested: int = 0
    keys_served: int = 0
    tokens_per_answer: str = ""
    max_per_second: int = 0
    quota: float = COLD_QUOTA
    wrapped: bool = False
    counted_by: str = "the gateway's /metrics (requests answered)"


@dataclass
class Memory:
    """Resident size of a gateway before and after filling its token cache."""

    before_mb: float
    after_mb: float
    tokens: int
    subjects: int
    seconds: float


def log(message: str) -> None:
    """Progress on stderr, so stdout stays the table."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Baseline:
    """The bare app, kept running: every measured run of a workload is paired with one of its.

    The machine is shared and its speed drifts by tens of percent over minutes; a baseline
    measured once at the start would make every ratio after it a measure of that drift.
    """

    server: h.Server
    jwt_file: Path
    plan: Plan
    work: Workload = field(default_factory=lambda: Workload("baseline"))

    @property
    def url(self) -> str:
        """The baseline's base URL."""
        return self.server.url

    def run(self) -> dict[str, Any]:
        """One baseline run of the plan's duration, recorded in the baseline's own row."""
        result = timed_wrk(self.server, self.jwt_file, self.plan)
        self.work.runs.append(result)
        return result


def timed_wrk(server: h.Server, jwt_file: Path, plan: Plan) -> dict[str, Any]:
    """One wrk run of the plan against `server`, with the server's CPU microseconds a request.

    User plus system time from /proc: a shared machine disturbs it far less than requests/s.
    """
    before = server.cpu_seconds()
    result = h.run_wrk(server.url, jwt_file, duration=plan.duration, connections=plan.connections)
    result["cpu_us"] = 1e6 * (server.cpu_seconds() - before) / max(1, int(result["requests"]))
    return result


def measure(
    name: str,
    gateway: h.Server,
    jwt_file: Path,
    plan: Plan,
    emulator: h.Server | None,
    base: Baseline,
) -> Workload:
    """Warm up, then `plan.runs` wrk runs, each right after a baseline run; upstream calls
    counted from after the warm-up."""
    work = Workload(name)
    if plan.warmup > 0:
        h.run_wrk(gateway.url, jwt_file, duration=plan.warmup, connections=plan.connections)
    if emulator is not None:
        h.emulator_reset(emulator)
    for i in range(plan.runs):
        paired = base.run()
        result = timed_wrk(gateway, jwt_file, plan)
        work.paired.append(paired)
        work.runs.append(result)
        log(
            f"{name} run {i + 1}: {result['rps']:.0f} req/s, p99 {result['latency_us']['p99']} us"
            f" (baseline just before: {paired['rps']:.0f} req/s)"
        )
    if emulator is not None:
        work.upstream_calls = h.apply_token_calls(h.emulator_stats(emulator))
    return work


def start_baseline_app(fleet: h.Fleet, event_loop: str = "asyncio") -> h.Server:
    """The bare aiohttp app (bench/baseline_app.py), pinned like the gateway."""
    port = h.free_port()
    return fleet.start(
        f"baseline-{event_loop}",
        h.python_argv(
            str(ROOT / "bench" / "baseline_app.py"), "--port", str(port), "--loop", event_loop
        ),
        port,
        core=h.SERVER_CORE,
    )


def start_baseline(
    fleet: h.Fleet, jwt_file: Path, plan: Plan, event_loop: str = "asyncio"
) -> Baseline:
    """The bare aiohttp app, warmed up, ready to pair its runs with the workloads'."""
    app = start_baseline_app(fleet, event_loop)
    if plan.warmup > 0:
        h.run_wrk(app.url, jwt_file, duration=plan.warmup, connections=plan.connections)
    base = Baseline(app, jwt_file, plan, Workload(f"baseline{loop_suffix(event_loop)}"))
    base.work.notes.append(f"answer {len(h.fetch_token(app.url, 'x'))} bytes")
    return base


def loop_suffix(event_loop: str) -> str:
    """How a row names its event loop: nothing for asyncio's own, else ` (uvloop)`."""
    return "" if event_loop == "asyncio" else f" ({event_loop})"


def start_gateway(
    fleet: h.Fleet,
    name: str,
    emulator: h.Server,
    *,
    quota: float,
    account_quota: float,
    redis_url: str | None = None,
    event_loop: str = "asyncio",
    extra_env: dict[str, str] | None = None,
) -> h.Server:
    """`authserver serve` (one worker) on the server core, configured through its environment
    (`extra_env` added to or overriding harness.gateway_env's)."""
    port = h.free_port()
    env = h.gateway_env(
        port,
        emulator.url,
        quota_apply_token=quota,
        quota_account=account_quota,
        redis_url=redis_url,
        event_loop=event_loop,
    )
    env.update(extra_env or {})
    return fleet.start(
        name, h.python_argv("-m", "authserver", "serve"), port, core=h.SERVER_CORE, env=env
    )


def start_emulator(fleet: h.Fleet, name: str, qps: float) -> h.Server:
    """The vendor OpenAPI emulator on the load core, ApplyToken limited to `qps`."""
    port = h.free_port()
    return fleet.start(
        name, h.emulator_argv(port, qps), port, core=h.LOAD_CORE, ready="/_emulator/stats"
    )


def fill(gateway: h.Server, tokens: list[str], work: Workload | None = None) -> None:
    """Request each JWT once (tokens minted, JWTs verified and cached); retry failures."""
    started = time.monotonic()
    todo, concurrency = tokens, 64
    for attempt in range(4):
        posted = h.post_all(gateway.url, todo, concurrency)
        if not posted.failed:
            break
        what = f"fill pass {attempt + 1}: {dict(posted.statuses)}, e.g. {posted.first_failure}"
        log(what)
        if work is not None:
            work.notes.append(what)
        todo, concurrency = posted.failed, max(1, concurrency // 4)
    else:
        raise RuntimeError(f"{len(todo)} JWTs still failing after 4 passes")
    log(f"fill: {len(tokens)} JWTs requested once in {time.monotonic() - started:.1f} s")


def profile_w1(gateway: h.Server, jwt_file: Path, plan: Plan, prefix: Path) -> str:
    """py-spy the gateway during one more W1 run; the markdown summary of the samples."""
    # The venv's own, when the script runs as .venv/bin/python without the venv on PATH.
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        return "py-spy is not installed (pip install py-spy); no profile\n"
    raw = prefix.with_suffix(".txt")
    seconds = max(1, round(plan.profile_seconds))
    spy = subprocess.Popen(
        h.pinned(
            h.LOAD_CORE,
            [
                py_spy,
                "record",
                "--pid",
                str(gateway.pid),
                "--duration",
                str(seconds),
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                str(raw),
            ],
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    result = h.run_wrk(gateway.url, jwt_file, duration=seconds, connections=plan.connections)
    _, err = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0 or not raw.exists():
        return f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-500:]}\n"
    log(f"profile: {raw} (collapsed stacks; speedscope.app opens it)")
    header = (
        f"W1 under py-spy (200 Hz, {seconds} s, the sampler slows the gateway): "
        f"{result['rps']:.0f} req/s. Raw stacks: `{raw}`.\n\n"
    )
    return header + pyspy_report(raw.read_text())


@dataclass
class Warm:
    """W1, W1b and W2 on one in-memory gateway, and what was seen of it."""

    w1: Workload
    w1b: Workload
    w2: Workload
    profile: str
    rss_mb: float


def warm_workloads(
    fleet: h.Fleet,
    emulator: h.Server,
    w1_tokens: list[str],
    files: tuple[Path, Path],
    plan: Plan,
    args: Any,
    base: Baseline,
    event_loop: str = "asyncio",
) -> Warm:
    """W1, W1b and W2 on one in-memory gateway; the optional profile; its RSS after W1."""
    suffix = loop_suffix(event_loop)
    w1_file, w1b_file = files
    gateway = start_gateway(
        fleet,
        f"gateway-memory-{event_loop}",
        emulator,
        quota=HIGH_QUOTA,
        account_quota=HIGH_QUOTA,
        event_loop=event_loop,
    )
    fill(gateway, w1_tokens)
    w1 = measure(f"W1 warm{suffix}", gateway, w1_file, plan, emulator, base)
    rss = gateway.rss_mb()
    bodies = client_id_bodies(subjects("bench", plan.subjects))
    for _ in range(2):  # the body's answer minted, then the JWT with its body a repeat
        posted = h.post_all(gateway.url, w1_tokens, bodies=bodies)
        if posted.failed:
            raise RuntimeError(f"W1b fill: {dict(posted.statuses)}, e.g. {posted.first_failure}")
    w1b = measure(f"W1b clientId body{suffix}", gateway, w1b_file, plan, emulator, base)
    w1b.notes.append('the W1 JWTs, each with {"clientId": "GID_bench@@@<subject>"}')
    profile = ""
    if args.profile is not None and event_loop == "asyncio":
        prefix = Path(args.profile)
        profile = "#### W1\n\n" + profile_w1(gateway, w1_file, plan, prefix)
        profile += "\n#### W1b\n\n" + profile_w1(
            gateway, w1b_file, plan, prefix.with_name(prefix.name + "-w1b")
        )

    w2 = Workload(f"W2 new JWTs{suffix}")
    h.emulator_reset(emulator)
    names = subjects("bench", plan.subjects)
    # Every request must carry a JWT never seen: as many as W1's pace could send, plus room.
    needed = max(plan.subjects, math.ceil(w1.median("rps") * plan.duration * 1.5))
    for i in range(plan.runs):
        tokens = make_jwts(
            (names * math.ceil(needed / len(names)))[:needed], tag=f"w2-{event_loop}-{i}"
        )
        w2_file = write_jwt_file(args.workdir / f"w2-{event_loop}-{i}.txt", tokens)
        paired = base.run()
        result = timed_wrk(gateway, w2_file, plan)
        w2.paired.append(paired)
        w2.runs.append(result)
        log(
            f"W2{suffix} run {i + 1}: {result['rps']:.0f} req/s, {len(tokens)} fresh JWTs "
            f"(baseline just before: {paired['rps']:.0f} req/s)"
        )
        if result["wrapped"]:
            w2.notes.append(f"run {i + 1} reused JWTs (file too short)")
    w2.upstream_calls = h.apply_token_calls(h.emulator_stats(emulator))
    w2.notes.append(f"{plan.subjects} subjects, a fresh JWT per request")
    fleet.stop(gateway)
    return Warm(w1, w1b, w2, profile, rss)


def redis_workload(
    fleet: h.Fleet,
    emulator: h.Server,
    w1_tokens: list[str],
    w1_file: Path,
    plan: Plan,
    base: Baseline,
) -> Workload:
    """W1 again with Redis as the shared store (redis-server on the load core)."""
    if shutil.which("redis-server") is None:
        work = Workload("W1 + Redis")
        work.notes.append("redis-server not installed (apt-get install -y redis-server)")
        return work
    port = h.free_port()
    redis = fleet.start(
        "redis",
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        port,
        core=h.LOAD_CORE,
        ready=None,
    )
    h.wait_redis(redis)
    h.emulator_reset(emulator, state=True)
    gateway = start_gateway(
        fleet,
        "gateway-redis",
        emulator,
        quota=HIGH_QUOTA,
        account_quota=HIGH_QUOTA,
        redis_url=f"redis://127.0.0.1:{port}/0",
    )
    fill_notes = Workload("W1 + Redis")
    fill(gateway, w1_tokens, fill_notes)
    work = measure("W1 + Redis", gateway, w1_file, plan, emulator, base)
    work.notes = fill_notes.notes
    fleet.stop(gateway)
    fleet.stop(redis)
    return work


def cold_workload(fleet: h.Fleet, plan: Plan, workdir: Path) -> Cold:
    """W3: subjects never seen, every request needs ApplyToken at the real quota."""
    emulator = start_emulator(fleet, "emulator-quota", COLD_QUOTA)
    gateway = start_gateway(fleet, "gateway-cold", emulator, quota=COLD_QUOTA, account_quota=300.0)
    cold = Cold(Workload("W3 cold"))
    per_answer: set[int] = set()
    for i in range(plan.cold_runs):
        tokens = make_jwts(subjects(f"cold{i}", plan.subjects), tag=f"w3-{i}")
        cold_file = write_jwt_file(workdir / f"w3-{i}.txt", tokens)
        h.emulator_reset(emulator)
        handled_before = h.token_requests_handled(gateway)
        result = h.run_wrk(
            gateway.url,
            cold_file,
            duration=plan.cold_duration,
            connections=plan.cold_connections,
            cold=True,
        )
        # Requests still in flight when wrk stopped go on to the upstream: let them land.
        stats = h.settle_upstream(emulator, limit=10)
        handled_after = h.token_requests_handled(gateway)
        asked = result["sent"]
        if handled_before is not None and handled_after is not None:
            # wrk counts requests it wrote; some die unread when it closes its connections.
            asked = handled_after - handled_before
        else:
            cold.counted_by = "wrk (requests written)"
        cold.workload.runs.append(result)
        calls = h.apply_token_calls(stats)
        cold.workload.upstream_calls += calls
        if result["tokens_max"] > 0:
            per_answer.update({result["tokens_min"], result["tokens_max"]})
        per = result["tokens_max"] if result["tokens_max"] > 0 else 2
        cold.keys_requested += asked * per
        cold.keys_served += result["served_subjects"] * per
        cold.max_per_second = max(
            cold.max_per_second, int(stats.get("maxPerSecond", {}).get("ApplyToken", 0))
        )
        cold.wrapped = cold.wrapped or bool(result["wrapped"])
        log(
            f"W3 run {i + 1}: {result['rps']:.0f} req/s, {asked} subjects asked "
            f"({result['sent']} written by wrk), "
            f"{calls} ApplyToken, max {cold.max_per_second}/s"
        )
    cold.tokens_per_answer = "/".join(str(n) for n in sorted(per_answer)) or "?"
    fleet.stop(gateway)
    fleet.stop(emulator)
    return cold


def memory_workload(fleet: h.Fleet, emulator: h.Server, plan: Plan) -> Memory:
    """RSS of a fresh in-memory gateway before and after caching 2 tokens per subject."""
    h.emulator_reset(emulator, state=True)
    gateway = start_gateway(
        fleet, "gateway-rss", emulator, quota=HIGH_QUOTA, account_quota=HIGH_QUOTA
    )
    before = gateway.rss_mb()
    tokens = make_jwts(subjects("mem", plan.memory_subjects), tag="mem")
    started = time.monotonic()
    fill(gateway, tokens)
    seconds = time.monotonic() - started
    # Twice more: the finished-answer and repeat caches fill up (to their bounds) as well.
    for _ in range(2):
        again = h.post_all(gateway.url, tokens)
        if again.failed:
            raise RuntimeError(f"memory: {len(again.failed)} repeated requests failed")
    stats = h.settle_upstream(emulator)
    minted = int(stats.get("success", {}).get("ApplyToken", 0))
    after = gateway.rss_mb()
    log(f"memory: {minted} tokens for {len(tokens)} subjects in {seconds:.0f} s, {after:.0f} MiB")
    fleet.stop(gateway)
    return Memory(before, after, minted, len(tokens), seconds)


def verdict(ok: bool) -> str:
    """PASS or MISS."""
    return "PASS" if ok else "MISS"


W1_TARGET = 0.90
W1B_TARGET = 0.85
W2_TARGET = 0.55
P99_TARGET = 1.5  # times the paired baseline runs' median p99


def table(
    base: Workload,
    warm: Warm,
    w1r: Workload,
    cold: Cold,
    memory: Memory,
    uv: tuple[Workload, Warm] | None = None,
) -> str:
    """The results as a markdown table with targets, verdicts and notes."""

    def ratio(work: Workload) -> str:
        if not work.paired:
            return "100.0%" if work.name.startswith("baseline") else "-"
        paired = work.ratio()
        return "-" if paired is None else f"{paired:.1%}"

    def cpu(work: Workload) -> str:
        values = [float(r["cpu_us"]) for r in work.runs if "cpu_us" in r]
        return f"{statistics.median(values):.1f}" if values else "-"

    def row(work: Workload, target: str, ok: str) -> str:
        if not work.runs:
            return f"| {work.name} | - | - | - | - | - | - | - | - | {target} | {ok} |"
        return (
            f"| {work.name} | {work.median('rps'):,.0f} | {work.latency_ms('p50'):.2f} | "
            f"{work.latency_ms('p99'):.2f} | {cpu(work)} | "
            f"{work.status_count(lambda c: not 200 <= c < 300)} | "
            f"{work.total('socket_errors')} | {work.upstream_calls} | {ratio(work)} | "
            f"{target} | {ok} |"
        )

    def at_least(work: Workload, share: float, *, p99: bool = False) -> tuple[str, str]:
        paired = work.ratio()
        ok = paired is not None and paired >= share
        target = f">= {share:.0%}"
        if p99 and work.paired:
            limit = P99_TARGET * work.paired_p99_ms()
            ok = ok and work.latency_ms("p99") <= limit
            target += f" and p99 <= {limit:.2f} ms"
        return target, verdict(ok)

    def warm_rows(baseline: Workload, warm: Warm) -> list[str]:
        return [
            row(baseline, "-", "-"),
            row(warm.w1, *at_least(warm.w1, W1_TARGET, p99=True)),
            row(warm.w1b, *at_least(warm.w1b, W1B_TARGET, p99=True)),
            row(warm.w2, *at_least(warm.w2, W2_TARGET)),
        ]

    c = cold.workload
    other_5xx = c.status_count(lambda s: s >= 500 and s != 503)
    s503 = c.status_count(lambda s: s == 503)
    bare_503 = s503 - c.total("retry_after_503")
    calls_ok = c.upstream_calls == cold.keys_requested or (
        s503 > 0 and cold.keys_served <= c.upstream_calls <= cold.keys_requested
    )
    cold_ok = calls_ok and cold.max_per_second <= cold.quota and other_5xx == 0 and bare_503 == 0
    mem_ok = memory.after_mb < MEMORY_TARGET_MB

    lines = [
        "| workload | req/s | p50 ms | p99 ms | CPU us/req | non-2xx | socket errors "
        "| ApplyToken calls | vs baseline | target | verdict |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        *warm_rows(base, warm),
        row(w1r, f"(none; W1's for reference: >= {W1_TARGET:.0%})", "-"),
        row(
            c,
            "calls == keys, max/s <= quota, no 5xx but 503+Retry-After",
            verdict(cold_ok),
        ),
        f"| memory | - | - | - | - | - | - | {memory.tokens:,} tokens cached | - | "
        f"RSS < {MEMORY_TARGET_MB:.0f} MB | {verdict(mem_ok)} |",
    ]
    if uv is not None:
        lines += warm_rows(*uv)
    lines += [
        "",
        f"**W3 cold**: ApplyToken calls {c.upstream_calls:,} vs distinct (subject, token type) "
        f"keys requested {cold.keys_requested:,} (requests counted by {cold.counted_by}, "
        f"each a new subject, x {cold.tokens_per_answer} tokens per answer; "
        f"keys answered 200: {cold.keys_served:,}); emulator maxPerSecond for ApplyToken "
        f"{cold.max_per_second} (quota {cold.quota:.0f}); 503 {s503} "
        f"(with Retry-After {c.total('retry_after_503')}); other 5xx {other_5xx}"
        + ("; the subject file wrapped, keys repeat" if cold.wrapped else "")
        + ".",
        "",
        f"**Memory**: gateway RSS {memory.before_mb:.1f} MiB at start, {memory.after_mb:.1f} MiB "
        f"with {memory.tokens:,} tokens cached ({memory.subjects:,} subjects x 2 types, filled "
        f"through the gateway in {memory.seconds:.0f} s, then each JWT asked twice more: the "
        f"verified-JWT cache holds them all, the answer and repeat caches their default "
        f"20,000 each). RSS after W1 (10,000 subjects): {warm.rss_mb:.1f} MiB.",
    ]
    if uv is not None:
        lines += ["", uvloop_gain(base, warm, *uv)]
    works = [base, warm.w1, warm.w1b, warm.w2, w1r, c]
    if uv is not None:
        works += [uv[0], uv[1].w1, uv[1].w1b, uv[1].w2]
    notes = [f"{w.name}: {'; '.join(w.notes)}" for w in works if w.notes]
    if notes:
        lines += ["", "Notes: " + " | ".join(notes) + "."]
    return "\n".join(lines) + "\n"


def uvloop_gain(base: Workload, warm: Warm, uv_base: Workload, uv: Warm) -> str:
    """What uvloop changes, gateway and baseline alike: requests/s and CPU a request."""

    def med_cpu(work: Workload) -> float:
        return statistics.median(float(r["cpu_us"]) for r in work.runs)

    parts = []
    for name, a, b in (
        ("baseline", base, uv_base),
        ("W1", warm.w1, uv.w1),
        ("W1b", warm.w1b, uv.w1b),
        ("W2", warm.w2, uv.w2),
    ):
        if not a.runs or not b.runs:
            continue
        parts.append(
            f"{name} {b.median('rps') / a.median('rps') - 1:+.0%} req/s, "
            f"CPU a request {med_cpu(b) / med_cpu(a) - 1:+.0%}"
        )
    return (
        "**uvloop** (its rows: gateway and baseline both on uvloop, paired with each other; "
        "against the asyncio rows above, measured minutes apart, so unpaired): "
        + "; ".join(parts)
        + "."
    )


def revision() -> str:
    """The commit measured, marked `+changes` when the work tree differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "authserver"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "an unknown revision"
    return f"commit {head or '?'}" + (" +uncommitted changes in authserver/" if dirty else "")


def describe(plan: Plan, command: str, with_uvloop: bool) -> str:
    """How the numbers were made: command, machine, pinning, run lengths."""
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    pinning = (
        "gateway/baseline on core 0; wrk (1 thread), emulator, redis-server and the driver "
        "on core 1"
        if h.two_cores()
        else "NOT pinned (fewer than two cores)"
    )
    loops = (
        "; the rows marked (uvloop) run the gateway (AUTHSERVER_EVENT_LOOP=uvloop) and a "
        "baseline of their own both on uvloop"
        if with_uvloop
        else ""
    )
    return (
        f"`{command}` on {time.strftime('%Y-%m-%d %H:%M')} at {revision()}, "
        f"{os.cpu_count()} x {cpu}, "
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}. {pinning}. "
        f"Medians of {plan.runs} run(s) of {plan.duration:.0f} s after a {plan.warmup:.0f} s "
        f"warm-up, {plan.connections} connections. Every run of W1, W1b, W2 and W1 + Redis "
        f"comes right after a baseline run of the same length (the baseline row: all of "
        f"those); 'vs baseline' is the median of those paired ratios, the p99 targets "
        f"{P99_TARGET:g} times the median p99 of the paired baseline runs. CPU us/req: the "
        f"server's user + system time over the requests wrk completed (/proc/PID/stat), less "
        f"disturbed than requests/s by the machine's other work. The baseline answers every "
        f"request the same, without reading a body: W1b is measured against it too. W3 "
        f"{plan.cold_runs} run(s) of {plan.cold_duration:.0f} s at {plan.cold_connections} "
        f"connections, no warm-up (it would use up cold subjects). W1/W1b/W2/Redis: "
        f"{plan.subjects:,} subjects, one JWT each, each requested once before measuring "
        f"and again in the warm-up (W1b: twice with its body first); gateway and emulator "
        f"quotas raised for the fills, "
        f"W3 at ApplyToken quota {COLD_QUOTA:.0f}/s on both sides. Latency from wrk "
        f"(no coordinated-omission correction). One `authserver serve` worker, "
        f"AUTHSERVER_LOG_LEVEL=WARNING, policy bench/policy.yaml. Rows without a mark run "
        f"asyncio's own event loop (AUTHSERVER_EVENT_LOOP=asyncio){loops}.\n"
    )


def main() -> int:
    """Run every workload and print the table; exit 2 when a tool is missing."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="1 run of 3 s per workload")
    parser.add_argument("--profile", metavar="PREFIX", help="py-spy W1 into PREFIX.txt")
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown file to write")
    parser.add_argument("--memory-subjects", type=int, help="subjects for the memory fill")
    parser.add_argument(
        "--no-uvloop", action="store_true", help="skip the rows with uvloop (on when installed)"
    )
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if args.memory_subjects:
        plan = Plan(**{**plan.__dict__, "memory_subjects": args.memory_subjects})
    if h.wrk_path() is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    if h.two_cores():
        os.sched_setaffinity(0, {h.LOAD_CORE})
    else:
        log("fewer than two cores: server and load are NOT pinned apart")
    args.workdir = Path(tempfile.mkdtemp(prefix="authserver-bench-"))
    log(f"logs and JWT files in {args.workdir}")
    command = "python bench/run.py" + (" --quick" if args.quick else "")

    names = subjects("bench", plan.subjects)
    w1_tokens = make_jwts(names, tag="w1")
    w1_file = write_jwt_file(args.workdir / "w1.txt", w1_tokens)
    w1b_file = write_jwt_file(args.workdir / "w1b.txt", w1_tokens, client_id_bodies(names))
    files = (w1_file, w1b_file)
    with_uvloop = not args.no_uvloop and importlib.util.find_spec("uvloop") is not None
    with h.fleet(args.workdir) as fleet:
        paired = start_baseline(fleet, w1_file, plan)
        emulator = start_emulator(fleet, "emulator", HIGH_QUOTA)
        warm = warm_workloads(fleet, emulator, w1_tokens, files, plan, args, paired)
        w1r = redis_workload(fleet, emulator, w1_tokens, w1_file, plan, paired)
        base = paired.work
        uv = None
        if with_uvloop:
            fleet.stop(paired.server)
            uv_base = start_baseline(fleet, w1_file, plan, "uvloop")
            h.emulator_reset(emulator, state=True)
            uv_warm = warm_workloads(
                fleet, emulator, w1_tokens, files, plan, args, uv_base, "uvloop"
            )
            fleet.stop(uv_base.server)
            uv = (uv_base.work, uv_warm)
        cold = cold_workload(fleet, plan, args.workdir)
        memory = memory_workload(fleet, emulator, plan)

    text = "## Benchmark results\n\n" + describe(plan, command, with_uvloop) + "\n"
    text += table(base, warm, w1r, cold, memory, uv)
    if warm.profile:
        text += "\n### Profiles (py-spy)\n\n" + warm.profile
    print(text)
    args.output.write_text(text)
    log(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
