"""Processes and load for the benchmark: servers pinned to cores, wrk runs, a warm-up client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.jwts import AUDIENCE, ISSUER, SECRET

ROOT = Path(__file__).resolve().parent.parent
ROTATE_LUA = ROOT / "bench" / "rotate.lua"
POLICY = ROOT / "bench" / "policy.yaml"
INSTANCE_ID = "post-cn-bench"
ACCESS_KEY_ID = "LTAIbench"
ACCESS_KEY_SECRET = "bench-access-key-secret"
SERVER_CORE = 0
LOAD_CORE = 1
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# Read once at import: run.py later pins itself to the load core, and must still pin others.
_USABLE_CORES = frozenset(os.sched_getaffinity(0))


def two_cores() -> bool:
    """Whether cores 0 and 1 are both usable, so server and load can be pinned apart."""
    return {SERVER_CORE, LOAD_CORE} <= _USABLE_CORES


def pinned(core: int, argv: Sequence[str]) -> list[str]:
    """`argv` run on one core through taskset (unpinned when there are not two cores)."""
    if not two_cores() or shutil.which("taskset") is None:
        return list(argv)
    return ["taskset", "-c", str(core), *argv]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """A server subprocess: what it is, where it listens, where its output goes."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """Its process id (taskset execs, so this is the server itself)."""
        return self.proc.pid

    def rss_mb(self) -> float:
        """Resident set size in MiB, from /proc/PID/status VmRSS."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for {self.name} (pid {self.pid})")

    def cpu_seconds(self) -> float:
        """User plus system CPU time it has used so far, from /proc/PID/stat."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def stop(self) -> None:
        """Interrupt it (graceful shutdown), then kill it if it lingers."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def check_alive(self) -> None:
        """Raise with the tail of its log when it has exited."""
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")


@dataclass
class Fleet:
    """Every server the benchmark started, stopped together at the end."""

    workdir: Path
    servers: list[Server] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        *,
        core: int,
        env: dict[str, str] | None = None,
        ready: str | None = "/healthz",
    ) -> Server:
        """Start `argv` pinned to `core` and wait until GET `ready` answers (if given)."""
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                pinned(core, argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=ROOT,
            )
        server = Server(name, proc, port, log)
        self.servers.append(server)
        if ready is not None:
            wait_http(server, ready)
        return server

    def stop(self, server: Server) -> None:
        """Stop one server now."""
        server.stop()
        if server in self.servers:
            self.servers.remove(server)

    def stop_all(self) -> None:
        """Stop every server still running, newest first."""
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()


@contextlib.contextmanager
def fleet(workdir: Path) -> Iterator[Fleet]:
    """A Fleet whose servers are stopped however the block ends."""
    group = Fleet(workdir)
    try:
        yield group
    finally:
        group.stop_all()


