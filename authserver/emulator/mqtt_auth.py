"""What the emulated broker decides: who may connect, and may this client do that now.

Pure functions over the emulator's state (no sockets, no amqtt), so each rule is tested on
its own. The rules follow the vendor's token-mode pages as distilled in
`mqtt-token-api.md` section 7:

- username `Token|<AccessKeyId>|<InstanceId>`, password `type|token` pairs joined by `|` in
  any order, at most one per type (R, W, RW); one bad token refuses the whole password;
- `Signature|<AccessKeyId>|<InstanceId>` with base64(HMAC-SHA1(AccessKeySecret, ClientId)),
  and `DeviceCredential|<DeviceAccessKeyId>|<InstanceId>` with the same signature keyed by
  the DeviceAccessKeySecret: both grant everything;
- a SUBSCRIBE filter needs an R (or RW) resource that covers it, a PUBLISH a W (or RW)
  resource that matches the topic; delivery needs an R resource matching the topic;
- with the emulator's `--enforce-groups`, a CONNECT whose GroupId (before `@@@`) the instance
  has not created (CreateGroupId) is refused, reason `group`;
- every check first re-validates every token the client holds: a revoked one answers code 3,
  an expired one code 2, one the emulator does not know (any more) code 1.

Where the pages are silent (each is a choice, covered by a test): the type a token is sent
under must be the type it was applied for (`R|<a W token>` is refused); the `type` of a
code 4/5 notice is the type the action needed (R or W) unless exactly one held token of that
kind was consulted, then its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from authserver.emulator.state import EmulatorState, TokenRecord
from authserver.topics import InvalidTopicFilter, covers, matches

# $SYS/tokenInvalidNotice codes (section 7).
FORGED = 1
EXPIRED = 2
REVOKED = 3
RESOURCE_MISMATCH = 4
TYPE_MISMATCH = 5

TOKEN_TYPES = ("R", "W", "RW")
# The ApplyToken `Actions` a token of each type was applied with.
ACTIONS_OF_TYPE = {"R": "R", "W": "W", "RW": "R,W"}
_CLIENT_ID = re.compile(r"GID[_-][0-9A-Za-z_-]{3,60}@@@[0-9A-Za-z_-]+")
MAX_CLIENT_ID = 64

SUBSCRIBE = "subscribe"
PUBLISH = "publish"
RECEIVE = "receive"


class ConnectRefused(Exception):
    """A CONNECT the broker answers with return code 5; `reason` feeds the statistics."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Refusal:
    """Why a connected client is cut off: the notice's code and type."""

    code: int
    type: str

    def notice(self) -> bytes:
        """The `$SYS/tokenInvalidNotice` payload."""
        return json.dumps({"code": self.code, "type": self.type}).encode()


@dataclass
class Grants:
    """What one connected client holds: its tokens by type, or everything (signature modes)."""

    instance_id: str
    tokens: dict[str, str] = field(default_factory=dict)
    full: bool = False
    # Tokens whose expiry notice was sent already (the vendor sends it once).
    warned: set[str] = field(default_factory=set)

    def depends_on(self, token: str) -> bool:
        """Whether this client holds `token`."""
        return token in self.tokens.values()

    def check(self, state: EmulatorState) -> Refusal | None:
        """The first problem with a held token (forged, revoked, expired), or None."""
        for kind in sorted(self.tokens):
            code = token_problem(state, self.instance_id, kind, self.tokens[kind])
            if code is not None:
                return Refusal(code, kind)
        return None

    def judge(self, state: EmulatorState, action: str, topic: str) -> Refusal | None:
        """None when `action` (SUBSCRIBE a filter, PUBLISH or RECEIVE a topic) is allowed."""
        if self.full:
            return None
        problem = self.check(state)
        if problem is not None:
            return problem
        needed = "W" if action == PUBLISH else "R"
        held = [kind for kind in sorted(self.tokens) if needed in kind]
        if not held:
            return Refusal(TYPE_MISMATCH, needed)
        test: Callable[[str, str], bool] = covers if action == SUBSCRIBE else matches
        for kind in held:
            record = state.token_info(self.tokens[kind])
            if record is not None and _any_resource(record, topic, test):
                return None
        return Refusal(RESOURCE_MISMATCH, held[0] if len(held) == 1 else needed)

    def upload(self, state: EmulatorState, payload: bytes | bytearray) -> Refusal | None:
        """Swap in a token published to `$SYS/uploadToken`; a Refusal (code 1) if it is bad."""
        try:
            document = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return Refusal(FORGED, "")
        if not isinstance(document, dict):
            return Refusal(FORGED, "")
        kind, token = document.get("type"), document.get("token")
        if kind not in TOKEN_TYPES or not isinstance(token, str) or not token:
            return Refusal(FORGED, kind if isinstance(kind, str) else "")
        if token_problem(state, self.instance_id, kind, token) is not None:
            return Refusal(FORGED, kind)
        self.tokens[kind] = token
        return None

    def expiring(self, state: EmulatorState, ahead_ms: int) -> list[tuple[str, int]]:
        """Held tokens expiring within `ahead_ms` not warned about yet: (type, expireTime).

        Marks them warned, so each token gets one notice.
        """
        due: list[tuple[str, int]] = []
        limit = state.now_ms() + ahead_ms
        for kind, token in sorted(self.tokens.items()):
            record = state.token_info(token)
            if record is not None and record.expire_ms <= limit and token not in self.warned:
                self.warned.add(token)
                due.append((kind, record.expire_ms))
        return due


