"""What a cached token costs: bytes per token, per layer, in an in-process gateway.

Run: `python -m bench.memory` (20,000 devices, each asking twice: 40,000 tokens, R and W per
device under bench/policy.yaml), `--devices 50000` for 100,000 tokens (`--rss-only`: without
the much slower tracemalloc run), `--body clientid` for
devices that send `{"clientId": ...}`. Two child processes do the work: one measures RSS growth
without tracemalloc (its own overhead would count), the other measures the live Python bytes
with tracemalloc and breaks them down by who holds them. The emulator is a separate process
(its own copy of every token is not the gateway's memory); the gateway is `create_app` on a
real loopback port and the devices talk to it over HTTP from the same event loop.

The per-layer figure walks each layer's structures (containers, records, strings) in the
order below; an object reached from two layers counts for the first (the verifier's claims,
shared with the records, count there). What no layer reaches (tracemalloc's total minus the
layers) is `other`: allocator slack, aiohttp's pools, the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import FunctionType, ModuleType
from typing import Any

import aiohttp
from aiohttp import web

from bench import harness as h
from bench.jwts import make_jwts, subjects

DEVICES = 20_000
ASKS = 2
CONCURRENCY = 64
SITES = 12  # allocation sites listed, largest first
# ApplyToken calls a second: high enough not to slow the fill, low enough that the quota
# governor's window (one place per call of the last second) stays small, as in production.
QUOTA = 5_000.0


def rss_bytes() -> int:
    """This process's resident set size, from /proc/self/status VmRSS."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


_ATOMS = (str, bytes, int, float, bool, type(None))
_STOP = (type, ModuleType, FunctionType)


def deep_size(roots: Iterable[Any], seen: set[int], skip: Callable[[Any], bool]) -> int:
    """Bytes of every object reachable from `roots` not in `seen` (which this fills)."""
    total = 0
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _STOP) or skip(obj):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, _ATOMS):
            continue
        if isinstance(obj, dict):
            # gc.get_referents leaves out the keys of a dict whose keys are all strings.
            stack.extend(obj.keys())
            stack.extend(obj.values())
            continue
        stack.extend(gc.get_referents(obj))
    return total


@dataclass
class Layers:
    """Bytes held by each layer, in the order they were walked."""

    sizes: dict[str, int] = field(default_factory=dict)


def layers_of(app: web.Application) -> Layers:
    """Walk the gateway's caches, layer by layer (the first layer to reach an object owns it)."""
    from authserver import appkeys
    from authserver.tokens.answers import Answer
    from authserver.tokens.model import TokenRecord

    tokens = app[appkeys.TOKENS]
    issuer = app[appkeys.ISSUER]
    verifier = app[appkeys.VERIFIER]
    holder = app[appkeys.POLICY]
    store: Any = tokens.store
    answers: Any = issuer.answers
    seen: set[int] = set()
    out = Layers()
    # Never count what the whole process shares: the app, services, classes, modules.
    for shared in (app, tokens, issuer, verifier, holder, store, answers):
        seen.add(id(shared))

    def no_records(obj: Any) -> bool:
        return isinstance(obj, TokenRecord)

    def nothing(obj: Any) -> bool:
        return False

    def walk(name: str, roots: Iterable[Any], skip: Callable[[Any], bool] = nothing) -> None:
        out.sizes[name] = out.sizes.get(name, 0) + deep_size(roots, seen, skip)

    walk("verifier: remembered JWTs (identity, claims)", [verifier._cache])
    # The repeats before the answers they point at (which they skip): their keys are digests
    # of the Authorization header and body, also listed in each answer's repeat_keys.
    walk(
        "repeats (digest keys, entries)",
        [answers._repeats],
        lambda o: isinstance(o, Answer | TokenRecord),
    )
    walk("answers (entries, body, key index)", [answers._entries, answers._by_key], no_records)
    walk(
        "policy memos (plans, clientIds, shared claims keys)",
        [getattr(holder, name, None) for name in POLICY_MEMOS],
        no_records,
    )
    l1 = tokens._l1
    if l1 is not None:
        walk("L1 (map, keys)", [l1._data], no_records)
    walk("token service: holders seen here", [tokens._held_here._data], no_records)
    records = list(store._records._data.values())
    walk("store: records map (keys)", [store._records._data], no_records)
    claims = [r.claims for r in records]
    # The records without their claims first (the token values count here, not in the
    # value index keyed by them), then the claims no earlier layer reached.
    claim_ids = {id(c) for c in claims}
    walk("token records (token, resources)", records, lambda o: id(o) in claim_ids)
    walk("claims kept in records", claims)
    walk("store: by subject", [store._by_subject], no_records)
    walk("store: by client", [store._by_client], no_records)
    walk("store: by value", [store._by_value], no_records)
    return out


async def ask(url: str, jwts: list[str], body: str | None) -> None:
    """POST /v1/token once with each JWT; raise on any answer other than 200."""
    todo = iter(jwts)
    failures: list[str] = []
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for jwt in todo:
                headers = {"Authorization": f"Bearer {jwt}"}
                data = b""
                if body is not None:
                    headers["Content-Type"] = "application/json"
                    data = body.replace("{sub}", json.loads(_payload(jwt))["sub"]).encode()
                async with session.post(url + "/v1/token", headers=headers, data=data) as got:
                    text = await got.read()
                    if got.status != 200 and len(failures) < 3:
                        failures.append(f"{got.status} {text[:200]!r}")

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    if failures:
        raise RuntimeError(f"requests failed: {failures}")


