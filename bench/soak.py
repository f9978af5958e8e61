"""The soak benchmark of issue 13: steady device traffic with churn, does the gateway plateau?

    python bench/soak.py --duration 32                   # 32 minutes, a report every 5
    python bench/soak.py --duration 0.3 --report-every 0.1   # 18 s: minutes may be fractional

Everything runs on this machine: the gateway (`authserver serve`, one worker, Redis store)
pinned to core 0; the emulator, redis-server and this script (the devices and the admin) on
core 1. While it runs: devices ask for tokens at `--rate` requests/s (a share with a
`{"clientId": ...}` body), new subjects replace old ones, devices renew their JWT, the admin
revokes a subject, a clientId or a token every `--revoke-every` seconds, the policy file is
rewritten every `--reload-every` seconds (alternating bench/soak-policy-a.yaml and -b), and
redis-server is killed and started again (same port, same data directory) once, mid-run.
The gateway runs on jemalloc, preloaded as the image does (`--allocator glibc` to compare).
Every `--report-every` minutes it prints a row: requests, latency percentiles, answers by
status, the gateway's RSS, open file descriptors and event-loop tasks. At the end, the verdict:
whether RSS, fds and tasks plateaued over the second half, and whether any 5xx was answered
other than the documented 503 while Redis was down.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import harness as h  # noqa: E402
from bench.jwts import client_id_bodies, make_jwts  # noqa: E402
from bench.run import log, start_emulator, start_gateway  # noqa: E402

POLICIES = (ROOT / "bench" / "soak-policy-a.yaml", ROOT / "bench" / "soak-policy-b.yaml")
QUOTA = 1000.0
# A revoked device waits this long for its app to hand it a new JWT: `iat` counts whole
# seconds, so a JWT signed within the second of the block would still be issued before it.
RENEW_AFTER_BLOCK = 1.5
# Devices' apps renew a JWT when this share of its lifetime has passed (never sending one
# expired); a renewed JWT is never sent again, so the gateway must let it go when it expires.
RENEW_AT = 0.8
# The plateau verdict: the second half's RSS trend may add at most this much over the half.
RSS_TOLERANCE_MB = 4.0
RSS_TOLERANCE_SHARE = 0.03
FD_TOLERANCE = 5
# Every request in flight is a task or three on the gateway (its handler, the R and W lookups),
# so the count swings by tens between samples; a trend of 20 over the half is not that noise.
TASK_TOLERANCE = 20
# A 503 store_unavailable is the documented answer while Redis is down; one sent up to this
# long after Redis answered PING again still counts as the outage (the gateway's reconnect).
OUTAGE_GRACE = 2.0
COLUMNS = (
    "interval",
    "until min",
    "requests",
    "req/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "max ms",
    "2xx",
    "4xx",
    "5xx",
    "RSS MiB",
    "fds",
    "tasks",
    "events",
)


@dataclass
class Device:
    """One device: its subject, its current JWT and the body it sends (maybe none)."""

    subject: str
    jwt: str
    body: bytes
    # When its app renews the JWT, before it expires (at RENEW_AT of its lifetime).
    renew_by: float
    # When a revocation blocked its JWT: it asks again only with a new one, after this time.
    blocked_until: float = 0.0


@dataclass
class Interval:
    """What one report interval saw."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter[tuple[int, str]] = field(default_factory=Counter)
    admin: Counter[tuple[str, int]] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)


@dataclass
class Sample:
    """The gateway's resources at one moment, minutes into the run."""

    minute: float
    rss_mb: float
    fds: int
    tasks: int


