"""Every JSON body the gateway reads or writes, declared once as a msgspec Struct.

The handlers decode request bodies with `decode(Shape, raw)` (validation included: types,
bounds, patterns, unknown fields refused) and build their answers with `respond(Shape(...))`;
`schemas()` turns the same declarations into the OpenAPI components of GET /openapi.json.

msgspec rather than pydantic v2 because it is faster on the hot path (POST /v1/token), where a
body is decoded and validated in one pass from bytes: `python -m bench.body_parsers`, µs per
body on this machine, json.loads + hand checks / msgspec / pydantic:
`{"clientId": ...}` 4.0 / 0.8 / 2.0, `{}` 2.5 / 0.35 / 1.2, all four fields 6.9 / 3.8 / 3.7.
device.parse_asked as a whole (canonical request included) went from 9.8 to 2.7 µs for
`{"clientId": ...}` and from 9.1 to 1.6 µs for `{}` (paired runs, same load).

To add a route's shapes: declare a `Request` subclass for its body (and a `Response`
subclass for its answer) below, then name both in `SHAPES`; the OpenAPI path refers to them
by class name (`openapi_admin._operation(..., body="RevokeRequest")`). Cross-field rules that
the types cannot say go in `__post_init__` (raise BadRequest naming the field) and, for the
description, in `SCHEMA_EXTRA`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, TypeVar

import msgspec
from aiohttp import web
from msgspec import UNSET, Meta, UnsetType

from authserver.errors import BadRequest, DuplicateKey
from authserver.jsonkeys import RepeatedKey, unique_members
from authserver.policy.model import CLIENT_ID, MAX_TTL_SECONDS, MIN_TTL_SECONDS
from authserver.settings import REVOCABLE_CLAIM_NAME
from authserver.tokens.revocable import MAX_VALUE_CHARS


def whole(regex: re.Pattern[str]) -> str:
    """`regex` as a pattern that must match the whole string, in Python and in JSON Schema.

    msgspec checks patterns with `re.search`, where `$` also matches before a final newline;
    `(?!\\n)` refuses that newline, and means nothing to an ECMA-262 `$` (JSON Schema's).
    """
    return f"^(?:{regex.pattern})$(?!\\n)"


# GroupId per 002 section 11.1: GID_ or GID- then letters, digits, - and _; 7..64 in all.
GROUP_ID = re.compile(r"GID[_-][A-Za-z0-9_-]{3,60}")
# IoT Platform IotId: an opaque identifier of letters, digits and a few separators.
IOT_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
CLIENT_ID_PATTERN = whole(CLIENT_ID)
GROUP_ID_PATTERN = whole(GROUP_ID)
IOT_ID_PATTERN = whole(IOT_ID)
NO_NUL = "^[^\\u0000]+$"
# A path segment of "." or ".." would be folded away by URL normalisation.
SUBJECT_SEGMENT = "^(?!\\.\\.?$)[^\\u0000]+$"

MAX_REQUESTED_TOPICS = 100
MAX_SESSION_IDS = 100
MAX_TOKEN_CHARS = 4096
MAX_SUBJECT_CHARS = 1024
MAX_CLIENT_ID_CHARS = 128
# GET .../device-credentials query parameters (checked in admin, described in openapi_admin).
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
MAX_PAGE_NO = 1_000_000
MAX_NEXT_TOKEN_CHARS = 1024
# POST /v1/admin/revoke graceSeconds: the longest an upstream revocation may be held back.
MAX_GRACE_SECONDS = 3600

ClientId = Annotated[
    str,
    Meta(
        pattern=CLIENT_ID_PATTERN,
        max_length=MAX_CLIENT_ID_CHARS,
        description="GroupId@@@DeviceId: GID_ or GID- and 3 to 60 letters, digits, - or _, "
        "then @@@ and 1 to 64 letters, digits, - _ . or :",
    ),
]
Subject = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_SUBJECT_CHARS,
        pattern=NO_NUL,
        description=f"a JWT subject: 1 to {MAX_SUBJECT_CHARS} characters, no NUL",
    ),
]
MqttToken = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_TOKEN_CHARS,
        pattern=NO_NUL,
        description=f"an MQTT token value: 1 to {MAX_TOKEN_CHARS} characters",
    ),
]
SubjectSegment = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_SUBJECT_CHARS,
        pattern=SUBJECT_SEGMENT,
        description=f"a JWT subject as a path segment: 1 to {MAX_SUBJECT_CHARS} characters, "
        "no NUL, not . or ..",
    ),
]
GroupId = Annotated[
    str,
    Meta(
        pattern=GROUP_ID_PATTERN,
        description="an MQTT group: GID_ or GID- followed by letters, digits, - or _ "
        "(7 to 64 in all)",
    ),
]
IotId = Annotated[
    str, Meta(pattern=IOT_ID_PATTERN, description="1 to 64 letters, digits, '.', '_' or '-'")
]
TokenType = Annotated[str, Meta(extra_json_schema={"enum": ["R", "W", "RW"]})]
EpochMs = Annotated[int, Meta(description="epoch milliseconds")]


class Request(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """A request body: unknown fields are refused, and null is never the same as absent."""

    SCHEMA_EXTRA: ClassVar[dict[str, Any]] = {}


class Response(msgspec.Struct, rename="camel", omit_defaults=True):
    """An answer body: fields left UNSET are omitted, None is sent as null.

    Open to additions in the description (no additionalProperties: false), so a client
    generated from it keeps working when an answer gains a field.
    """

    SCHEMA_EXTRA: ClassVar[dict[str, Any]] = {}


# -- POST /v1/token ------------------------------------------------------------------------


class TokenRequest(Request):
    """What a device may narrow its grant to; every field is optional, as is the body."""

    client_id: ClientId | UnsetType = UNSET
    topics: (
        Annotated[
            list[str],
            Meta(
                min_length=1,
                max_length=MAX_REQUESTED_TOPICS,
                description="a non-empty list of at most "
                f"{MAX_REQUESTED_TOPICS} MQTT topic filters to narrow the grant to",
            ),
        ]
        | UnsetType
    ) = UNSET
    actions: (
        Annotated[
            list[Literal["R", "W"]],
            Meta(min_length=1, max_length=2, description="R, W or both"),
        ]
        | UnsetType
    ) = UNSET
    ttl_seconds: (
        Annotated[
            int,
            Meta(
                ge=MIN_TTL_SECONDS,
                le=MAX_TTL_SECONDS,
                description=f"a whole number of seconds between {MIN_TTL_SECONDS} and "
                f"{MAX_TTL_SECONDS}; the policy's maximum still applies",
            ),
        ]
        | UnsetType
    ) = UNSET


class Token(Response):
    """One MQTT token of an answer."""

    type: TokenType
    token: str
    resources: list[str]
    expire_time: EpochMs


class TokenResponse(Response):
    """Ready MQTT credentials."""

    instance_id: str
    username: Annotated[str, Meta(description="Token|<AccessKeyId>|<InstanceId>")]
    password: Annotated[str, Meta(description="R|<t>|W|<t> or RW|<t>")]
    tokens: list[Token]
    expire_time: EpochMs
    refresh_at: EpochMs


class Problem(Response):
    """An RFC 9457 problem; `code` is stable, and some problems add fields (e.g. `field`)."""

    type: str
    title: str
    status: int
    detail: str
    code: str


# -- admin: revocation ---------------------------------------------------------------------


class ClaimValue(Request):
    """One value of a revocable claim (AUTHSERVER_REVOCABLE_CLAIMS) that identities carry."""

    name: Annotated[
        str,
        Meta(
            pattern=whole(REVOCABLE_CLAIM_NAME),
            description="a claim AUTHSERVER_REVOCABLE_CLAIMS names (any other: 400 "
            "claim_not_revocable)",
        ),
    ]
    value: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=MAX_VALUE_CHARS,
            pattern=NO_NUL,
            description="matched exactly: a string claim equal to it, an integer claim whose "
            "decimal text it is, or a list claim (e.g. groups) holding either",
        ),
    ]


class RevokeRequest(Request):
    """Exactly one of token, subject, clientId, claim. blockIssuedBefore (default true for
    subject, clientId and claim) refuses the app JWTs of that subject, clientId or claim
    value issued before now; it cannot be set for a single token. graceSeconds holds the
    upstream revocation of the old tokens back (they leave every cache at once).
    """

    token: MqttToken | UnsetType = UNSET
    subject: Subject | UnsetType = UNSET
    client_id: ClientId | UnsetType = UNSET
    claim: ClaimValue | UnsetType = UNSET
    block_issued_before: bool | UnsetType = UNSET
    grace_seconds: (
        Annotated[
            int,
            Meta(
                ge=0,
                le=MAX_GRACE_SECONDS,
                description="seconds before the old tokens are revoked upstream (default 0): "
                "they are dropped from every cache now, so a device with a newer app JWT "
                "gets a new token and reconnects before its old one stops working",
            ),
        ]
        | UnsetType
    ) = UNSET
    device_credentials: (
        Annotated[
            Literal["unregister", "refresh"],
            Meta(
                description="also unregister or rotate the device credentials of the clientId, "
                "or of the subject's clientIds (its live tokens' and those its policy "
                "clientIds give it from {sub} and those tokens' claims)"
            ),
        ]
        | UnsetType
    ) = UNSET

    SCHEMA_EXTRA: ClassVar[dict[str, Any]] = {
        "oneOf": [
            {
                "required": ["token"],
                "properties": {
                    "blockIssuedBefore": {"const": False},
                    "deviceCredentials": False,
                },
            },
            {"required": ["subject"]},
            {"required": ["clientId"]},
            {"required": ["claim"], "properties": {"deviceCredentials": False}},
        ]
    }

    def __post_init__(self) -> None:
        """Exactly one selector; no issued-before block for a single token."""
        chosen = [name for name, _ in self._given()]
        if self.claim is not UNSET:
            chosen.append("claim")
        if len(chosen) != 1:
            raise BadRequest(
                "give exactly one of token, subject, clientId or claim "
                f"(found {', '.join(chosen) if chosen else 'none'})",
                extra={"fields": chosen},
            )
        if self.token is not UNSET and self.block_issued_before is True:
            raise BadRequest(
                "blockIssuedBefore applies to a subject or a clientId, not to one token",
                extra={"field": "blockIssuedBefore"},
            )
        if self.token is not UNSET and self.device_credentials is not UNSET:
            raise BadRequest(
                "deviceCredentials applies to a subject or a clientId, not to one token",
                extra={"field": "deviceCredentials"},
            )
        if self.claim is not UNSET and self.device_credentials is not UNSET:
            raise BadRequest(
                "deviceCredentials applies to a subject or a clientId, not to a claim value",
                extra={"field": "deviceCredentials"},
            )

    def _given(self) -> list[tuple[str, str]]:
        pairs = (("token", self.token), ("subject", self.subject), ("clientId", self.client_id))
        return [(name, value) for name, value in pairs if isinstance(value, str)]

    def selector(self) -> tuple[str, str]:
        """The one string selector given: ("token" | "subject" | "clientId", its value).

        Not for a claim selector (`claim`), which is a name and a value.
        """
        (chosen,) = self._given()
        return chosen


class CredentialSweep(Response):
    """What a revocation's deviceCredentials did: done, absent (nothing to rotate), failed."""

    action: Literal["unregister", "refresh"]
    client_ids: list[str]
    absent: list[str]
    failed: list[dict[str, str]]


class RevocationResult(Response):
    """What a revocation did."""

    revoked_locally: Annotated[int, Meta(ge=0)]
    queued: Annotated[int, Meta(ge=0)]
    blocked_issued_before: EpochMs | None
    fingerprints: list[str]
    upstream_revocation_after: (
        Annotated[
            int,
            Meta(description="epoch ms: with graceSeconds, the upstream revocation waits until"),
        ]
        | UnsetType
    ) = UNSET
    device_credentials: CredentialSweep | UnsetType = UNSET


class RevocationStatus(Response):
    """The upstream revocation queue."""

    mode: str
    depth: Annotated[int, Meta(ge=0)]
    delayed: Annotated[
        int, Meta(ge=0, description="revocations held back by a grace margin, not yet due")
    ]
    oldest_pending_age_seconds: float | None
    recent_failures: list[dict[str, Any]]


# -- admin: tokens -------------------------------------------------------------------------


class TokenQueryRequest(Request):
    """The token to look up."""

    token: MqttToken


class TokenQueryResult(Response):
    """Whether a token is valid, and where the answer came from."""

    valid: bool
    source: Literal["local", "upstream"]
    fingerprint: str
    reason: Literal["unknown", "revoked", "expired"] | UnsetType = UNSET
    cached: (
        Annotated[bool, Meta(description="an upstream answer served from the 5 s cache")]
        | UnsetType
    ) = UNSET
    type: TokenType | UnsetType = UNSET
    resources: list[str] | UnsetType = UNSET
    expire_time: EpochMs | UnsetType = UNSET


class TokenSummary(Response):
    """A live token without its value."""

    type: TokenType
    fingerprint: str
    resources: list[str]
    expire_time: EpochMs
    issued_at: EpochMs | UnsetType = UNSET
    client_id: str | UnsetType | None = UNSET
    shared: (
        Annotated[
            bool,
            Meta(
                description="One token of every holder of the same grant "
                "(AUTHSERVER_TOKEN_SHARING=identical-grants); clientId is then null"
            ),
        ]
        | UnsetType
    ) = UNSET


class SubjectTokens(Response):
    """A subject's live tokens."""

    subject: str
    tokens: list[TokenSummary]


class ExplainRequest(Request):
    """The subject is `subject`, else the claims' `sub`."""

    claims: dict[str, Any]
    client_id: ClientId | UnsetType = UNSET
    subject: Subject | UnsetType = UNSET

    SCHEMA_EXTRA: ClassVar[dict[str, Any]] = {
        "anyOf": [
            {"required": ["subject"]},
            {
                "properties": {
                    "claims": {
                        "required": ["sub"],
                        "properties": {
                            "sub": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": MAX_SUBJECT_CHARS,
                                "pattern": NO_NUL,
                            }
                        },
                    }
                }
            },
        ]
    }


