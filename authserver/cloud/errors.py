"""Typed errors of the vendor OpenAPI, and the gateway-facing errors they turn into."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from authserver.errors import GatewayError, ServiceUnavailable

# Codes the vendor uses for a failure on its side that is worth retrying (002 section 9, 004).
SERVER_ERROR_CODES = frozenset(
    {"InternalError", "InternalServerError", "ServiceUnavailable", "iot.system.SystemBusy"}
)


class CloudError(GatewayError):
    """The upstream answered with an error; carries its code, HTTP status and request id."""

    status = 502
    code = "upstream_error"
    title = "Upstream error"
    retryable_by_class: ClassVar[bool] = False

    def __init__(
        self,
        detail: str,
        *,
        vendor_code: str,
        http_status: int,
        request_id: str | None,
        action: str,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        merged = {"upstream_code": vendor_code, "upstream_request_id": request_id}
        merged.update(extra or {})
        super().__init__(detail, headers=headers, extra=merged)
        self.vendor_code = vendor_code
        self.http_status = http_status
        self.request_id = request_id
        self.action = action

    @property
    def retryable(self) -> bool:
        """True when the same call may succeed if sent again later."""
        return self.retryable_by_class

    def __repr__(self) -> str:
        """Class, action, vendor code, HTTP status and request id, for logs."""
        return (
            f"{type(self).__name__}(action={self.action!r}, vendor_code={self.vendor_code!r}, "
            f"http_status={self.http_status}, request_id={self.request_id!r})"
        )


class CloudRejected(CloudError):
    """The upstream refused the parameters or the permissions: sending it again will not help."""

    code = "upstream_rejected"
    title = "Upstream rejected the request"


class CloudThrottled(CloudError):
    """The upstream throttled the call (`*Overflow`, `SystemOverflow`, HTTP 429/503)."""

    title = "Upstream throttled the request"
    retryable_by_class = True


class CloudServerError(CloudError):
    """The upstream failed on its side (5xx, `InternalError`)."""

    title = "Upstream server error"
    retryable_by_class = True


def is_throttling(vendor_code: str, http_status: int) -> bool:
    """True for the vendor's throttling answers, whatever the capitalisation of `Overflow`."""
    return (
        http_status in (429, 503)
        or vendor_code.lower().endswith("overflow")
        or vendor_code.startswith("Throttling")
    )


def classify(
    *,
    action: str,
    http_status: int,
    vendor_code: str,
    request_id: str | None,
    message: str,
) -> CloudError:
    """The typed exception for one vendor error answer."""
    kind: type[CloudError]
    if is_throttling(vendor_code, http_status):
        kind = CloudThrottled
    elif http_status >= 500 or vendor_code in SERVER_ERROR_CODES:
        kind = CloudServerError
    else:
        kind = CloudRejected
    detail = f"{action} failed upstream: {vendor_code or 'no code'} (HTTP {http_status})"
    if message:
        detail = f"{detail}: {message}"
    return kind(
        detail,
        vendor_code=vendor_code,
        http_status=http_status,
        request_id=request_id,
        action=action,
    )


def retry_after_header(seconds: float) -> dict[str, str]:
    """A `Retry-After` header in whole seconds, at least 1."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class UpstreamThrottled(ServiceUnavailable):
    """No upstream quota within the caller's deadline (ours or the upstream's): retry later."""

    code = "upstream_throttled"
    title = "Upstream quota exhausted"

    def __init__(
        self,
        detail: str,
        *,
        retry_after: float,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail, headers=retry_after_header(retry_after), extra=extra)
        self.retry_after = retry_after


class UpstreamUnavailable(ServiceUnavailable):
    """The upstream cannot be reached in time: circuit open, timeout, connection error."""

    code = "upstream_unavailable"
    title = "Upstream unavailable"

    def __init__(
        self,
        detail: str,
        *,
        retry_after: float = 1.0,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail, headers=retry_after_header(retry_after), extra=extra)
        self.retry_after = retry_after
