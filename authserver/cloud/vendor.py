"""Facts of the vendor's OpenAPI that need no client: endpoints per region, documented quotas.

A leaf: settings.py reads these to validate configuration without importing the client.
"""

from __future__ import annotations

# Calls per second per action (002 section 8); the account-wide limit is separate.
DEFAULT_LIMITS: dict[str, float] = {
    "ApplyToken": 100,
    "QueryToken": 100,
    "RevokeToken": 5,
    "QuerySessionByClientId": 500,
    "BatchQuerySessionByClientIds": 100,
    "QueryClientIds": 10,
    "CreateGroupId": 10,
    "DeleteGroupId": 10,
    "ListGroupId": 10,
    "SendMessage": 1000,
    # 001: the legacy management API throttles each call at about 30 a minute
    "OnsMqttGroupIdCreate": 0.5,
    "OnsMqttGroupIdDelete": 0.5,
    "OnsMqttGroupIdList": 0.5,
    "OnsMqttQueryHistoryOnline": 0.5,
    "OnsMqttQueryClientByTopic": 0.5,
    "OnsMqttQueryClientByGroupId": 0.5,
    "OnsMqttQueryClientByClientId": 0.5,
    "OnsMqttQueryMsgTransTrend": 0.5,
}


def endpoint_for_region(region_id: str) -> str:
    """The MQTT OpenAPI endpoint of a region."""
    return f"https://onsmqtt.{region_id}.aliyuncs.com"


def iot_endpoint_for_region(region_id: str) -> str:
    """The IoT Platform OpenAPI endpoint of a region."""
    return f"https://iot.{region_id}.aliyuncs.com"


def ons_endpoint_for_region(region_id: str) -> str:
    """The legacy Ons management API endpoint of a region (001)."""
    return f"https://ons.{region_id}.aliyuncs.com"
