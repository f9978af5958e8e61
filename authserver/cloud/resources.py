"""Typed answers of the management actions: device credentials, Group IDs, sent messages.

A `DeviceCredential` holds its secret only to derive the MQTT password from it: its repr,
`public()` view and every log show the AccessKey ID and a fingerprint, never the secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from authserver.fingerprint import fingerprint

DEVICE_CREDENTIAL_USERNAME = "DeviceCredential|{key_id}|{instance_id}"


def device_credential_password(secret: str, client_id: str) -> str:
    """The vendor's device-credential password: base64(HMAC-SHA1(key=secret, msg=ClientId))."""
    digest = hmac.new(secret.encode(), client_id.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


@dataclass(frozen=True)
class DeviceCredential:
    """One device's AccessKey pair (002 section 14): the secret stays inside the gateway."""

    client_id: str
    instance_id: str
    access_key_id: str
    access_key_secret: str = field(repr=False)
    create_time_ms: int
    update_time_ms: int

    @classmethod
    def from_vendor(cls, data: Mapping[str, Any]) -> DeviceCredential:
        """Parse the `DeviceCredential` struct; KeyError/TypeError/ValueError when malformed."""
        values = {
            name: data[name]
            for name in ("ClientId", "InstanceId", "DeviceAccessKeyId", "DeviceAccessKeySecret")
        }
        if not all(isinstance(v, str) and v for v in values.values()):
            raise ValueError("DeviceCredential strings must be non-empty")
        return cls(
            client_id=values["ClientId"],
            instance_id=values["InstanceId"],
            access_key_id=values["DeviceAccessKeyId"],
            access_key_secret=values["DeviceAccessKeySecret"],
            create_time_ms=int(data["CreateTime"]),
            update_time_ms=int(data["UpdateTime"]),
        )

    @property
    def username(self) -> str:
        """The MQTT username: `DeviceCredential|<DeviceAccessKeyId>|<InstanceId>`."""
        return DEVICE_CREDENTIAL_USERNAME.format(
            key_id=self.access_key_id, instance_id=self.instance_id
        )

    @property
    def password(self) -> str:
        """The MQTT password of this credential for its ClientId."""
        return device_credential_password(self.access_key_secret, self.client_id)

    @property
    def secret_fingerprint(self) -> str:
        """A fingerprint of the secret, to tell two secrets apart in an answer or a log."""
        return fingerprint(self.access_key_secret)


@dataclass(frozen=True)
class GroupIdInfo:
    """One Group ID of an instance (ListGroupId)."""

    group_id: str
    instance_id: str
    independent_naming: bool
    create_time_ms: int
    update_time_ms: int

    @classmethod
    def from_vendor(cls, data: Mapping[str, Any]) -> GroupIdInfo:
        """Parse one `MqttGroupIdDo`; KeyError/TypeError/ValueError when malformed."""
        group_id = data["GroupId"]
        if not isinstance(group_id, str) or not group_id:
            raise ValueError("GroupId must be a non-empty string")
        return cls(
            group_id=group_id,
            instance_id=str(data.get("InstanceId") or ""),
            independent_naming=bool(data.get("IndependentNaming", False)),
            create_time_ms=int(data["CreateTime"]),
            update_time_ms=int(data.get("UpdateTime", data["CreateTime"])),
        )


def vendor_items(value: object, name: str) -> list[Any]:
    """A vendor list wrapped as `{name: [...]}` (or one item not in a list), or []."""
    if not isinstance(value, Mapping):
        return []
    inner = value.get(name)
    if inner is None:
        return []
    return list(inner) if isinstance(inner, list) else [inner]


@dataclass(frozen=True)
class StatsSeries:
    """A legacy-API report (001 sections 6.1, 7.1): points (epoch ms, value) and their units."""

    title: str
    x_unit: str
    y_unit: str
    points: tuple[tuple[int, float], ...]

    @classmethod
    def from_vendor(cls, data: Mapping[str, Any]) -> StatsSeries:
        """Parse `Data` with `Records.StatsDataDo`; KeyError/TypeError/ValueError when malformed."""
        points = tuple(
            (int(p["X"]), float(p["Y"])) for p in vendor_items(data.get("Records"), "StatsDataDo")
        )
        return cls(
            title=str(data.get("Title") or ""),
            x_unit=str(data.get("XUnit") or ""),
            y_unit=str(data.get("YUnit") or ""),
            points=points,
        )


@dataclass(frozen=True)
class ClientDetail:
    """One client as the legacy API tells it (001 section 6.4)."""

    client_id: str
    online: bool
    last_touch_ms: int
    address: str
    subscriptions: tuple[tuple[str, str | None, int], ...]  # (ParentTopic, SubTopic, QoS)

    @classmethod
    def from_vendor(cls, data: Mapping[str, Any]) -> ClientDetail:
        """Parse `MqttClientInfoDo`; KeyError/TypeError/ValueError when malformed."""
        subs = tuple(
            (
                str(s["ParentTopic"]),
                str(s["SubTopic"]) if s.get("SubTopic") else None,
                int(s["Qos"]),
            )
            for s in vendor_items(data.get("SubScriptonData"), "SubscriptionDo")
        )
        return cls(
            client_id=str(data["ClientId"]),
            online=bool(data.get("Online", False)),
            last_touch_ms=int(data.get("LastTouch") or 0),
            address=str(data.get("SocketChannel") or ""),
            subscriptions=subs,
        )
