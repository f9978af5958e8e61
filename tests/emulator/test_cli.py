"""The `authserver emulator` command: flags, environment variables, a real process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import aiohttp

from authserver.emulator.app import EmulatorConfig, start_emulator
from authserver.emulator.cli import build_parser, config_from_args
from tests.fixtures.redis import free_port


def test_flags_win_over_environment() -> None:
    env = {
        "AUTHSERVER_EMULATOR_ACCESS_KEY_ID": "LTAIenv",
        "AUTHSERVER_EMULATOR_INSTANCE_IDS": "post-cn-a, post-cn-b",
        "AUTHSERVER_EMULATOR_QPS_REVOKE_TOKEN": "7",
        "AUTHSERVER_EMULATOR_PORT": "9100",
    }
    args = build_parser(env).parse_args(["--access-key-secret", "s3"])
    config = config_from_args(args)
    assert config.access_keys == {"LTAIenv": "s3"}
    assert list(config.instance_ids) == ["post-cn-a", "post-cn-b"]
    assert config.qps["RevokeToken"] == 7
    assert args.port == 9100
    args = build_parser(env).parse_args(["--instance-id", "post-cn-x", "--qps-revoke-token", "2"])
    config = config_from_args(args)
    assert list(config.instance_ids) == ["post-cn-x"]
    assert config.qps["RevokeToken"] == 2


def test_help_shows_defaults_and_variables() -> None:
    text = build_parser({}).format_help()
    for piece in ("AUTHSERVER_EMULATOR_HOST", "default: 8900", "LTAIemulator", "/_emulator/faults"):
        assert piece in text


async def test_start_emulator_embeds_in_this_loop() -> None:
    runner, url = await start_emulator(
        EmulatorConfig(access_keys={"k": "s"}, instance_ids=["post-cn-test"])
    )
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/_emulator/stats") as resp:
            assert resp.status == 200
    finally:
        await runner.cleanup()


async def test_command_serves_until_stopped() -> None:
    port = free_port()
    env = {**os.environ, "AUTHSERVER_EMULATOR_PORT": str(port)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "authserver.emulator.cli",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert f"127.0.0.1:{port}" in line.decode()
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/_emulator/stats") as resp:
                        assert resp.status == 200
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("the emulator never answered")
    finally:
        proc.terminate()
        await proc.wait()
