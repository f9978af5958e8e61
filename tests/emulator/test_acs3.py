"""authserver.cloud.acs3 signs exactly as the official SDK does (its own signer as oracle)."""

from __future__ import annotations

from alibabacloud_tea_openapi.utils import Utils
from darabonba.request import DaraRequest

from authserver.cloud import acs3


def test_same_authorization_as_the_sdk() -> None:
    query = {"Actions": "R,W", "Resources": "a/+,b/#", "InstanceId": "post-cn-x", "Sp": "a b*~"}
    headers = {
        "host": "onsmqtt.cn-hangzhou.aliyuncs.com",
        "x-acs-action": "ApplyToken",
        "x-acs-version": "2020-04-20",
        "x-acs-date": "2026-11-25T12:00:00Z",
        "x-acs-signature-nonce": "abc",
        "user-agent": "test",
    }
    body = b""
    ours = acs3.sign_request_v3("POST", "/", query.items(), headers, body, "AK", "SECRET")

    request = DaraRequest()
    request.method = "POST"
    request.pathname = "/"
    request.query = dict(query)
    request.headers = {**headers, "x-acs-content-sha256": acs3.hex_sha256(body)}
    theirs = Utils.get_authorization(
        request, "ACS3-HMAC-SHA256", acs3.hex_sha256(body), "AK", "SECRET"
    )
    assert ours["Authorization"] == theirs
    assert ours["x-acs-content-sha256"] == acs3.EMPTY_BODY_SHA256


def test_parse_authorization() -> None:
    value = acs3.authorization_header("AK", "host;x-acs-date", "ab12")
    parsed = acs3.parse_authorization(value)
    assert parsed == acs3.Authorization("AK", ("host", "x-acs-date"), "ab12")
    assert acs3.parse_authorization("ACS3-HMAC-SHA256 Credential=AK") is None
    assert acs3.parse_authorization("HMAC-SHA1 Credential=AK,SignedHeaders=h,Signature=s") is None
