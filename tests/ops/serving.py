"""`authserver serve` as a real subprocess against an emulator running in the test process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import AUDIENCE, EXAMPLE_POLICY, ISSUER, JWT_SECRET
from tests.fixtures.redis import free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ServeProcess:
    """A running `authserver serve` and everything it wrote to stderr.

    stderr goes to a file, not a pipe: a pipe transport outlives a process killed with
    SIGKILL (or shared with its workers) and is then reported unclosed at a random later
    garbage collection, failing whatever test runs then.
    """

    process: asyncio.subprocess.Process
    port: int
    log_path: Path
    kept: list[str] | None = None  # what stderr held when the process was reaped

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def lines(self) -> list[str]:
        """Every line written to stderr so far."""
        if self.kept is not None:
            return self.kept
        return self.log_path.read_text(errors="replace").splitlines()

    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (anything else on stderr is skipped)."""
        out = []
        for line in self.lines:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    async def wait_ready(self, session: aiohttp.ClientSession, within: float = 20.0) -> None:
        """Poll /readyz until it answers 200."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            assert self.process.returncode is None, "\n".join(self.lines)
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(self.url + "/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
        raise AssertionError("gateway not ready in time:\n" + "\n".join(self.lines))


def serve_env(emulator: EmulatorHandle, port: int, **extra: str) -> dict[str, str]:
    """The environment `authserver serve` is configured by in these tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSERVER_")}
    env.update(
        {
            "ALIBABA_CLOUD_ACCESS_KEY_ID": emulator.access_key_id,
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET": emulator.access_key_secret,
            "AUTHSERVER_MQTT_INSTANCE_ID": emulator.instance_id,
            "AUTHSERVER_MQTT_ENDPOINT": emulator.url,
            "AUTHSERVER_POLICY_FILE": str(EXAMPLE_POLICY),
            "AUTHSERVER_JWT_SECRET": JWT_SECRET,
            "AUTHSERVER_JWT_ISSUER": ISSUER,
            "AUTHSERVER_JWT_AUDIENCE": AUDIENCE,
            "AUTHSERVER_HOST": "127.0.0.1",
            "AUTHSERVER_PORT": str(port),
            "AUTHSERVER_LOG_LEVEL": "INFO",
            "PYTHONPATH": str(REPO),
        }
    )
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def serve(
    emulator: EmulatorHandle, *args: str, **extra_env: str
) -> AsyncIterator[ServeProcess]:
    """Start `python -m authserver serve ARGS`; killed at exit if still running."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="authserver-serve-") as workdir:
        log_path = Path(workdir) / "stderr.log"
        with log_path.open("wb") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "authserver",
                "serve",
                *args,
                env=serve_env(emulator, port, **extra_env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log_file,
            )
        handle = ServeProcess(process, port, log_path)
        try:
            yield handle
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()
            handle.kept = handle.lines
