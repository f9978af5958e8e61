"""The emulated actions: the documented parameter checks and the documented answers.

Choices where the source documents are silent (each covered by a test):
- a missing mandatory parameter answers the API gateway's `Missing<Name>` (400); a present but
  invalid one answers the product's `InvalidParameter.<Name>` (400);
- an unknown InstanceId answers `InstancePermissionCheckFailed` (400), the code the token and
  session actions document for an instance the account does not own;
- RevokeToken of an unknown, expired or already revoked token succeeds (idempotent);
- Get/RefreshDeviceCredential of a device without a credential answer `ParameterCheckFailed`;
  UnRegisterDeviceCredential of one succeeds (idempotent);
- ListDeviceCredentialClientId: `NextToken`, when given, wins over `PageNo`; it is absent on
  the last page;
- a GroupId outside the documented shape (GID_ or GID-, then letters, digits, - and _, 7 to
  64 in all) answers `ParameterFieldCheckFailed`, the code the Group section documents;
  DeleteGroupId of an unknown Group ID succeeds (idempotent); ListGroupId lists newest first,
  as the document's example does;
- SendMessage needs a topic name (no wildcard, not empty) and a non-empty Payload, which is
  delivered as its UTF-8 bytes (the vendor advises base64 for binary: it passes through).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from typing import Any

from authserver.emulator import protocol
from authserver.emulator.state import EmulatorState, topic_matches

ONSMQTT_VERSION = "2020-04-20"
IOT_VERSION = "2018-01-20"
ONS_VERSION = "2019-02-14"  # the legacy management API of 001 (product Ons)

MIN_TOKEN_LIFETIME_MS = 60_000
MAX_TOKEN_LIFETIME_MS = 30 * 24 * 3600 * 1000
MAX_RESOURCES = 100
MAX_BATCH_CLIENT_IDS = 10
_CLIENT_ID = re.compile(r"(GID[_-][A-Za-z0-9_-]{3,60})@@@([A-Za-z0-9_.:-]+)")
_LIST_ITEM = re.compile(r"ClientIdList\.(\d+)")

Params = Mapping[str, str]
Handler = Callable[[EmulatorState, Params], dict[str, Any]]


def _required(params: Params, name: str) -> str:
    value = params.get(name, "")
    if value == "":
        raise protocol.missing(name)
    return value


def _instance(state: EmulatorState, params: Params) -> str:
    instance_id = _required(params, "InstanceId")
    if instance_id not in state.instance_ids:
        raise protocol.instance_check_failed(instance_id)
    return instance_id


def valid_topic_filter(topic: str) -> bool:
    """An MQTT topic filter: `+` is a whole level, `#` only the whole last level."""
    if not topic or "\x00" in topic or len(topic.encode()) > 65535:
        return False
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def _client_id(params: Params, name: str = "ClientId") -> str:
    client_id = _required(params, name)
    if len(client_id) > 64 or _CLIENT_ID.fullmatch(client_id) is None:
        raise protocol.invalid(name, "expected <GroupId>@@@<DeviceId>, at most 64 characters")
    return client_id


def apply_token(state: EmulatorState, params: Params) -> dict[str, Any]:
    """ApplyToken (002 section 10.1)."""
    actions = _required(params, "Actions")
    expire_text = _required(params, "ExpireTime")
    instance_id = _instance(state, params)
    resources_text = _required(params, "Resources")
    if actions not in ("R", "W", "R,W"):
        raise protocol.invalid("Actions", "must be R, W or R,W")
    try:
        expire_ms = int(expire_text)
    except ValueError:
        raise protocol.invalid("ExpireTime", "must be a millisecond timestamp") from None
    now = state.now_ms()
    if expire_ms < now + MIN_TOKEN_LIFETIME_MS:
        raise protocol.invalid("ExpireTime", "must be at least 60 seconds in the future")
    expire_ms = min(expire_ms, now + MAX_TOKEN_LIFETIME_MS)
    resources = tuple(resources_text.split(","))
    if len(resources) > MAX_RESOURCES:
        raise protocol.invalid("Resources", f"at most {MAX_RESOURCES} resources")
    bad = [r for r in resources if not valid_topic_filter(r)]
    if bad:
        raise protocol.invalid("Resources", f"not a valid MQTT topic filter: {bad[0]!r}")
    if list(resources) != sorted(resources):
        raise protocol.invalid("Resources", "resources must be sorted lexicographically")
    token = state.issue_token(instance_id, actions, resources, expire_ms)
    return {"Token": token}


def query_token(state: EmulatorState, params: Params) -> dict[str, Any]:
    """QueryToken (002 section 10.2)."""
    instance_id = _instance(state, params)
    token = _required(params, "Token")
    return {"TokenStatus": state.token_valid(token, instance_id)}


def revoke_token(state: EmulatorState, params: Params) -> dict[str, Any]:
    """RevokeToken (002 section 10.3)."""
    instance_id = _instance(state, params)
    state.revoke_token(_required(params, "Token"), instance_id)
    return {}


def query_session(state: EmulatorState, params: Params) -> dict[str, Any]:
    """QuerySessionByClientId (000, 002 section 13.1)."""
    _instance(state, params)
    return {"OnlineStatus": state.is_online(_client_id(params))}


def batch_query_sessions(state: EmulatorState, params: Params) -> dict[str, Any]:
    """BatchQuerySessionByClientIds (002 section 13.2): `ClientIdList.N`, N in 1..10."""
    _instance(state, params)
    indexed: list[tuple[int, str]] = []
    for name in params:
        match = _LIST_ITEM.fullmatch(name)
        if match:
            indexed.append((int(match.group(1)), name))
    if not indexed:
        raise protocol.missing("ClientIdList")
    indexed.sort()
    if len(indexed) > MAX_BATCH_CLIENT_IDS or not 1 <= indexed[0][0] <= indexed[-1][0] <= 10:
        raise protocol.invalid("ClientIdList", "between 1 and 10 ClientIds, ClientIdList.1..10")
    client_ids = [_client_id(params, name) for _, name in indexed]
    return {
        "OnlineStatusList": [
            {"ClientId": cid, "OnlineStatus": state.is_online(cid)} for cid in client_ids
        ]
    }


def register_credential(state: EmulatorState, params: Params) -> dict[str, Any]:
    """RegisterDeviceCredential (002 section 14.1)."""
    instance_id = _instance(state, params)
    credential = state.register_credential(instance_id, _client_id(params))
    return {"DeviceCredential": credential.as_vendor()}


def _existing_credential(state: EmulatorState, params: Params) -> Any:
    instance_id = _instance(state, params)
    credential = state.credentials.get((instance_id, _client_id(params)))
    if credential is None:
        raise protocol.parameter_check_failed("The device has no credential.")
    return credential


def get_credential(state: EmulatorState, params: Params) -> dict[str, Any]:
    """GetDeviceCredential (002 section 14.2)."""
    return {"DeviceCredential": _existing_credential(state, params).as_vendor()}


def unregister_credential(state: EmulatorState, params: Params) -> dict[str, Any]:
    """UnRegisterDeviceCredential (002 section 14.3)."""
    instance_id = _instance(state, params)
    state.credentials.pop((instance_id, _client_id(params)), None)
    return {}


def refresh_credential(state: EmulatorState, params: Params) -> dict[str, Any]:
    """RefreshDeviceCredential (002 section 14.4)."""
    credential = state.refresh_credential(_existing_credential(state, params))
    return {"DeviceCredential": credential.as_vendor()}


_GROUP_ID = re.compile(r"GID[_-][A-Za-z0-9_-]{3,60}")


def _group_id(params: Params) -> str:
    group_id = _required(params, "GroupId")
    if _GROUP_ID.fullmatch(group_id) is None:
        raise protocol.VendorError(
            400,
            "ParameterFieldCheckFailed",
            "Failed to validate the parameters. The parameters may be missing or invalid. "
            "(GroupId: GID_ or GID- then letters, digits, - and _, 7 to 64 characters)",
        )
    return group_id


def create_group_id(state: EmulatorState, params: Params) -> dict[str, Any]:
    """CreateGroupId (002 section 11.1)."""
    group_id = _group_id(params)
    instance_id = _instance(state, params)
    if state.create_group(instance_id, group_id) is None:
        raise protocol.VendorError(
            400, "GroupIdAlreadyExsited", "The specified GroupId already exists."
        )
    return {}


def list_group_ids(state: EmulatorState, params: Params) -> dict[str, Any]:
    """ListGroupId (002 section 11.2)."""
    instance_id = _instance(state, params)
    groups = [g for (iid, _), g in state.groups.items() if iid == instance_id]
    groups.sort(key=lambda g: (-g.create_ms, g.group_id))
    return {"Data": [g.as_vendor() for g in groups]}


def delete_group_id(state: EmulatorState, params: Params) -> dict[str, Any]:
    """DeleteGroupId (002 section 11.3)."""
    group_id = _group_id(params)
    instance_id = _instance(state, params)
    state.groups.pop((instance_id, group_id), None)
    return {}


def send_message(state: EmulatorState, params: Params) -> dict[str, Any]:
    """SendMessage (002 section 12.1)."""
    instance_id = _instance(state, params)
    topic = _required(params, "MqttTopic")
    payload = _required(params, "Payload")
    if not valid_topic_filter(topic) or "+" in topic or "#" in topic:
        raise protocol.invalid("MqttTopic", "must be a topic name, without wildcards")
    message = state.send_message(instance_id, topic, payload.encode("utf-8", "surrogatepass"))
    return {"MsgId": message.msg_id}


def _positive_int(params: Params, name: str, low: int, high: int) -> int:
    text = _required(params, name)
    try:
        value = int(text)
    except ValueError:
        raise protocol.invalid(name, "must be an integer") from None
    if not low <= value <= high:
        raise protocol.invalid(name, f"must be between {low} and {high}")
    return value


def _encode_next(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def _decode_next(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, _, number = text.partition(":")
        if prefix != "offset":
            raise ValueError(text)
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise protocol.invalid("NextToken", "not a token this API returned") from None


def list_credential_client_ids(state: EmulatorState, params: Params) -> dict[str, Any]:
    """ListDeviceCredentialClientId (004): numbers come back as strings, NextToken pages."""
    instance_id = _instance(state, params)
    group_id = _required(params, "GroupId")
    page_no = _positive_int(params, "PageNo", 1, 1_000_000)
    page_size = _positive_int(params, "PageSize", 1, 100)
    next_token = params.get("NextToken", "")
    offset = _decode_next(next_token) if next_token else (page_no - 1) * page_size
    client_ids = sorted(
        cid
        for (iid, cid) in state.credentials
        if iid == instance_id and cid.split("@@@", 1)[0] == group_id
    )
    page = client_ids[offset : offset + page_size]
    listing: dict[str, Any] = {
        "Total": str(len(client_ids)),
        "ClientIdList": page,
        "PageNo": str(page_no),
        "PageSize": str(page_size),
    }
    if offset + page_size < len(client_ids):
        listing["NextToken"] = _encode_next(offset + page_size)
    return {"DeviceCredentialClientIdList": listing}


# -- the legacy Ons management API (001) ---------------------------------------------------
#
# The emulated instances have an independent namespace (IndependentNaming true), so the
# InstanceId that 001 marks "required for such instances" is required. Times are epoch
# milliseconds (001's examples show seconds, its tables say milliseconds); a range longer
# than a day is cut to its first day, as 001 says the backend does, and sampled per minute.

STATS_STEP_MS = 60_000
STATS_MAX_RANGE_MS = 24 * 3600 * 1000


def ons_group_create(state: EmulatorState, params: Params) -> dict[str, Any]:
    """OnsMqttGroupIdCreate (001 section 5.1); the same Group IDs as CreateGroupId."""
    return create_group_id(state, params)


def ons_group_delete(state: EmulatorState, params: Params) -> dict[str, Any]:
    """OnsMqttGroupIdDelete (001 section 5.2)."""
    return delete_group_id(state, params)


def ons_group_list(state: EmulatorState, params: Params) -> dict[str, Any]:
    """OnsMqttGroupIdList (001 section 5.3): `Data.MqttGroupIdDo`."""
    return {"Data": {"MqttGroupIdDo": list_group_ids(state, params)["Data"]}}


def _time_range(params: Params) -> tuple[int, int]:
    begin = _positive_int(params, "BeginTime", 0, 2**53)
    end = _positive_int(params, "EndTime", 0, 2**53)
    if end < begin:
        raise protocol.invalid("EndTime", "must not be before BeginTime")
    return begin, min(end, begin + STATS_MAX_RANGE_MS)


def _samples(begin: int, end: int) -> range:
    return range(begin, end + 1, STATS_STEP_MS)


def _stats(title: str, y_unit: str, points: list[tuple[int, float]]) -> dict[str, Any]:
    return {
        "Data": {
            "Records": {"StatsDataDo": [{"X": x, "Y": y} for x, y in points]},
            "Title": title,
            "XUnit": "时间",
            "YUnit": y_unit,
        }
    }


def _in_group(client_id: str, group_id: str) -> bool:
    return client_id.split("@@@", 1)[0] == group_id


def ons_history_online(state: EmulatorState, params: Params) -> dict[str, Any]:
    """OnsMqttQueryHistoryOnline (001 section 6.1): the group's online count per minute."""
    _instance(state, params)
    group_id = _group_id(params)
    begin, end = _time_range(params)
    points = [
        (x, float(sum(1 for c in state.online_at(x) if _in_group(c, group_id))))
        for x in _samples(begin, end)
    ]
    return _stats("客户端连接数", "数量", points)


