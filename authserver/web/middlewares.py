"""Middlewares: every error becomes problem+json; nothing unexpected leaks."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from authserver.errors import GatewayError
from authserver.web.problem import from_error, problem

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn GatewayError and aiohttp HTTP errors into problem+json; log the unexpected."""
    try:
        return await handler(request)
    except GatewayError as err:
        return from_error(err)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        code = _HTTP_CODES.get(err.status, "http_error")
        headers = {k: v for k, v in err.headers.items() if k.lower() in {"allow", "retry-after"}}
        return problem(err.status, code, err.reason, err.text or err.reason, headers=headers)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem(500, "internal_error", "Internal error", "an unexpected error occurred")