class CachedToken(Response):
    """Whether a token the policy plans is already held."""

    type: TokenType
    resources: list[str]
    cached: bool
    fingerprint: str | UnsetType = UNSET
    expire_time: EpochMs | UnsetType = UNSET


class Explanation(Response):
    """The policy's account of one identity, and which of its tokens are held."""

    policy: dict[str, Any]
    subject: str
    matched: list[dict[str, Any]]
    read: list[str]
    write: list[str]
    cached_tokens: list[CachedToken]
    client_id: str | UnsetType | None = UNSET
    client_ids: (
        Annotated[
            list[str],
            Meta(description="every clientId the policy's clientIds give this identity"),
        ]
        | UnsetType
    ) = UNSET
    client_id_allowed: (
        Annotated[
            bool | None, Meta(description="whether `clientId` is one of them (null: none asked)")
        ]
        | UnsetType
    ) = UNSET
    groups: dict[str, Any] | UnsetType = UNSET
    refused: list[dict[str, Any]] | UnsetType = UNSET
    tokens: list[dict[str, Any]] | UnsetType = UNSET
    ttl_seconds: int | UnsetType = UNSET
    max_ttl_seconds: int | UnsetType = UNSET
    too_broad: str | UnsetType | None = UNSET


# -- admin: sessions, device credentials, IoT ---------------------------------------------


