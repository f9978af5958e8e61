"""Per-request cost of the route wrapper (`web.observe.observed`) with tracing off and on.

    python bench/tracing_cost.py
    git show COMMIT:authserver/web/observe.py > /tmp/observe_old.py
    python bench/tracing_cost.py --before /tmp/observe_old.py   # also an older wrapper

Calls the wrapped trivial handler in a loop (rounds interleaved, so a noisy neighbour hits
every case alike) and prints the median and minimum microseconds per call. "on" uses an SDK
tracer provider without an exporter: the cost of making the spans, not of sending them.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aiohttp import web  # noqa: E402
from aiohttp.test_utils import make_mocked_request  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

from authserver import appkeys  # noqa: E402
from authserver.metrics import Metrics  # noqa: E402
from authserver.web import observe  # noqa: E402


async def handler(request: web.Request) -> web.Response:
    """The cheapest answer: what is measured is the wrapper around it."""
    return web.Response(text="ok")


def app_with(tracer: Any) -> web.Application:
    """The app state the wrapper reads."""
    app = web.Application()
    app[appkeys.DRAINING] = asyncio.Event()
    app[appkeys.METRICS] = Metrics()
    app[appkeys.TRACER] = tracer
    return app


async def measure(before: Path | None, rounds: int, calls: int) -> None:
    """Print median and minimum microseconds per call for each case."""
    cases: dict[str, tuple[Any, web.Application]] = {}
    if before is not None:
        spec = importlib.util.spec_from_file_location("observe_before", before)
        assert spec is not None
        assert spec.loader is not None
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        cases["before"] = (old.observed(handler, label="/v1/token"), app_with(None))
    cases["off"] = (observe.observed(handler, label="/v1/token"), app_with(None))
    tracer = TracerProvider().get_tracer("bench")
    cases["on"] = (observe.observed(handler, label="/v1/token"), app_with(tracer))
    results: dict[str, list[float]] = {name: [] for name in cases}
    loop = asyncio.get_running_loop()
    for _ in range(rounds):
        for name, (wrapped, app) in cases.items():
            request = make_mocked_request(
                "POST", "/v1/token", headers={"Authorization": "Bearer x"}, app=app
            )
            started = loop.time()
            for _ in range(calls):
                await wrapped(request)
            results[name].append((loop.time() - started) / calls * 1e6)
    for name, values in results.items():
        print(
            f"{name:7s} median {statistics.median(values):6.2f} us/call  "
            f"min {min(values):6.2f}  ({rounds} rounds of {calls})"
        )


def main() -> int:
    """Parse the arguments and measure."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", type=Path, help="an older observe.py to compare with")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    asyncio.run(measure(args.before, args.rounds, args.calls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
