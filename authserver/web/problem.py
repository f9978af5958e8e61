"""RFC 9457 problem+json answers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from authserver.errors import GatewayError

PROBLEM_TYPE = "application/problem+json"


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> web.Response:
    """A problem+json response with a stable machine-readable `code`."""
    body: dict[str, Any] = {
        "type": f"https://authserver.dev/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if extra:
        body.update({k: v for k, v in extra.items() if k not in body})
    return web.Response(
        status=status,
        body=json.dumps(body, ensure_ascii=False).encode(),
        content_type=PROBLEM_TYPE,
        headers=dict(headers or {}),
    )


def from_error(err: GatewayError) -> web.Response:
    """Render a GatewayError; 401s carry the RFC 6750 challenge."""
    headers = dict(err.headers)
    if err.status == 401 and "WWW-Authenticate" not in headers:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    return problem(err.status, err.code, err.title, err.detail, headers=headers, extra=err.extra)