class Session(Response):
    """Whether one MQTT client is online."""

    client_id: str
    online: bool


class SessionsQuery(Request):
    """The clients to ask about."""

    client_ids: Annotated[
        list[ClientId],
        Meta(
            min_length=1,
            max_length=MAX_SESSION_IDS,
            description=f"1 to {MAX_SESSION_IDS} clientIds",
        ),
    ]


class Sessions(Response):
    """Online status of each client, in request order."""

    sessions: list[Session]


class DeviceCredentialPage(Response):
    """One page of a group's devices holding a device credential."""

    group_id: str
    total: Annotated[int, Meta(ge=0)]
    client_ids: list[str]
    page_no: int
    page_size: int
    next_token: str | None


class IotClientId(Response):
    """One ClientID of an IoT Platform device."""

    client_id: str
    create_time: EpochMs


class IotClientIds(Response):
    """The ClientIDs registered for an IoT Platform device."""

    iot_id: str
    client_ids: list[IotClientId]


# -- device credentials, Group IDs, messages ------------------------------------------------

MAX_TOPIC_BYTES = 65535
MAX_PAYLOAD_CHARS = 64 * 1024


class DeviceCredentialRequest(Request):
    """POST /v1/device-credential: the device's policy-bound clientId."""

    client_id: ClientId