def _payload(jwt: str) -> bytes:
    import base64

    segment = jwt.split(".")[1]
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


async def child(mode: str, devices: int, emulator_url: str, body: str | None) -> dict[str, Any]:
    """Fill one in-process gateway; RSS growth, or tracemalloc's bytes and the layers."""
    from authserver import appkeys
    from authserver.app import create_app
    from authserver.settings import load_settings

    port = h.free_port()
    env = h.gateway_env(port, emulator_url, quota_apply_token=QUOTA, quota_account=QUOTA)
    settings = load_settings({**os.environ, **env})
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    try:
        # Warm up: imports, pools and per-process caches that every count shares.
        warm = make_jwts(subjects("warm", 64), tag="warm")
        for _ in range(ASKS):
            await ask(url, warm, body)
        jwts = make_jwts(subjects("mem", devices), tag="mem")
        gc.collect()
        if mode == "trace":
            tracemalloc.start(1)
        before_rss = rss_bytes()
        before_traced = tracemalloc.get_traced_memory()[0] if mode == "trace" else 0
        started = time.monotonic()
        for _ in range(ASKS):
            await ask(url, jwts, body)
        seconds = time.monotonic() - started
        gc.collect()
        result: dict[str, Any] = {
            "tokens": app[appkeys.TOKENS].minted - 2 * len(warm),
            "seconds": seconds,
            "rss_growth": rss_bytes() - before_rss,
            "rss": rss_bytes(),
        }
        if mode == "trace":
            result["traced"] = tracemalloc.get_traced_memory()[0] - before_traced
            top = tracemalloc.take_snapshot().statistics("lineno")[:SITES]
            tracemalloc.stop()
            result["sites"] = [(str(stat.traceback), stat.size) for stat in top]
            sizes = layers_of(app).sizes
            # The warm-up devices' share of each layer is tiny (64 of `devices`); left in.
            result["layers"] = sizes
        return result
    finally:
        await runner.cleanup()


def run_child(mode: str, devices: int, emulator_url: str, body: str | None) -> dict[str, Any]:
    """One measurement in a fresh process (so each starts from the same empty gateway)."""
    argv = [sys.executable, "-m", "bench.memory", "--child", mode, "--devices", str(devices)]
    argv += ["--emulator", emulator_url]
    if body is not None:
        argv += ["--body", body]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=h.ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} run failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# What PolicyHolder memoises per identity (those of them it has: the set changes).
POLICY_MEMOS = ("_plans", "_client_ids", "_shared_keys")
BODIES = {"none": None, "clientid": '{"clientId": "GID_bench@@@{sub}"}'}


def main() -> None:
    """Print bytes per token, per layer, and the RSS growth."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=DEVICES)
    parser.add_argument("--body", choices=sorted(BODIES), default="none")
    parser.add_argument("--child", choices=("rss", "trace"))
    parser.add_argument("--emulator")
    parser.add_argument(
        "--rss-only", action="store_true", help="skip the (much slower) tracemalloc run"
    )
    args = parser.parse_args()
    body = BODIES[args.body]
    if args.child:
        result = asyncio.run(child(args.child, args.devices, args.emulator, body))
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp, h.fleet(Path(tmp)) as fleet:
        port = h.free_port()
        emulator = fleet.start(
            "emulator", h.emulator_argv(port, 1e6), port, core=h.LOAD_CORE, ready="/_emulator/stats"
        )
        rss = run_child("rss", args.devices, emulator.url, args.body)
        if args.rss_only:
            print(
                f"{args.devices:,} devices x {ASKS} asks, body {args.body}: {rss['tokens']:,} "
                f"tokens, RSS growth {rss['rss_growth'] / rss['tokens']:,.0f} bytes a token, "
                f"RSS after {rss['rss'] / 2**20:.0f} MiB"
            )
            return
        h.emulator_reset(emulator, state=True)
        trace = run_child("trace", args.devices, emulator.url, args.body)
    tokens = trace["tokens"]
    print(
        f"{args.devices:,} devices x {ASKS} asks, body {args.body}: {tokens:,} tokens "
        f"(rss run {rss['tokens']:,}), filled in {rss['seconds']:.0f} s"
    )
    print()
    print("| layer | bytes per token |")
    print("| --- | ---: |")
    walked = 0
    for name, size in trace["layers"].items():
        walked += size
        print(f"| {name} | {size / tokens:,.0f} |")
    print(f"| other (traced, in no layer) | {(trace['traced'] - walked) / tokens:,.0f} |")
    print(f"| **tracemalloc total** | **{trace['traced'] / tokens:,.0f}** |")
    print(f"| **RSS growth** | **{rss['rss_growth'] / rss['tokens']:,.0f}** |")
    print()
    print(f"RSS after: {rss['rss'] / 2**20:.0f} MiB")
    print()
    print("Largest allocation sites (tracemalloc, bytes per token):")
    for where, size in trace["sites"]:
        print(f"  {size / tokens:8,.0f}  {where.removeprefix(str(h.ROOT) + '/')}")


if __name__ == "__main__":
    main()
