"""Read and validate a policy file, reporting every problem at once with file and entry.

The format (``version: 1``; it may grow, but every key is checked so a typo is an error)::

    version: 1                      # required, must be 1
    defaults:
      ttlSeconds: 3600              # token lifetime when a request does not ask for less
      maxTtlSeconds: 3600           # the most a request may ask for; defaults to ttlSeconds
    groupsClaim: groups             # the JWT claim whose values select entries under `groups`
    clientIds: [CLIENTID, ...]      # the clientIds every subject may ask tokens for
    everyone: [RULE, ...]           # every authenticated subject
    groups: {NAME: ENTRY}           # subjects whose groups claim contains NAME
    users: {SUBJECT: ENTRY}         # by the JWT subject, exactly

    ENTRY = [RULE, ...]  or  {clientIds: [CLIENTID, ...], rules: [RULE, ...],
                              deviceCredentials: true}
    RULE = {topics: [FILTER, ...], actions: [R | W, ...]}

Both lifetimes must lie in [60, 2592000] seconds (the cloud API's range) and
``maxTtlSeconds >= ttlSeconds``. A FILTER is an MQTT topic filter (see ``authserver.topics``)
that may contain placeholders ``{sub}``, ``{client_id}`` and ``{claims.NAME}`` (NAME is a
top-level claim name taken literally, dots included; nested claims are not looked into),
anywhere inside a level, e.g. ``devices/{sub}-in/#``. ``{{`` and ``}}`` are literal braces.
There is no per-rule lifetime: one policy-wide range keeps the cache and the explanation simple.

A CLIENTID is a ClientId template over signed values only, ``{sub}`` and ``{claims.NAME}``
(``{client_id}`` is what it checks, so it cannot appear there), e.g. ``GID_fleet@@@{sub}``;
its literal text holds only ClientId characters. A top-level CLIENTID needs a placeholder
(a literal one would let every subject use the same clientId). A FILTER using ``{client_id}``
is an error unless a clientIds list applies to its entry: the top-level one, or the one of
its group or user.

``deviceCredentials: true`` in a group or user entry lets its subjects hold a device
credential ("one device, one secret", 002 section 14) for a clientId the policy gives them.
Such a credential is not limited to topics, so it is a privilege: default false, there is no
top-level form, and the entry needs a clientIds list that applies to it at load time (the
top-level one or its own), since the credential is bound to a ClientId.
"""

from __future__ import annotations

import difflib
import hashlib
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from authserver.policy.model import (
    ACTIONS,
    CLIENT_ID,
    DEFAULT_GROUPS_CLAIM,
    DEFAULT_TTL_SECONDS,
    MAX_TTL_SECONDS,
    MIN_TTL_SECONDS,
    ClientIds,
    Policy,
    PolicyLoadError,
    Rule,
    Template,
    Var,
)
from authserver.topics import InvalidTopicFilter, validate_filter

_TOP_KEYS = ("version", "defaults", "groupsClaim", "clientIds", "everyone", "groups", "users")
_DEFAULTS_KEYS = ("ttlSeconds", "maxTtlSeconds")
_RULE_KEYS = ("topics", "actions")
_ENTRY_KEYS = ("clientIds", "rules", "deviceCredentials")
_PLAIN_VARS = ("sub", "client_id")
_SIGNED_VARS = ("sub",)
_CLAIMS_PREFIX = "claims."
_CLIENT_ID_CHARS = frozenset(string.ascii_letters + string.digits + "_-.:@")
_GROUP_PREFIXES = ("GID_", "GID-")


def _split(text: str, plain_vars: tuple[str, ...]) -> Template:
    """Split a template into literals and placeholders; ValueError says what is wrong."""
    parts: list[str | Var] = []
    buf: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "{}" and text.startswith(ch * 2, i):
            buf.append(ch)
            i += 2
            continue
        if ch == "}":
            raise ValueError("unmatched '}' (write '}}' for a literal brace)")
        if ch == "{":
            end = text.find("}", i + 1)
            if end < 0:
                raise ValueError("unclosed '{' (write '{{' for a literal brace)")
            name = text[i + 1 : end]
            known = name in plain_vars or (
                name.startswith(_CLAIMS_PREFIX) and len(name) > len(_CLAIMS_PREFIX)
            )
            if not known or "{" in name:
                listed = ", ".join(f"{{{v}}}" for v in plain_vars)
                raise ValueError(
                    f"unknown template variable '{{{name}}}' (known: {listed}, {{claims.NAME}})"
                )
            if buf:
                parts.append("".join(buf))
                buf = []
            parts.append(Var(name))
            i = end + 1
            continue
        buf.append(ch)
        i += 1
    if buf:
        parts.append("".join(buf))
    return Template(source=text, parts=tuple(parts))


