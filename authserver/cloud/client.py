"""The async client of the vendor OpenAPI: signed RPC calls on one long-lived session.

Every call is signed with signature v1 in a POST form body (so tokens and topics stay out of
URL logs), goes through the quota governor and the circuit breaker on every attempt, and is
retried with exponential backoff and full jitter while the error is retryable and the
caller's deadline allows. Errors come out typed (`authserver.cloud.errors`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from collections import Counter, defaultdict
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp

from authserver.clock import Clock, SystemClock
from authserver.cloud.circuit import CircuitBreaker
from authserver.cloud.credentials import Credentials
from authserver.cloud.errors import (
    CloudError,
    CloudRejected,
    CloudServerError,
    CloudThrottled,
    UpstreamThrottled,
    UpstreamUnavailable,
    classify,
)
from authserver.cloud.quota import Permit, QuotaGovernor
from authserver.cloud.resources import (
    ClientDetail,
    DeviceCredential,
    GroupIdInfo,
    StatsSeries,
    vendor_items,
)
from authserver.cloud.signing import canonical_query, percent_encode, sign_v1
from authserver.cloud.vendor import (
    endpoint_for_region,
    iot_endpoint_for_region,
    ons_endpoint_for_region,
)
from authserver.errors import NotConfigured
from authserver.fingerprint import fingerprint

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

log = logging.getLogger(__name__)

T = TypeVar("T")

MQTT_VERSION = "2020-04-20"
IOT_VERSION = "2018-01-20"
ONS_VERSION = "2019-02-14"  # the legacy management API (001), product Ons
TOKEN_ACTIONS = frozenset({"R", "W", "R,W"})
MAX_RESOURCES = 100
BATCH_SIZE = 10
BATCH_CONCURRENCY = 4
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
# A retry is started only with at least this long (or the last attempt's duration) left.
MIN_ATTEMPT_BUDGET = 0.05


def make_session(timeout: float = 10.0) -> aiohttp.ClientSession:
    """The one HTTP session for the upstream: explicit timeouts, no cookies kept."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 5.0)),
        cookie_jar=aiohttp.DummyCookieJar(),
        raise_for_status=False,
    )


@dataclass(frozen=True)
class AppliedToken:
    """An ApplyToken answer."""

    token: str
    request_id: str

    def __repr__(self) -> str:
        """Never show the token itself."""
        return f"AppliedToken(token=<{fingerprint(self.token)}>, request_id={self.request_id!r})"


@dataclass(frozen=True)
class DeviceCredentialPage:
    """One page of ListDeviceCredentialClientId."""

    total: int
    client_ids: list[str]
    page_no: int
    page_size: int
    next_token: str | None


@dataclass(frozen=True)
class IotClientId:
    """One ClientID of an IoT Platform device (QueryClientIds)."""

    client_id: str
    create_time_ms: int