class DeviceCredentialLogin(Response):
    """The MQTT login of a device credential (POST /v1/device-credential)."""

    client_id: str
    instance_id: str
    username: Annotated[str, Meta(description="DeviceCredential|<DeviceAccessKeyId>|<InstanceId>")]
    password: Annotated[str, Meta(description="base64(HMAC-SHA1(DeviceAccessKeySecret, clientId))")]
    device_access_key_id: str
    update_time: Annotated[int, Meta(description="epoch ms of the last rotation")]
    registered: Annotated[bool, Meta(description="registered by this call")]


class DeviceCredential(Response):
    """A ClientId's device credential, never its secret: a fingerprint tells secrets apart."""

    client_id: str
    instance_id: str
    device_access_key_id: str
    secret_fingerprint: str
    create_time: EpochMs
    update_time: EpochMs

    # Closed: a field added here must be one an operator may see, checked by a test.
    SCHEMA_EXTRA: ClassVar[dict[str, Any]] = {"additionalProperties": False}


class DeviceCredentialUnregistered(Response):
    """DELETE /v1/admin/device-credentials/{clientId}: done (or there was none)."""

    client_id: str
    unregistered: Literal[True]


class Group(Response):
    """One Group ID of the instance."""

    group_id: str
    instance_id: str
    independent_naming: bool
    create_time: EpochMs
    update_time: EpochMs


