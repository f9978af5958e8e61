"""Signature v1 and ACS3-HMAC-SHA256 verification, timestamp skew and nonce replay."""

from __future__ import annotations

import uuid

import pytest

from authserver.clock import ManualClock
from authserver.cloud.signing import percent_encode
from tests.emulator.conftest import Caller, iso
from tests.fixtures.emulator import EmulatorHandle, MakeEmulator


def query_params(emu: EmulatorHandle) -> dict[str, str]:
    return {"InstanceId": emu.instance_id, "Token": "no-such-token"}


async def test_v1_get_is_accepted(caller: Caller, emulator: EmulatorHandle) -> None:
    answer = await caller.v1("QueryToken", query_params(emulator))
    assert answer.status == 200, answer.text
    assert answer.json["TokenStatus"] is False
    assert answer.json["RequestId"]


async def test_v1_form_body_is_accepted(caller: Caller, emulator: EmulatorHandle) -> None:
    answer = await caller.v1("QueryToken", query_params(emulator), form=True)
    assert answer.status == 200, answer.text


async def test_v1_post_with_query_is_accepted(caller: Caller, emulator: EmulatorHandle) -> None:
    answer = await caller.v1("QueryToken", query_params(emulator), method="POST")
    assert answer.status == 200, answer.text


async def test_v1_renormalised_query_is_accepted(caller: Caller, emulator: EmulatorHandle) -> None:
    """The SDK's async transport sends `R,W`, `%2B` and raw colons: decode, then re-encode."""
    expire = str(int(caller.now() * 1000) + 3_600_000)
    params = caller.v1_params(
        "ApplyToken",
        {
            "Actions": "R,W",
            "ExpireTime": expire,
            "InstanceId": emulator.instance_id,
            "Resources": "a/+,b/#",
        },
    )
    raw = "&".join(
        f"{k}={percent_encode(v).replace('%2C', ',').replace('%3A', ':')}"
        for k, v in params.items()
    )
    assert "Actions=R,W" in raw
    assert "Resources=a/%2B,b/%23" in raw.replace("%2F", "/")
    answer = await caller.send("GET", raw.replace("%2F", "/"))
    assert answer.status == 200, answer.text


async def test_v1_bad_signature_is_rejected(caller: Caller, emulator: EmulatorHandle) -> None:
    answer = await caller.v1("QueryToken", query_params(emulator), secret="wrong-secret")
    assert (answer.status, answer.code) == (400, "SignatureDoesNotMatch")


async def test_v1_tampered_parameter_is_rejected(caller: Caller, emulator: EmulatorHandle) -> None:
    params = caller.v1_params("QueryToken", query_params(emulator))
    params["Token"] = "another-token"
    query = "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in params.items())
    answer = await caller.send("GET", query)
    assert (answer.status, answer.code) == (400, "SignatureDoesNotMatch")


async def test_v1_signed_as_get_but_sent_as_post_is_rejected(
    caller: Caller, emulator: EmulatorHandle
) -> None:
    params = caller.v1_params("QueryToken", query_params(emulator), method="GET")
    query = "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in params.items())
    answer = await caller.send("POST", query)
    assert answer.code == "SignatureDoesNotMatch"


async def test_unknown_access_key_is_404(caller: Caller, emulator: EmulatorHandle) -> None:
    answer = await caller.v1("QueryToken", query_params(emulator), key_id="LTAInobody")
    assert (answer.status, answer.code) == (404, "InvalidAccessKeyId.NotFound")
    answer = await caller.v3("QueryToken", query_params(emulator), key_id="LTAInobody")
    assert (answer.status, answer.code) == (404, "InvalidAccessKeyId.NotFound")


@pytest.mark.parametrize("name", ["AccessKeyId", "Signature", "Timestamp", "SignatureNonce"])
async def test_v1_missing_common_parameter(
    caller: Caller, emulator: EmulatorHandle, name: str
) -> None:
    params = caller.v1_params("QueryToken", query_params(emulator))
    del params[name]
    query = "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in params.items())
    answer = await caller.send("GET", query)
    assert (answer.status, answer.code) == (400, f"Missing{name}")


async def test_security_token_is_accepted(caller: Caller, emulator: EmulatorHandle) -> None:
    answer = await caller.v1(
        "QueryToken", query_params(emulator), extra={"SecurityToken": "CAIS-sts-token"}
    )
    assert answer.status == 200, answer.text


async def test_acs3_is_accepted(caller: Caller, emulator: EmulatorHandle) -> None:
    answer = await caller.v3("QueryToken", query_params(emulator))
    assert answer.status == 200, answer.text
    assert answer.json["TokenStatus"] is False


