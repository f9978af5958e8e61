"""MQTT topic-filter syntax, matching, and "is filter A inside filter B".

Rules (MQTT 3.1.1 section 4.7 / MQTT 5 section 4.7, plus what the token API needs):

- A filter is a non-empty str of at most ``MAX_FILTER_BYTES`` (1024) UTF-8 bytes. MQTT allows
  65535; the cloud API takes up to 100 filters joined by commas in one request parameter, so a
  much lower cap keeps requests sane. A str that is not valid UTF-8 (a lone surrogate) is refused.
- Levels are separated by ``/``. Empty levels are legal MQTT and accepted: ``a//b``, ``/a``
  (the vendor's own examples use a leading ``/``) and ``a/`` are three different filters.
- ``+`` must occupy a whole level; ``#`` must be the whole last level.
- Refused characters: NUL (MQTT forbids it), the C0/C1 control characters (MQTT says they
  SHOULD NOT appear and a broker may disconnect), and ``,`` because the cloud API's
  ``Resources`` parameter is comma-separated: a comma would split one grant into two.
- ``$`` topics: a filter whose first level is ``+`` or ``#`` does not match a topic whose first
  level starts with ``$`` (``$SYS/...``). Only a filter that spells the ``$`` level out matches
  it. ``$share/...`` and ``$queue/...`` are treated as ordinary literal levels.
- "Covers" is exact set inclusion over valid topic names. Because the empty topic name is
  invalid, ``#`` and ``+/#`` match the same topics (as do ``/#`` and ``/+/#``); they cover each
  other and ``normalize`` keeps the one that sorts first.
- Order: ``sorted()`` of str is code point order, which is the same as UTF-8 byte order for
  valid UTF-8. That is the "lexicographic" order the vendor asks for in ``Resources``.
"""

from __future__ import annotations

from collections.abc import Iterable

from authserver.errors import BadRequest

MAX_FILTER_BYTES = 1024
SEPARATOR = "/"
SINGLE = "+"
MULTI = "#"

_FORBIDDEN = frozenset(
    [chr(c) for c in range(0x00, 0x20)] + [chr(c) for c in range(0x7F, 0xA0)] + [","]
)
_ALL_ONE_OR_MORE = [SINGLE, MULTI]
_EQUIVALENT = (("#", "+/#"), ("/#", "/+/#"))