class Groups(Response):
    """Every Group ID of the instance."""

    groups: list[Group]


class GroupCreated(Response):
    """POST /v1/admin/groups: created."""

    group_id: str
    created: Literal[True]


class GroupDeleted(Response):
    """DELETE /v1/admin/groups/{groupId}: gone (or it was not there)."""

    group_id: str
    deleted: Literal[True]


class MessageSent(Response):
    """POST /v1/admin/messages: accepted by the upstream under this message ID."""

    topic: str
    msg_id: str


class Empty(Request):
    """A body with no fields (it may be left out)."""


class GroupCreate(Request):
    """POST /v1/admin/groups."""

    group_id: GroupId


class MessageSend(Request):
    """POST /v1/admin/messages: payload as given; with encoding base64 it must be base64."""

    topic: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=MAX_TOPIC_BYTES,
            pattern="^[^+#\\u0000]+$",
            description="a topic name: no + or # wildcard, no NUL",
        ),
    ]
    payload: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=MAX_PAYLOAD_CHARS,
            pattern=NO_NUL,
            description=f"1 to {MAX_PAYLOAD_CHARS} characters, no NUL",
        ),
    ]
    encoding: Literal["text", "base64"] = "text"


# -- the legacy management API's answers (001) ----------------------------------------------

NonNegative = Annotated[int, Meta(ge=0)]
# GET /v1/admin/topics/messages: its `measure` and `direction` (the first is the default).
MEASURES = ("SUM", "TPS")
DIRECTIONS = ("PUB", "SUB")


class Subscription(Response):
    """One subscription of a client: the whole filter, and as the legacy API splits it."""

    topic: str
    parent_topic: str
    sub_topic: str | None
    qos: Annotated[int, Meta(ge=0, le=2)]


class ClientDetail(Response):
    """One client: online, address, last touch, subscriptions."""

    client_id: str
    online: bool
    last_touch: EpochMs
    address: str
    subscriptions: list[Subscription]


class GroupOnline(Response):
    """How many clients of a group are online."""

    group_id: str
    online_count: NonNegative


class TopicOnline(Response):
    """How many online clients subscribe to a topic."""

    topic: str
    online_count: NonNegative


class Point(Response):
    """One point of a report."""

    time: EpochMs
    value: float


class _Series(Response):
    """A report: its points (epoch ms, value), their units, and the range asked."""

    title: str
    x_unit: str
    y_unit: str
    points: list[Point]
    begin: EpochMs
    end: EpochMs


class GroupOnlineHistory(_Series):
    """A group's online count per minute."""

    group_id: str


class TopicMessages(_Series):
    """A topic's message volume over time."""

    topic: str
    measure: Annotated[str, Meta(extra_json_schema={"enum": list(MEASURES)})]
    direction: Annotated[str, Meta(extra_json_schema={"enum": list(DIRECTIONS)})]


