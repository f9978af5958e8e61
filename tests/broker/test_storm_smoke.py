"""bench/connect_storm.py still runs (a small storm; nothing here is timed)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


async def test_a_small_storm_connects_everyone() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "bench/connect_storm.py", "--devices", "20", "--subjects", "5",
        "--messages", "2",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    figures = json.loads(out.decode()[out.decode().index("{") :])
    assert figures["broker_accepted"] == 20
    assert figures["apply_token_calls"] == figures["distinct_keys"] == 10
    assert figures["routed_messages"] == figures["expected_routed"] == 20 * 2 * 4
