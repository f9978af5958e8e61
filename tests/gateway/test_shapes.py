"""The body shapes are the one source: the server and GET /openapi.json agree because of them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import msgspec
import pytest
from aiohttp.test_utils import TestClient

from authserver.errors import BadRequest
from authserver.policy import load_policy
from authserver.policy.engine import explain
from authserver.policy.model import CLIENT_ID, MAX_TTL_SECONDS, MIN_TTL_SECONDS
from authserver.web import shapes
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import EXAMPLE_POLICY, MakeGateway, bearer, make_jwt


@pytest.fixture
async def gateway(emulator: EmulatorHandle, make_gateway: MakeGateway) -> TestClient[Any, Any]:
    return await make_gateway(emulator)


async def served_spec(client: TestClient[Any, Any]) -> dict[str, Any]:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    spec: dict[str, Any] = await resp.json()
    return spec


def refs(node: Any) -> Iterator[str]:
    """Every component name a `$ref` in `node` points at."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value.removeprefix("#/components/schemas/")
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


async def test_every_reference_resolves_and_every_shape_is_used(
    gateway: TestClient[Any, Any],
) -> None:
    spec = await served_spec(gateway)
    components = spec["components"]["schemas"]
    for name, schema in components.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert set(refs(schema)) <= set(components), name
    used = set(refs(spec["paths"]))
    assert used <= set(components)
    # A shape declared in SHAPES that no path names is dead; a path naming an undeclared
    # one fails above. (Nested shapes, like Token in TokenResponse, are reached through refs.)
    reached, todo = set(), list(used)
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(refs(components[name]))
    assert {shape.__name__ for shape in shapes.SHAPES} <= reached
    assert set(components) == reached


async def test_the_bounds_in_the_description_are_the_ones_enforced(
    gateway: TestClient[Any, Any],
) -> None:
    spec = await served_spec(gateway)
    asked = spec["components"]["schemas"]["TokenRequest"]["properties"]
    assert (asked["ttlSeconds"]["minimum"], asked["ttlSeconds"]["maximum"]) == (
        MIN_TTL_SECONDS,
        MAX_TTL_SECONDS,
    )
    pattern = re.compile(asked["clientId"]["pattern"])
    for client_id in ("GID_fleet@@@a", "GID_fleet@@@a\n", "gid_fleet@@@a", "GID_ab@@@x"):
        assert bool(pattern.search(client_id)) is bool(CLIENT_ID.fullmatch(client_id)), client_id


def test_a_whole_pattern_refuses_a_final_newline() -> None:
    # msgspec checks patterns with re.search, where a bare `$` matches before a final "\n".
    assert re.search(f"^(?:{CLIENT_ID.pattern})$", "GID_fleet@@@a\n")
    assert not re.search(shapes.whole(CLIENT_ID), "GID_fleet@@@a\n")
    assert re.search(shapes.whole(CLIENT_ID), "GID_fleet@@@a")


TOKEN_BODIES: list[tuple[Any, bool]] = [
    ({}, True),
    ({"clientId": "GID_fleet@@@bob"}, True),
    ({"ttlSeconds": MIN_TTL_SECONDS}, True),
    ({"ttlSeconds": MAX_TTL_SECONDS}, True),
    ({"topics": ["devices/bob/x"], "actions": ["W", "R"]}, True),
    ({"ttlSeconds": MIN_TTL_SECONDS - 1}, False),
    ({"ttlSeconds": MAX_TTL_SECONDS + 1}, False),
    ({"ttlSeconds": True}, False),
    ({"ttlSeconds": None}, False),
    ({"clientId": None}, False),
    ({"clientId": "GID_fleet@@@bob\n"}, False),
    ({"clientId": "GID_fleet@@@" + "d" * 65}, False),
    ({"topics": []}, False),
    ({"topics": ["a"] * 101}, False),
    ({"topics": None}, False),
    ({"actions": ["R", "R", "W"]}, False),
    ({"actions": ["X"]}, False),
    ({"surprise": 1}, False),
    ([], False),
    ("GID_fleet@@@bob", False),
]


@pytest.mark.parametrize(("body", "valid"), TOKEN_BODIES)
async def test_description_and_server_agree_on_token_bodies(
    gateway: TestClient[Any, Any], body: Any, valid: bool
) -> None:
    spec = await served_spec(gateway)
    root = {"$ref": "#/components/schemas/TokenRequest", "components": spec["components"]}
    assert jsonschema.Draft202012Validator(root).is_valid(body) is valid
    resp = await gateway.post("/v1/token", json=body, headers=bearer(make_jwt("bob")))
    if valid:
        assert resp.status != 400, await resp.text()
    else:
        assert resp.status == 400, await resp.text()
        assert (await resp.json())["code"] == "bad_request"