class CloudClient:
    """Typed calls of the MQTT token OpenAPI (and the IoT Platform's QueryClientIds)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        credentials: Credentials,
        *,
        endpoint: str,
        iot_endpoint: str | None = None,
        ons_endpoint: str | None = None,
        region_id: str = "cn-hangzhou",
        governor: QuotaGovernor | None = None,
        circuit: CircuitBreaker | None = None,
        clock: Clock | None = None,
        max_attempts: int = 4,
        backoff_base: float = 0.05,
        backoff_max: float = 1.0,
        default_deadline: float = 5.0,
        rng: random.Random | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._session = session
        self._credentials = credentials
        self.endpoint = _with_slash(endpoint)
        self.iot_endpoint = _with_slash(iot_endpoint) if iot_endpoint else None
        self.ons_endpoint = _with_slash(ons_endpoint) if ons_endpoint else None
        self.region_id = region_id
        self._clock: Clock = clock or SystemClock()
        self.governor = governor or QuotaGovernor(clock=self._clock)
        self.circuit = circuit or CircuitBreaker(clock=self._clock)
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.default_deadline = default_deadline
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._results: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._attempts: Counter[str] = Counter()
        # Spans for the quota wait and each attempt (authserver.tracing); None: tracing off.
        self.tracer = tracer

    # -- the typed actions -------------------------------------------------------------

    async def apply_token(
        self,
        instance_id: str,
        resources: Sequence[str],
        actions: str,
        expire_time_ms: int,
        *,
        deadline: float | None = None,
    ) -> AppliedToken:
        """ApplyToken: a token for `resources` (sorted, as the vendor demands) and `actions`."""
        resources = list(resources)
        if not 1 <= len(resources) <= MAX_RESOURCES:
            raise ValueError(f"ApplyToken takes 1 to {MAX_RESOURCES} resources")
        if resources != sorted(resources):
            raise ValueError("ApplyToken resources must be sorted lexicographically")
        if any("," in r or not r for r in resources):
            raise ValueError("a resource must be non-empty and free of commas")
        if actions not in TOKEN_ACTIONS:
            raise ValueError(f"ApplyToken actions must be one of {sorted(TOKEN_ACTIONS)}")
        data = await self._call(
            "ApplyToken",
            {
                "InstanceId": instance_id,
                "Resources": ",".join(resources),
                "Actions": actions,
                "ExpireTime": str(int(expire_time_ms)),
            },
            deadline=self._deadline(deadline),
        )
        return AppliedToken(
            token=_field("ApplyToken", data, "Token", str), request_id=_request_id(data) or ""
        )

    async def query_token(
        self, instance_id: str, token: str, *, deadline: float | None = None
    ) -> bool:
        """QueryToken: is the token issued, unexpired and unrevoked?"""
        data = await self._call(
            "QueryToken",
            {"InstanceId": instance_id, "Token": token},
            deadline=self._deadline(deadline),
        )
        return _field("QueryToken", data, "TokenStatus", bool)

    async def revoke_token(
        self, instance_id: str, token: str, *, deadline: float | None = None
    ) -> None:
        """RevokeToken: end the token's validity now."""
        await self._call(
            "RevokeToken",
            {"InstanceId": instance_id, "Token": token},
            deadline=self._deadline(deadline),
        )

    async def query_session(
        self, instance_id: str, client_id: str, *, deadline: float | None = None
    ) -> bool:
        """QuerySessionByClientId: is this MQTT client online?"""
        data = await self._call(
            "QuerySessionByClientId",
            {"InstanceId": instance_id, "ClientId": client_id},
            deadline=self._deadline(deadline),
        )
        return _field("QuerySessionByClientId", data, "OnlineStatus", bool)

    async def batch_query_sessions(
        self, instance_id: str, client_ids: Sequence[str], *, deadline: float | None = None
    ) -> dict[str, bool]:
        """BatchQuerySessionByClientIds in chunks of 10, a few at a time: ClientId -> online."""
        end = self._deadline(deadline)
        unique = list(dict.fromkeys(client_ids))
        chunks = [unique[i : i + BATCH_SIZE] for i in range(0, len(unique), BATCH_SIZE)]
        gate = asyncio.Semaphore(BATCH_CONCURRENCY)

        async def one(chunk: list[str]) -> dict[str, bool]:
            async with gate:
                params = {"InstanceId": instance_id}
                params.update({f"ClientIdList.{n}": c for n, c in enumerate(chunk, start=1)})
                data = await self._call("BatchQuerySessionByClientIds", params, deadline=end)
            found: dict[str, bool] = {}
            for item in _field("BatchQuerySessionByClientIds", data, "OnlineStatusList", list):
                if isinstance(item, dict) and isinstance(item.get("ClientId"), str):
                    found[item["ClientId"]] = bool(item.get("OnlineStatus"))
            return {c: found.get(c, False) for c in chunk}

        result: dict[str, bool] = {}
        for part in await _all_or_nothing([one(c) for c in chunks]):
            result.update(part)
        return result

    async def list_device_credential_client_ids(
        self,
        instance_id: str,
        group_id: str,
        *,
        page_no: int = 1,
        page_size: int = 50,
        next_token: str | None = None,
        deadline: float | None = None,
    ) -> DeviceCredentialPage:
        """ListDeviceCredentialClientId: one page of the group's devices holding a credential."""
        if page_no < 1 or not 1 <= page_size <= 100:
            raise ValueError("page_no starts at 1; page_size is 1..100")
        params = {
            "InstanceId": instance_id,
            "GroupId": group_id,
            "PageNo": str(page_no),
            "PageSize": str(page_size),
        }
        if next_token:
            params["NextToken"] = next_token
        data = await self._call(
            "ListDeviceCredentialClientId", params, deadline=self._deadline(deadline)
        )
        page = _field("ListDeviceCredentialClientId", data, "DeviceCredentialClientIdList", dict)
        try:
            return DeviceCredentialPage(
                total=int(page.get("Total", 0)),
                client_ids=[str(c) for c in page.get("ClientIdList") or []],
                page_no=int(page.get("PageNo", page_no)),
                page_size=int(page.get("PageSize", page_size)),
                next_token=str(page["NextToken"]) if page.get("NextToken") else None,
            )
        except (TypeError, ValueError) as err:
            raise _malformed("ListDeviceCredentialClientId", data, str(err)) from err

    async def register_device_credential(
        self, instance_id: str, client_id: str, *, deadline: float | None = None
    ) -> DeviceCredential:
        """RegisterDeviceCredential: give the ClientId a DeviceAccessKey pair (002 14.1)."""
        return await self._device_credential(
            "RegisterDeviceCredential", instance_id, client_id, deadline
        )

    async def get_device_credential(
        self, instance_id: str, client_id: str, *, deadline: float | None = None
    ) -> DeviceCredential:
        """GetDeviceCredential: the ClientId's current pair (002 14.2)."""
        return await self._device_credential(
            "GetDeviceCredential", instance_id, client_id, deadline
        )

    async def refresh_device_credential(
        self, instance_id: str, client_id: str, *, deadline: float | None = None
    ) -> DeviceCredential:
        """RefreshDeviceCredential: a new secret for the ClientId (002 14.4)."""
        return await self._device_credential(
            "RefreshDeviceCredential", instance_id, client_id, deadline
        )

    async def unregister_device_credential(
        self, instance_id: str, client_id: str, *, deadline: float | None = None
    ) -> None:
        """UnRegisterDeviceCredential: the ClientId's pair stops working (002 14.3)."""
        await self._call(
            "UnRegisterDeviceCredential",
            {"InstanceId": instance_id, "ClientId": client_id},
            deadline=self._deadline(deadline),
        )

    async def _device_credential(
        self, action: str, instance_id: str, client_id: str, deadline: float | None
    ) -> DeviceCredential:
        data = await self._call(
            action,
            {"InstanceId": instance_id, "ClientId": client_id},
            deadline=self._deadline(deadline),
        )
        try:
            return DeviceCredential.from_vendor(_field(action, data, "DeviceCredential", dict))
        except (KeyError, TypeError, ValueError) as err:
            # The message names the missing field only: the body holds a secret.
            raise _malformed(action, {"RequestId": data.get("RequestId")}, repr(err)) from err

    async def create_group_id(
        self, instance_id: str, group_id: str, *, deadline: float | None = None
    ) -> None:
        """CreateGroupId (002 section 11.1)."""
        await self._call(
            "CreateGroupId",
            {"InstanceId": instance_id, "GroupId": group_id},
            deadline=self._deadline(deadline),
        )

    async def delete_group_id(
        self, instance_id: str, group_id: str, *, deadline: float | None = None
    ) -> None:
        """DeleteGroupId (002 section 11.3)."""
        await self._call(
            "DeleteGroupId",
            {"InstanceId": instance_id, "GroupId": group_id},
            deadline=self._deadline(deadline),
        )

    async def list_group_ids(
        self, instance_id: str, *, deadline: float | None = None
    ) -> list[GroupIdInfo]:
        """ListGroupId (002 section 11.2): every Group ID of the instance."""
        data = await self._call(
            "ListGroupId", {"InstanceId": instance_id}, deadline=self._deadline(deadline)
        )
        try:
            return [GroupIdInfo.from_vendor(g) for g in _field("ListGroupId", data, "Data", list)]
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise _malformed("ListGroupId", data, repr(err)) from err

    async def send_message(
        self, instance_id: str, topic: str, payload: str, *, deadline: float | None = None
    ) -> str:
        """SendMessage (002 section 12.1): publish `payload` to `topic`; the MsgId."""
        data = await self._call(
            "SendMessage",
            {"InstanceId": instance_id, "MqttTopic": topic, "Payload": payload},
            deadline=self._deadline(deadline),
        )
        return _field("SendMessage", data, "MsgId", str)

    async def query_client_ids(
        self, iot_id: str, iot_instance_id: str | None = None, *, deadline: float | None = None
    ) -> list[IotClientId]:
        """IoT Platform QueryClientIds: the ClientIDs registered for one device."""
        if self.iot_endpoint is None:
            raise NotConfigured("QueryClientIds needs the IoT Platform endpoint")
        params = {"IotId": iot_id}
        if iot_instance_id:
            params["IotInstanceId"] = iot_instance_id
        data = await self._call(
            "QueryClientIds",
            params,
            deadline=self._deadline(deadline),
            endpoint=self.iot_endpoint,
            version=IOT_VERSION,
        )
        body = data.get("Data") or {}
        items = (body.get("DynamicRegClientIds") or []) if isinstance(body, dict) else []
        try:
            return [
                IotClientId(client_id=str(i["ClientId"]), create_time_ms=int(i["CreateTime"]))
                for i in items
            ]
        except (KeyError, TypeError, ValueError) as err:
            raise _malformed("QueryClientIds", data, str(err)) from err

    # -- the legacy Ons management API (001) --------------------------------------------

    async def _ons(
        self, action: str, params: Mapping[str, str], deadline: float | None
    ) -> dict[str, Any]:
        if self.ons_endpoint is None:
            raise NotConfigured(f"{action} needs the Ons management API endpoint")
        return await self._call(
            action,
            params,
            deadline=self._deadline(deadline),
            endpoint=self.ons_endpoint,
            version=ONS_VERSION,
        )

    async def ons_create_group_id(
        self,
        instance_id: str,
        group_id: str,
        topic: str | None = None,
        *,
        deadline: float | None = None,
    ) -> None:
        """OnsMqttGroupIdCreate (001 section 5.1); `topic`: the parent topic it subscribes."""
        params = {"InstanceId": instance_id, "GroupId": group_id}
        if topic:
            params["Topic"] = topic
        await self._ons("OnsMqttGroupIdCreate", params, deadline)

    async def ons_delete_group_id(
        self, instance_id: str, group_id: str, *, deadline: float | None = None
    ) -> None:
        """OnsMqttGroupIdDelete (001 section 5.2)."""
        await self._ons(
            "OnsMqttGroupIdDelete", {"InstanceId": instance_id, "GroupId": group_id}, deadline
        )

    async def ons_list_group_ids(
        self, instance_id: str, *, deadline: float | None = None
    ) -> list[GroupIdInfo]:
        """OnsMqttGroupIdList (001 section 5.3)."""
        data = await self._ons("OnsMqttGroupIdList", {"InstanceId": instance_id}, deadline)
        try:
            return [
                GroupIdInfo.from_vendor(g) for g in vendor_items(data.get("Data"), "MqttGroupIdDo")
            ]
        except (KeyError, TypeError, ValueError) as err:
            raise _malformed("OnsMqttGroupIdList", data, repr(err)) from err

    async def ons_history_online(
        self,
        instance_id: str,
        group_id: str,
        begin_ms: int,
        end_ms: int,
        *,
        deadline: float | None = None,
    ) -> StatsSeries:
        """OnsMqttQueryHistoryOnline (001 section 6.1): a group's online count over time."""
        params = {
            "InstanceId": instance_id,
            "GroupId": group_id,
            "BeginTime": str(begin_ms),
            "EndTime": str(end_ms),
        }
        return self._series(
            "OnsMqttQueryHistoryOnline",
            await self._ons("OnsMqttQueryHistoryOnline", params, deadline),
        )

    async def ons_clients_by_topic(
        self,
        instance_id: str,
        parent_topic: str,
        sub_topic: str | None = None,
        *,
        deadline: float | None = None,
    ) -> int:
        """OnsMqttQueryClientByTopic (001 section 6.2): online clients subscribed to it."""
        params = {"InstanceId": instance_id, "ParentTopic": parent_topic}
        if sub_topic:
            params["SubTopic"] = sub_topic
        data = await self._ons("OnsMqttQueryClientByTopic", params, deadline)
        return self._online_count("OnsMqttQueryClientByTopic", data)

    async def ons_clients_by_group(
        self, instance_id: str, group_id: str, *, deadline: float | None = None
    ) -> int:
        """OnsMqttQueryClientByGroupId (001 section 6.3): the group's online clients."""
        data = await self._ons(
            "OnsMqttQueryClientByGroupId",
            {"InstanceId": instance_id, "GroupId": group_id},
            deadline,
        )
        return self._online_count("OnsMqttQueryClientByGroupId", data)

    async def ons_client_detail(
        self, instance_id: str, client_id: str, *, deadline: float | None = None
    ) -> ClientDetail:
        """OnsMqttQueryClientByClientId (001 section 6.4): online, address, subscriptions."""
        action = "OnsMqttQueryClientByClientId"
        data = await self._ons(action, {"InstanceId": instance_id, "ClientId": client_id}, deadline)
        try:
            return ClientDetail.from_vendor(_field(action, data, "MqttClientInfoDo", dict))
        except (KeyError, TypeError, ValueError) as err:
            raise _malformed(action, data, repr(err)) from err

    async def ons_msg_trans_trend(
        self,
        instance_id: str,
        parent_topic: str,
        begin_ms: int,
        end_ms: int,
        *,
        tps_type: str = "SUM",
        trans_type: str = "PUB",
        sub_topic: str | None = None,
        msg_type: str | None = None,
        qos: int | None = None,
        deadline: float | None = None,
    ) -> StatsSeries:
        """OnsMqttQueryMsgTransTrend (001 section 7.1): a topic's message volume over time."""
        if tps_type not in ("TPS", "SUM") or trans_type not in ("PUB", "SUB"):
            raise ValueError("tps_type is TPS or SUM; trans_type is PUB or SUB")
        params = {
            "InstanceId": instance_id,
            "ParentTopic": parent_topic,
            "BeginTime": str(begin_ms),
            "EndTime": str(end_ms),
            "TpsType": tps_type,
            "TransType": trans_type,
        }
        if sub_topic:
            params["SubTopic"] = sub_topic
        if msg_type:
            params["MsgType"] = msg_type
        if qos is not None:
            params["Qos"] = str(qos)
        return self._series(
            "OnsMqttQueryMsgTransTrend",
            await self._ons("OnsMqttQueryMsgTransTrend", params, deadline),
        )

    @staticmethod
    def _series(action: str, data: dict[str, Any]) -> StatsSeries:
        try:
            return StatsSeries.from_vendor(_field(action, data, "Data", dict))
        except (KeyError, TypeError, ValueError) as err:
            raise _malformed(action, data, repr(err)) from err

    @staticmethod
    def _online_count(action: str, data: dict[str, Any]) -> int:
        try:
            return int(_field(action, data, "MqttClientSetDo", dict)["OnlineCount"])
        except (KeyError, TypeError, ValueError) as err:
            raise _malformed(action, data, repr(err)) from err

    def stats(self) -> dict[str, Any]:
        """Calls by action and result code (`ok`, a vendor code, `timeout`, ...), attempts."""
        return {
            "results": {action: dict(codes) for action, codes in self._results.items()},
            "attempts": dict(self._attempts),
            "circuit": self.circuit.state,
        }

    # -- the call loop -----------------------------------------------------------------

    def _deadline(self, budget: float | None) -> float:
        return self._clock.monotonic() + (self.default_deadline if budget is None else budget)

    async def _call(
        self,
        action: str,
        params: Mapping[str, str],
        *,
        deadline: float,
        endpoint: str | None = None,
        version: str = MQTT_VERSION,
    ) -> dict[str, Any]:
        """One logical call: attempts through governor and circuit until success or give-up."""
        url = endpoint or self.endpoint
        secret_param = params.get("Token")
        token_fp = fingerprint(secret_param) if secret_param else None
        attempt = 0
        failure: Exception | None = None
        last_took = 0.0
        while True:
            if self.circuit.state == "open":
                self._results[action]["circuit_open"] += 1
                if failure is not None:
                    # This call's own failures opened it: report what they were.
                    raise _give_up(action, failure, self.circuit.retry_after())
                raise UpstreamUnavailable(
                    f"{action}: the upstream circuit is open",
                    retry_after=self.circuit.retry_after(),
                )
            try:
                permit = await self._acquire(action, deadline)
            except UpstreamThrottled as refused:
                self._results[action]["quota_refused"] += 1
                if failure is not None:
                    raise refused from failure
                raise
            # The slot is held until the answer is back (or the attempt is abandoned): the
            # governor's proof that the upstream sees no more than the limit rests on it.
            with permit:
                if not self.circuit.allow():
                    self._results[action]["circuit_open"] += 1
                    raise UpstreamUnavailable(
                        f"{action}: the upstream circuit is half-open, a probe is in flight",
                        retry_after=max(self.circuit.retry_after(), 1.0),
                    )
                started = self._clock.monotonic()
                remaining = deadline - started
                if failure is not None and remaining < max(last_took, MIN_ATTEMPT_BUDGET):
                    # A retry that cannot finish in the time left would only end in a
                    # timeout that says nothing about the upstream: report what it said.
                    self._results[action]["deadline"] += 1
                    raise _give_up(action, failure, 1.0)
                if remaining <= 0:
                    self._results[action]["deadline"] += 1
                    raise UpstreamUnavailable(f"{action}: deadline exhausted before sending")
                self._attempts[action] += 1
                try:
                    data = await self._attempt(
                        action, params, url, version, remaining, attempt=attempt
                    )
                except CloudError as err:
                    self._log(action, attempt, err.vendor_code, err.request_id, token_fp)
                    self._results[action][err.vendor_code or f"http_{err.http_status}"] += 1
                    if not err.retryable:
                        self.circuit.record_success()  # the upstream is alive and answering
                        raise
                    self.circuit.record_failure()
                    failure = err
                except (TimeoutError, aiohttp.ClientError) as err:
                    kind = "timeout" if isinstance(err, TimeoutError) else "connection_error"
                    self._log(action, attempt, kind, None, token_fp)
                    self._results[action][kind] += 1
                    self.circuit.record_failure()
                    if isinstance(err, TimeoutError) and failure is not None:
                        # Cut short by the caller's deadline: the previous answer is what
                        # the upstream last said.
                        raise _give_up(action, failure, 1.0)  # noqa: B904 - cause set
                    failure = err
                else:
                    self.circuit.record_success()
                    self._results[action]["ok"] += 1
                    self._log(action, attempt, "ok", _request_id(data), token_fp)
                    return data
                last_took = self._clock.monotonic() - started
            attempt += 1
            pause = self._rng.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))
            if attempt >= self.max_attempts or self._clock.monotonic() + pause >= deadline:
                raise _give_up(action, failure, 1.0)
            await self._clock.sleep(pause)

    async def _acquire(self, action: str, deadline: float) -> Permit:
        """The governor's slot for one attempt; a `quota.wait` span when tracing."""
        if self.tracer is None:
            return await self.governor.acquire(action, deadline)
        from authserver import tracing

        attributes = {"authserver.upstream.action": action}
        with tracing.start_span(self.tracer, "quota.wait", attributes) as span:
            try:
                return await self.governor.acquire(action, deadline)
            except UpstreamThrottled:
                tracing.mark_error(span, UpstreamThrottled.code)
                raise

    async def _attempt(
        self,
        action: str,
        params: Mapping[str, str],
        url: str,
        version: str,
        budget: float,
        *,
        attempt: int = 0,
    ) -> dict[str, Any]:
        """Send one signed request and return the parsed 2xx body, or raise a CloudError.

        Traced, it is a CLIENT span `ACTION` (action, attempt, vendor code, HTTP status)
        whose context goes along in `traceparent`.
        """
        headers = {"Content-Type": FORM_CONTENT_TYPE, "Accept": "application/json"}
        if self.tracer is None:
            return (await self._send(action, params, url, version, budget, headers))[1]
        from authserver import tracing

        attributes = {
            "authserver.upstream.action": action,
            "authserver.upstream.attempt": attempt + 1,
            "http.request.method": "POST",
            "url.full": url,
        }
        with tracing.start_span(self.tracer, action, attributes, client=True) as span:
            tracing.inject(headers)
            try:
                status, data = await self._send(action, params, url, version, budget, headers)
            except CloudError as err:
                code = err.vendor_code or f"http_{err.http_status}"
                span.set_attribute("authserver.upstream.vendor_code", code)
                span.set_attribute("http.response.status_code", err.http_status)
                tracing.mark_error(span, code)
                raise
            except TimeoutError:
                tracing.mark_error(span, "timeout")
                raise
            except aiohttp.ClientError:
                tracing.mark_error(span, "connection_error")
                raise
            span.set_attribute("authserver.upstream.vendor_code", "ok")
            span.set_attribute("http.response.status_code", status)
            return data

    async def _send(
        self,
        action: str,
        params: Mapping[str, str],
        url: str,
        version: str,
        budget: float,
        headers: Mapping[str, str],
    ) -> tuple[int, dict[str, Any]]:
        """POST the signed form; the status and parsed 2xx body, or raise a CloudError."""
        body = self._signed_form(action, params, version)
        async with self._session.post(
            url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=budget)
        ) as response:
            status = response.status
            raw = await response.read()
        data = _parse_json(raw)
        if 200 <= status < 300 and data is not None and data.get("Success", True) is not False:
            return status, data
        if data is None:
            raise classify(
                action=action,
                http_status=status,
                vendor_code="",
                request_id=None,
                message="the answer is not a JSON object",
            )
        raise classify(
            action=action,
            http_status=status,
            vendor_code=str(data.get("Code") or ""),
            request_id=_request_id(data),
            message=str(data.get("Message") or data.get("ErrorMessage") or ""),
        )

    def _signed_form(self, action: str, params: Mapping[str, str], version: str) -> str:
        """The form body: common parameters, the action's, and the v1 signature."""
        creds = self._credentials
        signed = {
            "Action": action,
            "Version": version,
            "Format": "JSON",
            "AccessKeyId": creds.access_key_id,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureVersion": "1.0",
            "SignatureNonce": str(uuid.uuid4()),
            "Timestamp": datetime.fromtimestamp(self._clock.time(), UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "RegionId": self.region_id,
        }
        if creds.security_token:
            signed["SecurityToken"] = creds.security_token
        signed.update(params)
        signature = sign_v1("POST", signed, creds.access_key_secret)
        # The canonical query is a valid form body already (sorted, RFC 3986 encoded).
        return f"{canonical_query(signed)}&Signature={percent_encode(signature)}"

    def _log(
        self,
        action: str,
        attempt: int,
        outcome: str,
        request_id: str | None,
        token_fp: str | None,
    ) -> None:
        log.debug(
            "upstream %s attempt %d: %s (request %s, token %s)",
            action,
            attempt + 1,
            outcome,
            request_id or "-",
            token_fp or "-",
        )


def _give_up(action: str, failure: Exception, retry_after: float) -> Exception:
    """The error a caller sees once retries are over, chained to the last failure.

    Throttling becomes `UpstreamThrottled`, a vendor server error stays itself (502 with the
    vendor's code), a timeout or connection error becomes `UpstreamUnavailable`.
    """
    error: Exception
    if isinstance(failure, CloudThrottled):
        error = UpstreamThrottled(
            f"{action}: the upstream kept throttling until the deadline",
            retry_after=retry_after,
        )
    elif isinstance(failure, CloudServerError):
        return failure
    else:
        error = UpstreamUnavailable(
            f"{action}: the upstream did not answer ({type(failure).__name__})",
            retry_after=retry_after,
        )
    error.__cause__ = failure
    return error


async def _all_or_nothing(coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run coroutines concurrently; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return []
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
    return [task.result() for task in tasks]


def _parse_json(raw: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _request_id(data: Mapping[str, Any]) -> str | None:
    value = data.get("RequestId")
    return str(value) if value is not None else None


def _field(action: str, data: Mapping[str, Any], name: str, kind: type[T]) -> T:
    """A field of a 2xx answer, of the expected JSON type, or a CloudError."""
    value = data.get(name)
    if not isinstance(value, kind):
        raise _malformed(action, data, f"no {kind.__name__} {name!r}")
    return value


def _malformed(action: str, data: Mapping[str, Any], why: str) -> CloudError:
    return CloudError(
        f"{action or 'upstream'} answered 2xx with an unexpected body: {why}",
        vendor_code="MalformedResponse",
        http_status=200,
        request_id=_request_id(data),
        action=action,
    )


def _with_slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


__all__ = [
    "AppliedToken",
    "CloudClient",
    "CloudError",
    "CloudRejected",
    "DeviceCredential",
    "DeviceCredentialPage",
    "GroupIdInfo",
    "IotClientId",
    "endpoint_for_region",
    "iot_endpoint_for_region",
    "make_session",
    "ons_endpoint_for_region",
]
