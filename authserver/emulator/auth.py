"""Request authentication as the vendor's API gateway does it: signature v1 and ACS3.

Both paths decode the parameters and re-encode them before verifying, never signing the raw
query string: clients (the official SDK's async transport among them) re-normalise the query.
A `SecurityToken` (STS) is accepted when present and non-empty for a known AccessKeyId; the
emulator does not model STS token validity.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from multidict import CIMultiDictProxy

from authserver.cloud import acs3
from authserver.cloud.signing import sign_v1
from authserver.emulator import protocol
from authserver.emulator.state import EmulatorState

_TIMESTAMP_FORMATS = ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class IncomingRequest:
    """What the verifier needs from an HTTP request, already decoded."""

    method: str
    path: str
    query: Sequence[tuple[str, str]]
    params: Mapping[str, str]
    headers: CIMultiDictProxy[str]
    body: bytes


def parse_timestamp(value: str) -> float:
    """Epoch seconds of an ISO 8601 UTC timestamp (`YYYY-MM-DDThh:mm:ssZ`)."""
    for fmt in _TIMESTAMP_FORMATS:
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    raise protocol.timestamp_format(value)


def _check_time_and_nonce(state: EmulatorState, key_id: str, stamp: str, nonce: str) -> None:
    if abs(state.clock.time() - parse_timestamp(stamp)) > state.timestamp_tolerance:
        raise protocol.timestamp_expired(stamp)
    if state.nonce_seen(key_id, nonce):
        raise protocol.nonce_used()


def _secret_for(state: EmulatorState, key_id: str) -> str:
    secret = state.access_keys.get(key_id)
    if secret is None:
        raise protocol.access_key_not_found()
    return secret


def verify_v1(state: EmulatorState, request: IncomingRequest) -> str:
    """Verify an RPC signature v1 (HMAC-SHA1) request; its AccessKeyId."""
    params = request.params
    for name in ("AccessKeyId", "Signature", "SignatureMethod", "Timestamp", "SignatureNonce"):
        if not params.get(name):
            raise protocol.missing(name)
    if params["SignatureMethod"].upper() != "HMAC-SHA1":
        raise protocol.VendorError(
            400, "InvalidSignatureMethod", "Specified signature method is not supported."
        )
    if params.get("SignatureVersion", "1.0") != "1.0":
        raise protocol.VendorError(
            400, "InvalidSignatureVersion", "Specified signature version is not supported."
        )
    key_id = params["AccessKeyId"]
    secret = _secret_for(state, key_id)
    nonce = params["SignatureNonce"]
    _check_time_and_nonce(state, key_id, params["Timestamp"], nonce)
    expected = sign_v1(request.method, params, secret)
    if not hmac.compare_digest(expected.encode(), params["Signature"].encode()):
        raise protocol.signature_mismatch()
    state.remember_nonce(key_id, nonce)
    return key_id


def verify_v3(state: EmulatorState, request: IncomingRequest) -> str:
    """Verify an ACS3-HMAC-SHA256 request (headers and `Authorization`); its AccessKeyId."""
    auth = acs3.parse_authorization(request.headers.get("Authorization", ""))
    if auth is None:
        raise protocol.incomplete_signature(
            "Expected ACS3-HMAC-SHA256 Credential,SignedHeaders,Signature."
        )
    headers = request.headers
    secret = _secret_for(state, auth.credential)
    stamp = headers.get("x-acs-date")
    if not stamp:
        raise protocol.missing("Timestamp")
    nonce = headers.get("x-acs-signature-nonce")
    if not nonce:
        raise protocol.missing("SignatureNonce")
    _check_time_and_nonce(state, auth.credential, stamp, nonce)

    payload = headers.get("x-acs-content-sha256", "")
    if not hmac.compare_digest(payload.encode(), acs3.hex_sha256(request.body).encode()):
        raise protocol.signature_mismatch("x-acs-content-sha256 does not match the body.")
    signed = set(auth.signed_headers)
    must_sign = {"host"} | {h.lower() for h in headers if h.lower().startswith("x-acs-")}
    if not must_sign <= signed:
        raise protocol.signature_mismatch(f"Headers not signed: {sorted(must_sign - signed)}.")
    if any(name not in headers for name in signed):
        raise protocol.signature_mismatch("A signed header is missing from the request.")
    signed_values = {name: headers.getall(name) for name in signed}
    canonical = acs3.canonical_request(
        request.method, request.path, request.query, signed_values, payload
    )
    expected = acs3.sign_v3(canonical, secret)
    if not hmac.compare_digest(expected.encode(), auth.signature.lower().encode()):
        raise protocol.signature_mismatch()
    state.remember_nonce(auth.credential, nonce)
    return auth.credential


def authenticate(state: EmulatorState, request: IncomingRequest) -> str:
    """Verify whichever signature the request carries; its AccessKeyId, or a VendorError."""
    if request.headers.get("Authorization", "").startswith("ACS3-"):
        return verify_v3(state, request)
    if "Authorization" in request.headers:
        raise protocol.incomplete_signature("Unsupported Authorization scheme.")
    return verify_v1(state, request)
