"""The vendor's wire format: error codes with their HTTP status, JSON and XML bodies."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape

JSON_CONTENT_TYPE = "application/json;charset=utf-8"
# The official SDK parses an error body as XML only when it sees exactly this content type.
XML_CONTENT_TYPE = "text/xml;charset=utf-8"


class VendorError(Exception):
    """An OpenAPI error answer: vendor `Code`, HTTP status and `Message`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def new_request_id() -> str:
    """A RequestId shaped like the vendor's (an uppercase UUID)."""
    return str(uuid.uuid4()).upper()


# Messages as the vendor's error tables (002 section 9) and its API gateway word them.
def signature_mismatch(detail: str = "") -> VendorError:
    """`SignatureDoesNotMatch` (400)."""
    message = "Specified signature is not matched with our calculation."
    return VendorError(400, "SignatureDoesNotMatch", f"{message} {detail}".strip())


def incomplete_signature(detail: str) -> VendorError:
    """`IncompleteSignature` (400): the Authorization header cannot be parsed."""
    return VendorError(400, "IncompleteSignature", f"The request signature is malformed. {detail}")


def access_key_not_found() -> VendorError:
    """`InvalidAccessKeyId.NotFound` (404)."""
    return VendorError(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")


def timestamp_expired(value: str) -> VendorError:
    """`InvalidTimeStamp.Expired` (400): more than the tolerance away from server time."""
    return VendorError(
        400,
        "InvalidTimeStamp.Expired",
        f"Specified time stamp or date value is expired. Timestamp {value!r}",
    )


def timestamp_format(value: str) -> VendorError:
    """`InvalidTimeStamp.Format` (400)."""
    return VendorError(
        400, "InvalidTimeStamp.Format", f"Specified time stamp or date value {value!r} is invalid."
    )


def nonce_used() -> VendorError:
    """`SignatureNonceUsed` (400): a replayed request."""
    return VendorError(400, "SignatureNonceUsed", "Specified signature nonce was used already.")


def missing(name: str) -> VendorError:
    """`Missing<Name>` (400): a mandatory parameter is absent, as the API gateway says it."""
    return VendorError(400, f"Missing{name}", f"{name} is mandatory for this action.")


def invalid(name: str, why: str) -> VendorError:
    """`InvalidParameter.<Name>` (400), the product's own per-parameter code."""
    return VendorError(
        400,
        f"InvalidParameter.{name}",
        f"An error occurred while validating the parameter {name}: {why}",
    )


def parameter_check_failed(why: str) -> VendorError:
    """`ParameterCheckFailed` (400)."""
    return VendorError(
        400,
        "ParameterCheckFailed",
        "An error occurred while validating the parameters. "
        f"The parameters may be missing or invalid. {why}",
    )


def instance_check_failed(instance_id: str) -> VendorError:
    """`InstancePermissionCheckFailed` (400): the instance is not this account's."""
    return VendorError(
        400,
        "InstancePermissionCheckFailed",
        "An error occurred while validating the permissions of the instance. Please verify the "
        f"account that created the instance and its permissions settings. ({instance_id})",
    )


def action_not_found(action: str) -> VendorError:
    """`InvalidAction.NotFound` (404): no such action in this product version."""
    return VendorError(
        404,
        "InvalidAction.NotFound",
        f"Specified api {action!r} is not found, please check your url and method.",
    )


def api_not_support(action: str) -> VendorError:
    """`ApiNotSupport` (404): a real action that the emulator does not implement."""
    return VendorError(404, "ApiNotSupport", f"The specified API {action!r} is not supported.")


def invalid_version(version: str) -> VendorError:
    """`InvalidVersion` (400)."""
    return VendorError(
        400, "InvalidVersion", f"Specified parameter Version {version!r} is not valid."
    )


def throttled(action: str) -> VendorError:
    """The throttling answer for one action (002 section 9).

    The three token actions have their own documented `<Action>Overflow` codes (400); for the
    others the vendor documents none, so this answers the API gateway's `Throttling.User` (400).
    """
    if action in ("ApplyToken", "QueryToken", "RevokeToken"):
        verbs = {"ApplyToken": "applied for", "QueryToken": "queried", "RevokeToken": "revoked"}
        return VendorError(
            400,
            f"{action}Overflow",
            f"You have {verbs[action]} tokens too many times. Please try again later.",
        )
    return VendorError(400, "Throttling.User", "Request was denied due to user flow control.")


def status_for_code(code: str) -> int:
    """The HTTP status the vendor uses for a code (for injected faults)."""
    if code in ("InternalError", "InternalServerError", "SystemOverflow", "SystemOverFlow"):
        return 500
    if code == "ServiceUnavailable":
        return 503
    if code in ("ApiNotSupport", "InvalidAccessKeyId.NotFound", "InvalidAction.NotFound"):
        return 404
    return 400


def json_body(data: Mapping[str, Any]) -> str:
    """The JSON body of an answer."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _xml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return escape(str(value))


def _xml_fields(data: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for key, value in data.items():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if item is None:
                continue
            inner = _xml_fields(item) if isinstance(item, Mapping) else _xml_value(item)
            parts.append(f"<{key}>{inner}</{key}>")
    return "".join(parts)


def xml_body(root: str, data: Mapping[str, Any]) -> str:
    """An XML body shaped as in the source documents: lists become repeated elements."""
    return f'<?xml version="1.0" encoding="UTF-8"?><{root}>{_xml_fields(data)}</{root}>'