def _parent_and_sub(topic_filter: str) -> tuple[str, str | None]:
    parent, sep, rest = topic_filter.partition("/")
    return parent, (sep + rest) if sep else None


def _topic_of(params: Params) -> str:
    parent = _required(params, "ParentTopic")
    sub = params.get("SubTopic", "")
    if "/" in parent or "+" in parent or "#" in parent:
        raise protocol.invalid("ParentTopic", "a first-level topic, without / or wildcards")
    if sub and not sub.startswith("/"):
        raise protocol.invalid("SubTopic", "starts with /")
    return parent + sub


def _topic_selects(topic_filter: str, parent: str, sub: str) -> bool:
    """Whether a subscription filter is one the legacy API counts for ParentTopic+SubTopic."""
    if not sub:
        return _parent_and_sub(topic_filter)[0] == parent
    return topic_filter == parent + sub or topic_matches(topic_filter, parent + sub)


def ons_client_by_topic(state: EmulatorState, params: Params) -> dict[str, Any]:
    """OnsMqttQueryClientByTopic (001 section 6.2): online clients subscribed to the topic."""
    _instance(state, params)
    _topic_of(params)
    parent, sub = params["ParentTopic"], params.get("SubTopic", "")
    count = sum(
        1
        for cid in state.online_now()
        if any(_topic_selects(f, parent, sub) for f in state.subscriptions.get(cid, {}))
    )
    return {"MqttClientSetDo": {"OnlineCount": count}}