def parse_template(text: str) -> Template:
    """Split a policy topic into literals and placeholders; ValueError says what is wrong."""
    template = _split(text, _PLAIN_VARS)
    # Placeholders are checked as their own spelling, so "{sub}+" fails like "x+" would and
    # the message shows what the author wrote.
    shown = "".join(p if isinstance(p, str) else f"{{{p.name}}}" for p in template.parts)
    try:
        validate_filter(shown)
    except InvalidTopicFilter as err:
        raise ValueError(f"invalid topic filter: {err.detail}") from None
    return template


def parse_client_id_template(text: str) -> Template:
    """Parse a ``clientIds`` entry: a ClientId over ``{sub}`` and ``{claims.NAME}`` only."""
    if "{client_id}" in text.replace("{{", ""):
        raise ValueError(
            "{client_id} cannot appear in clientIds: they say which clientIds a request may "
            "name, so they are built from signed values only ({sub}, {claims.NAME})"
        )
    template = _split(text, _SIGNED_VARS)
    if not template.parts:
        raise ValueError("a clientId must not be empty")
    for part in template.parts:
        if isinstance(part, str):
            bad = next((ch for ch in part if ch not in _CLIENT_ID_CHARS), None)
            if bad is not None:
                raise ValueError(
                    f"{bad!r} cannot be part of a ClientId "
                    "(letters, digits and - _ . : @, as in GID_group@@@device)"
                )
    first = template.parts[0]
    if isinstance(first, str) and not any(
        first.startswith(p) or p.startswith(first) for p in _GROUP_PREFIXES
    ):
        raise ValueError("a ClientId starts with its GroupId, GID_ or GID- (GID_group@@@device)")
    if template.is_literal and not CLIENT_ID.fullmatch(text):
        raise ValueError("not a valid ClientId (GID_group@@@device: letters, digits, - _ . :)")
    return template


class _Problems:
    """Collects problems, each prefixed with the file and the entry, and a line when known."""

    def __init__(self, source: str, lines: Mapping[str, int]) -> None:
        self.source = source
        self.lines = lines
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        line = self.lines.get(path)
        where = f" (line {line})" if line is not None else ""
        self.items.append(f"{self.source}: {path or '(top level)'}: {message}{where}")


def _child(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _index_lines(node: yaml.Node, path: str, lines: dict[str, int], dupes: list[str]) -> None:
    """Map entry paths to 1-based line numbers, and note duplicate keys (YAML keeps the last)."""
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            sub = _child(path, key)
            if key in seen:
                dupes.append(sub)
            seen.add(key)
            lines.setdefault(sub, key_node.start_mark.line + 1)
            _index_lines(value_node, sub, lines, dupes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, f"{path}[{i}]", lines, dupes)


def _type_name(value: object) -> str:
    if value is None:
        return "nothing (null)"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}"
    )


def _unknown_keys(
    problems: _Problems, path: str, data: Mapping[Any, Any], known: tuple[str, ...]
) -> None:
    for key in data:
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            did_you = f"; did you mean {hint[0]!r}?" if hint else ""
            problems.add(
                _child(path, key),
                f"unknown key {key!r} (expected one of: {', '.join(known)}){did_you}",
            )


def _int_in_range(problems: _Problems, path: str, value: object) -> int | None:
    if not isinstance(value, int) or isinstance(value, bool):
        problems.add(path, f"must be a whole number of seconds, not {_type_name(value)}")
        return None
    if not MIN_TTL_SECONDS <= value <= MAX_TTL_SECONDS:
        problems.add(
            path, f"{value} is outside [{MIN_TTL_SECONDS}, {MAX_TTL_SECONDS}] seconds (30 days)"
        )
        return None
    return value


