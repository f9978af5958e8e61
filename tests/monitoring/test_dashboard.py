"""The Grafana dashboard's structure: what Grafana needs to import it and what an operator reads."""

from __future__ import annotations

import re

from tests.monitoring.helpers import GRAFANA_VARIABLES, dashboard, dashboard_queries, panels

# What the issue asks the dashboard to show, as panel titles.
REQUIRED_PANELS = {
    "Requests by route",
    "Latency by route",
    "Cache hit ratio by layer",
    "Upstream calls by action and code",
    "Quota waits",
    "Revocation queue depth",
    "Policy version per pod",
}


def test_identity_and_variables() -> None:
    board = dashboard()
    assert board["uid"] == "authserver"  # a stable uid: links and provisioning keep working
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "authserver_build_info" in variables["job"]["definition"]
    # Every variable a query uses is defined (or is one of Grafana's own).
    used = {m for _t, e in dashboard_queries() for m in re.findall(r"\$\w+", e)}
    assert used <= {f"${name}" for name in variables} | {"$__rate_interval"}
    assert used <= set(GRAFANA_VARIABLES)


def test_panels() -> None:
    every = dashboard()["panels"]
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in panels()}
    assert titles >= REQUIRED_PANELS
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["description"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs, panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
