"""A local stand-in for the vendor's MQTT token OpenAPI (and IoT Platform QueryClientIds).

It answers at `/` like `onsmqtt.<region>.aliyuncs.com`: GET with the parameters in the query,
POST with them in the query and/or a form body, signed with signature v1 or ACS3-HMAC-SHA256.

Admin paths, UNSIGNED and meant for local use only (never expose the emulator):

- `GET  /_emulator/stats`    calls, successes and errors per action, error counts per code,
                             the highest count seen in any sliding 1-second window per action
                             (`maxPerSecond`), account-wide counts, token counts; with the
                             MQTT listener on, `broker`: connections, accepted, refused by
                             reason, notices by code, uploads, takeovers, messages routed.
- `POST /_emulator/faults`   `{"action": "ApplyToken"|"*", "errorCode": "InternalError",
                             "rate": 0.2, "latencyMs": 2000, "outage": true, "status": 500}`;
                             `outage` drops the connection without an answer;
                             `{"clear": true}` removes every fault.
- `POST /_emulator/sessions` `{"online": ["GID_x@@@a", ...]}` sets the online ClientIds.
- `POST /_emulator/iot`      `{"devices": {"<IotId>": ["<ClientId>", ...]}}` for QueryClientIds.
- `POST /_emulator/reset`    zeroes the statistics; `{"state": true}` also forgets tokens,
                             sessions, credentials and faults.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from authserver import background
from authserver.clock import Clock, SystemClock
from authserver.emulator import protocol
from authserver.emulator.actions import find_handler
from authserver.emulator.auth import IncomingRequest, authenticate
from authserver.emulator.broker import (
    DEFAULT_CHECK_INTERVAL,
    DEFAULT_EXPIRE_NOTICE_SECONDS,
    TokenBroker,
)
from authserver.emulator.state import DEFAULT_QPS, EmulatorState, Fault

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 60.0
HOST_ID_TEMPLATE = "onsmqtt.{region}.aliyuncs.com"


@dataclass
class EmulatorConfig:
    """What the emulator accepts: keys, instances, region, rate limits, clock, skew tolerance."""

    access_keys: Mapping[str, str]
    instance_ids: Sequence[str]
    region_id: str = "cn-hangzhou"
    qps: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_QPS))
    clock: Clock = field(default_factory=SystemClock)
    timestamp_tolerance: float = 900.0
    # The MQTT 3.1.1 listener (authserver.emulator.broker): off when mqtt_port is None;
    # 0 binds a free port.
    mqtt_port: int | None = None
    mqtt_host: str = "127.0.0.1"
    expire_notice_seconds: float = DEFAULT_EXPIRE_NOTICE_SECONDS
    mqtt_check_interval: float = DEFAULT_CHECK_INTERVAL
    # Refuse a CONNECT whose GroupId was not created on its instance (CreateGroupId), as the
    # vendor does; off so that a quick start needs no set-up.
    enforce_groups: bool = False


EMULATOR_STATE = web.AppKey("emulator_state", EmulatorState)
EMULATOR_CONFIG = web.AppKey("emulator_config", EmulatorConfig)
_SWEEPER = web.AppKey("emulator_sweeper", asyncio.Task[None])
EMULATOR_BROKER = web.AppKey("emulator_broker", TokenBroker)


def _render(
    status: int, action: str, data: Mapping[str, Any], fmt: str, *, error: bool
) -> web.Response:
    if fmt == "XML":
        root = "Error" if error else f"{action}Response"
        text = protocol.xml_body(root, data)
        return web.Response(
            status=status,
            text=text,
            content_type=None,
            headers={"Content-Type": protocol.XML_CONTENT_TYPE},
        )
    return web.Response(
        status=status,
        text=protocol.json_body(data),
        headers={"Content-Type": protocol.JSON_CONTENT_TYPE},
    )


async def _read_request(request: web.Request) -> IncomingRequest:
    body = await request.read()
    query = parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True)
    params = dict(query)
    if body and request.content_type == "application/x-www-form-urlencoded":
        try:
            form = parse_qsl(body.decode(), keep_blank_values=True)
        except UnicodeDecodeError:
            form = []
        params.update(form)
    return IncomingRequest(
        method=request.method,
        path=request.rel_url.raw_path or "/",
        query=query,
        params=params,
        headers=request.headers,
        body=body,
    )


async def _apply_fault(
    request: web.Request, state: EmulatorState, fault: Fault, action: str
) -> None:
    if fault.hold is not None:
        await fault.hold.wait()
    if fault.latency_ms > 0:
        # Real time, not the emulator's clock: it stands for the network, and a client's
        # timeout on it is real whatever clock the test gave the emulator.
        await asyncio.sleep(fault.latency_ms / 1000)
    if fault.outage:
        # Abort the socket: the client sees the connection drop with no answer at all. The
        # HTTPException only ends the handler quietly; nothing can be written any more.
        if request.transport is not None:
            request.transport.abort()
        raise web.HTTPServiceUnavailable()
    if fault.error_code and state.rng.random() < fault.rate:
        code = fault.error_code
        status = fault.status or protocol.status_for_code(code)
        raise protocol.VendorError(status, code, f"Injected fault for {action}.")


async def handle_rpc(request: web.Request) -> web.StreamResponse:
    """The OpenAPI endpoint: authenticate, throttle, check parameters, answer."""
    state = request.app[EMULATOR_STATE]
    config = request.app[EMULATOR_CONFIG]
    incoming = await _read_request(request)
    params = incoming.params
    action = request.headers.get("x-acs-action") or params.get("Action", "")
    version = request.headers.get("x-acs-version") or params.get("Version", "")
    fmt = params.get("Format", "JSON").upper()
    request_id = protocol.new_request_id()
    counted = action or "(none)"
    state.counters.record_call(counted, state.clock.monotonic())
    try:
        fault = state.fault_for(action)
        if fault is not None:
            await _apply_fault(request, state, fault, counted)
        if not action:
            raise protocol.missing("Action")
        if not version:
            raise protocol.missing("Version")
        handler = find_handler(action, version)
        authenticate(state, incoming)
        if not state.admit(action):
            raise protocol.throttled(action)
        result = handler(state, params)
    except protocol.VendorError as err:
        state.counters.record_result(counted, err.code)
        body = {
            "RequestId": request_id,
            "HostId": HOST_ID_TEMPLATE.format(region=config.region_id),
            "Code": err.code,
            "Message": err.message,
        }
        return _render(err.status, counted, body, fmt, error=True)
    state.counters.record_result(counted, None)
    return _render(200, action, {"RequestId": request_id, **result}, fmt, error=False)


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except json.JSONDecodeError as err:
        raise web.HTTPBadRequest(text=f"invalid JSON: {err}") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return data


async def handle_stats(request: web.Request) -> web.Response:
    """`GET /_emulator/stats`."""
    return web.json_response(request.app[EMULATOR_STATE].stats())


async def handle_faults(request: web.Request) -> web.Response:
    """`POST /_emulator/faults`: set or clear an injected fault."""
    state = request.app[EMULATOR_STATE]
    data = await _json_body(request)
    if data.get("clear"):
        state.faults.clear()
        return web.json_response({"faults": {}})
    try:
        fault = Fault(
            error_code=data.get("errorCode"),
            rate=float(data.get("rate", 1.0)),
            latency_ms=float(data.get("latencyMs", 0)),
            outage=bool(data.get("outage", False)),
            status=int(data["status"]) if "status" in data else None,
        )
    except (TypeError, ValueError) as err:
        raise web.HTTPBadRequest(text=f"invalid fault: {err}") from None
    state.faults[str(data.get("action", "*"))] = fault
    return web.json_response({"faults": {a: vars(f) for a, f in state.faults.items()}})


async def handle_sessions(request: web.Request) -> web.Response:
    """`POST /_emulator/sessions`: which ClientIds are online."""
    state = request.app[EMULATOR_STATE]
    online = (await _json_body(request)).get("online", [])
    if not isinstance(online, list) or not all(isinstance(c, str) for c in online):
        raise web.HTTPBadRequest(text="expected {'online': [ClientId, ...]}")
    state.set_online(online)
    return web.json_response({"online": sorted(state.online)})


async def handle_iot(request: web.Request) -> web.Response:
    """`POST /_emulator/iot`: IoT Platform devices and their ClientIds."""
    state = request.app[EMULATOR_STATE]
    devices = (await _json_body(request)).get("devices", {})
    if not isinstance(devices, dict):
        raise web.HTTPBadRequest(text="expected {'devices': {IotId: [ClientId, ...]}}")
    for iot_id, client_ids in devices.items():
        state.set_iot_client_ids(str(iot_id), [str(c) for c in client_ids])
    return web.json_response({"devices": sorted(state.iot_client_ids)})


async def handle_reset(request: web.Request) -> web.Response:
    """`POST /_emulator/reset`: zero the statistics (and, asked, the whole state)."""
    state = request.app[EMULATOR_STATE]
    if (await _json_body(request)).get("state"):
        state.reset_all()
    state.reset_stats()
    return web.json_response({"reset": True})


async def _sweeper(app: web.Application) -> AsyncIterator[None]:
    state = app[EMULATOR_STATE]

    async def sweep() -> None:
        while True:
            await state.clock.idle(SWEEP_INTERVAL)
            state.sweep_expired()

    app[_SWEEPER] = asyncio.create_task(sweep(), name="emulator-sweeper")
    yield
    await background.stop([app[_SWEEPER]])


async def _broker(app: web.Application) -> AsyncIterator[None]:
    config = app[EMULATOR_CONFIG]
    assert config.mqtt_port is not None  # only registered when on
    broker = TokenBroker(
        app[EMULATOR_STATE],
        config.mqtt_host,
        config.mqtt_port,
        expire_notice_seconds=config.expire_notice_seconds,
        check_interval=config.mqtt_check_interval,
        enforce_groups=config.enforce_groups,
    )
    await broker.start()
    app[EMULATOR_BROKER] = broker
    log.info("emulator MQTT listener on %s:%d", config.mqtt_host, broker.port)
    yield
    await broker.stop()


def create_emulator_app(config: EmulatorConfig) -> web.Application:
    """The emulator as an aiohttp application; its state is `app[EMULATOR_STATE]`."""
    app = web.Application()
    app[EMULATOR_CONFIG] = config
    app[EMULATOR_STATE] = EmulatorState(
        access_keys=config.access_keys,
        instance_ids=config.instance_ids,
        qps=config.qps,
        clock=config.clock,
        timestamp_tolerance=config.timestamp_tolerance,
    )
    app.cleanup_ctx.append(_sweeper)
    if config.mqtt_port is not None:
        app.cleanup_ctx.append(_broker)
    app.router.add_get("/_emulator/stats", handle_stats)
    app.router.add_post("/_emulator/faults", handle_faults)
    app.router.add_post("/_emulator/sessions", handle_sessions)
    app.router.add_post("/_emulator/iot", handle_iot)
    app.router.add_post("/_emulator/reset", handle_reset)
    app.router.add_route("GET", "/", handle_rpc)
    app.router.add_route("POST", "/", handle_rpc)
    return app


async def start_emulator(
    config: EmulatorConfig, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Start the emulator on host:port (0 = a free port); the runner and its base URL.

    The caller owns the runner and must `await runner.cleanup()`.
    """
    runner = web.AppRunner(create_emulator_app(config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    return runner, f"http://{bound_host}:{bound_port}"
