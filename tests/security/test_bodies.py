"""Hostile bodies the gateway tests do not already cover: chunked floods, admin bodies."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from authserver.errors import DuplicateKey
from authserver.web import shapes
from tests.admin.conftest import admin_headers
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import BOUND_POLICY, MakeGateway, bearer, make_jwt

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


# One body, two readings: a WAF or proxy in front that keeps the first of two equal keys
# and a parser here that keeps the last would each see a different clientId or subject.
DUPLICATED = [
    (
        "/v1/token",
        b'{"clientId": "GID_fleet@@@eve-1", "clientId": "GID_fleet@@@bob-1"}',
        "clientId",
    ),
    ("/v1/token", b'{"topics": ["x/#"], "actions": ["R"], "topics": ["broadcast/#"]}', "topics"),
    (
        "/v1/token",
        b'{"clientId": "GID_fleet@@@eve-1", "client\\u0049d": "GID_fleet@@@bob-1"}',
        "clientId",
    ),
    ("/v1/admin/revoke", b'{"subject": "mine", "subject": "victim"}', "subject"),
    (
        "/v1/admin/revoke",
        b'{"clientId": "GID_fleet@@@a-1", "blockIssuedBefore": false, '
        b'"clientId": "GID_fleet@@@b-1"}',
        "clientId",
    ),
    ("/v1/admin/query", b'{"token": "a", "token": "b"}', "token"),
    ("/v1/admin/explain", b'{"claims": {"sub": "a", "tenant": "t", "sub": "b"}}', "sub"),  # nested
    (
        "/v1/admin/explain",
        b'{"claims": {"sub": "a", "deep": [{"x": 1, "x": 2}]}}',  # in a list, two levels down
        "x",
    ),
    (
        "/v1/admin/sessions:query",
        b'{"clientIds": ["GID_fleet@@@a-1"], "clientIds": ["GID_fleet@@@b-1"]}',
        "clientIds",
    ),
]


def _auth(path: str) -> dict[str, str]:
    return bearer(make_jwt("bob")) if path == "/v1/token" else admin_headers()


@pytest.fixture
async def bound_gateway(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> TestClient[Any, Any]:
    """A gateway whose policy gives bob the clientId GID_fleet@@@bob-1 only."""
    return await make_gateway(emulator, policy_file=BOUND_POLICY)


@pytest.mark.parametrize(("path", "body", "key"), DUPLICATED)
async def test_a_body_naming_a_key_twice_is_refused(
    bound_gateway: TestClient[Any, Any], path: str, body: bytes, key: str
) -> None:
    async with bound_gateway.post(
        path, data=body, headers={**_auth(path), "Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 400, await resp.text()
        assert resp.content_type == "application/problem+json"
        problem = await resp.json()
    assert problem["code"] == "duplicate_key"
    assert problem["duplicateKey"] == key
    assert f'"{key}"' in problem["detail"]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        # Colons inside strings and equal keys in different objects are no duplicate.
        ("/v1/admin/revoke", b'{"token": "a:b:c", "blockIssuedBefore": false}', 202),
        ("/v1/admin/explain", b'{"claims": {"sub": "a", "o": {"sub": "b"}}}', 200),
        ("/v1/admin/explain", b'{"claims": {"sub": "a:b", "x": "1:2"}, "subject": "a:b"}', 200),
        ("/v1/token", b'{"topics": ["devices/bob/#"], "actions": ["R"]}', 200),
        ("/v1/token", b'{"clientId": "GID_fleet@@@bob-1", "topics": ["broadcast/#"]}', 200),
    ],
)
async def test_bodies_without_a_repeated_key_are_read_as_before(
    bound_gateway: TestClient[Any, Any], path: str, body: bytes, status: int
) -> None:
    async with bound_gateway.post(
        path, data=body, headers={**_auth(path), "Content-Type": "application/json"}
    ) as resp:
        assert resp.status == status, await resp.text()


# A JSON tree written by hand, so that an object may name a key twice: (pairs) for an object,
# [items] for a list, scalars as they are. Keys and strings may hold colons.
_KEYS = st.sampled_from(["a", "b", "sub", "x:y", "c"])
_SCALARS = st.one_of(st.integers(-5, 5), st.sampled_from(["", "v", "1:2", "a::b"]), st.none())
_TREES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(st.tuples(_KEYS, inner), max_size=4).map(tuple),
    ),
    max_leaves=12,
)


def _text(tree: Any) -> str:
    if isinstance(tree, tuple):
        return "{" + ", ".join(f"{json.dumps(k)}: {_text(v)}" for k, v in tree) + "}"
    if isinstance(tree, list):
        return "[" + ", ".join(_text(v) for v in tree) + "]"
    return json.dumps(tree)


def _repeats(tree: Any) -> bool:
    if isinstance(tree, tuple):
        keys = [k for k, _v in tree]
        return len(set(keys)) != len(keys) or any(_repeats(v) for _k, v in tree)
    if isinstance(tree, list):
        return any(_repeats(v) for v in tree)
    return False


@settings(max_examples=300)
@given(claims=st.lists(st.tuples(_KEYS, _TREES), max_size=4).map(tuple), subject=st.booleans())
def test_a_repeated_key_is_refused_at_any_depth_and_only_then(
    claims: tuple[tuple[str, Any], ...], subject: bool
) -> None:
    # The pre-check skips the second parse only when it proves no key repeats: a repeat
    # anywhere is refused, and a body with none (colons in its strings or not) is read.
    body = '{"claims": ' + _text(claims) + (', "subject": "s:1"' if subject else "") + "}"
    if _repeats(claims):
        with pytest.raises(DuplicateKey):
            shapes.decode(shapes.ExplainRequest, body.encode())
    else:
        decoded = shapes.decode(shapes.ExplainRequest, body.encode())
        assert decoded.claims == json.loads(_text(claims))


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
