"""Logging set-up: one JSON object per line, with the request's id, route and subject.

The request context lives in a contextvar that the observe middleware sets for each request,
so any record logged while a request is handled (by the handler, the token service, the
cloud client) carries its request id without being passed around. Nothing here logs a token:
the context holds the fingerprint (first 8 hex of sha256) of the bearer credential, computed
only when a record is actually formatted.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from authserver.fingerprint import fingerprint

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

# Attributes every LogRecord has; anything else on a record came from `extra=` and is kept.
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class RequestContext:
    """What the logs should know about the request being handled."""

    __slots__ = ("_bearer", "_fingerprint", "method", "request_id", "route", "subject")

    def __init__(
        self, request_id: str, method: str, route: str, authorization: str | None = None
    ) -> None:
        self.request_id = request_id
        self.method = method
        self.route = route
        self.subject: str | None = None
        self._bearer = authorization
        self._fingerprint: str | None = None

    @property
    def token_fingerprint(self) -> str | None:
        """First 8 hex of the bearer token's sha256, computed once and only when logged."""
        header = self._bearer
        if self._fingerprint is None and header and header[:7].lower() == "bearer ":
            token = header[7:].strip()
            if token:
                self._fingerprint = fingerprint(token)
        return self._fingerprint


_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)

CURRENT: ContextVar[RequestContext | None] = ContextVar("authserver_request", default=None)


def request_id_from(header: str | None) -> str:
    """The caller's X-Request-Id when it is a sane id (<= 128 of [A-Za-z0-9._-]), else a new one."""
    if header is not None and _REQUEST_ID.fullmatch(header):
        return header
    # A per-process random prefix and a counter: unique, 32 hex like a uuid4, and no system
    # call per request (request ids need to be unique, not secret).
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def bind_subject(subject: str) -> None:
    """Name the authenticated subject in the logs of the current request (no-op outside one)."""
    context = CURRENT.get()
    if context is not None:
        context.subject = subject


class JsonFormatter(logging.Formatter):
    """One JSON object per line: level, time, logger, message, request context, extras."""

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as a single line of JSON."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = CURRENT.get()
        if context is not None:
            entry["requestId"] = context.request_id
            entry["method"] = context.method
            entry["route"] = context.route
            if context.subject is not None:
                entry["subject"] = context.subject
            token_fp = context.token_fingerprint
            if token_fp is not None:
                entry["tokenFingerprint"] = token_fp
        for name, value in record.__dict__.items():
            if name not in _STANDARD_ATTRS and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """The human format (demo, local runs), with the request id when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The classic line, suffixed with `[request id]` inside a request."""
        line = super().format(record)
        context = CURRENT.get()
        if context is not None:
            line = f"{line} [{context.request_id}]"
        return line


def configure_logging(level: str, *, json: bool = True, stream: TextIO | None = None) -> None:
    """Send every log record to stderr (or `stream`): JSON lines by default, text for people."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def quiet_amqtt_debug() -> None:
    """Keep amqtt's DEBUG records out: they carry payloads and, on the client, the password.

    (amqtt.client logs the broker URI, user:password included, at DEBUG.) Used by the
    emulator's broker and the reference device, which both run amqtt in-process.
    """
    amqtt_log = logging.getLogger("amqtt")
    if amqtt_log.getEffectiveLevel() < logging.INFO:
        amqtt_log.setLevel(logging.INFO)
