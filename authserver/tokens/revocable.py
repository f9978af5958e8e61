"""Which claim values an identity carries, for revocation by claim (AUTHSERVER_REVOCABLE_CLAIMS).

An admin may revoke every token of the identities carrying a claim value (a tenant, a group,
a device model) for the claims the setting names. Each token records the marks of the
identity it was minted for (`name=value`, one per value), the store indexes records and
shared-token holders by mark, and the revoker blocks a mark as it blocks a subject.

What a claim value counts as, whatever the JWT holds (the rule is the same for the index,
for the block and for the admin request, which names a value as a string):

- a string counts as itself, if it is 1 to `MAX_VALUE_CHARS` characters with no NUL;
- an integer (not a boolean) counts as its decimal text, if that is at most `MAX_VALUE_CHARS`
  characters: `42` is revoked by "42";
- a list counts as each of its members that is such a string or integer (`groups`);
- anything else (null, a boolean, a float, an object, a nested list, an empty string, an
  over-long one) counts as nothing: it is never matched, so a hostile or absent value cannot
  match every revocation.

Matching is exact (no wildcard, no case folding). An identity carrying more than
`MAX_MARKED_VALUES` values of one claim is recorded under that claim's overflow mark instead
of each value, so a token costs a bounded number of index entries: every revocation of that
claim then revokes its tokens too (one more mint for such a device, never one token too
few), while its JWT is refused only when it carries the revoked value.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import Any

MAX_VALUE_CHARS = 256
MAX_MARKED_VALUES = 32
SEPARATOR = "="


def mark(name: str, value: str) -> str:
    """The index name of one claim value (claim names hold no `=`, so it is unambiguous)."""
    return f"{name}{SEPARATOR}{value}"


def overflow_mark(name: str) -> str:
    """Where identities with too many values of `name` are recorded (no value yields it)."""
    return f"{name}\x00"


def value_texts(value: Any) -> Iterator[str]:
    """The texts a claim value counts as (see the module docstring), each once."""
    members = value if isinstance(value, list) else [value]
    seen: set[str] = set()
    for member in members:
        if isinstance(member, bool):
            continue
        if isinstance(member, int):
            text = str(member)  # JSON allows 4,300 digits: held to the strings' length below
            if len(text) > MAX_VALUE_CHARS:
                continue
        elif (
            isinstance(member, str) and 0 < len(member) <= MAX_VALUE_CHARS and "\x00" not in member
        ):
            text = member
        else:
            continue
        if text not in seen:
            seen.add(text)
            yield text


def marks_of(claims: Mapping[str, Any], names: Collection[str]) -> tuple[str, ...]:
    """The marks a token minted for these claims is recorded under (sorted: a stable key)."""
    found: list[str] = []
    for name in names:
        if name not in claims:
            continue
        texts = list(value_texts(claims[name]))
        if len(texts) > MAX_MARKED_VALUES:
            found.append(overflow_mark(name))
        else:
            found.extend(mark(name, text) for text in texts)
    return tuple(sorted(found))


def carried_marks(claims: Mapping[str, Any], names: Collection[str]) -> Iterator[str]:
    """Every mark these claims carry for `names`, overflow or not (what a block checks)."""
    for name in names:
        if name in claims:
            for text in value_texts(claims[name]):
                yield mark(name, text)
