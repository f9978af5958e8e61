"""Exported metrics follow Prometheus' conventions; the rules and the dashboard read only them."""

from __future__ import annotations

import subprocess
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from authserver import __version__
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway
from tests.monitoring.helpers import (
    dashboard_queries,
    debian_tool,
    drive,
    names_in,
    recorded_names,
    rules,
)
from tests.ops.helpers import scrape, value

# Every label the gateway may put on a series. Each is bounded by the code (routes, actions,
# codes, layers, modes) or by the deployment (versions). Never a subject, clientId, token or
# anything else a device chooses: a label per device is a series per device.
BOUNDED_LABELS = {
    "route",
    "method",
    "status",
    "le",
    "layer",
    "result",
    "action",
    "code",
    "mode",
    "version",
    "python_version",
    "allocator",
}


def promtool_lint(text: str) -> subprocess.CompletedProcess[str]:
    """`promtool check metrics` on an exposition."""
    return subprocess.run(
        [debian_tool("promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def exported_names(text: str) -> set[str]:
    """The series names a scrape defines, families without samples (yet) included."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


async def busy_scrape(emulator: EmulatorHandle, make_gateway: MakeGateway) -> str:
    client = await make_gateway(emulator)
    await drive(client)
    return await scrape(client)


async def test_promtool_finds_nothing_to_lint(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    done = promtool_lint(await busy_scrape(emulator, make_gateway))
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (done.stdout + done.stderr).strip()


def test_promtool_lint_is_not_vacuous() -> None:
    done = promtool_lint("# HELP fooBar x\n# TYPE fooBar counter\nfooBar 1\n")
    assert done.returncode != 0
    assert "_total" in done.stdout + done.stderr


async def test_labels_are_bounded(emulator: EmulatorHandle, make_gateway: MakeGateway) -> None:
    text = await busy_scrape(emulator, make_gateway)
    labels = {
        label
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        for label in sample.labels
    }
    assert labels - BOUNDED_LABELS == set()
    # Every family is ours, under the one prefix.
    assert all(f.name.startswith("authserver_") for f in text_string_to_metric_families(text))


def mapped_allocator() -> str:
    """glibc's malloc, unless jemalloc is mapped into this process (a developer may preload it).

    Read from /proc/self/maps, not asked the way the gateway asks.
    """
    maps = Path("/proc/self/maps").read_text(encoding="utf-8")
    return "jemalloc" if "libjemalloc" in maps else "glibc"


async def test_build_info(emulator: EmulatorHandle, make_gateway: MakeGateway) -> None:
    text = await scrape(await make_gateway(emulator))
    (family,) = (
        f for f in text_string_to_metric_families(text) if f.name == "authserver_build_info"
    )
    assert family.type == "gauge"
    (sample,) = family.samples
    assert sample.labels["version"] == __version__
    assert sample.labels["python_version"].count(".") == 2
    assert sample.labels["allocator"] == mapped_allocator()
    assert value(text, "authserver_build_info", **sample.labels) == 1


async def test_rules_and_dashboard_read_only_exported_series(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    """A misspelt metric in an alert is an alert that never fires: every name must exist."""
    exported = exported_names(await busy_scrape(emulator, make_gateway))
    readable = exported | recorded_names()
    exprs = [rule["expr"] for rule in rules()] + [expr for _title, expr in dashboard_queries()]
    read = set().union(*(names_in(e) for e in exprs))
    assert read, "no metric names found in the rules and the dashboard"
    assert read - readable == set()
