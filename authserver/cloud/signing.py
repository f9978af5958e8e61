"""Request signing for the vendor RPC OpenAPI: signature v1 (HMAC-SHA1), 002 section 5."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import quote


def percent_encode(value: str) -> str:
    """RFC 3986 encoding as the vendor signs it: unreserved kept, space is %20, `*` is %2A."""
    return quote(value, safe="-_.~")


def canonical_query(params: Mapping[str, str]) -> str:
    """Sorted, percent-encoded `k=v` pairs joined by `&`, without `Signature`."""
    return "&".join(
        f"{percent_encode(k)}={percent_encode(v)}"
        for k, v in sorted(params.items())
        if k != "Signature"
    )


def string_to_sign_v1(method: str, params: Mapping[str, str]) -> str:
    """`METHOD&%2F&enc(canonical query)`, the text that signature v1 signs."""
    return f"{method.upper()}&{percent_encode('/')}&{percent_encode(canonical_query(params))}"


def sign_v1(method: str, params: Mapping[str, str], access_key_secret: str) -> str:
    """Base64 HMAC-SHA1 of the v1 string-to-sign with key `secret + "&"`."""
    key = (access_key_secret + "&").encode()
    digest = hmac.new(key, string_to_sign_v1(method, params).encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()
