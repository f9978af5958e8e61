"""Hostile bodies the gateway tests do not already cover: chunked floods, admin bodies."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.admin.conftest import admin_headers
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway, bearer, make_jwt

CHUNK = 64 * 1024
FLOOD = 1024 * 1024


@pytest.fixture
async def gateway(emulator: EmulatorHandle, make_gateway: MakeGateway) -> TestClient[Any, Any]:
    return await make_gateway(emulator)


@pytest.mark.parametrize(
    ("path", "auth"),
    [("/v1/token", lambda: bearer(make_jwt("bob"))), ("/v1/admin/revoke", admin_headers)],
)
async def test_a_chunked_megabyte_without_length_is_413_before_it_is_all_read(
    gateway: TestClient[Any, Any], path: str, auth: Any
) -> None:
    sent: list[int] = []

    async def flood() -> AsyncIterator[bytes]:
        yield b'{"topics": ["'
        for _ in range(FLOOD // CHUNK):
            sent.append(CHUNK)
            yield b"a" * CHUNK
            await asyncio.sleep(0.01)  # let the server answer while we are still sending
        yield b'"]}'

    headers = {**auth(), "Content-Type": "application/json"}
    async with gateway.post(path, data=flood(), headers=headers) as resp:
        assert "Content-Length" not in resp.request_info.headers
        assert resp.request_info.headers["Transfer-Encoding"] == "chunked"
        assert resp.status == 413
        problem = await resp.json()
    assert problem["code"] == "payload_too_large"
    # The server answered after the limit (64 KiB), long before the megabyte was through.
    assert sum(sent) < FLOOD // 2, sum(sent)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 400),
        (b"[]", 400),
        (b'{"token": 7}', 400),
        (b'{"token": "a", "subject": "b"}', 400),
        (b'{"subject": "dev", "blockIssuedBefore": "yes"}', 400),
        (b'{"subject": "dev", "extra": 1}', 400),
        (b'{"clientId": "GID_x@@@a/#"}', 400),
        (b'{"subject": "' + b"x" * 2000 + b'"}', 400),
        (b'{"subject": "a\\u0000b"}', 400),
        (b'{"subject": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", 400),
        (b'{"token": "' + b"t" * (1024 * 1024) + b'"}', 413),
    ],
)
async def test_hostile_admin_bodies_are_4xx_problems(
    gateway: TestClient[Any, Any], body: bytes, status: int
) -> None:
    async with gateway.post(
        "/v1/admin/revoke",
        data=io.BytesIO(body),
        headers={**admin_headers(), "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == status, await resp.text()
        assert resp.content_type == "application/problem+json"


async def test_ten_thousand_client_ids_and_topics_are_refused(
    gateway: TestClient[Any, Any],
) -> None:
    ids = [f"GID_fleet@@@d{n}" for n in range(10_000)]
    async with gateway.post(
        "/v1/admin/sessions:query", json={"clientIds": ids}, headers=admin_headers()
    ) as resp:
        assert resp.status == 413  # over the 64 KiB body limit, refused unparsed
    async with gateway.post(
        "/v1/admin/sessions:query", json={"clientIds": ids[:101]}, headers=admin_headers()
    ) as resp:
        assert resp.status == 400
    for topic in ["a/#/b", "a+", "a/+b", "#/a", "", "a\x00b"]:
        async with gateway.post(
            "/v1/token", json={"topics": [topic]}, headers=bearer(make_jwt("bob"))
        ) as resp:
            assert resp.status == 400, (topic, await resp.text())


async def raw_exchange(client: TestClient[Any, Any], request: bytes) -> bytes:
    """Write `request` in one go on a fresh connection; everything the server answers."""
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(request)
        await writer.drain()
        return await reader.read()  # the answer to a request with Connection: close
    finally:
        writer.close()
        await writer.wait_closed()


def chunked_token_request(jwt: str, body: bytes) -> bytes:
    """POST /v1/token with `body` as one chunk and the last chunk, without Content-Length."""
    return (
        b"POST /v1/token HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        + f"Authorization: Bearer {jwt}\r\n\r\n{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n"
    )


async def test_a_whole_chunked_body_over_the_limit_is_413(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    # Sent in one write, the body has all arrived when the handler runs: taken from the
    # buffer at once, it is still held to the limit no Content-Length announced.
    client = await make_gateway(emulator, max_body_bytes=1024)
    jwt = make_jwt("bob")
    fits = b"{}"
    answer = await raw_exchange(client, chunked_token_request(jwt, fits.ljust(1000)))
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    answer = await raw_exchange(client, chunked_token_request(jwt, fits.ljust(1100)))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b'"payload_too_large"' in answer