def _any_resource(record: TokenRecord, topic: str, test: Callable[[str, str], bool]) -> bool:
    for resource in record.resources:
        try:
            if test(resource, topic):
                return True
        except InvalidTopicFilter:
            # A hostile filter or topic is simply not inside any grant.
            continue
    return False


def token_problem(state: EmulatorState, instance_id: str, kind: str, token: str) -> int | None:
    """The notice code that makes `token` unusable as a `kind` token, or None if it is good."""
    record = state.token_info(token)
    if (
        record is None
        or record.instance_id != instance_id
        or record.actions != ACTIONS_OF_TYPE.get(kind)
    ):
        return FORGED
    if record.revoked:
        return REVOKED
    if record.expire_ms <= state.now_ms():
        return EXPIRED
    return None


def valid_client_id(client_id: str) -> bool:
    """`GID_xxx@@@deviceid`, at most 64 characters, `[0-9A-Za-z_-]` plus the `@@@`."""
    return len(client_id) <= MAX_CLIENT_ID and _CLIENT_ID.fullmatch(client_id) is not None


def sign_client_id(secret: str, client_id: str) -> str:
    """base64(HMAC-SHA1(secret, ClientId)): the password of the two signature modes."""
    digest = hmac.new(secret.encode(), client_id.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def parse_password(password: str) -> dict[str, str]:
    """`R|a|W|b` -> {"R": "a", "W": "b"}; ConnectRefused when malformed or a type repeats."""
    parts = password.split("|")
    if len(parts) % 2 or not parts[0]:
        raise ConnectRefused("password")
    tokens: dict[str, str] = {}
    for kind, token in zip(parts[::2], parts[1::2], strict=True):
        if kind not in TOKEN_TYPES or not token or kind in tokens:
            raise ConnectRefused("password")
        tokens[kind] = token
    return tokens


def group_of(client_id: str) -> str:
    """The GroupId of a `GID_xxx@@@deviceid` ClientId: the part before `@@@`."""
    return client_id.split("@@@", 1)[0]


def authenticate(
    state: EmulatorState,
    client_id: str | None,
    username: str | None,
    password: str | None,
    *,
    enforce_groups: bool = False,
) -> Grants:
    """The grants of a CONNECT, or ConnectRefused with the reason it gets return code 5.

    With `enforce_groups`, a client whose credentials hold is still refused (`group`) unless
    its GroupId was created on that instance (CreateGroupId), as at the vendor. The group is
    checked last, so only a client that proved its credentials learns whether a group exists.
    """
    if client_id is None or not valid_client_id(client_id):
        raise ConnectRefused("client_id")
    grants = _credentials(state, client_id, username, password)
    if enforce_groups and (grants.instance_id, group_of(client_id)) not in state.groups:
        raise ConnectRefused("group")
    return grants


def _credentials(
    state: EmulatorState, client_id: str, username: str | None, password: str | None
) -> Grants:
    # The three modes' checks of username and password for a well-formed ClientId.
    if username is None or password is None:
        raise ConnectRefused("no_credentials")
    mode, _, rest = username.partition("|")
    key_id, _, instance_id = rest.partition("|")
    if not key_id or not instance_id or "|" in instance_id:
        raise ConnectRefused("username")
    if instance_id not in state.instance_ids:
        raise ConnectRefused("instance")
    if mode == "Token":
        if key_id not in state.access_keys:
            raise ConnectRefused("access_key")
        tokens = parse_password(password)
        for kind, token in tokens.items():
            code = token_problem(state, instance_id, kind, token)
            if code is not None:
                raise ConnectRefused({FORGED: "forged", EXPIRED: "expired"}.get(code, "revoked"))
        return Grants(instance_id, tokens)
    if mode == "Signature":
        secret = state.access_keys.get(key_id)
    elif mode == "DeviceCredential":
        credential = state.credentials.get((instance_id, client_id))
        matching = credential is not None and hmac.compare_digest(
            credential.access_key_id.encode(), key_id.encode()
        )
        secret = credential.access_key_secret if credential is not None and matching else None
    else:
        raise ConnectRefused("username")
    if secret is None:
        raise ConnectRefused("access_key")
    if not hmac.compare_digest(sign_client_id(secret, client_id).encode(), password.encode()):
        raise ConnectRefused("signature")
    return Grants(instance_id, full=True)
