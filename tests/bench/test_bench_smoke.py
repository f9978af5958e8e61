"""The benchmark's pieces work: baseline app, JWT files the gateway accepts, wrk + rotate.lua.

Nothing here is timed; the benchmark itself is `python bench/run.py`.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient

from authserver import appkeys
from authserver.identity import JWTSettings
from authserver.settings import load_settings
from bench import harness
from bench.baseline_app import answer_body, create_baseline_app
from bench.jwts import (
    AUDIENCE,
    ISSUER,
    SECRET,
    client_id_bodies,
    make_jwts,
    read_jwt_file,
    subjects,
    write_jwt_file,
)
from bench.pyspy_summary import summarize
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway

BENCH_JWT = JWTSettings(algorithms=("HS256",), secret=SECRET, issuer=ISSUER, audience=AUDIENCE)


@pytest.fixture
def wrk() -> str:
    """wrk's path; the test fails (never skips) when it is missing: scripts/test installs it."""
    path = harness.wrk_path()
    assert path is not None, "wrk is not installed (scripts/test installs Debian's wrk)"
    return path


def server_url(client: TestClient[Any, Any]) -> str:
    """The base URL of a test client's server."""
    return str(client.make_url("")).rstrip("/")


async def test_baseline_answers_a_token_shaped_body(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_baseline_app())
    resp = await client.post("/v1/token", headers={"Authorization": "Bearer x"})
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"instanceId", "username", "password", "tokens", "expireTime", "refreshAt"}
    assert body == answer_body()


