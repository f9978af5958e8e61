"""The admin part of the OpenAPI description: paths and the API key scheme (bodies: shapes)."""

from __future__ import annotations

from typing import Any

import msgspec

from authserver.web.shapes import (
    DEFAULT_PAGE_SIZE,
    DIRECTIONS,
    MAX_NEXT_TOKEN_CHARS,
    MAX_PAGE_NO,
    MAX_PAGE_SIZE,
    MEASURES,
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
    404: "No such path (a path segment that normalises away), IoT device or device credential",
    409: "The Group ID exists already (in this account or another)",
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


def _client_id_param() -> dict[str, Any]:
    return _path_param("clientId", ClientId, "GroupId@@@DeviceId")


def _operation(
    operation_id: str,
    summary: str,
    ok: tuple[int, str, str],
    problems: tuple[int, ...],
    *,
    body: str | None = None,
    body_required: bool = True,
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
        op["requestBody"] = {**_body(body), "required": body_required}
    return op


POST_PROBLEMS = (400, 401, 403, 413, 502, 503)
GET_PROBLEMS = (400, 401, 403, 502, 503)
LEGACY_PROBLEMS = (*GET_PROBLEMS, 501)


def _query_param(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        param["description"] = description
    return param


def _group_param() -> dict[str, Any]:
    return _path_param("groupId", GroupId, "The MQTT group")


def _topic_param() -> dict[str, Any]:
    return {
        "name": "topic",
        "in": "query",
        "required": True,
        "description": "A topic (filter); its first level is the legacy API's ParentTopic",
        "schema": {"type": "string", "minLength": 1, "pattern": "^[^+#/\\u0000][^\\u0000]*$"},
    }


def _range_params() -> list[dict[str, Any]]:
    when = {"type": "integer", "minimum": 0, "maximum": 2**53}
    return [
        _query_param("begin", when, "epoch ms; default an hour before end"),
        _query_param("end", when, "epoch ms; default now; at most a day after begin"),
    ]


def admin_paths() -> dict[str, Any]:
    """Every /v1/admin/ path of the gateway."""
    return {
        "/v1/admin/revoke": {
            "post": _operation(
                "adminRevoke",
                "Revoke one token, or every token of a subject, a clientId or a claim value",
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
        "/v1/admin/device-credentials/{clientId}": {
            "get": _operation(
                "adminDeviceCredential",
                "One ClientId's device credential, without its secret (GetDeviceCredential)",
                (200, "The credential (AccessKey ID, secret fingerprint)", "DeviceCredential"),
                (*GET_PROBLEMS, 404),
                parameters=[_client_id_param()],
            ),
            "delete": _operation(
                "adminDeviceCredentialUnregister",
                "Drop a ClientId's device credential (UnRegisterDeviceCredential); idempotent",
                (200, "Unregistered", "DeviceCredentialUnregistered"),
                GET_PROBLEMS,
                parameters=[_client_id_param()],
            ),
        },
        "/v1/admin/device-credentials/{clientId}/refresh": {
            "post": _operation(
                "adminDeviceCredentialRefresh",
                "Rotate a ClientId's device secret (RefreshDeviceCredential)",
                (200, "The rotated credential (a new secret fingerprint)", "DeviceCredential"),
                (*POST_PROBLEMS, 404),
                parameters=[_client_id_param()],
                body="Empty",
                body_required=False,
            )
        },
        "/v1/admin/groups": {
            "get": _operation(
                "adminGroups",
                "Every Group ID of the instance (ListGroupId)",
                (200, "The Group IDs", "Groups"),
                GET_PROBLEMS,
            ),
            "post": _operation(
                "adminGroupCreate",
                "Create a Group ID (CreateGroupId)",
                (201, "Created", "GroupCreated"),
                (*POST_PROBLEMS, 409),
                body="GroupCreate",
            ),
        },
        "/v1/admin/groups/{groupId}": {
            "delete": _operation(
                "adminGroupDelete",
                "Delete a Group ID (DeleteGroupId); idempotent",
                (200, "Deleted", "GroupDeleted"),
                GET_PROBLEMS,
                parameters=[_group_param()],
            )
        },
        "/v1/admin/messages": {
            "post": _operation(
                "adminSendMessage",
                "Publish one message to a topic from the server side (SendMessage)",
                (202, "Accepted by the upstream", "MessageSent"),
                POST_PROBLEMS,
                body="MessageSend",
            )
        },
        "/v1/admin/clients/{clientId}": {
            "get": _operation(
                "adminClientDetail",
                "One client: online, address, last touch, subscriptions "
                "(legacy OnsMqttQueryClientByClientId)",
                (200, "The client", "ClientDetail"),
                LEGACY_PROBLEMS,
                parameters=[_client_id_param()],
            )
        },
        "/v1/admin/groups/{groupId}/online": {
            "get": _operation(
                "adminGroupOnline",
                "How many clients of a group are online (legacy OnsMqttQueryClientByGroupId)",
                (200, "The count", "GroupOnline"),
                LEGACY_PROBLEMS,
                parameters=[_group_param()],
            )
        },
        "/v1/admin/groups/{groupId}/online-history": {
            "get": _operation(
                "adminGroupOnlineHistory",
                "A group's online count per minute (legacy OnsMqttQueryHistoryOnline)",
                (200, "The series", "GroupOnlineHistory"),
                LEGACY_PROBLEMS,
                parameters=[_group_param(), *_range_params()],
            )
        },
        "/v1/admin/topics/online": {
            "get": _operation(
                "adminTopicOnline",
                "How many online clients subscribe to a topic (legacy OnsMqttQueryClientByTopic)",
                (200, "The count", "TopicOnline"),
                LEGACY_PROBLEMS,
                parameters=[_topic_param()],
            )
        },
        "/v1/admin/topics/messages": {
            "get": _operation(
                "adminTopicMessages",
                "A topic's message volume over time (legacy OnsMqttQueryMsgTransTrend)",
                (200, "The series", "TopicMessages"),
                LEGACY_PROBLEMS,
                parameters=[
                    _topic_param(),
                    *_range_params(),
                    _query_param("measure", {"enum": list(MEASURES), "default": MEASURES[0]}),
                    _query_param("direction", {"enum": list(DIRECTIONS), "default": DIRECTIONS[0]}),
                ],
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
