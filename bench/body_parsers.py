"""Which parser should own the request bodies: decode + validate a POST /v1/token body three ways.

Run: `python -m bench.body_parsers`. Each parser turns the raw body into the same canonical
(clientId, sorted topics, actions, ttl) tuple and refuses the same bad bodies; timeit takes
the best of 7 repeats, in microseconds per body. The parsers:

- `json+checks`: json.loads and the hand-written checks the gateway used before shapes.py
  (a copy, kept here as the reference);
- `msgspec`: a msgspec.Struct with forbid_unknown_fields, decoded from bytes in one pass;
- `pydantic`: a pydantic v2 BaseModel (extra="forbid", strict), model_validate_json;
- `shipped`: authserver.web.device.parse_asked as it is now (shapes.TokenRequest,
  then the canonical Asked, TTL clamped by the example policy).

The figures are quoted in the commit that chose msgspec and in authserver/web/shapes.py.
"""

from __future__ import annotations

import json
import re
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import pydantic
import pydantic.alias_generators

from authserver.errors import BadRequest
from authserver.policy import load_policy
from authserver.web.device import parse_asked

CLIENT_ID = re.compile(r"GID[_-][A-Za-z0-9_-]{3,60}@@@[A-Za-z0-9_.:-]{1,64}")
ACTIONS = ("R", "W")
MIN_TTL, MAX_TTL = 60, 30 * 24 * 3600
FIELDS = frozenset({"clientId", "topics", "actions", "ttlSeconds"})

Canonical = tuple[str | None, tuple[str, ...] | None, tuple[str, ...] | None, int | None]

BODIES = {
    "full": json.dumps(
        {
            "clientId": "GID_fleet@@@device-0001",
            "topics": ["devices/bob/telemetry", "devices/bob/commands/#"],
            "actions": ["W", "R"],
            "ttlSeconds": 3600,
        }
    ).encode(),
    "clientId": b'{"clientId": "GID_fleet@@@device-0001"}',
    "{}": b"{}",
    "bodyless": b"",
}
BAD = [
    b'{"topics": "a/b"}',
    b'{"ttlSeconds": true}',
    b'{"clientId": "GID_fleet@@@dev\\n"}',
    b'{"surprise": 1}',
    b"[1]",
]


class Bad(Exception):
    """The body was refused."""


def _canonical(
    client_id: str | None, topics: list[str] | None, actions: list[str] | None, ttl: int | None
) -> Canonical:
    return (
        client_id,
        None if topics is None else tuple(sorted(set(topics))),
        None if actions is None else tuple(a for a in ACTIONS if a in actions),
        ttl,
    )


def hand(raw: bytes) -> Canonical:
    """The reference: json.loads, then one check per field."""
    if not raw.strip():
        return (None, None, None, None)
    data = json.loads(raw)
    if not isinstance(data, dict) or set(data) - FIELDS:
        raise Bad
    client_id = data.get("clientId")
    if "clientId" in data and (
        not isinstance(client_id, str) or len(client_id) > 128 or not CLIENT_ID.fullmatch(client_id)
    ):
        raise Bad
    lists = []
    for name, limit in (("topics", 100), ("actions", 2)):
        value = data.get(name)
        if name in data and (
            not isinstance(value, list)
            or not all(isinstance(v, str) for v in value)
            or not 1 <= len(value) <= limit
        ):
            raise Bad
        lists.append(value)
    if lists[1] is not None and not set(lists[1]) <= set(ACTIONS):
        raise Bad
    ttl = data.get("ttlSeconds")
    if "ttlSeconds" in data and (
        isinstance(ttl, bool) or not isinstance(ttl, int) or not MIN_TTL <= ttl <= MAX_TTL
    ):
        raise Bad
    return _canonical(client_id, lists[0], lists[1], ttl)


Unset = msgspec.UnsetType
UNSET = msgspec.UNSET