def _parse_rule(problems: _Problems, path: str, data: object) -> Rule | None:
    if not isinstance(data, dict):
        problems.add(
            path, f"a rule must be a mapping with topics and actions, not {_type_name(data)}"
        )
        return None
    before = len(problems.items)
    _unknown_keys(problems, path, data, _RULE_KEYS)
    for key in _RULE_KEYS:
        if key not in data:
            problems.add(path, f"missing key {key!r}")
    topics: list[Template] = []
    raw_topics = data.get("topics")
    if "topics" in data:
        if not isinstance(raw_topics, list) or not raw_topics:
            problems.add(
                _child(path, "topics"),
                f"must be a non-empty list of topic filters, not {_type_name(raw_topics)}",
            )
        else:
            for i, raw in enumerate(raw_topics):
                where = f"{_child(path, 'topics')}[{i}]"
                if not isinstance(raw, str):
                    problems.add(where, f"a topic filter must be a string, not {_type_name(raw)}")
                    continue
                try:
                    topics.append(parse_template(raw))
                except ValueError as err:
                    problems.add(where, f"{raw!r}: {err}")
    actions: set[str] = set()
    raw_actions = data.get("actions")
    if "actions" in data:
        if not isinstance(raw_actions, list) or not raw_actions:
            problems.add(
                _child(path, "actions"),
                f"must be a non-empty list like [R] or [R, W], not {_type_name(raw_actions)}",
            )
        else:
            for i, raw in enumerate(raw_actions):
                if raw in ACTIONS:
                    actions.add(raw)
                else:
                    problems.add(
                        _child(path, "actions"),
                        f"unknown action {raw!r} at position {i} (expected R or W)",
                    )
    if len(problems.items) != before:
        return None
    return Rule(label=path, topics=tuple(topics), actions=frozenset(actions))


def _parse_rules(problems: _Problems, path: str, data: object) -> tuple[Rule, ...]:
    if data is None:
        return ()
    if not isinstance(data, list):
        problems.add(path, f"must be a list of rules, not {_type_name(data)}")
        return ()
    rules = (_parse_rule(problems, f"{path}[{i}]", item) for i, item in enumerate(data))
    return tuple(r for r in rules if r is not None)


def _parse_client_ids(
    problems: _Problems, path: str, data: object, *, literal_ok: bool
) -> ClientIds | None:
    if not isinstance(data, list) or not data:
        problems.add(
            path,
            "must be a non-empty list of clientId templates like ['GID_fleet@@@{sub}'], "
            f"not {_type_name(data)}",
        )
        return None
    templates: list[Template] = []
    for i, raw in enumerate(data):
        where = f"{path}[{i}]"
        if not isinstance(raw, str):
            problems.add(where, f"a clientId template must be a string, not {_type_name(raw)}")
            continue
        try:
            template = parse_client_id_template(raw)
        except ValueError as err:
            problems.add(where, f"{raw!r}: {err}")
            continue
        if template.is_literal and not literal_ok:
            problems.add(
                where,
                f"{raw!r} has no placeholder: every subject could use this one clientId; "
                "derive it from {sub} or {claims.NAME}, or list it under a user",
            )
            continue
        if template not in templates:
            templates.append(template)
    return ClientIds(path, tuple(templates))


def _parse_named(
    problems: _Problems, path: str, data: object, what: str
) -> tuple[dict[str, tuple[Rule, ...]], dict[str, ClientIds], set[str]]:
    """A ``groups`` or ``users`` section: each entry a list of rules, or a mapping.

    Returns the rules and the clientIds lists by entry name, and the names whose entry says
    ``deviceCredentials: true``.
    """
    rules: dict[str, tuple[Rule, ...]] = {}
    client_ids: dict[str, ClientIds] = {}
    credentials: set[str] = set()
    if data is None:
        return rules, client_ids, credentials
    if not isinstance(data, dict):
        problems.add(path, f"must be a mapping of {what} to lists of rules, not {_type_name(data)}")
        return rules, client_ids, credentials
    for key, value in data.items():
        if not isinstance(key, str) or not key:
            problems.add(
                _child(path, key),
                f"a {what[:-1]} name must be a non-empty string, not {_type_name(key)} "
                f"{key!r} (quote it in YAML)",
            )
            continue
        entry = _child(path, key)
        if not isinstance(value, dict):
            rules[key] = _parse_rules(problems, entry, value)
            continue
        _unknown_keys(problems, entry, value, _ENTRY_KEYS)
        rules[key] = _parse_rules(problems, _child(entry, "rules"), value.get("rules"))
        if "clientIds" in value:
            where = _child(entry, "clientIds")
            found = _parse_client_ids(problems, where, value["clientIds"], literal_ok=True)
            # A broken list is reported already; kept (empty) so it is not reported twice.
            client_ids[key] = found or ClientIds(where, ())
        if "deviceCredentials" in value:
            flag = value["deviceCredentials"]
            if not isinstance(flag, bool):
                problems.add(
                    _child(entry, "deviceCredentials"),
                    f"must be true or false, not {_type_name(flag)}",
                )
            elif flag:
                credentials.add(key)
    return rules, client_ids, credentials


def _check_client_id_bindings(
    problems: _Problems,
    entry: str,
    rules: tuple[Rule, ...],
    bound: bool,
) -> None:
    """A topic using {client_id} needs a clientIds list that applies to its entry."""
    if bound:
        return
    for rule in rules:
        for i, template in enumerate(rule.topics):
            if template.uses_client_id:
                problems.add(
                    f"{rule.label}.topics[{i}]",
                    f"{template.source!r} uses {{client_id}}, but no clientIds list applies "
                    f"to {entry}, so a device could name any clientId (another device's "
                    "included); add a top-level clientIds (or one in this entry) built "
                    "from signed values, e.g. clientIds: ['GID_fleet@@@{sub}']",
                )