def ons_client_by_group(state: EmulatorState, params: Params) -> dict[str, Any]:
    """OnsMqttQueryClientByGroupId (001 section 6.3): the group's online clients."""
    _instance(state, params)
    group_id = _group_id(params)
    count = sum(1 for cid in state.online_now() if _in_group(cid, group_id))
    return {"MqttClientSetDo": {"OnlineCount": count}}


def ons_client_by_client_id(state: EmulatorState, params: Params) -> dict[str, Any]:
    """OnsMqttQueryClientByClientId (001 section 6.4): online, address, subscriptions."""
    _instance(state, params)
    client_id = _client_id(params)
    session = state.client_sessions.get(client_id)
    subscriptions = []
    for topic_filter, qos in sorted(state.subscriptions.get(client_id, {}).items()):
        parent, sub = _parent_and_sub(topic_filter)
        subscriptions.append({"ParentTopic": parent, "SubTopic": sub, "Qos": qos})
    return {
        "MqttClientInfoDo": {
            "ClientId": client_id,
            "Online": state.is_online(client_id),
            "LastTouch": session.last_touch_ms if session else 0,
            "SocketChannel": session.address if session else "",
            "SubScriptonData": {"SubscriptionDo": subscriptions},  # sic, 001's spelling
        }
    }


