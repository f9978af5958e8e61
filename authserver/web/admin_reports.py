"""Admin routes over the legacy Ons management API (001): client detail, online counts, reports.

Instances on the older console answer these; the gateway needs `AUTHSERVER_ONS_ENDPOINT` (or
`AUTHSERVER_ONS_REGION_ID`) for them, else 501 `not_configured`. The vendor throttles each
call at about 30 a minute, and so does the quota governor: a second call within two seconds
is a 503 with Retry-After, never a throttled upstream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from authserver import appkeys
from authserver.cloud.client import CloudClient
from authserver.cloud.resources import StatsSeries
from authserver.errors import BadRequest, NotConfigured
from authserver.topics import InvalidTopicFilter, validate_filter
from authserver.web import shapes
from authserver.web.admin import _audit, _int_param, query_params
from authserver.web.admin_manage import _group_id
from authserver.web.shapes import respond

HOUR_MS = 3600 * 1000
MAX_RANGE_MS = 24 * HOUR_MS  # the backend cuts longer ranges (001)
MAX_TIME_MS = 2**53


def _cloud(request: web.Request) -> tuple[CloudClient, str]:
    settings = request.app[appkeys.SETTINGS]
    if settings.ons_endpoint is None:
        raise NotConfigured(
            "the legacy management API needs AUTHSERVER_ONS_REGION_ID or AUTHSERVER_ONS_ENDPOINT",
            extra={"missingSetting": ["AUTHSERVER_ONS_REGION_ID", "AUTHSERVER_ONS_ENDPOINT"]},
        )
    return request.app[appkeys.CLOUD], settings.instance_id


def _time_range(request: web.Request, params: Mapping[str, str]) -> tuple[int, int]:
    """`begin` and `end` in epoch ms: default the last hour, at most a day apart."""
    now = int(request.app[appkeys.CLOCK].time() * 1000)
    end = _int_param(params, "end", now, 0, MAX_TIME_MS)
    begin = _int_param(params, "begin", max(0, end - HOUR_MS), 0, MAX_TIME_MS)
    if not 0 <= end - begin <= MAX_RANGE_MS:
        raise BadRequest(
            "end must not be before begin, nor more than a day after it (epoch ms)",
            extra={"field": "end"},
        )
    return begin, end


def _topic(params: Mapping[str, str]) -> tuple[str, str | None]:
    """The `topic` parameter as the legacy API's ParentTopic and SubTopic."""
    topic = params.get("topic")
    if not topic:
        raise BadRequest("topic is required", extra={"field": "topic"})
    try:
        validate_filter(topic)
    except InvalidTopicFilter as err:
        raise BadRequest(f"topic: {err.detail}", extra={"field": "topic"}) from None
    parent, sep, rest = topic.partition("/")
    if not parent or "+" in parent or "#" in parent:
        raise BadRequest(
            "topic must start with a first-level topic, not a wildcard", extra={"field": "topic"}
        )
    return parent, (sep + rest) if sep else None


def _series(series: StatsSeries, begin: int, end: int) -> dict[str, Any]:
    """A report's common fields, for its shape."""
    return {
        "title": series.title,
        "x_unit": series.x_unit,
        "y_unit": series.y_unit,
        "points": [shapes.Point(x, y) for x, y in series.points],
        "begin": begin,
        "end": end,
    }


def _choice(params: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str:
    value = params.get(name, allowed[0])
    if value not in allowed:
        raise BadRequest(f"{name} must be one of {', '.join(allowed)}", extra={"field": name})
    return value


async def client_detail(request: web.Request) -> web.Response:
    """One client: online, address, last touch, its subscriptions (OnsMqttQueryClientByClientId)."""
    query_params(request, ())
    client_id = shapes.check(request.match_info["clientId"], shapes.ClientId, "clientId")
    _audit(request, clientId=client_id)
    cloud, instance_id = _cloud(request)
    detail = await cloud.ons_client_detail(instance_id, client_id)
    return respond(
        shapes.ClientDetail(
            client_id=detail.client_id,
            online=detail.online,
            last_touch=detail.last_touch_ms,
            address=detail.address,
            subscriptions=[
                shapes.Subscription(parent + (sub or ""), parent, sub, qos)
                for parent, sub, qos in detail.subscriptions
            ],
        )
    )


async def group_online(request: web.Request) -> web.Response:
    """How many clients of a group are online (OnsMqttQueryClientByGroupId)."""
    query_params(request, ())
    group_id = _group_id(request.match_info["groupId"])
    _audit(request, groupId=group_id)
    cloud, instance_id = _cloud(request)
    count = await cloud.ons_clients_by_group(instance_id, group_id)
    return respond(shapes.GroupOnline(group_id, count))


async def group_online_history(request: web.Request) -> web.Response:
    """A group's online count per minute over a time range (OnsMqttQueryHistoryOnline)."""
    params = query_params(request, ("begin", "end"))
    group_id = _group_id(request.match_info["groupId"])
    begin, end = _time_range(request, params)
    _audit(request, groupId=group_id)
    cloud, instance_id = _cloud(request)
    series = await cloud.ons_history_online(instance_id, group_id, begin, end)
    return respond(shapes.GroupOnlineHistory(**_series(series, begin, end), group_id=group_id))


async def topic_online(request: web.Request) -> web.Response:
    """How many online clients subscribe to a topic (OnsMqttQueryClientByTopic)."""
    params = query_params(request, ("topic",))
    parent, sub = _topic(params)
    _audit(request, topic=params["topic"])
    cloud, instance_id = _cloud(request)
    count = await cloud.ons_clients_by_topic(instance_id, parent, sub)
    return respond(shapes.TopicOnline(params["topic"], count))


async def topic_messages(request: web.Request) -> web.Response:
    """A topic's message volume over time (OnsMqttQueryMsgTransTrend)."""
    params = query_params(request, ("topic", "begin", "end", "measure", "direction"))
    parent, sub = _topic(params)
    begin, end = _time_range(request, params)
    measure = _choice(params, "measure", shapes.MEASURES)
    direction = _choice(params, "direction", shapes.DIRECTIONS)
    _audit(request, topic=params["topic"])
    cloud, instance_id = _cloud(request)
    series = await cloud.ons_msg_trans_trend(
        instance_id, parent, begin, end, tps_type=measure, trans_type=direction, sub_topic=sub
    )
    return respond(
        shapes.TopicMessages(
            **_series(series, begin, end),
            topic=params["topic"],
            measure=measure,
            direction=direction,
        )
    )


ROUTES: list[tuple[str, str, Handler, str]] = [
    ("GET", "clients/{clientId}", client_detail, "admin.client_detail"),
    ("GET", "groups/{groupId}/online", group_online, "admin.group_online"),
    ("GET", "groups/{groupId}/online-history", group_online_history, "admin.group_history"),
    ("GET", "topics/online", topic_online, "admin.topic_online"),
    ("GET", "topics/messages", topic_messages, "admin.topic_messages"),
]