class MsgspecBody(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """The body as a msgspec Struct; clientId checked with the policy's regex."""

    client_id: Annotated[str, msgspec.Meta(max_length=128)] | Unset = UNSET
    topics: Annotated[list[str], msgspec.Meta(min_length=1, max_length=100)] | Unset = UNSET
    actions: (
        Annotated[list[Literal["R", "W"]], msgspec.Meta(min_length=1, max_length=2)] | Unset
    ) = UNSET
    ttl_seconds: Annotated[int, msgspec.Meta(ge=MIN_TTL, le=MAX_TTL)] | Unset = UNSET

    def __post_init__(self) -> None:
        if isinstance(self.client_id, str) and not CLIENT_ID.fullmatch(self.client_id):
            raise ValueError("clientId")


_MSGSPEC = msgspec.json.Decoder(MsgspecBody)


def with_msgspec(raw: bytes) -> Canonical:
    """One pass from bytes to a validated Struct."""
    if not raw.strip():
        return (None, None, None, None)
    try:
        b = _MSGSPEC.decode(raw)
    except msgspec.ValidationError as err:
        raise Bad from err
    return _canonical(
        None if b.client_id is UNSET else b.client_id,
        None if b.topics is UNSET else b.topics,
        None if b.actions is UNSET else b.actions,
        None if b.ttl_seconds is UNSET else b.ttl_seconds,
    )


class PydanticBody(pydantic.BaseModel):
    """The body as a pydantic v2 model, strict, unknown fields forbidden."""

    model_config = pydantic.ConfigDict(
        extra="forbid", strict=True, alias_generator=pydantic.alias_generators.to_camel
    )

    client_id: Annotated[str, pydantic.Field(max_length=128)] | None = None
    topics: Annotated[list[str], pydantic.Field(min_length=1, max_length=100)] | None = None
    actions: (
        Annotated[list[Literal["R", "W"]], pydantic.Field(min_length=1, max_length=2)] | None
    ) = None
    ttl_seconds: Annotated[int, pydantic.Field(ge=MIN_TTL, le=MAX_TTL)] | None = None

    @pydantic.field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str | None) -> str | None:
        if value is not None and not CLIENT_ID.fullmatch(value):
            raise ValueError("clientId")
        return value


def with_pydantic(raw: bytes) -> Canonical:
    """model_validate_json: pydantic-core parses and validates in Rust."""
    if not raw.strip():
        return (None, None, None, None)
    try:
        b = PydanticBody.model_validate_json(raw)
    except pydantic.ValidationError as err:
        raise Bad from err
    return _canonical(b.client_id, b.topics, b.actions, b.ttl_seconds)


POLICY = load_policy(Path(__file__).resolve().parent.parent / "policies" / "example.yaml")


def shipped(raw: bytes) -> Canonical:
    """What the gateway runs: device.parse_asked (shapes.TokenRequest, then canonical)."""
    try:
        asked = parse_asked(raw, POLICY)
    except BadRequest as err:
        raise Bad from err
    return (asked.client_id, asked.topics, asked.actions, asked.ttl)  # the TTL clamped


PARSERS: dict[str, Callable[[bytes], Canonical]] = {
    "json+checks": hand,
    "msgspec": with_msgspec,
    "pydantic": with_pydantic,
    "shipped": shipped,
}


def _refuses(parse: Callable[[bytes], Canonical], raw: bytes) -> bool:
    try:
        parse(raw)
    except (Bad, ValueError):
        return True
    return False


def main() -> None:
    """Check the parsers agree, then print microseconds per body for each."""
    for raw in BODIES.values():
        # The same request from each (shipped's TTL is the clamped one, so it is left out).
        answers: set[Any] = {parse(raw)[:3] for parse in PARSERS.values()}
        assert len(answers) == 1, (raw, answers)
        assert len({parse(raw) for name, parse in PARSERS.items() if name != "shipped"}) == 1
    for raw in BAD:
        for name, parse in PARSERS.items():
            assert _refuses(parse, raw), (name, raw)
    print(f"msgspec {msgspec.__version__}, pydantic {pydantic.VERSION}; µs per body, best of 7")
    print("| body | " + " | ".join(PARSERS) + " |")
    print("| --- |" + " ---: |" * len(PARSERS))
    for label, raw in [*BODIES.items(), ("refused (5 kinds)", None)]:
        cells = []
        for parse in PARSERS.values():
            if raw is None:

                def run(parse: Callable[[bytes], Canonical] = parse) -> None:
                    for bad in BAD:
                        _refuses(parse, bad)

                number, per = 20_000, len(BAD)
            else:

                def run(parse: Callable[[bytes], Canonical] = parse, raw: bytes = raw) -> None:
                    parse(raw)

                number, per = 100_000, 1
            best = min(timeit.repeat(run, number=number, repeat=7))
            cells.append(f"{best / number / per * 1e6:.2f}")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