_TPS_TYPES = ("TPS", "SUM")
_TRANS_TYPES = ("PUB", "SUB")
_MSG_TYPES = ("P2P", "SUB")


def _choice(params: Params, name: str, allowed: tuple[str, ...], required: bool) -> str | None:
    value = _required(params, name) if required else params.get(name) or None
    if value is not None and value not in allowed:
        raise protocol.invalid(name, f"must be one of {', '.join(allowed)}")
    return value


def ons_msg_trans_trend(state: EmulatorState, params: Params) -> dict[str, Any]:
    """OnsMqttQueryMsgTransTrend (001 section 7.1): messages sent (PUB) or delivered (SUB).

    Counts what SendMessage accepted: PUB one per message, SUB one per online subscriber it
    reached. Server-sent messages are QoS 0; a `P2P` topic has `p2p` as its second level.
    """
    instance_id = _instance(state, params)
    begin, end = _time_range(params)
    _topic_of(params)
    parent, sub = params["ParentTopic"], params.get("SubTopic", "")
    tps_type = _choice(params, "TpsType", _TPS_TYPES, required=True)
    trans_type = _choice(params, "TransType", _TRANS_TYPES, required=True)
    msg_type = _choice(params, "MsgType", _MSG_TYPES, required=False)
    qos_text = params.get("Qos", "")
    qos = int(qos_text) if qos_text in ("0", "1", "2") else None

    def counted(topic: str) -> bool:
        first, _, rest = topic.partition("/")
        if first != parent or (
            sub and not (topic == parent + sub or topic_matches(parent + sub, topic))
        ):
            return False
        is_p2p = rest.split("/", 1)[0] == "p2p"
        return msg_type is None or (msg_type == "P2P") == is_p2p

    points: list[tuple[int, float]] = []
    for x in _samples(begin, end):
        total = 0
        for m in state.sent:
            if m.instance_id != instance_id or not x <= m.sent_ms < x + STATS_STEP_MS:
                continue
            if qos not in (None, 0) or not counted(m.topic):
                continue
            total += 1 if trans_type == "PUB" else m.deliveries
        points.append((x, total / 60 if tps_type == "TPS" else float(total)))
    verb = "生产" if trans_type == "PUB" else "消费"
    if tps_type == "TPS":
        return _stats(f"消息{verb}TPS", "条/秒", points)
    return _stats(f"消息{verb}总量", "条", points)


