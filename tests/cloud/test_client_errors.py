"""The client's signing, error classes, retries and circuit, against a scripted fake upstream.

The fake upstream is a real aiohttp server on a loopback port that answers from a script
(status and JSON body per attempt) and records what it received.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from authserver.clock import ManualClock
from authserver.cloud.circuit import CircuitBreaker
from authserver.cloud.client import CloudClient, make_session
from authserver.cloud.credentials import Credentials
from authserver.cloud.errors import (
    CloudError,
    CloudRejected,
    CloudServerError,
    CloudThrottled,
    UpstreamThrottled,
    UpstreamUnavailable,
)
from authserver.cloud.quota import QuotaGovernor
from authserver.cloud.signing import sign_v1
from authserver.errors import GatewayError, NotConfigured
from authserver.fingerprint import fingerprint
from tests.fixtures.redis import free_port

SECRET = "fake-secret"
CREDS = Credentials("LTAIfake", SECRET)
OK_APPLY = (200, {"RequestId": "R-ok", "Token": "tok+/="})


def error(status: int, code: str) -> tuple[int, dict[str, Any]]:
    """A vendor error answer."""
    return status, {"RequestId": f"R-{code}", "Code": code, "Message": f"{code} message"}


@dataclass
class FakeUpstream:
    """What the fake upstream answers (in order; the last answer repeats) and what it got."""

    url: str = ""
    answers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    latency: float = 0.0
    requests: list[dict[str, str]] = field(default_factory=list)
    raw_queries: list[str] = field(default_factory=list)

    def script(self, *answers: tuple[int, dict[str, Any]]) -> None:
        """Answer these, in order, from now on."""
        self.answers = list(answers)


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> FakeUpstream:
    """A scripted fake upstream on a free loopback port."""
    fake = FakeUpstream()

    async def handle(request: web.Request) -> web.Response:
        form = dict(parse_qsl((await request.read()).decode(), keep_blank_values=True))
        fake.requests.append(form)
        fake.raw_queries.append(request.rel_url.raw_query_string)
        if fake.latency:
            await asyncio.sleep(fake.latency)
        status, body = fake.answers[0] if len(fake.answers) == 1 else fake.answers.pop(0)
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_post("/", handle)
    server = await aiohttp_server(app)
    fake.url = str(server.make_url("/"))
    return fake


MakeClient = Callable[..., CloudClient]


@pytest.fixture
async def make_client(upstream: FakeUpstream) -> AsyncIterator[MakeClient]:
    """Clients of the fake upstream on one session; no backoff pauses unless asked."""
    session = make_session()

    def build(**kwargs: Any) -> CloudClient:
        kwargs.setdefault("backoff_base", 0.001)
        kwargs.setdefault("rng", random.Random(7))
        credentials = kwargs.pop("credentials", CREDS)
        return CloudClient(session, credentials, endpoint=upstream.url, **kwargs)

    yield build
    await session.close()


async def apply(client: CloudClient, **kwargs: Any) -> Any:
    """An ApplyToken call with valid arguments."""
    return await client.apply_token("post-cn-x", ["a/+", "b/#"], "R,W", 1_900_000_000_000, **kwargs)


async def test_signs_a_post_form_with_every_common_parameter(
    upstream: FakeUpstream, make_client: MakeClient
) -> None:
    clock = ManualClock(start=1_700_000_000.0)
    client = make_client(clock=clock, credentials=Credentials("LTAIfake", SECRET, "sts-token"))
    upstream.script(OK_APPLY)
    applied = await apply(client)
    assert applied.token == "tok+/="
    assert applied.request_id == "R-ok"
    assert "tok+/=" not in repr(applied)
    sent = upstream.requests[0]
    assert upstream.raw_queries == [""], "nothing in the URL"
    assert sent["Action"] == "ApplyToken"
    assert sent["Version"] == "2020-04-20"
    assert sent["Format"] == "JSON"
    assert sent["SignatureMethod"] == "HMAC-SHA1"
    assert sent["SignatureVersion"] == "1.0"
    assert sent["Timestamp"] == "2023-11-14T22:13:20Z"
    assert sent["SecurityToken"] == "sts-token"
    assert sent["RegionId"] == "cn-hangzhou"
    assert sent["Resources"] == "a/+,b/#"
    assert sent["Actions"] == "R,W"
    assert sent["ExpireTime"] == "1900000000000"
    assert sent["Signature"] == sign_v1("POST", sent, SECRET)


async def test_refuses_unsorted_resources_without_calling(
    upstream: FakeUpstream, make_client: MakeClient
) -> None:
    client = make_client()
    with pytest.raises(ValueError, match="sorted"):
        await client.apply_token("post-cn-x", ["b", "a"], "R", 1_900_000_000_000)
    with pytest.raises(ValueError, match="actions"):
        await client.apply_token("post-cn-x", ["a"], "RW", 1_900_000_000_000)
    with pytest.raises(NotConfigured):
        await client.query_client_ids("iot-1")
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("answer", "kind", "retryable"),
    [
        (error(400, "ParameterCheckFailed"), CloudRejected, False),
        (error(400, "InvalidParameter.Resources"), CloudRejected, False),
        (error(400, "PermissionCheckFailed"), CloudRejected, False),
        (error(404, "ApiNotSupport"), CloudRejected, False),
        (error(400, "ApplyTokenOverflow"), CloudThrottled, True),
        (error(400, "ApplyTokenOverFlow"), CloudThrottled, True),
        (error(500, "SystemOverflow"), CloudThrottled, True),
        (error(429, "Throttling.User"), CloudThrottled, True),
        (error(503, "ServiceUnavailable"), CloudThrottled, True),
        (error(500, "InternalError"), CloudServerError, True),
        (error(502, "BadGateway"), CloudServerError, True),
    ],
)
async def test_each_vendor_error_becomes_its_type(
    upstream: FakeUpstream,
    make_client: MakeClient,
    answer: tuple[int, dict[str, Any]],
    kind: type[CloudError],
    retryable: bool,
) -> None:
    client = make_client(max_attempts=1)
    upstream.script(answer)
    with pytest.raises(GatewayError) as caught:
        await apply(client)
    err = caught.value
    # One attempt allowed: a retryable error ends as a gateway-facing 503 caused by it, or a 502.
    cause = err if isinstance(err, CloudError) else err.__cause__
    assert type(cause) is kind
    assert isinstance(cause, CloudError)
    assert cause.vendor_code == answer[1]["Code"]
    assert cause.http_status == answer[0]
    assert cause.request_id == answer[1]["RequestId"]
    assert cause.action == "ApplyToken"
    assert cause.retryable is retryable
    assert len(upstream.requests) == 1


async def test_parameter_errors_are_not_retried_and_leave_the_circuit_closed(
    upstream: FakeUpstream, make_client: MakeClient
) -> None:
    client = make_client(circuit=CircuitBreaker(failure_threshold=1))
    upstream.script(error(400, "ParameterCheckFailed"))
    for _ in range(3):
        with pytest.raises(CloudRejected) as caught:
            await apply(client)
    assert caught.value.status == 502
    assert caught.value.code == "upstream_rejected"
    assert caught.value.extra["upstream_code"] == "ParameterCheckFailed"
    assert len(upstream.requests) == 3
    assert client.circuit.state == "closed"


async def test_retries_internal_errors_then_succeeds_with_a_fresh_nonce(
    upstream: FakeUpstream, make_client: MakeClient
) -> None:
    client = make_client()
    upstream.script(error(500, "InternalError"), error(500, "InternalError"), OK_APPLY)
    assert (await apply(client)).token == "tok+/="
    assert len(upstream.requests) == 3
    assert len({r["SignatureNonce"] for r in upstream.requests}) == 3
    assert client.stats()["results"]["ApplyToken"] == {"InternalError": 2, "ok": 1}
    assert client.circuit.consecutive_failures == 0


async def test_retries_throttling_within_the_deadline(
    upstream: FakeUpstream, make_client: MakeClient
) -> None:
    client = make_client(backoff_base=0.02)
    upstream.script(error(400, "ApplyTokenOverflow"), error(500, "SystemOverflow"), OK_APPLY)
    assert (await apply(client, deadline=2.0)).token == "tok+/="
    assert len(upstream.requests) == 3


async def test_persistent_throttling_ends_as_upstream_throttled(
    upstream: FakeUpstream, make_client: MakeClient
) -> None:
    client = make_client(max_attempts=3)
    upstream.script(error(400, "ApplyTokenOverflow"))
    with pytest.raises(UpstreamThrottled) as caught:
        await apply(client)
    assert caught.value.status == 503
    assert int(caught.value.headers["Retry-After"]) >= 1
    assert isinstance(caught.value.__cause__, CloudThrottled)
    assert len(upstream.requests) == 3


async def test_persistent_server_errors_end_as_the_last_server_error(
    upstream: FakeUpstream, make_client: MakeClient
) -> None:
    client = make_client(max_attempts=2)
    upstream.script(error(500, "InternalError"))
    with pytest.raises(CloudServerError) as caught:
        await apply(client)
    assert caught.value.vendor_code == "InternalError"
    assert caught.value.status == 502
    assert len(upstream.requests) == 2


async def test_backoff_is_full_jitter_and_bounded(
    upstream: FakeUpstream, make_client: MakeClient
) -> None:
    clock = ManualClock()
    client = make_client(
        max_attempts=4, backoff_base=0.1, backoff_max=0.15, rng=random.Random(1), clock=clock
    )
    expected = random.Random(1)
    pauses = [expected.uniform(0, min(0.15, 0.1 * 2**n)) for n in (1, 2, 3)]
    upstream.script(error(500, "InternalError"))
    started = clock.monotonic()
    with pytest.raises(CloudServerError):
        await apply(client, deadline=5)
    # Three pauses between four attempts (the last failure does not pause), on the clock.
    assert clock.monotonic() - started == pytest.approx(sum(pauses))
    assert len(upstream.requests) == 4


async def test_deadline_is_respected_when_the_upstream_is_slow(
    upstream: FakeUpstream, make_client: MakeClient
) -> None:
    client = make_client()
    upstream.latency = 2.0
    upstream.script(OK_APPLY)
    with pytest.raises(UpstreamUnavailable) as caught:
        await apply(client, deadline=0.3)
    # The one attempt had the whole deadline; none was started after it ran out.
    assert client.stats()["attempts"] == {"ApplyToken": 1}
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert caught.value.code == "upstream_unavailable"
    assert caught.value.headers["Retry-After"] == "1"


async def test_connection_errors_become_upstream_unavailable() -> None:
    session = make_session()
    try:
        # A port with nothing listening: connection refused on every attempt.
        client = CloudClient(
            session, CREDS, endpoint=f"http://127.0.0.1:{free_port()}", backoff_base=0.001
        )
        with pytest.raises(UpstreamUnavailable) as caught:
            await apply(client)
        assert isinstance(caught.value.__cause__, aiohttp.ClientError)
        assert client.stats()["results"]["ApplyToken"] == {"connection_error": 4}
    finally:
        await session.close()


async def test_the_circuit_opens_then_fails_fast_then_recovers_half_open(
    upstream: FakeUpstream, make_client: MakeClient
) -> None:
    circuit_clock = ManualClock()
    circuit = CircuitBreaker(failure_threshold=3, reset_timeout=10, clock=circuit_clock)
    client = make_client(circuit=circuit, max_attempts=10)
    upstream.script(error(500, "InternalError"))
    # The call whose failures open the circuit reports the last of them.
    with pytest.raises(CloudServerError):
        await apply(client)
    assert len(upstream.requests) == 3
    assert circuit.state == "open"

    with pytest.raises(UpstreamUnavailable, match="circuit is open") as caught:
        await apply(client)
    assert caught.value.headers["Retry-After"] == "10"
    assert len(upstream.requests) == 3

    # After the pause one probe goes; it fails, so the circuit opens again.
    circuit_clock.advance(10)
    with pytest.raises(CloudServerError):
        await apply(client)
    assert len(upstream.requests) == 4
    assert circuit.state == "open"

    # The next probe succeeds and closes the circuit.
    circuit_clock.advance(10)
    upstream.script(OK_APPLY)
    assert (await apply(client)).token == "tok+/="
    assert circuit.state == "closed"


async def test_retries_wait_for_the_governor(
    upstream: FakeUpstream, make_client: MakeClient
) -> None:
    clock = ManualClock()
    governor = QuotaGovernor({"ApplyToken": 10}, margin=0.0, clock=clock)
    client = make_client(governor=governor, clock=clock)
    upstream.script(error(500, "InternalError"), error(500, "InternalError"), OK_APPLY)
    started = clock.monotonic()
    await apply(client)
    # Each attempt takes a quota slot, 0.1 s apart (the backoff pauses are shorter).
    assert clock.monotonic() - started == pytest.approx(2 * 0.1)
    assert governor.stats()["acquired"]["ApplyToken"] == 3


async def test_governor_refusal_is_immediate(
    upstream: FakeUpstream, make_client: MakeClient
) -> None:
    clock = ManualClock()
    client = make_client(governor=QuotaGovernor({"RevokeToken": 1}, clock=clock), clock=clock)
    upstream.script((200, {"RequestId": "R"}))
    await client.revoke_token("post-cn-x", "t1")
    started = clock.monotonic()
    with pytest.raises(UpstreamThrottled):
        await client.revoke_token("post-cn-x", "t2", deadline=0.5)
    assert clock.monotonic() == started, "refused without waiting"
    assert len(upstream.requests) == 1


async def test_iot_errors_in_a_200_answer_are_translated(
    upstream: FakeUpstream, make_client: MakeClient
) -> None:
    client = make_client(iot_endpoint=upstream.url)
    upstream.script(
        (
            200,
            {
                "RequestId": "R-iot",
                "Success": False,
                "Code": "iot.device.NotExistedDevice",
                "ErrorMessage": "no such device",
            },
        )
    )
    with pytest.raises(CloudRejected) as caught:
        await client.query_client_ids("missing")
    assert caught.value.vendor_code == "iot.device.NotExistedDevice"
    assert caught.value.request_id == "R-iot"
    assert upstream.requests[0]["Version"] == "2018-01-20"
    assert upstream.requests[0]["IotId"] == "missing"


async def test_a_malformed_success_is_an_upstream_error(
    upstream: FakeUpstream, make_client: MakeClient
) -> None:
    client = make_client()
    upstream.script((200, {"RequestId": "R-odd"}))
    with pytest.raises(CloudError) as caught:
        await apply(client)
    assert caught.value.vendor_code == "MalformedResponse"
    assert caught.value.code == "upstream_error"


async def test_logs_fingerprints_never_tokens_or_secrets(
    upstream: FakeUpstream, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client()
    token = "very-secret-token-value"
    upstream.script(error(500, "InternalError"), (200, {"RequestId": "R-q", "TokenStatus": True}))
    with caplog.at_level(logging.DEBUG, logger="authserver.cloud.client"):
        assert await client.query_token("post-cn-x", token)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert fingerprint(token) in text
    assert "InternalError" in text
    assert "R-q" in text
    for secret in (token, SECRET, upstream.requests[0]["Signature"]):
        assert secret not in text


async def test_stats_count_results_per_action(
    upstream: FakeUpstream, make_client: MakeClient
) -> None:
    client = make_client()
    upstream.script((200, {"RequestId": "R", "OnlineStatus": True}))
    assert await client.query_session("post-cn-x", "GID_a@@@1")
    stats = client.stats()
    assert stats["results"] == {"QuerySessionByClientId": {"ok": 1}}
    assert stats["attempts"] == {"QuerySessionByClientId": 1}
    assert stats["circuit"] == "closed"
    json.dumps(stats)