async def test_the_token_answer_is_exactly_its_shape(gateway: TestClient[Any, Any]) -> None:
    resp = await gateway.post("/v1/token", json={}, headers=bearer(make_jwt("bob")))
    assert resp.status == 200, await resp.text()
    raw = await resp.read()
    answer = msgspec.json.decode(raw, type=shapes.TokenResponse)
    # Exactly: a field the handler adds without declaring it in shapes fails here.
    assert set(msgspec.json.decode(raw)) == set(shapes.TokenResponse.__struct_encode_fields__)
    for token in msgspec.json.decode(raw)["tokens"]:
        assert set(token) == set(shapes.Token.__struct_encode_fields__)
    assert answer.tokens
    assert answer.username.startswith("Token|")
    refused = await gateway.post(
        "/v1/token", json={"ttlSeconds": 1}, headers=bearer(make_jwt("bob"))
    )
    problem = msgspec.json.decode(await refused.read(), type=shapes.Problem)
    assert (problem.status, problem.code) == (400, "bad_request")


@pytest.mark.parametrize(
    ("raw", "detail", "extra"),
    [
        (
            b'{"ttlSeconds": 10}',
            f"ttlSeconds must be a whole number of seconds between {MIN_TTL_SECONDS} and "
            f"{MAX_TTL_SECONDS}",
            {"field": "ttlSeconds"},
        ),
        (b'{"topics": [1]}', "topics must be a non-empty list", {"field": "topics"}),
        (b'{"clientId": "x"}', "clientId must be GroupId@@@DeviceId", {"field": "clientId"}),
        (
            b'{"surprise": 1}',
            "unknown field(s): surprise",
            {
                "unknownFields": ["surprise"],
                "allowedFields": ["actions", "clientId", "topics", "ttlSeconds"],
            },
        ),
        (
            b'{"b": 1, "a": 2, "topics": ["x"]}',
            "unknown field(s): a, b",
            {
                "unknownFields": ["a", "b"],
                "allowedFields": ["actions", "clientId", "topics", "ttlSeconds"],
            },
        ),
        # After an unknown field msgspec has not read the rest: it must still be a 400.
        (
            b'{"a": 1, "b": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
            "the body is nested too deeply",
            {},
        ),
        (b'{"a": 1, "b": [}', "the body is not valid JSON", {}),
        (b"[]", "the body must be a JSON object", {}),
        (b"{", "the body is not valid JSON", {}),
        (b'{"topics": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", "topics", {"field": "topics"}),
    ],
)
def test_a_refusal_names_the_field_and_its_rule(
    raw: bytes, detail: str, extra: dict[str, Any]
) -> None:
    with pytest.raises(BadRequest) as refused:
        shapes.decode(shapes.TokenRequest, raw)
    assert refused.value.detail.startswith(detail), refused.value.detail
    assert refused.value.extra == extra
    assert "regex" not in refused.value.detail  # the pattern is for machines


def test_deep_nesting_in_a_free_form_object_is_a_400() -> None:
    raw = b'{"claims": {"a": ' + b"[" * 30_000 + b"]" * 30_000 + b"}}"
    with pytest.raises(BadRequest, match="nested too deeply"):
        shapes.decode(shapes.ExplainRequest, raw)


def test_cross_field_rules_answer_400_naming_the_fields() -> None:
    with pytest.raises(BadRequest) as refused:
        shapes.decode(shapes.RevokeRequest, b'{"token": "t", "subject": "s"}')
    assert refused.value.extra == {"fields": ["token", "subject"]}
    with pytest.raises(BadRequest) as refused:
        shapes.decode(shapes.RevokeRequest, b'{"token": "t", "blockIssuedBefore": true}')
    assert refused.value.extra == {"field": "blockIssuedBefore"}


@pytest.mark.parametrize("client_id", [None, "GID_fleet@@@bob"])
def test_every_key_of_the_policy_account_is_described(client_id: str | None) -> None:
    # Answers are converted to their shape, which drops an undeclared key: declare it instead.
    account = explain(load_policy(EXAMPLE_POLICY), "bob", {"sub": "bob"}, client_id)
    assert set(account) <= set(shapes.Explanation.__struct_encode_fields__)
