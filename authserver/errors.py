"""Exceptions that carry their HTTP status and a stable machine-readable code."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class GatewayError(Exception):
    """Base of every error the gateway answers with a problem+json body."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers: dict[str, str] = dict(headers or {})
        self.extra: dict[str, Any] = dict(extra or {})


class BadRequest(GatewayError):
    """The request body or parameters are malformed."""

    status = 400
    code = "bad_request"
    title = "Bad request"


class DuplicateKey(BadRequest):
    """A JSON body names one key twice in an object: parsers disagree on which one counts."""

    code = "duplicate_key"
    title = "Duplicate key"


class ClaimNotRevocable(BadRequest):
    """A revocation names a claim that AUTHSERVER_REVOCABLE_CLAIMS does not list."""

    code = "claim_not_revocable"
    title = "Claim not revocable"


class InvalidToken(GatewayError):
    """The bearer JWT is missing, malformed, expired or not signed by a trusted key."""

    status = 401
    code = "invalid_token"
    title = "Invalid token"


class TokenRevoked(InvalidToken):
    """The bearer JWT was issued before a revocation of its subject."""

    code = "token_revoked"
    title = "Token revoked"


class Forbidden(GatewayError):
    """The caller is authenticated but not allowed to do this."""

    status = 403
    code = "forbidden"
    title = "Forbidden"


class PolicyDenied(Forbidden):
    """The policy grants nothing, or not the requested topic."""

    code = "policy_denied"
    title = "Policy denies"


class NotFound(GatewayError):
    """No such resource."""

    status = 404
    code = "not_found"
    title = "Not found"


class PayloadTooLarge(GatewayError):
    """The request body exceeds the configured limit."""

    status = 413
    code = "payload_too_large"
    title = "Payload too large"


class RequestTimeout(GatewayError):
    """The request body did not arrive in time; the connection is closed after the answer."""

    status = 408
    code = "request_timeout"
    title = "Request timeout"


class GrantTooBroad(GatewayError):
    """A token would carry more resources than the upstream accepts."""

    status = 422
    code = "grant_too_broad"
    title = "Grant too broad"


class RateLimited(GatewayError):
    """The caller exceeded an inbound rate limit."""

    status = 429
    code = "rate_limited"
    title = "Too many requests"


class ServiceUnavailable(GatewayError):
    """A dependency (upstream, store) cannot serve the request right now."""

    status = 503
    code = "service_unavailable"
    title = "Service unavailable"


class StoreUnavailable(ServiceUnavailable):
    """The shared store (Redis) cannot be reached."""

    code = "store_unavailable"
    title = "Token store unavailable"

    def __init__(
        self,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        # A store outage is usually a failover or a restart: worth retrying soon.
        super().__init__(detail, headers={"Retry-After": "2", **(headers or {})}, extra=extra)


class RevocationNotReplicated(StoreUnavailable):
    """Fewer Redis replicas than AUTHSERVER_REVOCATION_MIN_REPLICAS confirmed a queued job.

    The job is queued on the master, but a failover now could lose it: the admin retries
    (a token queued twice is revoked upstream once, see tokens/revocation/state.py).
    """

    code = "revocation_not_replicated"
    title = "Revocation not replicated"


class NotConfigured(GatewayError):
    """The feature needs a setting that is not configured."""

    status = 501
    code = "not_configured"
    title = "Not configured"