async def test_acs3_bad_signature_is_rejected(caller: Caller, emulator: EmulatorHandle) -> None:
    answer = await caller.v3("QueryToken", query_params(emulator), secret="wrong")
    assert (answer.status, answer.code) == (400, "SignatureDoesNotMatch")


async def test_acs3_tampered_query_is_rejected(caller: Caller, emulator: EmulatorHandle) -> None:
    tampered = f"InstanceId={emulator.instance_id}&Token=other"
    answer = await caller.v3("QueryToken", query_params(emulator), tamper_query=tampered)
    assert answer.code == "SignatureDoesNotMatch"


async def test_acs3_body_not_matching_its_hash_is_rejected(
    caller: Caller, emulator: EmulatorHandle
) -> None:
    answer = await caller.v3("QueryToken", query_params(emulator), send_body=b"Token=x")
    assert answer.code == "SignatureDoesNotMatch"


async def test_acs3_unsigned_acs_header_is_rejected(
    caller: Caller, emulator: EmulatorHandle
) -> None:
    answer = await caller.v3("QueryToken", query_params(emulator), drop_signed="x-acs-action")
    assert answer.code == "SignatureDoesNotMatch"


async def test_acs3_malformed_authorization(caller: Caller, emulator: EmulatorHandle) -> None:
    headers = {
        "x-acs-action": "QueryToken",
        "x-acs-version": "2020-04-20",
        "x-acs-date": iso(caller.now()),
        "x-acs-signature-nonce": uuid.uuid4().hex,
        "Authorization": "ACS3-HMAC-SHA256 Credential=x",
    }
    answer = await caller.send("POST", f"InstanceId={emulator.instance_id}&Token=t", b"", headers)
    assert (answer.status, answer.code) == (400, "IncompleteSignature")


@pytest.mark.parametrize("style", ["v1", "v3"])
@pytest.mark.parametrize(
    ("skew", "accepted"), [(-14 * 60, True), (14 * 60, True), (-16 * 60, False), (16 * 60, False)]
)
async def test_timestamp_skew(
    make_emulator: MakeEmulator, http: object, style: str, skew: int, accepted: bool
) -> None:
    clock = ManualClock()
    emu = await make_emulator(clock=clock)
    caller = Caller(http, emu)  # type: ignore[arg-type]
    stamp = iso(clock.time() + skew)
    if style == "v1":
        answer = await caller.v1("QueryToken", query_params(emu), timestamp=stamp)
    else:
        answer = await caller.v3("QueryToken", query_params(emu), date=stamp)
    if accepted:
        assert answer.status == 200, answer.text
    else:
        assert (answer.status, answer.code) == (400, "InvalidTimeStamp.Expired")


async def test_timestamp_format(caller: Caller, emulator: EmulatorHandle) -> None:
    answer = await caller.v1("QueryToken", query_params(emulator), timestamp="yesterday")
    assert (answer.status, answer.code) == (400, "InvalidTimeStamp.Format")


@pytest.mark.parametrize("style", ["v1", "v3"])
async def test_nonce_replay_is_rejected(
    caller: Caller, emulator: EmulatorHandle, style: str
) -> None:
    send = caller.v1 if style == "v1" else caller.v3
    first = await send("QueryToken", query_params(emulator), nonce="nonce-1")
    again = await send("QueryToken", query_params(emulator), nonce="nonce-1")
    assert first.status == 200, first.text
    assert (again.status, again.code) == (400, "SignatureNonceUsed")


async def test_failed_signature_does_not_burn_the_nonce(
    caller: Caller, emulator: EmulatorHandle
) -> None:
    bad = await caller.v1("QueryToken", query_params(emulator), nonce="n", secret="wrong")
    good = await caller.v1("QueryToken", query_params(emulator), nonce="n")
    assert bad.code == "SignatureDoesNotMatch"
    assert good.status == 200, good.text


async def test_nonces_are_forgotten_after_the_window(
    make_emulator: MakeEmulator, http: object
) -> None:
    """Memory stays bounded: a nonce is kept only as long as a replay could pass the clock."""
    clock = ManualClock()
    emu = await make_emulator(clock=clock)
    caller = Caller(http, emu)  # type: ignore[arg-type]
    assert (await caller.v1("QueryToken", query_params(emu), nonce="n")).status == 200
    clock.advance(1799)
    assert (
        await caller.v1("QueryToken", query_params(emu), nonce="n")
    ).code == "SignatureNonceUsed"
    clock.advance(2)
    assert (await caller.v1("QueryToken", query_params(emu), nonce="n")).status == 200
