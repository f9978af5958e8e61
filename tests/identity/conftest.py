"""Fixtures for the identity tests: keys, a clock, a minter, JWKS servers; logs are checked."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from authserver.clock import ManualClock
from authserver.identity import JWTSettings, JWTVerifier
from tests.identity.tokens import ISSUER, SECRET, Keys, Minter, generate_keys


@pytest.fixture(scope="session")
def keys() -> Keys:
    """Keys of every family, generated once (RSA generation is slow)."""
    return generate_keys()


@pytest.fixture
def clock() -> ManualClock:
    """Wall and monotonic time that move only when a test says so."""
    return ManualClock()


@pytest.fixture
def minter(clock: ManualClock) -> Minter:
    """Signs tokens relative to the manual clock and remembers them."""
    return Minter(clock)


@pytest.fixture(autouse=True)
def _no_token_in_logs(caplog: pytest.LogCaptureFixture, minter: Minter) -> Iterator[None]:
    """Every identity test runs at DEBUG; afterwards no token or secret may be in the logs."""
    caplog.set_level(logging.DEBUG)
    yield
    text = "\n".join(
        [caplog.text, *(str(r.args) for r in caplog.records), *(r.message for r in caplog.records)]
    )
    assert SECRET not in text
    for token in minter.issued:
        assert token not in text
        for segment in token.split("."):
            if len(segment) > 16:  # short segments (e.g. an empty signature) prove nothing
                assert segment not in text


@dataclass
class JWKSServer:
    """A real HTTP server publishing a JWKS that a test can rotate, break or hold."""

    server: TestServer
    document: Any = field(default_factory=lambda: {"keys": []})
    status: int = 200
    raw: bytes | None = None
    requests: int = 0
    gate: asyncio.Event | None = None

    @property
    def url(self) -> str:
        """The JWKS URL."""
        return str(self.server.make_url("/jwks.json"))

    def publish(self, *jwks: dict[str, Any]) -> None:
        """Serve exactly these keys from now on."""
        self.document = {"keys": list(jwks)}
        self.raw = None
        self.status = 200


@pytest.fixture
async def jwks_server(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
) -> JWKSServer:
    """A JWKS endpoint on a loopback port."""
    app = web.Application()
    holder: list[JWKSServer] = []

    async def serve(request: web.Request) -> web.Response:
        state = holder[0]
        state.requests += 1
        if state.gate is not None:
            await state.gate.wait()
        body = state.raw if state.raw is not None else json.dumps(state.document).encode()
        return web.Response(body=body, status=state.status, content_type="application/json")

    app.router.add_get("/jwks.json", serve)
    state = JWKSServer(await aiohttp_server(app))
    holder.append(state)
    return state


@dataclass
class RecordingServer:
    """A server that must never be contacted: it counts every request it gets."""

    server: TestServer
    requests: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        """An absolute URL on this server."""
        return str(self.server.make_url(path))


@pytest.fixture
async def attacker_server(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
) -> RecordingServer:
    """A second local server standing in for attacker-controlled jku/x5u URLs."""
    app = web.Application()
    seen: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"keys": []})

    app.router.add_route("*", "/{tail:.*}", anything)
    return RecordingServer(await aiohttp_server(app), seen)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The shared client session the verifier fetches the JWKS on."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        yield client


MakeVerifier = Callable[..., Awaitable[JWTVerifier]]


@pytest.fixture
async def make_verifier(
    clock: ManualClock, session: aiohttp.ClientSession
) -> AsyncIterator[MakeVerifier]:
    """Factory: a started verifier for the given settings, closed after the test."""
    made: list[JWTVerifier] = []

    async def make(settings: JWTSettings, *, cls: type[JWTVerifier] = JWTVerifier) -> JWTVerifier:
        verifier = cls(settings, session=session, clock=clock)
        made.append(verifier)
        await verifier.start()
        return verifier

    yield make
    for verifier in made:
        await verifier.close()


@pytest.fixture
async def hs256(make_verifier: MakeVerifier) -> JWTVerifier:
    """A verifier for HS256 with the test secret."""
    return await make_verifier(JWTSettings(issuer=ISSUER, algorithms=("HS256",), secret=SECRET))
