"""Prometheus metrics: one registry per application, component stats read at scrape time.

Requests are counted on the hot path in plain dicts (a hash, an increment and a bisect) and
rendered as Prometheus families at scrape time. Everything else (cache layers, upstream calls,
quota, circuit, revocation queue, policy) is read from the components' own `stats()` when
Prometheus scrapes, by a custom collector, so the components never import this module.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import platform
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from authserver import __version__

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
PREFIX = "authserver"
# From a cache hit (well under a millisecond) to an upstream call at its deadline (seconds).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BOUNDS = (*(repr(float(b)) for b in LATENCY_BUCKETS), "+Inf")
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}

Stats = Mapping[str, Any]
StatsSource = Callable[[], Stats | None]


class RequestMetrics(Collector):
    """HTTP requests by route, method and status, and their latency by route.

    Counted in plain dicts and lists (the event loop is the only writer) and turned into
    Prometheus families at scrape time: prometheus-client's own Counter and Histogram take a
    lock per increment, which costs more than the rest of this per request.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, int], int] = {}
        # Per route: one count per bucket (the last one is +Inf), then the sum of seconds.
        self._latency: dict[str, list[float]] = {}
        # Requests aiohttp's parser refused with 400 before any handler, by reason.
        self._malformed: dict[str, int] = {}

    def malformed(self, reason: str) -> None:
        """Count one request refused by the HTTP parser (it never reached a route)."""
        self._malformed[reason] = self._malformed.get(reason, 0) + 1

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        key = (route, method, status)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        latency = self._latency.get(route)
        if latency is None:
            latency = self._latency[route] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        latency[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency[-1] += seconds

    def collect(self) -> Iterable[Metric]:
        """The request counter and the latency histogram."""
        requests = _counter(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            ("route", "method", "status"),
        )
        for (route, method, status), count in sorted(self._counts.items()):
            requests.add_metric([route, method, str(status)], count)
        yield requests
        histogram = HistogramMetricFamily(
            f"{PREFIX}_http_request_duration_seconds",
            "Time from the request reaching the app to the response being ready, by route",
            labels=["route"],
        )
        for route, latency in sorted(self._latency.items()):
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, in_bucket in zip(_BOUNDS, latency, strict=False):
                cumulative += in_bucket
                buckets.append((bound, cumulative))
            histogram.add_metric([route], buckets, latency[-1])
        yield histogram
        malformed = _counter(
            "http_malformed_requests",
            "Requests the HTTP parser answered 400 before any route, by reason",
            ("reason",),
        )
        for reason, count in sorted(self._malformed.items()):
            malformed.add_metric([reason], count)
        yield malformed


@dataclass
class Sources:
    """Where the component collector reads from; each source may return None (absent)."""

    tokens: StatsSource = lambda: None
    cloud: StatsSource = lambda: None
    quota: StatsSource = lambda: None
    revocation: StatsSource = lambda: None
    policy: StatsSource = lambda: None
    limits: StatsSource = lambda: None


def _counter(name: str, doc: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))


def _read(source: StatsSource, name: str) -> Stats | None:
    try:
        return source()
    except Exception:
        # A broken stats source must not take the whole scrape down with it.
        log.exception("metrics: reading %s stats failed", name)
        return None