def parse_policy(text: str, source: str) -> Policy:
    """Parse and validate policy YAML; raise PolicyLoadError listing every problem."""
    version_id = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise PolicyLoadError([f"{source}: {line}invalid YAML: {problem}"]) from None
    lines: dict[str, int] = {}
    dupes: list[str] = []
    if root is not None:
        _index_lines(root, "", lines, dupes)
    problems = _Problems(source, lines)
    for path in dupes:
        problems.add(path, "duplicate key (YAML would silently keep only the last one)")
    if not isinstance(data, dict):
        problems.add(
            "", f"a policy must be a mapping starting with 'version: 1', not {_type_name(data)}"
        )
        raise PolicyLoadError(problems.items)

    _unknown_keys(problems, "", data, _TOP_KEYS)
    version = data.get("version")
    if "version" not in data:
        problems.add("version", "missing; write 'version: 1'")
    elif type(version) is not int or version != 1:
        problems.add("version", f"unsupported version {version!r}; this gateway reads version 1")

    ttl, max_ttl = DEFAULT_TTL_SECONDS, None
    defaults = data.get("defaults")
    if defaults is not None and not isinstance(defaults, dict):
        problems.add("defaults", f"must be a mapping, not {_type_name(defaults)}")
    elif defaults:
        _unknown_keys(problems, "defaults", defaults, _DEFAULTS_KEYS)
        if "ttlSeconds" in defaults:
            ttl = _int_in_range(problems, "defaults.ttlSeconds", defaults["ttlSeconds"]) or ttl
        if "maxTtlSeconds" in defaults:
            max_ttl = _int_in_range(problems, "defaults.maxTtlSeconds", defaults["maxTtlSeconds"])
            if max_ttl is not None and max_ttl < ttl:
                problems.add(
                    "defaults.maxTtlSeconds",
                    f"{max_ttl} is less than defaults.ttlSeconds ({ttl})",
                )
    groups_claim = data.get("groupsClaim", DEFAULT_GROUPS_CLAIM)
    if not isinstance(groups_claim, str) or not groups_claim:
        problems.add(
            "groupsClaim", f"must be a non-empty claim name, not {_type_name(groups_claim)}"
        )

    client_ids = None
    if "clientIds" in data:
        client_ids = _parse_client_ids(problems, "clientIds", data["clientIds"], literal_ok=False)
    everyone = _parse_rules(problems, "everyone", data.get("everyone"))
    groups, group_ids, group_creds = _parse_named(problems, "groups", data.get("groups"), "groups")
    users, user_ids, user_creds = _parse_named(problems, "users", data.get("users"), "users")
    top_bound = "clientIds" in data  # a broken list is reported already; not twice
    for section, names, bound_ids in (
        ("groups", group_creds, group_ids),
        ("users", user_creds, user_ids),
    ):
        for name in sorted(names):
            if not top_bound and name not in bound_ids:
                problems.add(
                    f"{section}.{name}.deviceCredentials",
                    "a device credential is bound to a ClientId, but no clientIds list applies "
                    f"to {section}.{name}; add one to the entry (or a top-level clientIds)",
                )
    _check_client_id_bindings(problems, "everyone", everyone, top_bound)
    for section, entries, bound_ids in (("groups", groups, group_ids), ("users", users, user_ids)):
        for name, rules in entries.items():
            _check_client_id_bindings(
                problems, _child(section, name), rules, top_bound or name in bound_ids
            )
    if problems.items:
        raise PolicyLoadError(problems.items)
    return Policy(
        source=source,
        version_id=version_id,
        ttl_seconds=ttl,
        max_ttl_seconds=max_ttl if max_ttl is not None else ttl,
        groups_claim=str(groups_claim),
        everyone=everyone,
        groups=groups,
        users=users,
        client_ids=client_ids,
        group_client_ids=group_ids,
        user_client_ids=user_ids,
        device_credential_groups=frozenset(group_creds),
        device_credential_users=frozenset(user_creds),
    )


def load_policy(path: str | Path) -> Policy:
    """Read a policy file (blocking: call at start-up or from a worker thread) and parse it."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise PolicyLoadError([f"{source}: cannot read: {err.strerror or err}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PolicyLoadError([f"{source}: not valid UTF-8 at byte {err.start}"]) from None
    return parse_policy(text, source)
