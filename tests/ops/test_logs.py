"""JSON logs: one object per line, request id in and out, subject and fingerprint, no secrets."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from authserver import logs
from authserver.fingerprint import fingerprint
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway, bearer, make_jwt


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Everything the `authserver` loggers write at DEBUG, as JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("authserver")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Each line parsed; a line that is not one JSON object fails the test."""
    out = []
    for line in stream.getvalue().splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict)
        out.append(entry)
    return out


def access(stream: io.StringIO) -> list[dict[str, Any]]:
    """The per-request lines of the observe middleware."""
    return [e for e in lines(stream) if e["logger"] == "authserver.web.observe"]


async def test_request_line_carries_context_and_never_the_jwt(
    emulator: EmulatorHandle, make_gateway: MakeGateway, json_log: io.StringIO
) -> None:
    client = await make_gateway(emulator)
    jwt = make_jwt("alice", groups=["ops"], tenant="t1")
    resp = await client.post("/v1/token", headers={**bearer(jwt), "X-Request-Id": "req-42.a_b"})
    assert resp.status == 200
    assert resp.headers["X-Request-Id"] == "req-42.a_b"
    body = await resp.json()
    [entry] = access(json_log)
    assert entry["level"] == "DEBUG"
    assert entry["requestId"] == "req-42.a_b"
    assert entry["route"] == "/v1/token"
    assert entry["method"] == "POST"
    assert entry["status"] == 200
    assert entry["durationMs"] > 0
    assert entry["subject"] == "alice"
    assert entry["tokenFingerprint"] == fingerprint(jwt)
    assert entry["time"].endswith("+00:00")
    # Records logged deeper down (the token service minting) carry the same request id.
    inner = [
        e
        for e in lines(json_log)
        if e["logger"] not in {"authserver.web.observe", "authserver.app"}  # app: start-up
    ]
    assert inner
    assert all(e.get("requestId") == "req-42.a_b" for e in inner)
    text = json_log.getvalue()
    assert jwt not in text
    for token in body["tokens"]:
        assert token["token"] not in text


@pytest.mark.parametrize("given", ["", "x" * 129, "has space", "semi;colon", "naïve", "a/b"])
async def test_unusable_request_id_is_replaced(
    emulator: EmulatorHandle, make_gateway: MakeGateway, given: str
) -> None:
    client = await make_gateway(emulator)
    resp = await client.get("/healthz", headers={"X-Request-Id": given})
    rid = resp.headers["X-Request-Id"]
    assert rid != given
    assert len(rid) == 32
    assert int(rid, 16) >= 0


async def test_request_id_is_generated_and_unique(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    ids = {(await client.get("/healthz")).headers["X-Request-Id"] for _ in range(5)}
    assert len(ids) == 5
    # Error answers carry it too.
    resp = await client.get("/nowhere", headers={"X-Request-Id": "r" * 128})
    assert resp.status == 404
    assert resp.headers["X-Request-Id"] == "r" * 128


async def test_no_request_line_at_info(
    emulator: EmulatorHandle, make_gateway: MakeGateway, json_log: io.StringIO
) -> None:
    logging.getLogger("authserver").setLevel(logging.INFO)
    client = await make_gateway(emulator)
    jwt = make_jwt("bob")
    for _ in range(3):
        assert (await client.post("/v1/token", headers=bearer(jwt))).status == 200
    assert (await client.post("/v1/token", headers=bearer("garbage"))).status == 401
    assert access(json_log) == []


async def test_5xx_is_logged_at_warning(
    emulator: EmulatorHandle, make_gateway: MakeGateway, json_log: io.StringIO
) -> None:
    logging.getLogger("authserver").setLevel(logging.INFO)
    await emulator.runner.cleanup()
    client = await make_gateway(emulator, request_deadline=0.3)
    resp = await client.post("/v1/token", headers={**bearer(make_jwt("bob")), "X-Request-Id": "e1"})
    assert resp.status == 503
    [entry] = access(json_log)
    assert entry["level"] == "WARNING"
    assert entry["status"] == 503
    assert entry["requestId"] == "e1"
    assert entry["subject"] == "bob"


def test_formatter_outside_a_request_and_with_exception() -> None:
    record = logging.LogRecord(
        "authserver.x", logging.ERROR, __file__, 1, "boom %s", ("now",), None
    )
    record.problems = ["a", "b"]
    try:
        raise ValueError("inner")
    except ValueError:
        record.exc_info = sys.exc_info()
    entry = json.loads(logs.JsonFormatter().format(record))
    assert entry["message"] == "boom now"
    assert entry["level"] == "ERROR"
    assert entry["logger"] == "authserver.x"
    assert entry["problems"] == ["a", "b"]
    assert "ValueError: inner" in entry["exception"]
    assert "requestId" not in entry


def test_configure_logging_json_and_text() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        stream = io.StringIO()
        logs.configure_logging("WARNING", stream=stream)
        logging.getLogger("authserver.t").info("hidden")
        logging.getLogger("authserver.t").warning("shown %d", 1)
        [entry] = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert entry["message"] == "shown 1"
        text = io.StringIO()
        logs.configure_logging("INFO", json=False, stream=text)
        logging.getLogger("authserver.t").info("plain")
        assert text.getvalue().rstrip().endswith("INFO authserver.t plain")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


async def test_audit_line_holds_its_record_once(
    emulator: EmulatorHandle, make_gateway: MakeGateway, json_log: io.StringIO
) -> None:
    client = await make_gateway(emulator)
    admin = make_jwt("root", scope="authserver:admin")
    resp = await client.get("/v1/admin/subjects/alice/tokens", headers=bearer(admin))
    assert resp.status == 200
    [entry] = [e for e in lines(json_log) if e["logger"] == "authserver.audit"]
    assert entry["audit"] == {
        "action": "subject_tokens",
        "method": "GET",
        "actor": "root",
        "subject": "alice",
        "fingerprints": [],
        "result": 200,
    }
    # The message is a sentence, not the record again (it used to be its JSON, doubling it).
    assert entry["message"] == "admin GET subject_tokens by root: 200"
    [raw] = [x for x in json_log.getvalue().splitlines() if "authserver.audit" in x]
    assert raw.count('"actor"') == 1
