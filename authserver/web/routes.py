"""The route table: every path the gateway serves."""

from __future__ import annotations

from aiohttp import web

from authserver.web import admin_manage, admin_reports, device, device_credential, health
from authserver.web.admin import setup_admin_routes
from authserver.web.observe import add_fallback_route, metrics_handler, observed


def setup_routes(app: web.Application) -> None:
    """Register every route on `app`, each handler wrapped by `observe.observed`."""
    router = app.router
    router.add_post("/v1/token", observed(device.post_token), name="token")
    app.on_startup.append(device.bind_services)
    router.add_post(
        "/v1/device-credential",
        observed(device_credential.post_device_credential),
        name="device_credential",
    )
    router.add_get("/healthz", observed(health.healthz), name="healthz", allow_head=False)
    router.add_get("/readyz", observed(health.readyz), name="readyz", allow_head=False)
    router.add_get("/openapi.json", observed(health.openapi_json), name="openapi", allow_head=False)
    router.add_get("/metrics", observed(metrics_handler), name="metrics", allow_head=False)
    setup_admin_routes(app, [*admin_manage.ROUTES, *admin_reports.ROUTES])
    add_fallback_route(app)