def test_jwt_file_round_trip_and_fresh_tags(tmp_path: Path) -> None:
    names = subjects("bench", 3)
    first = make_jwts(names, tag="a")
    again = make_jwts(names, tag="b")
    assert not set(first) & set(again)  # a new tag means JWTs never seen
    path = write_jwt_file(tmp_path / "jwts.txt", first)
    assert read_jwt_file(path) == first
    claims = jwt.decode(first[1], SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    assert claims["sub"] == "bench-000001"


def test_gateway_env_is_a_valid_configuration() -> None:
    env = harness.gateway_env(
        8080, "http://127.0.0.1:1", quota_apply_token=100, quota_account=300, redis_url=None
    )
    settings = load_settings(env)
    assert settings.jwt.secret == SECRET
    assert settings.quota["ApplyToken"] == 100
    assert settings.log_level == "WARNING"


async def test_gateway_accepts_the_generated_jwts(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator, jwt=BENCH_JWT, policy_file=harness.POLICY)
    for token in make_jwts(subjects("smoke", 3), tag="t"):
        resp = await client.post("/v1/token", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200, await resp.text()
        assert {t["type"] for t in (await resp.json())["tokens"]} == {"R", "W"}


@pytest.mark.usefixtures("wrk")
async def test_wrk_script_rotates_and_reports(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(create_baseline_app())
    jwt_file = write_jwt_file(tmp_path / "jwts.txt", make_jwts(subjects("w", 3), tag="w"))
    result = await asyncio.to_thread(
        harness.run_wrk, server_url(client), jwt_file, duration=1, connections=2
    )
    assert result["statuses"].get("200", 0) == result["requests"] > 3
    assert result["wrapped"] == 1  # three JWTs for many requests
    assert result["non_2xx"] == result["socket_errors"] == 0
    assert 0 < result["latency_us"]["p50"] <= result["latency_us"]["p99"]


@pytest.mark.usefixtures("wrk")
async def test_wrk_script_sends_the_bodies_of_the_jwt_file(
    emulator: EmulatorHandle, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    client = await make_gateway(emulator, jwt=BENCH_JWT, policy_file=harness.POLICY)
    names = subjects("b", 2)
    tokens = make_jwts(names, tag="b")
    jwt_file = write_jwt_file(tmp_path / "bodies.txt", tokens, client_id_bodies(names))
    assert read_jwt_file(jwt_file) == tokens
    result = await asyncio.to_thread(
        harness.run_wrk, server_url(client), jwt_file, duration=1, connections=1
    )
    assert result["statuses"].get("200", 0) == result["requests"] > 2
    records = await client.server.app[appkeys.TOKENS].subject_tokens("b-000000")
    assert {r.client_id for r in records} == {"GID_bench@@@b-000000"}


@pytest.mark.usefixtures("wrk")
async def test_wrk_cold_mode_counts_subjects_and_tokens(
    emulator: EmulatorHandle, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    client = await make_gateway(emulator, jwt=BENCH_JWT, policy_file=harness.POLICY)
    jwt_file = write_jwt_file(tmp_path / "cold.txt", make_jwts(subjects("c", 5), tag="c"))
    result = await asyncio.to_thread(
        harness.run_wrk, server_url(client), jwt_file, duration=1, connections=1, cold=True
    )
    assert result["statuses"].get("200", 0) >= 1
    assert 1 <= result["served_subjects"] <= 5
    assert result["tokens_min"] == result["tokens_max"] == 2  # R and W for this policy


def test_pyspy_summary_counts_self_and_total() -> None:
    raw = "\n".join(
        [
            "process 1:main;run (a.py:1);handle (b.py:2);dumps (json/__init__.py:3) 6",
            "process 1:main;run (a.py:1);handle (b.py:9) 4",
            "Thread._bootstrap (threading.py:1002);_worker (concurrent/futures/thread.py:81) 5",
        ]
    )
    total, own, inclusive = summarize(raw)
    assert total == 10
    assert own["dumps (json/__init__.py)"] == 6
    assert own["handle (b.py)"] == 4  # line numbers folded into one frame
    assert inclusive["run (a.py)"] == 10
    assert "_worker (concurrent/futures/thread.py)" not in own  # only the event loop thread


def test_ratios_pair_each_run_with_the_baseline_run_just_before_it() -> None:
    from bench.run import Workload

    work = Workload("W1")
    work.runs = [{"rps": 70.0}, {"rps": 90.0}, {"rps": 40.0}]
    work.paired = [{"rps": 100.0}, {"rps": 100.0}, {"rps": 50.0}]
    assert work.ratio() == 0.8  # 0.7, 0.9, 0.8: a slow baseline run pairs with a slow W1 run
    work.paired = work.paired[:2]
    assert work.ratio() is None  # unpaired runs give no ratio


def test_the_table_judges_w1b_and_the_uvloop_rows_by_the_issue_targets() -> None:
    from bench.run import Cold, Memory, Warm, Workload, table

    def work(name: str, rps: float, p99_us: int, base_rps: float, base_p99_us: int) -> Workload:
        def run(rps: float, p99: int) -> dict[str, Any]:
            return {
                "rps": rps,
                "latency_us": {"p50": p99 // 2, "p99": p99},
                "statuses": {"200": 100},
                "socket_errors": 0,
                "cpu_us": 1e6 / rps,
            }

        done = Workload(name, runs=[run(rps, p99_us)])
        done.paired = [run(base_rps, base_p99_us)]
        return done

    def warm(suffix: str, w1b_p99_us: int) -> Warm:
        return Warm(
            work(f"W1 warm{suffix}", 92, 1000, 100, 1000),
            work(f"W1b clientId body{suffix}", 86, w1b_p99_us, 100, 1000),
            work(f"W2 new JWTs{suffix}", 50, 3000, 100, 1000),
            "",
            100.0,
        )

    base = Workload("baseline", runs=warm("", 1000).w1.paired)
    cold = Cold(Workload("W3 cold"))
    memory = Memory(50.0, 250.0, 100_000, 50_000, 30.0)
    uv_base = Workload("baseline (uvloop)", runs=warm("", 1000).w1.paired)
    text = table(
        base,
        warm("", 1400),
        Workload("W1 + Redis"),
        cold,
        memory,
        (uv_base, warm(" (uvloop)", 1600)),
    )
    verdicts = {
        line.split(" | ")[0].strip("| "): line.rsplit(" | ", 2)[1:]
        for line in text.splitlines()
        if line.startswith("| W")
    }
    assert verdicts["W1 warm"] == [">= 90% and p99 <= 1.50 ms", "PASS |"]
    assert verdicts["W1b clientId body"] == [">= 85% and p99 <= 1.50 ms", "PASS |"]
    assert verdicts["W2 new JWTs"] == [">= 55%", "MISS |"]
    assert verdicts["W1b clientId body (uvloop)"][1] == "MISS |"  # p99 1.6 ms > 1.5 x 1 ms
    assert "**uvloop**" in text
    assert "W1 +0% req/s, CPU a request +0%" in text


async def test_sharing_bench_counts_the_mints_of_each_mode() -> None:
    from bench.sharing import fleet, one_mode

    devices = fleet(40, 4)  # 10 devices in each of 4 tenants, an R and a W token each
    calls, distinct, _seconds = await one_mode("off", devices)
    assert (calls, distinct) == (80, 80)
    calls, distinct, _seconds = await one_mode("identical-grants", devices)
    assert (calls, distinct) == (8, 8)


def test_soak_prints_its_table_and_verdict() -> None:
    """bench/soak.py for 9 s: a row per 3 s with every column, the Redis restart, a verdict."""
    from bench.soak import COLUMNS

    done = subprocess.run(
        [
            sys.executable,
            str(harness.ROOT / "bench" / "soak.py"),
            "--duration",
            "0.15",
            "--report-every",
            "0.05",
            "--devices",
            "200",
            "--rate",
            "100",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "| " + " | ".join(COLUMNS) + " |"
    rows = [line for line in lines[2:] if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows] == ["| 1", "| 2", "| 3"]
    for row in rows:
        cells = row.strip("| ").split(" | ")
        assert len(cells) == len(COLUMNS)
        requests, rss, fds, tasks = int(cells[2]), float(cells[11]), int(cells[12]), int(cells[13])
        assert requests > 0
        assert rss > 0
        assert fds > 0
        assert tasks > 0
        assert cells[10].split()[0] == "0" or "503 store_unavailable" in cells[10]
    assert "redis restart 1" in done.stdout
    assert "redis-server answers again" in done.stderr
    # What the image runs: jemalloc preloaded, as the gateway's build_info confirmed.
    assert re.search(r"gateway pid \d+, malloc jemalloc$", done.stderr, re.MULTILINE)
    reloads = re.search(r"authserver_policy_reloads_total (\d+)", done.stdout)
    assert reloads is not None
    assert int(reloads.group(1)) >= 1
    verdict = lines[lines.index("Verdict:") + 1 :]
    # 9 s say nothing of a plateau: only that each check is made; but never an unexplained 5xx.
    assert [line.split(" ", 2)[1] for line in verdict[:3]] == ["RSS", "open", "event-loop"]
    assert all(line.split()[0] in {"PASS", "FAIL"} for line in verdict[:3])
    assert verdict[3].startswith("PASS 5xx answers other than the outage's: 0")
    assert verdict[-1] in {"RSS plateaued", "RSS, fds or tasks did NOT plateau"}
