"""Request signing for the vendor OpenAPI: signature v3 (ACS3-HMAC-SHA256).

Rules from the vendor's "V3 request body and signature" document, checked against the
official SDK (alibabacloud_tea_openapi 0.4.6, `Utils.get_authorization`):

    CanonicalRequest = METHOD \\n CanonicalURI \\n CanonicalQuery \\n
                       CanonicalHeaders \\n SignedHeaders \\n HexSHA256(body)
    StringToSign     = "ACS3-HMAC-SHA256" \\n HexSHA256(CanonicalRequest)
    Signature        = Hex(HMAC-SHA256(AccessKeySecret, StringToSign))

CanonicalQuery is the decoded parameters sorted by name, names and values percent-encoded
as RFC 3986 (the same encoding as signature v1); CanonicalHeaders is `name:value\\n` per
signed header, names lowercased and sorted, values trimmed, repeated values joined by `,`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from authserver.cloud.signing import percent_encode

ALGORITHM = "ACS3-HMAC-SHA256"
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()


def hex_sha256(data: bytes) -> str:
    """Lowercase hex SHA-256, the payload hash of `x-acs-content-sha256`."""
    return hashlib.sha256(data).hexdigest()


def canonical_query_v3(params: Iterable[tuple[str, str]]) -> str:
    """Decoded query parameters, sorted by name, re-encoded as RFC 3986 and joined by `&`."""
    return "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(params))


def canonical_headers(headers: Mapping[str, Iterable[str]]) -> tuple[str, str]:
    """`(CanonicalHeaders, SignedHeaders)` for the given lowercase name -> values."""
    names = sorted(headers)
    text = "".join(
        f"{name}:{','.join(sorted(v.strip() for v in headers[name]))}\n" for name in names
    )
    return text, ";".join(names)


def canonical_request(
    method: str,
    path: str,
    params: Iterable[tuple[str, str]],
    headers: Mapping[str, Iterable[str]],
    payload_sha256: str,
) -> str:
    """The canonical request text that ACS3-HMAC-SHA256 hashes."""
    header_text, signed = canonical_headers(headers)
    query = canonical_query_v3(params)
    return "\n".join([method.upper(), path or "/", query, header_text, signed, payload_sha256])


def string_to_sign_v3(canonical: str) -> str:
    """`ACS3-HMAC-SHA256\\n<hex sha256 of the canonical request>`."""
    return f"{ALGORITHM}\n{hex_sha256(canonical.encode())}"


def sign_v3(canonical: str, access_key_secret: str) -> str:
    """Hex HMAC-SHA256 of the v3 string-to-sign, keyed by the AccessKey secret."""
    return hmac.new(
        access_key_secret.encode(), string_to_sign_v3(canonical).encode(), hashlib.sha256
    ).hexdigest()


def authorization_header(access_key_id: str, signed_headers: str, signature: str) -> str:
    """The `Authorization` header value of a v3-signed request."""
    return (
        f"{ALGORITHM} Credential={access_key_id},"
        f"SignedHeaders={signed_headers},Signature={signature}"
    )


@dataclass(frozen=True)
class Authorization:
    """The parts of an `Authorization: ACS3-HMAC-SHA256 ...` header."""

    credential: str
    signed_headers: tuple[str, ...]
    signature: str


_AUTH_PART = re.compile(r"\s*(Credential|SignedHeaders|Signature)=([^,\s]*)\s*")


def parse_authorization(value: str) -> Authorization | None:
    """Split an ACS3-HMAC-SHA256 `Authorization` header; None when it is malformed."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        return None
    parts: dict[str, str] = {}
    for piece in rest.split(","):
        match = _AUTH_PART.fullmatch(piece)
        if match is None or match.group(1) in parts:
            return None
        parts[match.group(1)] = match.group(2)
    if set(parts) != {"Credential", "SignedHeaders", "Signature"} or not all(parts.values()):
        return None
    return Authorization(
        credential=parts["Credential"],
        signed_headers=tuple(parts["SignedHeaders"].split(";")),
        signature=parts["Signature"],
    )


def sign_request_v3(
    method: str,
    path: str,
    params: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes,
    access_key_id: str,
    access_key_secret: str,
) -> dict[str, str]:
    """Headers to add to a request so it is v3-signed: `x-acs-content-sha256`, `Authorization`.

    `headers` are the headers to sign (at least `host` and the `x-acs-*` ones), any case.
    """
    payload = hex_sha256(body)
    signed = {k.lower(): [v] for k, v in headers.items()}
    signed["x-acs-content-sha256"] = [payload]
    canonical = canonical_request(method, path, params, signed, payload)
    _, signed_names = canonical_headers(signed)
    return {
        "x-acs-content-sha256": payload,
        "Authorization": authorization_header(
            access_key_id, signed_names, sign_v3(canonical, access_key_secret)
        ),
    }