# -- the registry ----------------------------------------------------------------------------

SHAPES: tuple[type[msgspec.Struct], ...] = (
    Problem,
    TokenRequest,
    TokenResponse,
    RevokeRequest,
    RevocationResult,
    RevocationStatus,
    TokenQueryRequest,
    TokenQueryResult,
    SubjectTokens,
    ExplainRequest,
    Explanation,
    Session,
    SessionsQuery,
    Sessions,
    DeviceCredentialPage,
    IotClientIds,
    DeviceCredentialRequest,
    Empty,
    GroupCreate,
    MessageSend,
    DeviceCredentialLogin,
    DeviceCredential,
    DeviceCredentialUnregistered,
    Groups,
    GroupCreated,
    GroupDeleted,
    MessageSent,
    ClientDetail,
    GroupOnline,
    TopicOnline,
    GroupOnlineHistory,
    TopicMessages,
)
REF_TEMPLATE = "#/components/schemas/{name}"


def schemas() -> dict[str, Any]:
    """The OpenAPI 3.1 component schemas of every shape (and of the shapes they contain)."""
    _, components = msgspec.json.schema_components(SHAPES, ref_template=REF_TEMPLATE)
    for shape in SHAPES:
        components[shape.__name__].update(getattr(shape, "SCHEMA_EXTRA", {}))
    for component in components.values():
        component.pop("title", None)  # the key already names it
    return components


# -- decoding and answering ------------------------------------------------------------------

S = TypeVar("S", bound=msgspec.Struct)

_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {}
# " - at `$.topics[3]`" ends msgspec's messages about one field; the first segment names it.
# The field a message is about: `$.claim.value` names claim.value (a nested shape's field).
_AT = re.compile(r" - at `\$\.([A-Za-z]+(?:\.[A-Za-z]+)*)[^`]*`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `")


def decode(shape: type[S], raw: bytes) -> S:
    """The body `raw` as a `shape`; BadRequest (400 `bad_request`, `duplicate_key`) says what."""
    decoder = _DECODERS.get(shape)
    if decoder is None:
        decoder = _DECODERS[shape] = msgspec.json.Decoder(shape)
    try:
        value: S = decoder.decode(raw)
    except msgspec.ValidationError as err:
        raise _refusal(shape, str(err), raw) from err
    except msgspec.DecodeError as err:
        raise BadRequest("the body is not valid JSON") from err
    except RecursionError as err:  # nesting deeper than the decoder's recursion limit
        raise BadRequest("the body is nested too deeply") from err
    # msgspec keeps the last of two equal keys, a WAF or proxy in front may keep the first:
    # such a body is refused. Each member has one colon outside strings, so a body with no
    # more colons than the members decoded (`_members`) names no key twice; only the others
    # (several members, or colons inside strings) are parsed again, keeping every pair.
    colons = raw.count(b":")
    if colons > 1 and colons > _named(value) and colons > _members(value):
        _refuse_repeated_keys(raw)
    return value


def _named(value: msgspec.Struct) -> int:
    """The members of the body's top object that `value` proves were there (see `_fields`)."""
    fields = _fields(type(value))
    if fields.every:  # the usual shape: in C, no loop here
        values = msgspec.structs.astuple(value)
        return len(values) - values.count(UNSET)
    return sum(1 for name in fields.counting if getattr(value, name) is not UNSET)


_NESTED = (dict, list, msgspec.Struct)


def _members(value: Any) -> int:
    """How many object members, at every depth, `value` was decoded from: at least, never more."""
    if isinstance(value, msgspec.Struct):
        count = _named(value)
        for name in _fields(type(value)).names:
            field = getattr(value, name)
            if isinstance(field, _NESTED):
                count += _members(field)
        return count
    if isinstance(value, dict):
        return len(value) + sum(_members(v) for v in value.values() if isinstance(v, _NESTED))
    if isinstance(value, list):
        return sum(_members(v) for v in value if isinstance(v, _NESTED))
    return 0


class _Fields(NamedTuple):
    names: tuple[str, ...]  # every field's attribute
    counting: tuple[str, ...]  # those whose value proves the body named them
    every: bool  # all of them do


_FIELDS: dict[type[Any], _Fields] = {}


