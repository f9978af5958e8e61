"""A real Prometheus (Debian's) scrapes a real gateway, runs the rules, answers the dashboard.

Prometheus scrapes every second and evaluates the rules every second, so the 5-minute rates
have two samples seconds after the traffic. Each dashboard query is sent to its HTTP API with
Grafana's variables filled in: it must parse, and it must return data unless it shows
something a healthy gateway does not do (listed below with the reason).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from authserver.cloud.quota import DEFAULT_LIMITS
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway
from tests.fixtures.redis import free_port
from tests.monitoring.helpers import (
    dashboard_queries,
    debian_tool,
    drive,
    for_prometheus,
    names_in,
    recorded_names,
    rules,
    write_rule_file,
)

# Dashboard panels that are empty on a healthy gateway, and why.
EMPTY_WHEN_HEALTHY = {
    "Quota refusals": "no call is refused for quota: the family has no series until one is",
}
WITHIN = 30.0  # seconds to wait for a condition Prometheus has to reach


@dataclass
class Prometheus:
    """A running Prometheus and its HTTP API."""

    url: str
    session: aiohttp.ClientSession
    log: Path

    async def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/PATH; the `data` of a successful answer."""
        async with self.session.get(f"{self.url}/api/v1/{path}", params=params) as resp:
            body = await resp.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        data = await self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result


async def until(check: Callable[[], Awaitable[bool]], what: str, log: Path) -> None:
    """Poll `check` until it holds; fail naming `what` (with Prometheus' log) if it never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WITHIN
    while not await check():
        if loop.time() > deadline:
            tail = log.read_text()[-4000:]  # noqa: ASYNC240 (a small file, once, when failing)
            raise AssertionError(f"{what}: not reached in {WITHIN} s\n{tail}")
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def prometheus(workdir: Path, target: str) -> AsyncIterator[Prometheus]:
    """Debian's prometheus on a free port, scraping `target`, with deploy/monitoring's rules."""
    write_rule_file(workdir)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yaml"],
        "scrape_configs": [{"job_name": "authserver", "static_configs": [{"targets": [target]}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            debian_tool("prometheus"),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            cwd=workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )
    try:
        async with aiohttp.ClientSession() as session:
            handle = Prometheus(f"http://127.0.0.1:{port}", session, log)

            async def ready() -> bool:
                assert process.returncode is None, log.read_text()
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(handle.url + "/-/ready") as resp:
                        return resp.status == 200
                return False

            await until(ready, "prometheus ready", log)
            yield handle
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()


async def test_prometheus_scrapes_evaluates_and_answers_the_dashboard(
    emulator: EmulatorHandle, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    # A low ApplyToken limit, so two subjects' concurrent calls queue for quota.
    client = await make_gateway(emulator, quota={**DEFAULT_LIMITS, "ApplyToken": 4.0})
    # Traffic before the first scrape creates the series; Prometheus computes rates from
    # what changes between its own samples, so the traffic that counts comes after it.
    await drive(client, ("alice", "bob"))
    async with prometheus(tmp_path, f"127.0.0.1:{client.server.port}") as prom:

        async def scraped() -> bool:
            return bool(await prom.query('up{job="authserver"} == 1'))

        await until(scraped, "the gateway scraped", prom.log)
        await drive(client, ("carol", "dave"))
        await rules_evaluate_on_real_series(prom)
        await rules_and_dashboard_read_scraped_metrics(prom)
        await dashboard_queries_answer(prom)


async def rules_evaluate_on_real_series(prom: Prometheus) -> None:
    """Every rule is healthy, every recording rule has a series, an alert reads real data."""
    expected = recorded_names()

    missing = sorted(expected)

    async def recorded() -> bool:
        missing[:] = [name for name in expected if not await prom.query(name)]
        return not missing

    with contextlib.suppress(AssertionError):
        await until(recorded, "every recording rule has a series", prom.log)
    assert missing == [], prom.log.read_text()[-4000:]
    groups = (await prom.api("rules"))["groups"]
    assert {g["name"] for g in groups} == {"authserver.rules", "authserver.alerts"}
    for group in groups:
        for rule in group["rules"]:
            assert rule["health"] == "ok", rule

    # Quota waits made some /v1/token answers slower than 250 ms: the latency alert reads
    # the real histogram and is pending (it would fire after 10 minutes).
    async def latency_pending() -> bool:
        alerts = (await prom.api("alerts"))["alerts"]
        return any(a["labels"]["alertname"] == "AuthserverTokenLatencyHigh" for a in alerts)

    await until(latency_pending, "AuthserverTokenLatencyHigh pending", prom.log)


async def rules_and_dashboard_read_scraped_metrics(prom: Prometheus) -> None:
    """Prometheus knows each name from the target's metadata, samples or not."""
    metadata = await prom.api("metadata")
    known = set(metadata)
    known |= {f"{name}{s}" for name in metadata for s in ("_bucket", "_count", "_sum")}
    exprs = [rule["expr"] for rule in rules()] + [expr for _title, expr in dashboard_queries()]
    raw = set().union(*(names_in(e) for e in exprs)) - recorded_names()
    assert raw
    assert raw - known == set()


async def dashboard_queries_answer(prom: Prometheus) -> None:
    """Each query parses and runs; all but the EMPTY_WHEN_HEALTHY ones return data."""
    queries = [(title, for_prometheus(expr)) for title, expr in dashboard_queries()]
    assert set(EMPTY_WHEN_HEALTHY) <= {title for title, _ in queries}
    expected = [(t, e) for t, e in queries if t not in EMPTY_WHEN_HEALTHY]

    async def answered() -> bool:
        return all([await prom.query(expr) for _title, expr in expected])

    with contextlib.suppress(AssertionError):
        await until(answered, "every dashboard query has data", prom.log)
    empty = [(title, expr) for title, expr in expected if not await prom.query(expr)]
    assert empty == []
    for _title, expr in queries:  # the ones allowed to be empty still parse and run
        await prom.query(expr)
