"""The device endpoint POST /v1/device-credential: an app JWT becomes a device-credential login.

For a device that cannot refresh a token every hour ("one device, one secret", 002 section 14):
the caller names its policy-bound clientId; when the policy lets the identity hold a device
credential, the gateway reads the ClientId's credential (GetDeviceCredential), registers one
when it has none (RegisterDeviceCredential), and answers the MQTT username and password
derived from it. The DeviceAccessKeySecret itself never leaves the gateway and is never
kept: every request reads it afresh, and logs name only the AccessKey ID and a fingerprint.
An app JWT blocked by a revocation (its subject, a clientId it may use, a claim value it
carries) is refused (401 `token_revoked`) by the blocks in the shared state, not only by
this process's mirror of them (`Revoker.confirm`).
"""

from __future__ import annotations

import logging

from aiohttp import web

from authserver import appkeys, logs
from authserver.cloud.errors import CloudRejected
from authserver.cloud.resources import DeviceCredential
from authserver.identity import bearer_token
from authserver.policy.engine import check_device_credential
from authserver.web import shapes
from authserver.web.request import json_body

log = logging.getLogger(__name__)

NO_STORE = {"Cache-Control": "no-store"}  # a password: no cache along the way may keep it
# What GetDeviceCredential answers for a ClientId without a credential.
NO_CREDENTIAL = "ParameterCheckFailed"


async def post_device_credential(request: web.Request) -> web.Response:
    """Answer the MQTT login of the caller's device credential, registering it when absent."""
    app = request.app
    limiter = app[appkeys.RATE_LIMITER]
    ip = None
    if limiter.per_ip:
        ip = limiter.check_ip(request.remote, request.headers.getall("X-Forwarded-For", ()))
    identity = await app[appkeys.VERIFIER].verify(
        bearer_token(request.headers.get("Authorization"))
    )
    logs.bind_subject(identity.subject)
    client_id = (await json_body(request, shapes.DeviceCredentialRequest)).client_id
    limiter.check_subject(identity.subject)
    revoker = app[appkeys.REVOKER]
    revoker.check(identity, client_id)  # a block this process knows of: no round trip
    granted_by = check_device_credential(
        app[appkeys.POLICY].current, identity.subject, identity.claims, client_id
    )
    # Every request reaches the upstream, as a mint does, so it reads the blocks in the
    # shared state as a mint does: another process's block may not have reached this
    # process's mirror through the bus yet.
    await revoker.confirm(identity, client_id)
    # Each request may reach the upstream twice: it counts against the subject's mint budget.
    limiter.asking(identity.subject, ip)
    await limiter.check_shared()
    credential, registered = await fetch_or_register(request, client_id)
    log.info(
        "device credential %s for %s (key %s, secret %s, granted by %s)",
        "registered" if registered else "read",
        client_id,
        credential.access_key_id,
        credential.secret_fingerprint,
        granted_by,
    )
    login = shapes.DeviceCredentialLogin(
        client_id=client_id,
        instance_id=credential.instance_id,
        username=credential.username,
        password=credential.password,
        device_access_key_id=credential.access_key_id,
        update_time=credential.update_time_ms,
        registered=registered,
    )
    return shapes.respond(login, headers=NO_STORE)


async def fetch_or_register(request: web.Request, client_id: str) -> tuple[DeviceCredential, bool]:
    """The ClientId's credential, and whether this call registered it."""
    app = request.app
    cloud = app[appkeys.CLOUD]
    instance_id = app[appkeys.SETTINGS].instance_id
    deadline = app[appkeys.SETTINGS].request_deadline
    try:
        return await cloud.get_device_credential(instance_id, client_id, deadline=deadline), False
    except CloudRejected as err:
        if err.vendor_code != NO_CREDENTIAL:
            raise
    # Registering an already registered ClientId answers its pair: a race with another
    # request for the same device is harmless.
    return await cloud.register_device_credential(instance_id, client_id, deadline=deadline), True
