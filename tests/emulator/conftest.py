"""A small signed caller for the emulator tests: signature v1 or ACS3, tamperable."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from yarl import URL

from authserver.cloud import acs3
from authserver.cloud.signing import percent_encode, sign_v1
from tests.fixtures.emulator import EmulatorHandle

ONSMQTT = "2020-04-20"
IOT_VERSION = "2018-01-20"


def iso(ts: float) -> str:
    """Epoch seconds as the vendor's `YYYY-MM-DDThh:mm:ssZ`."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Answer:
    """One emulator answer."""

    status: int
    text: str
    headers: Mapping[str, str]

    @property
    def json(self) -> Any:
        """The body as JSON."""
        import json

        return json.loads(self.text)

    @property
    def code(self) -> str | None:
        """The vendor error code, if any."""
        return self.json.get("Code") if self.status >= 400 else None


class Caller:
    """Sends signed OpenAPI requests to one emulator."""

    def __init__(self, session: aiohttp.ClientSession, emu: EmulatorHandle) -> None:
        self.session = session
        self.emu = emu

    def now(self) -> float:
        """The emulator clock's time (so ManualClock emulators get matching timestamps)."""
        return self.emu.config.clock.time()

    def v1_params(
        self,
        action: str,
        params: Mapping[str, str],
        *,
        method: str = "GET",
        version: str = ONSMQTT,
        key_id: str | None = None,
        secret: str | None = None,
        timestamp: str | None = None,
        nonce: str | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """All parameters of a v1-signed call, Signature included."""
        full = {
            "Action": action,
            "Version": version,
            "AccessKeyId": key_id or self.emu.access_key_id,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureVersion": "1.0",
            "SignatureNonce": nonce or uuid.uuid4().hex,
            "Timestamp": timestamp or iso(self.now()),
            **(extra or {}),
            **params,
        }
        full["Signature"] = sign_v1(method, full, secret or self.emu.access_key_secret)
        return full

    async def send(
        self, method: str, query: str, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> Answer:
        """Send a raw request; the query string is used exactly as given."""
        url = URL(f"{self.emu.url}/?{query}" if query else f"{self.emu.url}/", encoded=True)
        async with self.session.request(method, url, data=body or None, headers=headers) as resp:
            return Answer(resp.status, await resp.text(), dict(resp.headers))

    async def v1(
        self, action: str, params: Mapping[str, str] | None = None, *, form: bool = False, **kw: Any
    ) -> Answer:
        """A v1-signed call: GET with a query, or POST with a form body."""
        method = "POST" if form else kw.pop("method", "GET")
        full = self.v1_params(action, params or {}, method=method, **kw)
        encoded = "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in full.items())
        if form:
            return await self.send(
                "POST",
                "",
                encoded.encode(),
                {"Content-Type": "application/x-www-form-urlencoded"},
            )
        return await self.send(method, encoded)

    async def v3(
        self,
        action: str,
        params: Mapping[str, str] | None = None,
        *,
        version: str = ONSMQTT,
        key_id: str | None = None,
        secret: str | None = None,
        date: str | None = None,
        nonce: str | None = None,
        body: bytes = b"",
        send_body: bytes | None = None,
        tamper_query: str | None = None,
        drop_signed: str | None = None,
    ) -> Answer:
        """An ACS3-HMAC-SHA256 call: POST with the parameters in the query, as the SDK does."""
        pairs = list((params or {}).items())
        host = self.emu.endpoint
        headers = {
            "host": host,
            "x-acs-action": action,
            "x-acs-version": version,
            "x-acs-date": date or iso(self.now()),
            "x-acs-signature-nonce": nonce or uuid.uuid4().hex,
        }
        signed = dict(headers)
        if drop_signed:
            signed.pop(drop_signed)
        extra = acs3.sign_request_v3(
            "POST",
            "/",
            pairs,
            signed,
            body,
            key_id or self.emu.access_key_id,
            secret or self.emu.access_key_secret,
        )
        headers.pop("host")
        query = tamper_query if tamper_query is not None else urlencode(pairs)
        sent = body if send_body is None else send_body
        return await self.send("POST", query, sent, {**headers, **extra})


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """One client session per test."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def caller(http: aiohttp.ClientSession, emulator: EmulatorHandle) -> Caller:
    """A signed caller for the default emulator."""
    return Caller(http, emulator)
