"""MQTT topic-filter syntax, matching, "is filter A inside filter B" and normalization."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authserver.errors import BadRequest
from authserver.topics import (
    MAX_FILTER_BYTES,
    FilterSet,
    InvalidTopicFilter,
    covers,
    matches,
    normalize,
    validate_filter,
)

VALID = [
    "a",
    "a/b/c",
    "#",
    "+",
    "+/+",
    "a/+/c",
    "a/#",
    "+/#",
    "/",
    "/a",
    "a/",
    "a//b",
    "//",
    "$SYS/#",
    "$SYS/+/x",
    "$share/g/a/#",
    "a b/c d",
    "réseau/🚀/état",
    "x" * MAX_FILTER_BYTES,
    "é" * (MAX_FILTER_BYTES // 2),
    "..",
    "a/../b",
]

INVALID = [
    ("", "empty"),
    ("a/#/b", "last level"),
    ("#/a", "last level"),
    ("a#", "whole level"),
    ("a/#b", "whole level"),
    ("a+", "whole level"),
    ("a/+b/c", "whole level"),
    ("++", "whole level"),
    ("a/b\x00", "control character"),
    ("a\nb", "control character"),
    ("a\x7fb", "control character"),
    ("a\x85b", "control character"),
    ("a,b", "comma"),
    ("a/\ud800", "UTF-8"),
    ("x" * (MAX_FILTER_BYTES + 1), "bytes"),
    ("é" * (MAX_FILTER_BYTES // 2 + 1), "bytes"),
]


@pytest.mark.parametrize("f", VALID)
def test_valid_filters(f: str) -> None:
    validate_filter(f)


@pytest.mark.parametrize(("f", "why"), INVALID)
def test_invalid_filters(f: str, why: str) -> None:
    with pytest.raises(InvalidTopicFilter, match=why) as info:
        validate_filter(f)
    assert isinstance(info.value, BadRequest)
    assert info.value.status == 400
    assert info.value.code == "invalid_topic_filter"


@pytest.mark.parametrize("value", [None, 1, b"a/b", ["a"]])
def test_non_string_filter_is_refused(value: object) -> None:
    with pytest.raises(InvalidTopicFilter, match="must be a string"):
        validate_filter(value)  # type: ignore[arg-type]


MATCHES = [
    ("a/b", "a/b", True),
    ("a/b", "a/c", False),
    ("a/b", "a/b/c", False),
    ("a/+", "a/b", True),
    ("a/+", "a/", True),  # '+' matches an empty level
    ("a/+", "a", False),
    ("a/+", "a/b/c", False),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("a/#", "a", True),  # '#' also matches the parent level
    ("a/#", "a/b/c", True),
    ("a/#", "ab", False),
    ("#", "a/b", True),
    ("#", "/", True),
    ("#", "$SYS/x", False),
    ("+/x", "$SYS/x", False),
    ("+/#", "$SYS/x", False),
    ("$SYS/#", "$SYS/x", True),
    ("$SYS/+", "$SYS/x", True),
    ("a/+/#", "a/$x/y", True),  # '$' matters only in the first level
    ("a//b", "a//b", True),
    ("a/+/b", "a//b", True),
    ("a//b", "a/b", False),
]


@pytest.mark.parametrize(("f", "topic", "expected"), MATCHES)
def test_matches(f: str, topic: str, expected: bool) -> None:
    assert matches(f, topic) is expected


def test_matches_refuses_wildcards_in_the_topic_name() -> None:
    with pytest.raises(InvalidTopicFilter, match="topic name"):
        matches("a/#", "a/+")


COVERS = [
    # outer, inner, outer covers inner
    ("a/#", "a", True),
    ("a/#", "a/b/+", True),
    ("a/#", "a/#", True),
    ("a/#", "a/+/#", True),
    ("a/#", "b", False),
    ("a/#", "#", False),
    ("+/b", "x/b", True),
    ("+/b", "+/b", True),
    ("+/b", "x/c", False),
    ("x/b", "+/b", False),
    ("a/+", "a/#", False),
    ("a/+", "a/b", True),
    ("a/+", "a", False),
    ("a/+", "a/b/c", False),
    ("a/+/+", "a/#", False),
    ("a/+/#", "a/b", True),
    ("a/+/#", "a", False),
    ("#", "a/b/#", True),
    ("#", "+", True),
    ("#", "+/#", True),
    ("#", "/", True),
    ("+", "+", True),
    ("+", "a", True),
    ("+", "#", False),
    ("+", "a/b", False),
    # '$' topics are only inside filters that spell the '$' level out
    ("#", "$SYS/x", False),
    ("#", "$SYS/#", False),
    ("+/#", "$SYS/#", False),
    ("+/x", "$SYS/x", False),
    ("$SYS/#", "$SYS/x", True),
    ("$SYS/#", "$SYS", True),
    ("$SYS/+", "$SYS/x", True),
    ("$SYS/#", "#", False),
    ("a/#", "a/$x", True),
    ("a/+", "a/$x", True),
    ("#", "$", False),
    ("#", "a$", True),
    # empty levels are levels like any other
    ("+/a", "/a", True),
    ("/#", "/a/b", True),
    ("/#", "/", True),
    ("a/+/b", "a//b", True),
    ("a//b", "a/+/b", False),
    ("+", "/", False),
    ("+/+", "/", True),
    ("a/#", "a/", True),
    ("a/+", "a/", True),
    ("a", "a/", False),
    # '#' also matches zero more levels, except where that would be the invalid topic ""
    ("+/#", "#", True),
    ("#", "+/#", True),
    ("/+/#", "/#", True),
    ("+/+/#", "/#", True),
    ("a/+/#", "a/#", False),
    ("+/+/#", "+/#", False),
]


@pytest.mark.parametrize(("outer", "inner", "expected"), COVERS)
def test_covers(outer: str, inner: str, expected: bool) -> None:
    assert covers(outer, inner) is expected
    assert FilterSet([outer]).covers(inner) is expected


def test_covers_validates_both_filters() -> None:
    with pytest.raises(InvalidTopicFilter):
        covers("a/#/b", "a")
    with pytest.raises(InvalidTopicFilter):
        covers("a/#", "a+")


# Exhaustive check of covers() against its definition, over a small universe: filters of up to
# three levels built from {a, $x, "", +, #} and every topic of up to four levels over
# {a, c, $x, ""}. "c" never appears in a filter, so it witnesses what '+' adds over a literal;
# four levels witness what '#' adds over a fixed depth.
_F_LEVELS = ["a", "$x", "", "+", "#"]
_T_LEVELS = ["a", "c", "$x", ""]


def _small_filters() -> list[str]:
    out: list[str] = []
    for n in (1, 2, 3):
        for levels in itertools.product(_F_LEVELS, repeat=n):
            if "#" in levels[:-1]:
                continue
            out.append("/".join(levels))
    return [f for f in out if f]


def _small_topics() -> list[str]:
    out: list[str] = []
    for n in (1, 2, 3, 4):
        out.extend("/".join(levels) for levels in itertools.product(_T_LEVELS, repeat=n))
    return [t for t in out if t]


def test_covers_agrees_with_matches_on_an_exhaustive_universe() -> None:
    filters = _small_filters()
    topics = _small_topics()
    matched = {f: frozenset(t for t in topics if matches(f, t)) for f in filters}
    for outer, inner in itertools.product(filters, repeat=2):
        assert covers(outer, inner) == (matched[inner] <= matched[outer]), (outer, inner)


def test_normalize_is_minimal_and_complete_for_every_pair_of_the_universe() -> None:
    filters = _small_filters()
    for a, b in itertools.product(filters, repeat=2):
        out = normalize([a, b])
        assert all(any(covers(o, x) for o in out) for x in (a, b)), (a, b, out)
        assert not any(covers(x, y) for x, y in itertools.permutations(out, 2)), (a, b, out)


NORMALIZE = [
    ([], ()),
    (["b", "a", "b"], ("a", "b")),
    (["a/b/+", "a/#", "a"], ("a/#",)),
    (["a/+", "a/#"], ("a/#",)),
    (["a/+", "a/b", "a/b/c"], ("a/+", "a/b/c")),
    (["#", "$SYS/#", "x"], ("#", "$SYS/#")),
    (["#", "+", "a/#"], ("#",)),
    (["fleet/t1/+/status", "broadcast/#", "alerts/#", "devices/alice/#"],
     ("alerts/#", "broadcast/#", "devices/alice/#", "fleet/t1/+/status")),
    (["b", "B", "a", "é", "z"], ("B", "a", "b", "z", "é")),
    (["/a", "+/a", "a//b"], ("+/a", "a//b")),
    (["+/#", "#"], ("#",)),
    (["+/#", "a"], ("+/#",)),
    (["/+/#", "/#", "/a"], ("/#",)),
]  # fmt: skip


@pytest.mark.parametrize(("given_filters", "expected"), NORMALIZE)
def test_normalize(given_filters: list[str], expected: tuple[str, ...]) -> None:
    assert normalize(given_filters) == expected


def test_normalize_validates() -> None:
    with pytest.raises(InvalidTopicFilter, match="last level"):
        normalize(["a", "a/#/b"])


def test_code_point_order_is_utf8_byte_order() -> None:
    words = ["\uffff", "\U0001f680", "z", "é", "\ue000", "A", "a/b", "a+b"]
    assert sorted(words) == sorted(words, key=lambda w: w.encode("utf-8"))


def test_normalize_is_fast_for_ten_thousand_filters() -> None:
    filters = [f"dev/{i}/#" for i in range(5000)] + [f"dev/{i}/x/+" for i in range(5000)]
    assert len(normalize(filters)) == 5000
    assert normalize([*filters, "dev/#"]) == ("dev/#",)


# Property tests: filters drawn from a small alphabet so that covering happens often.
_level = st.sampled_from(["a", "b", "", "$s", "+", "é", "🚀"])


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(_level, min_size=1, max_size=4))
    if draw(st.booleans()):
        levels.append("#")
    return "/".join(levels) or "a"


@given(st.lists(filters(), max_size=30))
def test_normalized_output_is_sorted_unique_minimal_and_complete(fs: list[str]) -> None:
    out = normalize(fs)
    assert list(out) == sorted(set(out))
    assert list(out) == sorted(out, key=lambda f: f.encode("utf-8"))
    assert set(out) <= set(fs)
    for a, b in itertools.permutations(out, 2):
        assert not covers(a, b), (a, b)
    for f in fs:
        assert any(covers(o, f) for o in out), f
    assert normalize(out) == out


@given(filters(), filters(), st.lists(_level.filter(lambda x: x not in "+#"), max_size=5))
def test_covers_is_sound(outer: str, inner: str, topic_levels: list[str]) -> None:
    topic = "/".join(topic_levels) or "a"
    if covers(outer, inner) and matches(inner, topic):
        assert matches(outer, topic)


@given(st.lists(filters(), max_size=20), filters())
def test_filter_set_agrees_with_covers(fs: list[str], inner: str) -> None:
    assert FilterSet(fs).covers(inner) == any(covers(f, inner) for f in fs)
