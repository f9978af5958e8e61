"""Top frames by self and total time from a py-spy `--format raw` (collapsed stacks) file.

`python bench/pyspy_summary.py /tmp/w1.txt [--top 25]`; run.py calls it after `--profile`.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# py-spy frames read `function (path/to/file.py:LINE)` or, with --nolineno, `function (file.py)`.
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")
_TRIM = ("site-packages/", "lib/python3.11/", "/work/main/")


def short_frame(frame: str) -> str:
    """`function (file)` with the long install prefixes trimmed off the path."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"]
    for marker in _TRIM:
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['func']} ({path})"


def summarize(raw: str, *, main_only: bool = True) -> tuple[int, Counter[str], Counter[str]]:
    """Sample count, self samples per frame and total (inclusive) samples per frame.

    With `main_only`, stacks of other threads (rooted in `Thread._bootstrap`: the executor
    that reads the policy file, mostly parked in a queue) are left out; the event loop is
    what serves requests.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [short_frame(f) for f in stack.split(";")]
        # The first element is the thread ("process 123:..." / "thread ..."), not code.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames or (main_only and frames[0].startswith("Thread._bootstrap")):
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return total, own, inclusive


def report(raw: str, top: int = 25) -> str:
    """A markdown summary: the `top` frames by self time, then by total time."""
    total, own, inclusive = summarize(raw)
    if total == 0:
        return "no samples\n"
    lines = [
        f"{total} samples of the main thread (event loop)",
        "",
        "| self % | frame |",
        "| ---: | --- |",
    ]
    lines += [f"| {100 * n / total:.1f} | `{f}` |" for f, n in own.most_common(top)]
    lines += ["", "| total % | frame |", "| ---: | --- |"]
    lines += [f"| {100 * n / total:.1f} | `{f}` |" for f, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Print the summary of one raw py-spy file."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print(report(args.raw.read_text(), args.top), end="")


if __name__ == "__main__":
    main()
