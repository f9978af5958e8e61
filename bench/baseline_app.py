"""The floor: the thinnest aiohttp app answering POST /v1/token with a token-sized JSON body.

Run as `python bench/baseline_app.py --port P`; `bench/run.py` starts it pinned to the
gateway's core and drives it with the same wrk script as the gateway, so the two compare.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from aiohttp import web

# Shaped like the gateway's answer for a device with an R and a W token (889 bytes, as measured).
TOKEN = "x" * 128
EXPIRE_MS = 1_700_000_000_000


def answer_body() -> dict[str, Any]:
    """A JSON object of the size and shape of a POST /v1/token answer."""
    return {
        "instanceId": "post-cn-bench",
        "username": "Token|LTAIbench|post-cn-bench",
        "password": f"R|{TOKEN}|W|{TOKEN}",
        "tokens": [
            {
                "type": "R",
                "token": TOKEN,
                "resources": ["broadcast/#", "devices/bench-000001/#"],
                "expireTime": EXPIRE_MS,
            },
            {
                "type": "W",
                "token": TOKEN,
                "resources": ["devices/bench-000001/#"],
                "expireTime": EXPIRE_MS,
            },
        ],
        "expireTime": EXPIRE_MS,
        "refreshAt": EXPIRE_MS - 600_000,
    }


def create_baseline_app() -> web.Application:
    """The baseline app: one handler that serialises a fixed dict per request, like a naive view."""
    body = answer_body()

    async def token(_request: web.Request) -> web.Response:
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/v1/token", token)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    """Serve the baseline app until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the event loop"
    )
    args = parser.parse_args()
    loop = None
    if args.loop == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
    web.run_app(
        create_baseline_app(),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=loop,
    )


if __name__ == "__main__":
    main()
