"""The admin part of the OpenAPI description: paths and the API key scheme (bodies: shapes)."""

from __future__ import annotations

from typing import Any

import msgspec

from authserver.web.shapes import (
    DEFAULT_PAGE_SIZE,
    MAX_NEXT_TOKEN_CHARS,
    MAX_PAGE_NO,
    MAX_PAGE_SIZE,
    ClientId,
    GroupId,
    IotId,
    SubjectSegment,
)

PROBLEM = {"$ref": "#/components/schemas/Problem"}
ADMIN_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"adminApiKey": []}]

_DESCRIPTIONS = {
    400: "Malformed body or parameter",
    401: "Missing, malformed or expired credential, or a wrong API key",
    403: "A valid JWT without the admin scope or role",
    404: "No such path (a path segment that normalises away) or no such IoT device",
    413: "Body too large",
    501: "Feature not configured; `detail` names the missing setting",
    502: "The upstream refused the call",
    503: "Upstream or store unavailable; see Retry-After",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problems(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {
            "description": _DESCRIPTIONS[s],
            "content": {"application/problem+json": {"schema": PROBLEM}},
        }
        for s in statuses
    }


def _json(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(schema)}}}


def _path_param(name: str, kind: Any, description: str) -> dict[str, Any]:
    """A path parameter whose schema is that of `kind`, the type its handler checks it with."""
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": msgspec.json.schema(kind),
    }


def _operation(
    operation_id: str,
    summary: str,
    ok: tuple[int, str, str],
    problems: tuple[int, ...],
    *,
    body: str | None = None,
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    status, description, schema = ok
    op: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["admin"],
        "security": ADMIN_SECURITY,
        "responses": {str(status): _json(description, schema), **_problems(*problems)},
    }
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = _body(body)
    return op


POST_PROBLEMS = (400, 401, 403, 413, 502, 503)
GET_PROBLEMS = (400, 401, 403, 502, 503)


def admin_paths() -> dict[str, Any]:
    """Every /v1/admin/ path of the gateway."""
    return {
        "/v1/admin/revoke": {
            "post": _operation(
                "adminRevoke",
                "Revoke one token, or every token of a subject or a clientId",
                (202, "Revoked locally; upstream revocations queued durably", "RevocationResult"),
                (400, 401, 403, 413, 503),
                body="RevokeRequest",
            )
        },
        "/v1/admin/revocations": {
            "get": _operation(
                "adminRevocations",
                "The upstream revocation queue: depth, oldest pending age, recent failures",
                (200, "Queue status", "RevocationStatus"),
                (401, 403, 503),
            )
        },
        "/v1/admin/query": {
            "post": _operation(
                "adminQueryToken",
                "Is this MQTT token valid? Local answer when possible, else QueryToken",
                (200, "The verdict and where it came from", "TokenQueryResult"),
                POST_PROBLEMS,
                body="TokenQueryRequest",
            )
        },
        "/v1/admin/subjects/{subject}/tokens": {
            "get": _operation(
                "adminSubjectTokens",
                "The subject's live tokens (no token values)",
                (200, "The subject's tokens", "SubjectTokens"),
                (400, 401, 403, 404, 503),
                parameters=[
                    _path_param(
                        "subject", SubjectSegment, "The JWT subject, percent-encoded ('/' as %2F)"
                    )
                ],
            )
        },
        "/v1/admin/sessions/{clientId}": {
            "get": _operation(
                "adminSession",
                "Whether one MQTT client is online (QuerySessionByClientId)",
                (200, "Online status", "Session"),
                GET_PROBLEMS,
                parameters=[_path_param("clientId", ClientId, "GroupId@@@DeviceId")],
            )
        },
        "/v1/admin/sessions:query": {
            "post": _operation(
                "adminQuerySessions",
                "Whether up to 100 MQTT clients are online (sent upstream 10 at a time)",
                (200, "Online status of each client, in request order", "Sessions"),
                POST_PROBLEMS,
                body="SessionsQuery",
            )
        },
        "/v1/admin/groups/{groupId}/device-credentials": {
            "get": _operation(
                "adminDeviceCredentials",
                "Devices of a group holding a device credential (ListDeviceCredentialClientId)",
                (200, "One page", "DeviceCredentialPage"),
                GET_PROBLEMS,
                parameters=[
                    _path_param("groupId", GroupId, "The MQTT group"),
                    {
                        "name": "pageSize",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_PAGE_SIZE,
                            "default": DEFAULT_PAGE_SIZE,
                        },
                    },
                    {
                        "name": "pageNo",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_NO},
                    },
                    {
                        "name": "nextToken",
                        "in": "query",
                        "required": False,
                        "description": "The nextToken of the previous page; wins over pageNo",
                        "schema": {"type": "string", "maxLength": MAX_NEXT_TOKEN_CHARS},
                    },
                ],
            )
        },
        "/v1/admin/iot/devices/{iotId}/client-ids": {
            "get": _operation(
                "adminIotClientIds",
                "ClientIDs registered for an IoT Platform device (QueryClientIds)",
                (200, "The device's ClientIDs", "IotClientIds"),
                (*GET_PROBLEMS, 404, 501),
                parameters=[_path_param("iotId", IotId, "The IotId")],
            )
        },
        "/v1/admin/explain": {
            "post": _operation(
                "adminExplain",
                "What the current policy grants for these claims; whether a token is cached",
                (200, "The policy's account", "Explanation"),
                (400, 401, 403, 413, 503),
                body="ExplainRequest",
            )
        },
    }


def admin_security_schemes() -> dict[str, Any]:
    """The API key scheme (the bearer scheme is the gateway's own)."""
    return {
        "adminApiKey": {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": "An admin API key (also accepted as `Authorization: ApiKey <key>`)",
        }
    }