class InvalidTopicFilter(BadRequest):
    """A topic filter (or topic name) is not valid MQTT syntax or is refused by the gateway."""

    code = "invalid_topic_filter"
    title = "Invalid topic filter"


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidTopicFilter(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidTopicFilter(f"{what} must not be empty")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidTopicFilter(f"{what} {value!a} is not valid UTF-8") from None
    if size > MAX_FILTER_BYTES:
        raise InvalidTopicFilter(
            f"{what} is {size} bytes of UTF-8, more than the limit of {MAX_FILTER_BYTES}"
        )
    bad = next((ch for ch in value if ch in _FORBIDDEN), None)
    if bad is not None:
        name = "a comma" if bad == "," else f"the control character {bad!a}"
        raise InvalidTopicFilter(f"{what} {value!a} contains {name}")
    return value


def validate_filter(f: str) -> None:
    """Raise InvalidTopicFilter unless ``f`` is an acceptable MQTT topic filter."""
    _check_text(f, "topic filter")
    levels = f.split(SEPARATOR)
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if level == MULTI:
            if i != last:
                raise InvalidTopicFilter(f"topic filter {f!a}: '#' must be the last level")
        elif MULTI in level:
            raise InvalidTopicFilter(f"topic filter {f!a}: '#' must occupy a whole level")
        elif level != SINGLE and SINGLE in level:
            raise InvalidTopicFilter(f"topic filter {f!a}: '+' must occupy a whole level")


def validate_topic(name: str) -> None:
    """Raise InvalidTopicFilter unless ``name`` is a valid topic name (no wildcards)."""
    _check_text(name, "topic name")
    if SINGLE in name or MULTI in name:
        raise InvalidTopicFilter(f"topic name {name!a} must not contain '+' or '#'")


def _is_dollar(level: str) -> bool:
    return level.startswith("$")


def matches(filter: str, topic: str) -> bool:
    """Whether the topic name ``topic`` is matched by the topic filter ``filter``."""
    validate_filter(filter)
    validate_topic(topic)
    f_levels = filter.split(SEPARATOR)
    t_levels = topic.split(SEPARATOR)
    if _is_dollar(t_levels[0]) and f_levels[0] in (SINGLE, MULTI):
        return False
    for i, f_level in enumerate(f_levels):
        if f_level == MULTI:
            return True  # also matches the parent: "a/#" matches "a"
        if i >= len(t_levels):
            return False
        if f_level != SINGLE and f_level != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


def _no_topic_is_exactly(prefix: list[str]) -> bool:
    """Whether no valid topic name consists of exactly these levels (the topic "" is invalid).

    This is the one place where '#' matching "zero more levels" makes no difference: "#" and
    "+/#" match the same topics, and so do "/#" and "/+/#".
    """
    return prefix == [] or prefix == [""]


def _covers_levels(outer: list[str], inner: list[str]) -> bool:
    if _is_dollar(inner[0]) and outer[0] in (SINGLE, MULTI):
        return False  # inner only matches $ topics, which no leading wildcard matches
    for i, o_level in enumerate(outer):
        if o_level == MULTI:
            return True
        if i >= len(inner):
            return False
        i_level = inner[i]
        if i_level == MULTI:
            # only '#' covers '#' (handled above), or "+/#" where zero levels match no topic
            return outer[i:] == _ALL_ONE_OR_MORE and _no_topic_is_exactly(inner[:i])
        if i_level == SINGLE:
            if o_level != SINGLE:
                return False
        elif o_level not in (SINGLE, i_level):
            return False
    return len(outer) == len(inner)


def covers(outer: str, inner: str) -> bool:
    """Whether every topic matched by filter ``inner`` is also matched by filter ``outer``."""
    validate_filter(outer)
    validate_filter(inner)
    return _covers_levels(outer.split(SEPARATOR), inner.split(SEPARATOR))


class _Node:
    __slots__ = ("children", "end")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.end: str | None = None


def _trie_covers(root: _Node, inner: str, exclude: str | None) -> bool:
    """Whether a filter in the trie, other than ``exclude``, covers ``inner``."""
    levels = inner.split(SEPARATOR)
    dollar = _is_dollar(levels[0])

    def walk(node: _Node, i: int) -> bool:
        multi = node.children.get(MULTI)
        if multi is not None and multi.end != exclude and not (i == 0 and dollar):
            return True
        if i == len(levels):
            return node.end is not None and node.end != exclude
        level = levels[i]
        if level == MULTI:
            if _no_topic_is_exactly(levels[:i]):  # "+/#" covers "#": see _no_topic_is_exactly
                plus = node.children.get(SINGLE)
                plus_all = plus.children.get(MULTI) if plus is not None else None
                return plus_all is not None and plus_all.end != exclude
            return False
        single = node.children.get(SINGLE)
        if single is not None and not (i == 0 and dollar) and walk(single, i + 1):
            return True
        if level != SINGLE:
            child = node.children.get(level)
            if child is not None and walk(child, i + 1):
                return True
        return False

    return walk(root, 0)


def _trie(filters: Iterable[str]) -> _Node:
    root = _Node()
    for f in filters:
        node = root
        for level in f.split(SEPARATOR):
            node = node.children.setdefault(level, _Node())
        node.end = f
    return root


class FilterSet:
    """A validated set of filters that answers "is this filter inside one of them" quickly."""

    def __init__(self, filters: Iterable[str]) -> None:
        """Validate the filters and index them."""
        self.filters = frozenset(filters)
        for f in self.filters:
            validate_filter(f)
        self._root = _trie(self.filters)

    def covers(self, inner: str) -> bool:
        """Whether some filter of the set covers the (already valid) filter ``inner``."""
        return _trie_covers(self._root, inner, exclude=None)


def normalize(filters: Iterable[str]) -> tuple[str, ...]:
    """Validate, deduplicate, drop filters covered by another one, and sort by code point."""
    unique: set[str] = set()
    for f in filters:
        validate_filter(f)
        unique.add(f)
    # The only filters that cover each other without being equal: keep the one sorting first.
    for short, long in _EQUIVALENT:
        if short in unique:
            unique.discard(long)
    root = _trie(unique)
    return tuple(sorted(f for f in unique if not _trie_covers(root, f, exclude=f)))