@dataclass
class Soak:
    """The running soak: devices, counters, the processes it drives."""

    args: argparse.Namespace
    gateway: h.Server
    redis: h.Server
    redis_dir: Path
    fleet: h.Fleet
    policy_file: Path
    api_key: str
    devices: list[Device] = field(default_factory=list)
    interval: Interval = field(default_factory=Interval)
    rows: list[list[str]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    five_xx: list[str] = field(default_factory=list)
    outage_503: int = 0
    recent_tokens: deque[str] = field(default_factory=lambda: deque(maxlen=64))
    redis_down_at: float | None = None
    redis_outage: tuple[float, float] | None = None
    started: float = 0.0
    next_subject: int = 0
    next_jti: int = 0
    totals: Counter[str] = field(default_factory=Counter)

    def minutes(self) -> float:
        """Minutes since the measured run started."""
        return (time.monotonic() - self.started) / 60

    def new_device(self) -> Device:
        """A device of a subject never seen, sending a clientId body with `--client-id-share`."""
        subject = f"soak-{self.next_subject:07d}"
        self.next_subject += 1
        body = b""
        if random.random() < self.args.client_id_share:
            body = client_id_bodies([subject])[0].encode()
        return Device(subject, self.new_jwt(subject), body, self.renew_by())

    def new_jwt(self, subject: str) -> str:
        """A JWT never seen for `subject`, issued now, valid for `--jwt-lifetime` minutes."""
        self.next_jti += 1
        lifetime = self.args.jwt_lifetime * 60
        return make_jwts([subject], tag=f"soak{self.next_jti}", lifetime=lifetime)[0]

    def renew_by(self) -> float:
        """When a JWT issued now is renewed by its device's app."""
        lifetime: float = self.args.jwt_lifetime * 60
        return time.monotonic() + RENEW_AT * lifetime

    def renew(self, device: Device) -> None:
        """Give `device` a new JWT (same subject)."""
        device.jwt = self.new_jwt(device.subject)
        device.renew_by = self.renew_by()
        device.blocked_until = 0.0


async def device_request(soak: Soak, session: aiohttp.ClientSession, device: Device) -> None:
    """One POST /v1/token as `device`; latency and status into the current interval."""
    headers = {"Authorization": f"Bearer {device.jwt}"}
    if device.body:
        headers["Content-Type"] = "application/json"
    interval = soak.interval
    sent = time.perf_counter()
    sent_minute = soak.minutes()
    try:
        async with session.post(
            soak.gateway.url + "/v1/token", headers=headers, data=device.body
        ) as answer:
            body = await answer.read()
            status = answer.status
    except (aiohttp.ClientError, TimeoutError) as err:
        interval.failures[type(err).__name__] += 1
        return
    interval.latencies.append(time.perf_counter() - sent)
    code = ""
    if status == 200:
        if random.random() < 0.05:
            soak.recent_tokens.extend(t["token"] for t in json.loads(body)["tokens"])
    else:
        code = str(json.loads(body).get("code", "")) if body else ""
        if code == "token_revoked":
            # A revocation blocked this JWT: the device's app gives it a new one shortly.
            device.blocked_until = time.monotonic() + RENEW_AFTER_BLOCK
        if status >= 500:
            if during_outage(soak, sent_minute, soak.minutes(), code, answer.headers):
                soak.outage_503 += 1
            else:
                soak.five_xx.append(f"{sent_minute:.2f} min: {status} {body[:200]!r}")
    interval.statuses[(status, code)] += 1


def during_outage(
    soak: Soak, sent: float, answered: float, code: str, headers: Mapping[str, str]
) -> bool:
    """Whether a 5xx is the documented answer to Redis being down: 503 store_unavailable with
    Retry-After, for a request in flight (`sent` to `answered`, minutes) at some moment
    between the kill and OUTAGE_GRACE after Redis came back."""
    if code != "store_unavailable" or "Retry-After" not in headers:
        return False
    down = soak.redis_down_at
    if down is None:
        return False
    up = soak.redis_outage[1] if soak.redis_outage is not None else float("inf")
    return answered >= down and sent <= up + OUTAGE_GRACE / 60


async def devices_loop(soak: Soak, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
    """Open-loop load: `--rate` requests/s to random devices, at most `--connections` at once."""
    slots = asyncio.Semaphore(soak.args.connections)
    running: set[asyncio.Task[None]] = set()
    begun, sent = time.monotonic(), 0

    async def one(device: Device) -> None:
        try:
            await device_request(soak, session, device)
        finally:
            slots.release()

    while not stop.is_set():
        due = int((time.monotonic() - begun) * soak.args.rate) - sent
        for _ in range(due):
            device = random.choice(soak.devices)
            now = time.monotonic()
            if device.blocked_until:
                if now < device.blocked_until:
                    sent += 1
                    continue
                soak.renew(device)
                soak.interval.events["renewed after block"] += 1
            elif now >= device.renew_by:
                soak.renew(device)
                soak.interval.events["renewed before expiry"] += 1
            await slots.acquire()
            task = asyncio.create_task(one(device))
            running.add(task)
            task.add_done_callback(running.discard)
            sent += 1
        await asyncio.sleep(0.01)
    await asyncio.gather(*running)


async def churn_loop(soak: Soak, stop: asyncio.Event) -> None:
    """Every second: `--churn` new subjects replace old ones, `--renewals` devices renew."""
    while not await wait_or_stop(stop, 1.0):
        for _ in range(soak.args.churn):
            soak.devices[random.randrange(len(soak.devices))] = soak.new_device()
            soak.interval.events["new subjects"] += 1
        for _ in range(soak.args.renewals):
            soak.renew(random.choice(soak.devices))
            soak.interval.events["renewals"] += 1


async def admin_loop(soak: Soak, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
    """Every `--revoke-every` seconds one revocation: a subject, a clientId, a token in turn."""
    headers = {"X-API-Key": soak.api_key}
    kinds = ("subject", "clientId", "token")
    turn = 0
    while not await wait_or_stop(stop, soak.args.revoke_every):
        kind = kinds[turn % len(kinds)]
        turn += 1
        if kind == "subject":
            request = {"subject": random.choice(soak.devices).subject}
        elif kind == "clientId":
            with_body = [d for d in random.sample(soak.devices, 20) if d.body]
            if not with_body:
                continue
            request = {"clientId": json.loads(with_body[0].body)["clientId"]}
        elif soak.recent_tokens:
            request = {"token": soak.recent_tokens.popleft()}
        else:
            continue
        try:
            async with session.post(
                soak.gateway.url + "/v1/admin/revoke", json=request, headers=headers
            ) as answer:
                await answer.read()
                soak.interval.admin[(kind, answer.status)] += 1
        except (aiohttp.ClientError, TimeoutError) as err:
            soak.interval.failures[f"admin {type(err).__name__}"] += 1


async def policy_loop(soak: Soak, stop: asyncio.Event) -> None:
    """Every `--reload-every` seconds, replace the policy file with the other policy."""
    turn = 1
    while not await wait_or_stop(stop, soak.args.reload_every):
        text = POLICIES[turn % 2].read_bytes()
        turn += 1
        # Written aside and renamed in, as a ConfigMap update swaps it: never half a file.
        staged = soak.policy_file.with_suffix(".next")
        staged.write_bytes(text)
        os.replace(staged, soak.policy_file)
        soak.interval.events["policy writes"] += 1


async def redis_restart(soak: Soak, stop: asyncio.Event) -> None:
    """Once, at `--redis-restart-at` minutes: SIGKILL redis-server, start it again, wait."""
    if await wait_or_stop(stop, soak.args.redis_restart_at * 60):
        return
    redis = soak.redis
    down = soak.redis_down_at = soak.minutes()
    redis.proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(redis.proc.wait)
    log(f"redis-server killed at {down:.2f} min; starting it again on port {redis.port}")
    soak.redis = soak.fleet.start(
        "redis-restarted",
        redis_argv(redis.port, soak.redis_dir),
        redis.port,
        core=h.LOAD_CORE,
        ready=None,
    )
    # In the killed one's place, so that the fleet still stops the gateway before Redis.
    servers = soak.fleet.servers
    servers[servers.index(redis)] = servers.pop()
    await asyncio.to_thread(h.wait_redis, soak.redis)
    up = soak.minutes()
    soak.redis_outage = (down, up)
    soak.interval.events["redis restart"] += 1
    log(f"redis-server answers again at {up:.2f} min ({(up - down) * 60:.1f} s down)")


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds` or until `stop`; whether it was stopped."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


def gateway_fds(gateway: h.Server) -> int:
    """Open file descriptors of the gateway process (/proc/PID/fd)."""
    return len(os.listdir(f"/proc/{gateway.pid}/fd"))


async def gateway_tasks(session: aiohttp.ClientSession, gateway: h.Server) -> int:
    """`authserver_event_loop_tasks` from the gateway's /metrics."""
    async with session.get(gateway.url + "/metrics") as answer:
        text = await answer.text()
    for line in text.splitlines():
        if line.startswith("authserver_event_loop_tasks "):
            return round(float(line.split()[1]))
    raise RuntimeError("the gateway's /metrics has no authserver_event_loop_tasks")


async def sample(soak: Soak, session: aiohttp.ClientSession) -> Sample:
    """The gateway's RSS, fds and tasks now."""
    soak.gateway.check_alive()
    tasks = await gateway_tasks(session, soak.gateway)
    found = Sample(soak.minutes(), soak.gateway.rss_mb(), gateway_fds(soak.gateway), tasks)
    soak.samples.append(found)
    return found


async def sample_loop(soak: Soak, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
    """Sample the gateway's resources every `--sample-every` seconds (for the verdict)."""
    while not await wait_or_stop(stop, soak.args.sample_every):
        await sample(soak, session)


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile of `values` (sorted), in milliseconds."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, max(0, round(share * len(values)) - 1))] * 1000


def describe_statuses(statuses: Counter[tuple[int, str]], low: int, high: int) -> str:
    """`n` or `n (401 token_revoked: n, ...)` for the statuses in [low, high)."""
    picked = {k: n for k, n in statuses.items() if low <= k[0] < high}
    total = sum(picked.values())
    if low == 200 or not picked:
        return str(total)
    parts = ", ".join(f"{s} {c or '-'}: {n}" for (s, c), n in sorted(picked.items()))
    return f"{total} ({parts})"


def report_row(soak: Soak, number: int, seconds: float, now: Sample) -> list[str]:
    """One table row for the interval that just ended (and the counts into the totals)."""
    interval = soak.interval
    latencies = sorted(interval.latencies)
    requests = sum(interval.statuses.values())
    for (status, _code), n in interval.statuses.items():
        soak.totals[f"{status // 100}xx"] += n
    soak.totals["requests"] += requests
    events = Counter(interval.events)
    for (kind, status), n in interval.admin.items():
        events[f"revoke {kind} {status}"] += n
    for name, n in interval.failures.items():
        events[f"failed {name}"] += n
    soak.totals.update({f"event {k}": n for k, n in events.items()})
    return [
        str(number),
        f"{now.minute:.1f}",
        str(requests),
        f"{requests / seconds:.0f}",
        f"{percentile(latencies, 0.50):.1f}",
        f"{percentile(latencies, 0.95):.1f}",
        f"{percentile(latencies, 0.99):.1f}",
        f"{(latencies[-1] * 1000) if latencies else 0:.1f}",
        describe_statuses(interval.statuses, 200, 300),
        describe_statuses(interval.statuses, 400, 500),
        describe_statuses(interval.statuses, 500, 600),
        f"{now.rss_mb:.1f}",
        str(now.fds),
        str(now.tasks),
        ", ".join(f"{k} {n}" for k, n in sorted(events.items())),
    ]


def markdown(rows: Sequence[Sequence[str]]) -> str:
    """A markdown table of COLUMNS and `rows`."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def trend(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (minute, value) points, per minute (0 with fewer than two)."""
    if len(points) < 2 or len({x for x, _ in points}) < 2:
        return 0.0
    return statistics.linear_regression([x for x, _ in points], [y for _, y in points]).slope


def verdict(soak: Soak, duration: float) -> tuple[bool, list[str]]:
    """Whether RSS, fds and tasks plateaued over the second half, and no 5xx; the lines why.

    Over the samples of the second half of the run (taken every --sample-every seconds), the
    least-squares trend times the half's length is the growth the half shows: RSS plateaued
    when that is at most max(4 MiB, 3 % of the half's median RSS); fds at most 5, tasks at most
    10 (both are counts that only a leak moves by more).
    """
    half = [s for s in soak.samples if s.minute >= duration / 2]
    span = duration / 2
    rss_growth = trend([(s.minute, s.rss_mb) for s in half]) * span
    rss_limit = max(
        RSS_TOLERANCE_MB, RSS_TOLERANCE_SHARE * statistics.median(s.rss_mb for s in half)
    )
    fd_growth = trend([(s.minute, s.fds) for s in half]) * span
    task_growth = trend([(s.minute, s.tasks) for s in half]) * span
    first = [s for s in soak.samples if s.minute < duration / 2]
    first_growth = (half[0].rss_mb - first[0].rss_mb) if first else 0.0
    checks = [
        (
            rss_growth <= rss_limit,
            f"RSS trend over the second half ({len(half)} samples, {span:.1f} min): "
            f"{rss_growth:+.1f} MiB (tolerance {rss_limit:.1f} MiB = max({RSS_TOLERANCE_MB:.0f} "
            f"MiB, {RSS_TOLERANCE_SHARE:.0%} of its median RSS)); "
            f"first half {first_growth:+.1f} MiB, "
            f"RSS min/max of the second half {min(s.rss_mb for s in half):.1f}/"
            f"{max(s.rss_mb for s in half):.1f} MiB",
        ),
        (
            fd_growth <= FD_TOLERANCE,
            f"open fds trend over the second half: {fd_growth:+.1f} (tolerance {FD_TOLERANCE}); "
            f"min/max {min(s.fds for s in half)}/{max(s.fds for s in half)}",
        ),
        (
            task_growth <= TASK_TOLERANCE,
            f"event-loop tasks trend over the second half: {task_growth:+.1f} "
            f"(tolerance {TASK_TOLERANCE}); min/max {min(s.tasks for s in half)}/"
            f"{max(s.tasks for s in half)}",
        ),
        (
            not soak.five_xx,
            f"5xx answers other than the outage's: {len(soak.five_xx)} (503 store_unavailable "
            f"with Retry-After while Redis was down, the documented answer: {soak.outage_503})",
        ),
    ]
    lines = [("PASS " if ok else "FAIL ") + text for ok, text in checks]
    lines += [f"  5xx at {line}" for line in soak.five_xx[:10]]
    return all(ok for ok, _ in checks), lines


async def drive(soak: Soak) -> None:
    """Run the load, print a row every `--report-every` minutes, stop after `--duration`."""
    args = soak.args
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=args.connections + 4)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        stop = asyncio.Event()
        soak.started = time.monotonic()
        await sample(soak, session)
        workers = [
            asyncio.create_task(devices_loop(soak, session, stop)),
            asyncio.create_task(churn_loop(soak, stop)),
            asyncio.create_task(admin_loop(soak, session, stop)),
            asyncio.create_task(policy_loop(soak, stop)),
            asyncio.create_task(redis_restart(soak, stop)),
            asyncio.create_task(sample_loop(soak, session, stop)),
        ]
        print(markdown([]), flush=True)
        number, edge = 0, soak.started
        try:
            while edge - soak.started < args.duration * 60 - 1e-6:
                step = min(args.report_every * 60, soak.started + args.duration * 60 - edge)
                await asyncio.sleep(max(0.0, edge + step - time.monotonic()))
                for worker in workers:
                    if worker.done():
                        worker.result()  # a worker that died takes the run down with its error
                now = await sample(soak, session)
                number += 1
                row = report_row(soak, number, time.monotonic() - edge, now)
                soak.interval = Interval()
                edge = time.monotonic()
                soak.rows.append(row)
                print("| " + " | ".join(row) + " |", flush=True)
        finally:
            stop.set()
            await asyncio.gather(*workers, return_exceptions=True)


def warm_up(soak: Soak) -> None:
    """Every device asks once before the measured run: the soak is about steady state."""
    started = time.monotonic()
    devices = soak.devices
    posted = h.post_all(
        soak.gateway.url, [d.jwt for d in devices], bodies=[d.body.decode() for d in devices]
    )
    if set(posted.statuses) != {200}:
        raise RuntimeError(f"warm-up answers {dict(posted.statuses)}: {posted.first_failure}")
    log(f"warm-up: {len(devices)} devices asked once in {time.monotonic() - started:.1f} s")


def redis_argv(port: int, data: Path) -> list[str]:
    """redis-server on `port` with an append-only file in `data` (so a restart on the same
    directory comes back with the tokens, blocks and revocation stream)."""
    return [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data),
        "--save",
        "",
        "--appendonly",
        "yes",
    ]


def parse_args() -> argparse.Namespace:
    """The command line; durations in (fractional) minutes, periods in seconds."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, required=True, help="minutes to run")
    parser.add_argument("--report-every", type=float, default=5.0, help="minutes per row")
    parser.add_argument("--rate", type=float, default=200.0, help="device requests/s")
    parser.add_argument("--connections", type=int, default=32, help="device requests at once")
    parser.add_argument("--devices", type=int, default=2000, help="devices at any time")
    parser.add_argument("--churn", type=int, default=1, help="new subjects per second")
    parser.add_argument("--renewals", type=int, default=2, help="JWT renewals per second")
    parser.add_argument(
        "--jwt-lifetime", type=float, default=10.0, help="minutes a device JWT is valid"
    )
    parser.add_argument(
        "--client-id-share", type=float, default=0.3, help="share of devices sending a clientId"
    )
    parser.add_argument("--revoke-every", type=float, default=2.0, help="seconds per revocation")
    parser.add_argument("--reload-every", type=float, default=5.0, help="seconds per policy swap")
    parser.add_argument(
        "--redis-restart-at", type=float, help="minute of the Redis restart (default: half-way)"
    )
    parser.add_argument(
        "--sample-every", type=float, help="seconds between resource samples (default: 10)"
    )
    parser.add_argument(
        "--allocator",
        choices=("jemalloc", "glibc"),
        default="jemalloc",
        help="the gateway's malloc: jemalloc, preloaded as the image does (default), or glibc's",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when the verdict is not a plateau"
    )
    args = parser.parse_args()
    if args.duration <= 0 or args.report_every <= 0:
        parser.error("--duration and --report-every must be positive")
    if args.redis_restart_at is None:
        args.redis_restart_at = args.duration / 2
    if args.sample_every is None:
        args.sample_every = min(10.0, args.duration * 60 / 20)
    return args


def main() -> int:
    """Start the servers, soak, print the table and the verdict; 1 on any 5xx (or --strict)."""
    args = parse_args()
    # Killed (nohup runs, timeouts): unwind through the fleet, which stops every server.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    if shutil.which("redis-server") is None:
        print("redis-server is not installed: apt-get install -y redis-server", file=sys.stderr)
        return 2
    # The image preloads jemalloc (Dockerfile): soak what ships. "" undoes a preload of ours.
    preload = ""
    if args.allocator == "jemalloc":
        found = sorted(Path("/usr/lib").glob("*-linux-gnu/libjemalloc.so.2"))
        if not found:
            print("jemalloc is not installed: apt-get install -y libjemalloc2", file=sys.stderr)
            return 2
        preload = str(found[0])
    if h.two_cores():
        os.sched_setaffinity(0, {h.LOAD_CORE})
    workdir = Path(tempfile.mkdtemp(prefix="authserver-soak-"))
    log(f"logs in {workdir}")
    policy_file = workdir / "policy.yaml"
    shutil.copyfile(POLICIES[0], policy_file)
    api_key = secrets.token_urlsafe(32)
    keys_file = workdir / "admin-keys"
    keys_file.write_text(hashlib.sha256(api_key.encode()).hexdigest() + "\n")
    with h.fleet(workdir) as fleet:
        redis_dir = workdir / "redis"
        redis_dir.mkdir()
        port = h.free_port()
        redis = fleet.start(
            "redis", redis_argv(port, redis_dir), port, core=h.LOAD_CORE, ready=None
        )
        h.wait_redis(redis)
        emulator = start_emulator(fleet, "emulator", QUOTA)
        gateway = start_gateway(
            fleet,
            "gateway",
            emulator,
            quota=QUOTA,
            account_quota=QUOTA,
            redis_url=f"redis://127.0.0.1:{redis.port}/0",
            extra_env={
                "AUTHSERVER_POLICY_FILE": str(policy_file),
                "AUTHSERVER_ADMIN_API_KEYS_FILE": str(keys_file),
                "LD_PRELOAD": preload,
            },
        )
        running = allocator(gateway)
        if running != args.allocator:
            print(f"the gateway runs on {running}, not {args.allocator}", file=sys.stderr)
            return 2
        soak = Soak(args, gateway, redis, redis_dir, fleet, policy_file, api_key)
        soak.devices = [soak.new_device() for _ in range(args.devices)]
        warm_up(soak)
        log(
            f"soak for {args.duration:g} min: {args.rate:g} req/s over {args.devices} devices, "
            f"gateway pid {gateway.pid}, malloc {running}"
        )
        asyncio.run(drive(soak))
        stats = h.emulator_stats(emulator)
        reloads = policy_reloads(gateway)
    ok, lines = verdict(soak, args.duration)
    print()
    print_summary(soak, stats, reloads)
    print("\nVerdict:")
    for line in lines:
        print(line)
    plateau = all(line.startswith("PASS") for line in lines[:3])
    print("RSS plateaued" if plateau else "RSS, fds or tasks did NOT plateau")
    if soak.five_xx:
        return 1
    return 1 if args.strict and not ok else 0


def allocator(gateway: h.Server) -> str:
    """The gateway's malloc, as its `authserver_build_info` reports it."""
    with urllib.request.urlopen(gateway.url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = re.search(r'^authserver_build_info\{[^}]*allocator="([^"]*)"', text, re.MULTILINE)
    return found.group(1) if found else "unknown"


def policy_reloads(gateway: h.Server) -> str:
    """The gateway's policy reload counters, from /metrics."""
    with urllib.request.urlopen(gateway.url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = [
        line
        for line in text.splitlines()
        if line.startswith(("authserver_policy_reloads_total", "authserver_policy_reload_failures"))
    ]
    return ", ".join(found)


def print_summary(soak: Soak, stats: dict[str, object], reloads: str) -> None:
    """Totals over the run: requests by status class, events, upstream calls, reloads."""
    totals = soak.totals
    print(
        f"Totals: {totals['requests']} device requests, {totals['2xx']} 2xx, {totals['4xx']} 4xx, "
        f"{totals['5xx']} 5xx"
    )
    events = {k.removeprefix("event "): n for k, n in totals.items() if k.startswith("event ")}
    print("Events: " + ", ".join(f"{k} {n}" for k, n in sorted(events.items())))
    print(f"Upstream calls (emulator): {stats.get('calls')}")
    print(f"Gateway: {reloads}")
    if soak.redis_outage is not None:
        down, up = soak.redis_outage
        print(f"Redis down from {down:.2f} to {up:.2f} min ({(up - down) * 60:.1f} s)")


if __name__ == "__main__":
    raise SystemExit(main())
