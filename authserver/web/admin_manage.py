"""Admin routes that manage the vendor instance: device credentials, Group IDs, messages.

Registered by `admin.setup_admin_routes` (behind admin authentication, one audit line each)
from `ROUTES`. A device credential's secret is never answered: an operator sees its
AccessKey ID and a fingerprint of the secret, enough to tell a rotation happened.
"""

from __future__ import annotations

import base64
import binascii

from aiohttp import web
from aiohttp.typedefs import Handler

from authserver import appkeys
from authserver.cloud.errors import CloudRejected
from authserver.errors import BadRequest, NotFound
from authserver.topics import InvalidTopicFilter, validate_filter
from authserver.web import shapes
from authserver.web.admin import _audit, query_params
from authserver.web.request import json_body, read_body
from authserver.web.shapes import ClientId, GroupId, respond

# What Get/RefreshDeviceCredential answer for a ClientId without a credential.
NO_CREDENTIAL = "ParameterCheckFailed"
MAX_TOPIC_BYTES = shapes.MAX_TOPIC_BYTES


def _path_client_id(request: web.Request) -> str:
    client_id = shapes.check(request.match_info["clientId"], ClientId, "clientId")
    _audit(request, clientId=client_id)
    return client_id


def _group_id(value: str) -> str:
    return shapes.check(value, GroupId, "groupId")


def _no_credential(client_id: str, err: CloudRejected) -> NotFound:
    return NotFound(
        f"{client_id} has no device credential", extra={"upstream_code": err.vendor_code}
    )


# -- device credentials --------------------------------------------------------------------


async def get_device_credential(request: web.Request) -> web.Response:
    """One ClientId's device credential, without its secret (GetDeviceCredential)."""
    query_params(request, ())
    return await _credential_answer(request, rotate=False)


async def refresh_device_credential(request: web.Request) -> web.Response:
    """Rotate a ClientId's secret (RefreshDeviceCredential): its old password stops working."""
    raw = await read_body(request)
    if raw.strip():  # no body, or an empty object
        shapes.decode(shapes.Empty, raw)
    return await _credential_answer(request, rotate=True)


async def _credential_answer(request: web.Request, *, rotate: bool) -> web.Response:
    """Get or refresh the path's ClientId credential; audited, answered without its secret."""
    client_id = _path_client_id(request)
    app = request.app
    cloud = app[appkeys.CLOUD]
    method = cloud.refresh_device_credential if rotate else cloud.get_device_credential
    try:
        credential = await method(app[appkeys.SETTINGS].instance_id, client_id)
    except CloudRejected as err:
        if err.vendor_code != NO_CREDENTIAL:
            raise
        raise _no_credential(client_id, err) from err
    _audit(
        request,
        deviceAccessKeyId=credential.access_key_id,
        secretFingerprint=credential.secret_fingerprint,
    )
    return respond(
        shapes.DeviceCredential(
            client_id=credential.client_id,
            instance_id=credential.instance_id,
            device_access_key_id=credential.access_key_id,
            secret_fingerprint=credential.secret_fingerprint,
            create_time=credential.create_time_ms,
            update_time=credential.update_time_ms,
        )
    )


async def unregister_device_credential(request: web.Request) -> web.Response:
    """Drop a ClientId's credential (UnRegisterDeviceCredential); idempotent."""
    query_params(request, ())
    client_id = _path_client_id(request)
    app = request.app
    await app[appkeys.CLOUD].unregister_device_credential(
        app[appkeys.SETTINGS].instance_id, client_id
    )
    return respond(shapes.DeviceCredentialUnregistered(client_id, unregistered=True))


# -- Group IDs -----------------------------------------------------------------------------


