"""Reading requests strictly: bearer credentials and JSON bodies with known fields only."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Collection
from typing import Any

from aiohttp import web

from authserver import appkeys
from authserver.errors import BadRequest, PayloadTooLarge, RequestTimeout

log = logging.getLogger(__name__)


async def read_body(request: web.Request) -> bytes:
    """The raw body (b"" when none): 413 past the app's size limit, 408 when it comes too slowly.

    The read timeout bounds a client that dribbles its body (aiohttp itself has none); the
    answer closes the connection, since the rest of that body may still be on its way.
    """
    if not request.body_exists:  # no Content-Length (or 0) and not chunked
        return b""
    limit = request.app._client_max_size  # aiohttp keeps the limit only here
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body is {request.content_length} bytes; the limit is {limit}")
    try:
        if request.content.is_eof():
            # Small bodies arrive with the headers: no timer to arm and cancel.
            return await request.read()
        seconds = request.app[appkeys.SETTINGS].body_read_timeout
        log.debug("waiting for the rest of a body (Content-Length %s)", request.content_length)
        try:
            async with asyncio.timeout(seconds):
                return await request.read()
        except TimeoutError as err:
            raise RequestTimeout(f"the body did not arrive within {seconds:g} s") from err
    except web.HTTPRequestEntityTooLarge as err:
        raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes") from err


def parse_object(raw: bytes, allowed: Collection[str], *, optional: bool = False) -> dict[str, Any]:
    """The JSON object in `raw`; refuses non-objects and unknown fields."""
    if not raw.strip():
        if optional:
            return {}
        raise BadRequest("a JSON object body is required")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise BadRequest("the body is not valid JSON") from err
    except RecursionError as err:  # nesting deeper than the parser's recursion limit
        raise BadRequest("the body is nested too deeply") from err
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise BadRequest(
            f"unknown field(s): {', '.join(unknown)}",
            extra={"unknownFields": unknown, "allowedFields": sorted(allowed)},
        )
    return data


async def json_body(
    request: web.Request, allowed: Collection[str], *, optional: bool = False
) -> dict[str, Any]:
    """The request's JSON object; refuses non-objects, unknown fields and oversized bodies."""
    return parse_object(await read_body(request), allowed, optional=optional)


def optional_str(data: dict[str, Any], name: str, *, max_length: int = 256) -> str | None:
    """A string field that may be absent (null is not absent); bounded length, no NUL."""
    if name not in data:
        return None
    value = data[name]
    if not isinstance(value, str) or not value or len(value) > max_length or "\x00" in value:
        raise BadRequest(
            f"{name} must be a non-empty string of at most {max_length} characters",
            extra={"field": name},
        )
    return value


def optional_str_list(
    data: dict[str, Any], name: str, *, max_items: int, allowed: Collection[str] | None = None
) -> list[str] | None:
    """A list-of-strings field that may be absent; bounded size, optional allowed values."""
    if name not in data:
        return None
    value = data[name]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{name} must be a list of strings", extra={"field": name})
    if not value:
        raise BadRequest(f"{name} must not be empty", extra={"field": name})
    if len(value) > max_items:
        raise BadRequest(
            f"{name} has {len(value)} items; at most {max_items} are accepted",
            extra={"field": name},
        )
    if allowed is not None:
        bad = sorted({v for v in value if v not in allowed})
        if bad:
            raise BadRequest(
                f"{name}: {', '.join(bad)} not allowed (allowed: {', '.join(sorted(allowed))})",
                extra={"field": name},
            )
    return value


def optional_int(data: dict[str, Any], name: str, *, minimum: int, maximum: int) -> int | None:
    """An integer field that may be absent, within [minimum, maximum]."""
    if name not in data:
        return None
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise BadRequest(
            f"{name} must be a whole number between {minimum} and {maximum}",
            extra={"field": name},
        )
    return value
