"""Credentials from the environment, endpoints, the session, and the gateway-facing errors."""

from __future__ import annotations

import aiohttp
import pytest

from authserver.cloud.client import endpoint_for_region, iot_endpoint_for_region, make_session
from authserver.cloud.credentials import Credentials, credentials_from_env
from authserver.cloud.errors import (
    CloudRejected,
    CloudServerError,
    CloudThrottled,
    UpstreamThrottled,
    UpstreamUnavailable,
    classify,
)
from authserver.errors import GatewayError, ServiceUnavailable


def test_credentials_from_the_vendor_variables() -> None:
    creds, problems = credentials_from_env(
        {
            "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIid",
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "s3cret",
            "ALIBABA_CLOUD_SECURITY_TOKEN": "sts-t0ken",
        }
    )
    assert problems == []
    assert creds == Credentials("LTAIid", "s3cret", "sts-t0ken")
    assert "s3cret" not in repr(creds)
    assert "sts-t0ken" not in repr(creds)
    assert "s3cret" not in str(creds)
    assert "LTAIid" in repr(creds)


def test_every_missing_variable_is_reported() -> None:
    creds, problems = credentials_from_env({"ALIBABA_CLOUD_SECURITY_TOKEN": "t"})
    assert creds is None
    assert len(problems) == 3
    assert any("ALIBABA_CLOUD_ACCESS_KEY_ID" in p for p in problems)
    assert any("ALIBABA_CLOUD_ACCESS_KEY_SECRET" in p for p in problems)
    creds, problems = credentials_from_env({"ALIBABA_CLOUD_ACCESS_KEY_ID": "x"})
    assert creds is None
    assert problems == ["ALIBABA_CLOUD_ACCESS_KEY_SECRET is not set"]
    creds, problems = credentials_from_env(
        {"ALIBABA_CLOUD_ACCESS_KEY_ID": "x", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "y"}
    )
    assert creds == Credentials("x", "y", None)
    assert problems == []


def test_endpoints() -> None:
    assert endpoint_for_region("cn-shanghai") == "https://onsmqtt.cn-shanghai.aliyuncs.com"
    assert iot_endpoint_for_region("cn-shanghai") == "https://iot.cn-shanghai.aliyuncs.com"


async def test_the_session_keeps_no_cookies_and_has_timeouts() -> None:
    session = make_session(timeout=3)
    try:
        assert isinstance(session.cookie_jar, aiohttp.DummyCookieJar)
        assert session.timeout.total == 3
        assert session.timeout.connect is not None
    finally:
        await session.close()


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, "ParameterCheckFailed", CloudRejected),
        (400, "QueryTokenOverflow", CloudThrottled),
        (500, "SystemOverFlow", CloudThrottled),
        (500, "InternalError", CloudServerError),
        (400, "InternalServerError", CloudServerError),
        (404, "ApiNotSupport", CloudRejected),
    ],
)
def test_classify(status: int, code: str, kind: type[GatewayError]) -> None:
    err = classify(action="A", http_status=status, vendor_code=code, request_id="R", message="m")
    assert type(err) is kind
    assert err.status == 502
    assert err.extra == {"upstream_code": code, "upstream_request_id": "R"}


def test_gateway_facing_errors_carry_retry_after() -> None:
    throttled = UpstreamThrottled("x", retry_after=2.2)
    assert isinstance(throttled, ServiceUnavailable)
    assert (throttled.status, throttled.code) == (503, "upstream_throttled")
    assert throttled.headers == {"Retry-After": "3"}
    assert UpstreamThrottled("x", retry_after=0.01).headers == {"Retry-After": "1"}
    unavailable = UpstreamUnavailable("y")
    assert (unavailable.status, unavailable.code) == (503, "upstream_unavailable")
    assert unavailable.headers == {"Retry-After": "1"}