async def list_groups(request: web.Request) -> web.Response:
    """Every Group ID of the instance (ListGroupId)."""
    query_params(request, ())
    app = request.app
    groups = await app[appkeys.CLOUD].list_group_ids(app[appkeys.SETTINGS].instance_id)
    return respond(
        shapes.Groups(
            [
                shapes.Group(
                    group_id=g.group_id,
                    instance_id=g.instance_id,
                    independent_naming=g.independent_naming,
                    create_time=g.create_time_ms,
                    update_time=g.update_time_ms,
                )
                for g in groups
            ]
        )
    )


async def create_group(request: web.Request) -> web.Response:
    """Create a Group ID (CreateGroupId); 409 when it exists."""
    group_id = (await json_body(request, shapes.GroupCreate)).group_id
    _audit(request, groupId=group_id)
    app = request.app
    try:
        await app[appkeys.CLOUD].create_group_id(app[appkeys.SETTINGS].instance_id, group_id)
    except CloudRejected as err:
        if err.vendor_code == "GroupIdAlreadyExsited":  # sic, the vendor's spelling
            raise GroupExists(
                f"{group_id} exists already", extra={"upstream_code": err.vendor_code}
            ) from err
        if err.vendor_code == "GroupIdAlreadyUsedByOtherUsers":
            raise GroupExists(
                f"{group_id} is taken by another account (choose another name)",
                extra={"upstream_code": err.vendor_code},
            ) from err
        raise
    return respond(shapes.GroupCreated(group_id, created=True), status=201)


async def delete_group(request: web.Request) -> web.Response:
    """Delete a Group ID (DeleteGroupId); idempotent."""
    query_params(request, ())
    group_id = _group_id(request.match_info["groupId"])
    _audit(request, groupId=group_id)
    app = request.app
    await app[appkeys.CLOUD].delete_group_id(app[appkeys.SETTINGS].instance_id, group_id)
    return respond(shapes.GroupDeleted(group_id, deleted=True))


class GroupExists(BadRequest):
    """CreateGroupId of a Group ID that exists (in this account or another)."""

    status = 409
    code = "group_exists"
    title = "Group exists"


# -- messages ------------------------------------------------------------------------------


def _topic_name(value: str) -> str:
    try:
        validate_filter(value)
    except InvalidTopicFilter as err:
        raise BadRequest(f"topic: {err.detail}", extra={"field": "topic"}) from None
    if "+" in value or "#" in value or len(value.encode()) > MAX_TOPIC_BYTES:
        raise BadRequest(
            "topic must be a topic name (no + or # wildcard) of at most 65535 bytes",
            extra={"field": "topic"},
        )
    return value


def _payload(body: shapes.MessageSend) -> str:
    payload = body.payload
    if body.encoding == "base64":
        try:
            base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(
                "payload is not valid base64 (RFC 4648, with padding)", extra={"field": "payload"}
            ) from None
    return payload


async def send_message(request: web.Request) -> web.Response:
    """Publish one message to a topic from the server side (SendMessage)."""
    body = await json_body(request, shapes.MessageSend)
    topic = _topic_name(body.topic)
    payload = _payload(body)
    _audit(request, topic=topic, payloadChars=len(payload))
    app = request.app
    msg_id = await app[appkeys.CLOUD].send_message(
        app[appkeys.SETTINGS].instance_id, topic, payload
    )
    _audit(request, msgId=msg_id)
    return respond(shapes.MessageSent(topic, msg_id), status=202)


ROUTES: list[tuple[str, str, Handler, str]] = [
    (
        "GET",
        "device-credentials/{clientId}",
        get_device_credential,
        "admin.device_credential",
    ),
    (
        "DELETE",
        "device-credentials/{clientId}",
        unregister_device_credential,
        "admin.device_credential_unregister",
    ),
    (
        "POST",
        "device-credentials/{clientId}/refresh",
        refresh_device_credential,
        "admin.device_credential_refresh",
    ),
    ("GET", "groups", list_groups, "admin.groups"),
    ("POST", "groups", create_group, "admin.group_create"),
    ("DELETE", "groups/{groupId}", delete_group, "admin.group_delete"),
    ("POST", "messages", send_message, "admin.send_message"),
]