def wait_http(server: Server, path: str, timeout: float = 30.0) -> None:
    """Poll GET `path` until it answers 200, the process dies, or `timeout` passes."""
    give_up = time.monotonic() + timeout
    while True:
        server.check_alive()
        try:
            with urllib.request.urlopen(server.url + path, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > give_up:
            raise RuntimeError(f"{server.name} did not answer {path} within {timeout:.0f} s")
        time.sleep(0.1)


def wait_redis(server: Server, timeout: float = 10.0) -> None:
    """Wait until redis-server answers PING."""
    give_up = time.monotonic() + timeout
    while True:
        server.check_alive()
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        if time.monotonic() > give_up:
            raise RuntimeError("redis-server did not answer PING")
        time.sleep(0.05)


def python_argv(*args: str) -> list[str]:
    """This interpreter running `args`."""
    return [sys.executable, *args]


def emulator_argv(port: int, qps_apply_token: float) -> list[str]:
    """`authserver emulator` on `port` with the benchmark's key and instance."""
    return python_argv(
        "-m",
        "authserver",
        "emulator",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--access-key-id",
        ACCESS_KEY_ID,
        "--access-key-secret",
        ACCESS_KEY_SECRET,
        "--instance-id",
        INSTANCE_ID,
        "--qps-apply-token",
        str(qps_apply_token),
    )


def gateway_env(
    port: int,
    emulator_url: str,
    *,
    quota_apply_token: float,
    quota_account: float,
    redis_url: str | None = None,
    event_loop: str = "asyncio",
) -> dict[str, str]:
    """The environment `authserver serve` reads, for one benchmark gateway."""
    env = {
        "ALIBABA_CLOUD_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": ACCESS_KEY_SECRET,
        "AUTHSERVER_HOST": "127.0.0.1",
        "AUTHSERVER_PORT": str(port),
        "AUTHSERVER_POLICY_FILE": str(POLICY),
        "AUTHSERVER_JWT_SECRET": SECRET,
        "AUTHSERVER_JWT_ISSUER": ISSUER,
        "AUTHSERVER_JWT_AUDIENCE": AUDIENCE,
        "AUTHSERVER_MQTT_INSTANCE_ID": INSTANCE_ID,
        "AUTHSERVER_MQTT_ENDPOINT": emulator_url,
        "AUTHSERVER_QUOTA_APPLYTOKEN": str(quota_apply_token),
        "AUTHSERVER_QUOTA_ACCOUNT": str(quota_account),
        "AUTHSERVER_LOG_LEVEL": "WARNING",
        "AUTHSERVER_EVENT_LOOP": event_loop,
    }
    if redis_url is not None:
        env["AUTHSERVER_REDIS_URL"] = redis_url
    return env


def emulator_stats(emulator: Server) -> dict[str, Any]:
    """The emulator's GET /_emulator/stats document."""
    with urllib.request.urlopen(emulator.url + "/_emulator/stats", timeout=10) as answer:
        stats: dict[str, Any] = json.load(answer)
        return stats


def emulator_reset(emulator: Server, *, state: bool = False) -> None:
    """Zero the emulator's statistics (`state`: forget its tokens too)."""
    body = json.dumps({"state": state}).encode()
    req = urllib.request.Request(
        emulator.url + "/_emulator/reset",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as answer:
        answer.read()


def apply_token_calls(stats: dict[str, Any]) -> int:
    """ApplyToken calls the emulator received, from its stats document."""
    return int(stats.get("calls", {}).get("ApplyToken", 0))


def settle_upstream(emulator: Server, quiet: float = 1.0, limit: float = 10.0) -> dict[str, Any]:
    """Wait until the emulator's ApplyToken count stops moving; its stats then."""
    give_up = time.monotonic() + limit
    stats = emulator_stats(emulator)
    last, since = apply_token_calls(stats), time.monotonic()
    while time.monotonic() < give_up:
        time.sleep(0.2)
        stats = emulator_stats(emulator)
        calls = apply_token_calls(stats)
        if calls != last:
            last, since = calls, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return stats


def token_requests_handled(gateway: Server) -> int | None:
    """POST /v1/token requests the gateway has answered (any status), from GET /metrics.

    None when the gateway has no /metrics. Unlike wrk's count of requests sent, this leaves
    out requests whose connection wrk closed before the gateway read them.
    """
    try:
        with urllib.request.urlopen(gateway.url + "/metrics", timeout=10) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith("authserver_http_requests_total{") and 'route="/v1/token"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return round(total)


def wrk_path() -> str | None:
    """Where wrk is installed, if it is."""
    return shutil.which("wrk")


def run_wrk(
    url: str,
    jwt_file: Path,
    *,
    duration: float,
    connections: int,
    cold: bool = False,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """One wrk run (1 thread, pinned to the load core) with rotate.lua; its parsed summary."""
    wrk = wrk_path()
    if wrk is None:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk")
    argv = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={max(1, round(timeout))}s",
        "-s",
        str(ROTATE_LUA),
        url,
        "--",
        str(jwt_file),
        "cold" if cold else "warm",
    ]
    done = subprocess.run(
        pinned(LOAD_CORE, argv), capture_output=True, text=True, check=False, timeout=duration + 60
    )
    for line in done.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            result: dict[str, Any] = json.loads(line.removeprefix("BENCHJSON "))
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            result["socket_errors"] = sum(
                result["errors"][k] for k in ("connect", "read", "write", "timeout")
            )
            result["non_2xx"] = sum(
                n for code, n in result["statuses"].items() if not 200 <= int(code) < 300
            )
            return result
    raise RuntimeError(f"wrk gave no summary (exit {done.returncode}):\n{done.stdout}{done.stderr}")


@dataclass
class Posted:
    """What a batch of POST /v1/token requests got back."""

    statuses: Counter[int] = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)
    first_failure: str = ""


async def _post_all(
    url: str, tokens: Sequence[str], concurrency: int, bodies: Sequence[str] | None
) -> Posted:
    posted = Posted()
    queue = iter(zip(tokens, bodies or [""] * len(tokens), strict=True))
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            for token, body in queue:
                headers = {"Authorization": f"Bearer {token}"}
                if body:
                    headers["Content-Type"] = "application/json"
                async with session.post(
                    url + "/v1/token", headers=headers, data=body.encode()
                ) as answer:
                    body = await answer.read()
                    posted.statuses[answer.status] += 1
                    if answer.status != 200:
                        posted.failed.append(token)
                        if not posted.first_failure:
                            posted.first_failure = f"{answer.status} {body[:300].decode()}"

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return posted


def post_all(
    url: str, tokens: Sequence[str], concurrency: int = 64, bodies: Sequence[str] | None = None
) -> Posted:
    """POST /v1/token once with each JWT (and its body); the answers' statuses."""
    return asyncio.run(_post_all(url, tokens, concurrency, bodies))


def fetch_token(url: str, token: str) -> bytes:
    """One POST /v1/token answer body (to compare sizes with the baseline)."""
    req = urllib.request.Request(
        url + "/v1/token", method="POST", data=b"", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=10) as answer:
        body: bytes = answer.read()
        return body
