"""The route table: every path the gateway serves."""

from __future__ import annotations

from aiohttp import web

from authserver.web import device, health, observe
from authserver.web.admin import setup_admin_routes


def setup_routes(app: web.Application) -> None:
    """Register every route on `app`."""
    app.router.add_post("/v1/token", device.post_token, name="token")
    app.router.add_get("/healthz", health.healthz, name="healthz", allow_head=False)
    app.router.add_get("/readyz", health.readyz, name="readyz", allow_head=False)
    app.router.add_get("/openapi.json", health.openapi_json, name="openapi", allow_head=False)
    app.router.add_get("/metrics", observe.metrics_handler, name="metrics", allow_head=False)
    setup_admin_routes(app)