class ComponentCollector(Collector):
    """Reads every component's counters when Prometheus scrapes."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterable[Metric]:
        """Yield the metric families of every component that is present."""
        src = self.sources
        tokens = _read(src.tokens, "tokens")
        if tokens is not None:
            yield from _token_metrics(tokens)
        cloud = _read(src.cloud, "cloud")
        if cloud is not None:
            yield from _cloud_metrics(cloud)
        limits = _read(src.limits, "limits")
        if limits is not None:
            yield from _limit_metrics(limits)
        quota = _read(src.quota, "quota")
        if quota is not None:
            yield from _quota_metrics(quota)
        revocation = _read(src.revocation, "revocation")
        if revocation is not None:
            yield from _revocation_metrics(revocation)
        policy = _read(src.policy, "policy")
        if policy is not None:
            yield from _policy_metrics(policy)


def _token_metrics(stats: Stats) -> Iterable[Metric]:
    """`{"layers": {layer: {"hits": n, "misses": n}}, "minted": n}` from the token service."""
    cache = _counter("cache_lookups", "Token cache lookups by layer, result", ("layer", "result"))
    for layer, counts in sorted(stats.get("layers", {}).items()):
        cache.add_metric([layer, "hit"], counts.get("hits", 0))
        cache.add_metric([layer, "miss"], counts.get("misses", 0))
    yield cache
    if "minted" in stats:
        minted = _counter("tokens_minted", "Tokens minted by ApplyToken in this process")
        minted.add_metric([], stats["minted"])
        yield minted
    if "answer_bytes" in stats:
        held = _gauge(
            "answer_cache_bytes", "Estimated bytes the answer and repeat caches hold together"
        )
        held.add_metric([], stats["answer_bytes"])
        yield held


def _limit_metrics(stats: Stats) -> Iterable[Metric]:
    """RateLimiter counters: requests refused by each limit (mint, subject, ip)."""
    refused = _counter("rate_limited", "POST /v1/token answered 429, by the limit", ["limit"])
    for limit, count in sorted(stats.get("refused", {}).items()):
        refused.add_metric([limit], count)
    yield refused


def _cloud_metrics(stats: Stats) -> Iterable[Metric]:
    """CloudClient.stats(): results by action and code, attempts, circuit state."""
    calls = _counter(
        "upstream_calls",
        "Upstream calls by action and result code (ok or vendor code)",
        ["action", "code"],
    )
    for action, codes in sorted(stats.get("results", {}).items()):
        for code, count in sorted(codes.items()):
            calls.add_metric([action, code], count)
    yield calls
    attempts = _counter(
        "upstream_attempts", "Upstream HTTP attempts (retries included)", ["action"]
    )
    for action, count in sorted(stats.get("attempts", {}).items()):
        attempts.add_metric([action], count)
    yield attempts
    state = stats.get("circuit")
    if state is not None:
        circuit = _gauge("circuit_state", "Upstream circuit: 0 closed, 1 half-open, 2 open")
        circuit.add_metric([], CIRCUIT_STATES.get(str(state), 2))
        yield circuit


def _quota_metrics(stats: Stats) -> Iterable[Metric]:
    """QuotaGovernor.stats(): grants, waits, wait time, refusals per action; mode."""
    for key, name, doc in (
        ("acquired", "quota_acquired", "Upstream quota slots granted, by action"),
        ("waits", "quota_waits", "Calls that waited for a quota slot, by action"),
        ("wait_seconds", "quota_wait_seconds", "Seconds spent waiting for quota, by action"),
        ("refused", "quota_refused", "Calls refused (no slot before the deadline), by action"),
    ):
        family = _counter(name, doc, ["action"])
        for action, value in sorted(stats.get(key, {}).items()):
            family.add_metric([action], value)
        yield family
    errors = _counter("quota_redis_errors", "Redis failures of the shared quota governor")
    errors.add_metric([], stats.get("redis_errors", 0))
    yield errors
    mode = _gauge("quota_mode", "Quota governor mode in use (1 for the current one)", ["mode"])
    for name in ("local", "redis", "local-fallback"):
        mode.add_metric([name], 1 if stats.get("mode") == name else 0)
    yield mode


def _revocation_metrics(stats: Stats) -> Iterable[Metric]:
    """Revoker.status() plus worker counters: queue depth, oldest entry age, done, failures."""
    depth = _gauge("revocation_queue_depth", "Revocations waiting for RevokeToken")
    depth.add_metric([], stats.get("depth", 0))
    yield depth
    delayed = _gauge(
        "revocation_queue_delayed", "Revocations held back by a grace margin, not yet due"
    )
    delayed.add_metric([], stats.get("delayed", 0))
    yield delayed
    age = _gauge("revocation_queue_oldest_age_seconds", "Age of the oldest waiting revocation")
    age.add_metric([], stats.get("oldestPendingAgeSeconds") or 0.0)
    yield age
    for key, doc in (
        ("done", "RevokeToken calls that completed a queued revocation"),
        ("failures", "RevokeToken attempts that failed (retried or given up)"),
    ):
        if key in stats:
            family = _counter(f"revocations_{key}", doc)
            family.add_metric([], stats[key])
            yield family


def _policy_metrics(stats: Stats) -> Iterable[Metric]:
    """The policy in force and how the last reload went."""
    info = _gauge("policy_info", "The policy version in force (value 1)", ["version"])
    info.add_metric([str(stats.get("version", ""))], 1)
    yield info
    ok = _gauge(
        "policy_last_reload_success", "1 when the last reload attempt succeeded (or none yet)"
    )
    ok.add_metric([], 1 if stats.get("last_ok", True) else 0)
    yield ok
    for key, name, doc in (
        ("reloads", "policy_reloads", "Policy reloads that changed the policy in force"),
        ("failures", "policy_reload_failures", "Policy reloads refused (invalid file)"),
        ("narrowed", "policy_narrowing_revocations", "Cached tokens revoked after a narrowing"),
    ):
        family = _counter(name, doc)
        family.add_metric([], stats.get(key, 0))
        yield family
    when = stats.get("last_reload_time")
    if when is not None:
        stamp = _gauge("policy_last_reload_timestamp_seconds", "When the policy last changed")
        stamp.add_metric([], when)
        yield stamp


def allocator() -> str:
    """The C allocator behind this process's malloc: `jemalloc` when it is loaded, else the libc.

    The image preloads jemalloc (Dockerfile, `LD_PRELOAD`): under glibc's malloc the gateway's
    resident memory kept growing under steady traffic while its Python heap stayed flat (the
    soak, bench/results.md), which jemalloc does not. jemalloc exports `mallctl`; glibc's
    malloc has no such symbol, so its presence in the process's namespace tells them apart.
    """
    try:
        process = ctypes.CDLL(None)
    except (OSError, TypeError):  # no process namespace to ask (Windows takes no None)
        return "unknown"
    if hasattr(process, "mallctl"):
        return "jemalloc"
    return platform.libc_ver()[0] or "libc"


class BuildInfo(Collector):
    """`authserver_build_info`: which release, Python and allocator each pod runs."""

    def __init__(self) -> None:
        # Fixed for the life of the process: asked once, not at every scrape.
        self._labels = [__version__, platform.python_version(), allocator()]

    def collect(self) -> Iterable[Metric]:
        """One sample of value 1 whose labels say what is running."""
        info = _gauge(
            "build_info",
            "The running authserver: its version, Python version and malloc (value 1)",
            ("version", "python_version", "allocator"),
        )
        info.add_metric(self._labels, 1)
        yield info


class EventLoopTasks(Collector):
    """`authserver_event_loop_tasks`: tasks alive on the gateway's event loop at scrape time.

    A count that climbs under steady traffic is a leak of requests or background work that
    never finish (the soak benchmark, bench/soak.py, watches it).
    """

    def collect(self) -> Iterable[Metric]:
        """One gauge sample, when scraped from inside the running loop (as /metrics is)."""
        try:
            tasks = asyncio.all_tasks()
        except RuntimeError:  # no running loop: nothing to count
            return
        gauge = _gauge("event_loop_tasks", "Asyncio tasks not yet done on the event loop")
        gauge.add_metric([], len(tasks))
        yield gauge


class Metrics:
    """The metrics of one application: its own registry, never the process-global one."""

    def __init__(self, sources: Sources | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BuildInfo())
        self.registry.register(EventLoopTasks())
        self.requests = RequestMetrics()
        self.registry.register(self.requests)
        self.components = ComponentCollector(sources or Sources())
        self.registry.register(self.components)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