def _fields(shape: type[msgspec.Struct]) -> _Fields:
    """A shape's fields, and which of them prove the body named them when set.

    A required field, or one UNSET unless given, does; a field with another default may
    hold it without the body naming it.
    """
    found = _FIELDS.get(shape)
    if found is None:
        fields = msgspec.structs.fields(shape)
        counting = tuple(f.name for f in fields if f.required or f.default is UNSET)
        names = tuple(f.name for f in fields)
        found = _FIELDS[shape] = _Fields(names, counting, counting == names)
    return found


def _refuse_repeated_keys(raw: bytes) -> None:
    """DuplicateKey (400 `duplicate_key`) when an object of `raw` names a key twice."""
    try:
        json.loads(raw, object_pairs_hook=unique_members)
    except RepeatedKey as err:
        key = err.key if len(err.key) <= 100 else err.key[:100] + "..."
        raise DuplicateKey(
            f'the body names the key "{key}" twice in one object; each key may appear once',
            extra={"duplicateKey": key},
        ) from None
    except RecursionError:
        raise BadRequest("the body is nested too deeply") from None


def _refusal(shape: type[msgspec.Struct], message: str, raw: bytes) -> BadRequest:
    allowed = sorted(shape.__struct_encode_fields__)
    if _UNKNOWN.match(message) and _AT.search(message) is None:
        # msgspec stops at the first; the caller is better served by all of them. The rest
        # of the body was not read yet: it may still be malformed or nested too deeply.
        try:
            unknown = sorted(set(msgspec.json.decode(raw)) - set(allowed))
        except msgspec.DecodeError:
            return BadRequest("the body is not valid JSON")
        except RecursionError:
            return BadRequest("the body is nested too deeply")
        return BadRequest(
            f"unknown field(s): {', '.join(unknown)} (allowed: {', '.join(allowed)})",
            extra={"unknownFields": unknown, "allowedFields": allowed},
        )
    at = _AT.search(message)
    if at is None:
        if message.startswith("Expected `object`"):
            return BadRequest("the body must be a JSON object")
        if message.startswith("Object missing required field `"):
            name = message.split("`")[1]
            return BadRequest(f"{name} is required", extra={"field": name})
        return BadRequest(f"the body is not a {shape.__name__}: {message}")
    name = at.group(1)
    described = _descriptions(shape).get(name)
    return _bad(name, described, _reason(message[: at.start()]))


def _reason(message: str) -> str:
    if " matching regex " in message:  # the pattern itself helps no one reading the answer
        return message.split(" matching regex ")[0] + " of that form"
    return message


def _bad(name: str, described: str | None, reason: str) -> BadRequest:
    detail = f"{name}: {reason}" if described is None else f"{name} must be {described} ({reason})"
    return BadRequest(detail, extra={"field": name})


def check(value: str, kind: Any, name: str) -> str:
    """`value` (a path or query parameter called `name`) if it is a `kind`, else BadRequest."""
    try:
        return str(msgspec.convert(value, kind))
    except msgspec.ValidationError as err:
        described = msgspec.json.schema(kind).get("description")
        raise _bad(name, described, _reason(str(err))) from err


_DESCRIBED: dict[type[Any], dict[str, str]] = {}


def _descriptions(shape: type[msgspec.Struct]) -> dict[str, str]:
    """The `description` of each field of `shape` that has one, by its JSON name."""
    found = _DESCRIBED.get(shape)
    if found is None:
        _, components = msgspec.json.schema_components([shape])
        properties = components[shape.__name__].get("properties", {})
        found = _DESCRIBED[shape] = {
            name: _first_description(prop)
            for name, prop in properties.items()
            if _first_description(prop)
        }
    return found


def _first_description(prop: dict[str, Any]) -> str:
    if "description" in prop:
        return str(prop["description"])
    for option in prop.get("anyOf", ()):
        if "description" in option:
            return str(option["description"])
    items = prop.get("items", {})
    return str(items.get("description", "")) if isinstance(items, dict) else ""


def respond(
    answer: msgspec.Struct, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """`answer` as an application/json response (with these other `headers`)."""
    return web.Response(
        body=msgspec.json.encode(answer),
        status=status,
        content_type="application/json",
        headers=headers,
    )