def query_client_ids(state: EmulatorState, params: Params) -> dict[str, Any]:
    """IoT Platform QueryClientIds (003), version 2018-01-20.

    The IoT Platform answers business errors with HTTP 200 and `Success: false`.
    """
    iot_id = _required(params, "IotId")
    entries = state.iot_client_ids.get(iot_id)
    if entries is None:
        return {
            "Success": False,
            "Code": "iot.device.NotExistedDevice",
            "ErrorMessage": "The specified device does not exist.",
        }
    return {
        "Success": True,
        "Data": {
            "IotId": iot_id,
            "DynamicRegClientIds": [{"ClientId": c, "CreateTime": t} for c, t in entries],
        },
    }


ACTIONS: dict[str, dict[str, Handler]] = {
    ONSMQTT_VERSION: {
        "ApplyToken": apply_token,
        "QueryToken": query_token,
        "RevokeToken": revoke_token,
        "QuerySessionByClientId": query_session,
        "BatchQuerySessionByClientIds": batch_query_sessions,
        "RegisterDeviceCredential": register_credential,
        "GetDeviceCredential": get_credential,
        "UnRegisterDeviceCredential": unregister_credential,
        "RefreshDeviceCredential": refresh_credential,
        "ListDeviceCredentialClientId": list_credential_client_ids,
        "CreateGroupId": create_group_id,
        "ListGroupId": list_group_ids,
        "DeleteGroupId": delete_group_id,
        "SendMessage": send_message,
    },
    IOT_VERSION: {"QueryClientIds": query_client_ids},
    ONS_VERSION: {
        "OnsMqttGroupIdCreate": ons_group_create,
        "OnsMqttGroupIdDelete": ons_group_delete,
        "OnsMqttGroupIdList": ons_group_list,
        "OnsMqttQueryHistoryOnline": ons_history_online,
        "OnsMqttQueryClientByTopic": ons_client_by_topic,
        "OnsMqttQueryClientByGroupId": ons_client_by_group,
        "OnsMqttQueryClientByClientId": ons_client_by_client_id,
        "OnsMqttQueryMsgTransTrend": ons_msg_trans_trend,
    },
}

# Real actions of the product that the emulator does not implement: `ApiNotSupport`.
UNSUPPORTED: dict[str, frozenset[str]] = {
    ONSMQTT_VERSION: frozenset(
        {
            "QueryMqttTraceDevice",
            "QueryMqttTraceMessageOfClient",
            "QueryMqttTraceMessagePublish",
            "QueryMqttTraceMessageSubscribe",
            "GetRegisterCode",
            "RegisterCaCertificate",
            "ListCaCertificate",
            "ListDeviceCertificate",
            "GetDeviceCertificate",
        }
    ),
    IOT_VERSION: frozenset(),
    ONS_VERSION: frozenset(),
}


def find_handler(action: str, version: str) -> Handler:
    """The handler of `action` in `version`, or the vendor's error for it."""
    if version not in ACTIONS:
        raise protocol.invalid_version(version)
    handler = ACTIONS[version].get(action)
    if handler is None:
        if action in UNSUPPORTED[version]:
            raise protocol.api_not_support(action)
        raise protocol.action_not_found(action)
    return handler
