"""The HTTP edge of a real `authserver serve`: oversized headers, clients that leave, slow ones.

Raw asyncio sockets, because an HTTP client library would neither send a header a byte at a
time nor drop a connection half-way through a body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.http_exceptions import LineTooLong
from prometheus_client import CollectorRegistry, generate_latest

from authserver.metrics import RequestMetrics
from authserver.web.observe import ProtocolLog
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import make_jwt
from tests.ops.helpers import samples, value
from tests.ops.serving import ServeProcess, serve

# Far more than any test needs: a safety net for a server that never closes, not a bound.
NEVER = 60.0


@contextlib.asynccontextmanager
async def connection(
    gw: ServeProcess,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw TCP connection to the gateway, closed at exit."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (EOF or reset)."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await asyncio.wait_for(reader.read(65536), NEVER):
            received += chunk
    return received


def status_of(response: bytes) -> int:
    """The status code of a raw HTTP/1.1 response."""
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> bytes:
    """The body of a raw HTTP/1.1 response (not chunked)."""
    return response.split(b"\r\n\r\n", 1)[1]


async def scrape(session: aiohttp.ClientSession, gw: ServeProcess) -> str:
    """GET /metrics."""
    async with session.get(gw.url + "/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


def jwt_parts(token: str) -> list[str]:
    """The pieces of a JWT whose appearance in a log would leak it (the shared header aside)."""
    parts = [token, *token.split(".")[1:]]
    payload = token.split(".")[1]
    parts += [payload[i : i + 24] for i in range(0, len(payload) - 24, 24)]
    return parts


async def test_an_oversized_header_and_a_client_gone_mid_body_log_no_jwt_and_count_no_500(
    emulator: EmulatorHandle,
) -> None:
    huge = make_jwt("mallory", padding="x" * 20_000)  # over AUTHSERVER_MAX_HEADER_BYTES
    large = make_jwt("mallory", padding="y" * 10_000)  # under it, over the JWT limit
    gone = make_jwt("leaver")
    async with (
        serve(emulator, AUTHSERVER_LOG_LEVEL="DEBUG") as gw,
        aiohttp.ClientSession() as session,
    ):
        await gw.wait_ready(session)

        # Past the parser's limit aiohttp answers 400 before any route.
        async with connection(gw) as (reader, writer):
            writer.write(
                b"POST /v1/token HTTP/1.1\r\nHost: gw\r\n"
                + f"Authorization: Bearer {huge}\r\n\r\n".encode()
            )
            answer = await closed_by_server(reader)
        assert status_of(answer) == 400

        # Under it, the verifier refuses the token itself: problem+json, no bytes quoted.
        async with session.post(
            gw.url + "/v1/token", headers={"Authorization": f"Bearer {large}"}
        ) as resp:
            assert resp.status == 401
            assert resp.content_type == "application/problem+json"
            problem = await resp.json()
        assert problem["code"] == "invalid_token"
        assert large[40:80] not in json.dumps(problem)

        # A device that leaves half-way through its body.
        async with connection(gw) as (_reader, writer):
            writer.write(
                b"POST /v1/token HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {gone}\r\nContent-Length: 400\r\n\r\n".encode()
                + b'{"clientId": "GID_'
            )
            await writer.drain()

            async def the_body_is_awaited() -> None:
                # The handler logs (at DEBUG) that it waits for the rest of the body.
                while True:
                    if any("Content-Length 400)" in r.get("message", "") for r in gw.records()):
                        return
                    await asyncio.sleep(0.02)

            await asyncio.wait_for(the_body_is_awaited(), NEVER)
            writer.transport.abort()

        def token_requests(text: str) -> dict[str, float]:
            return {
                labels["status"]: count
                for (name, frozen), count in samples(text).items()
                if name == "authserver_http_requests_total"
                and (labels := dict(frozen))["route"] == "/v1/token"
            }

        async def counted() -> str:
            while True:  # the 401 and the request that was left
                text = await scrape(session, gw)
                if sum(token_requests(text).values()) >= 2:
                    return text
                await asyncio.sleep(0.02)

        metrics = await asyncio.wait_for(counted(), NEVER)

    log = "\n".join(gw.lines)
    for token in (huge, large, gone):
        for part in jwt_parts(token):
            assert part not in log
    records = gw.records()
    assert not [r for r in records if r.get("level") in ("ERROR", "CRITICAL")], records
    assert "Traceback" not in log
    refused = [r for r in records if r.get("logger") == "authserver.http"]
    assert [r.get("reason") for r in refused] == ["line_too_long"], refused
    assert token_requests(metrics) == {"401": 1, "499": 1}
    assert value(metrics, "authserver_http_malformed_requests_total", reason="line_too_long") == 1
    statuses = {
        dict(labels).get("status")
        for (name, labels) in samples(metrics)
        if name == "authserver_http_requests_total"
    }
    assert not {s for s in statuses if s is not None and s.startswith("5")}, statuses


async def test_slow_and_idle_connections_are_closed(emulator: EmulatorHandle) -> None:
    jwt = make_jwt("slowpoke")
    async with (
        serve(
            emulator,
            AUTHSERVER_KEEPALIVE_TIMEOUT="0.5",
            AUTHSERVER_BODY_READ_TIMEOUT="0.5",
        ) as gw,
        aiohttp.ClientSession() as session,
    ):
        await gw.wait_ready(session)

        # Slowloris: a request head a byte at a time, never finished. The server hangs up.
        head = b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Pad: " + b"a" * 100_000
        sent = 0
        async with connection(gw) as (reader, writer):

            async def dribble() -> None:
                nonlocal sent
                for byte in head:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    sent += 1
                    await asyncio.sleep(0.01)

            sender = asyncio.create_task(dribble())
            try:
                answer = await closed_by_server(reader)
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await sender
        assert answer == b""  # closed without an answer ...
        assert sent < len(head)  # ... before the head was complete

        # Idle keep-alive: one request answered, then nothing; the server closes it.
        async with connection(gw) as (reader, writer):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), NEVER)
            assert status_of(head) == 200
            assert b"Connection: close" not in head  # kept alive, until the timeout
            length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
            await reader.readexactly(length)
            assert await closed_by_server(reader) == b""

        # A body a byte at a time: 408 problem+json, and the connection is closed.
        async with connection(gw) as (reader, writer):
            writer.write(
                b"POST /v1/token HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {jwt}\r\nContent-Length: 1000\r\n\r\n".encode()
            )

            async def dribble_body() -> None:
                while True:
                    writer.write(b" ")
                    await writer.drain()
                    await asyncio.sleep(0.05)

            sender = asyncio.create_task(dribble_body())
            try:
                answer = await closed_by_server(reader)
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await sender
        assert status_of(answer) == 408
        assert b"application/problem+json" in answer
        assert json.loads(body_of(answer))["code"] == "request_timeout"
        metrics = await scrape(session, gw)
    assert value(metrics, "authserver_http_requests_total", route="/v1/token",
                 method="POST", status="408") == 1  # fmt: skip


@pytest.mark.parametrize("how", ["exception", "tuple", "true"])
def test_protocol_log_keeps_no_byte_of_a_refused_request(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = RequestMetrics()
    log = ProtocolLog(metrics)
    secret = make_jwt("mallory")
    err = LineTooLong(f"Bearer {secret}"[:100].encode() + b"...", 16384)
    caplog.set_level(logging.DEBUG)
    try:
        raise err
    except LineTooLong:
        exc_info = {"exception": err, "tuple": sys.exc_info(), "true": True}[how]
        log.exception("Error handling request from %s", "192.0.2.1", exc_info=exc_info)
    log.exception("Unhandled exception", exc_info=ValueError("kept"))  # not the parser's

    assert [r.levelname for r in caplog.records] == ["INFO", "ERROR"]
    assert caplog.records[0].reason == "line_too_long"  # type: ignore[attr-defined]
    assert secret.split(".")[1][:20] not in caplog.text
    assert "kept" in caplog.text
    registry = CollectorRegistry()
    registry.register(metrics)
    exposed = generate_latest(registry).decode()
    assert value(exposed, "authserver_http_malformed_requests_total", reason="line_too_long") == 1
