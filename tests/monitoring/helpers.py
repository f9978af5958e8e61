"""deploy/monitoring read the way Prometheus and Grafana read it, and Debian's tools located."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "authserver-dashboard.json"
ALERT_TESTS = Path(__file__).resolve().parent / "alerts_test.yaml"

# Grafana's variables in the dashboard's queries, and what stands in for them when the
# queries are sent to a plain Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": ".+"}
# A metric or recording-rule name of ours: authserver_... or level:authserver_...:operation.
OUR_NAME = re.compile(r"(?<![\w:])(?:[a-z_]+:)?authserver_[a-z0-9_]+(?::[a-z0-9_]+)?")


def debian_tool(name: str) -> str:
    """A binary of Debian's `prometheus` package (scripts/test installs it)."""
    found = shutil.which(name)
    assert found, f"`{name}` is missing: install Debian's prometheus package (scripts/test does)"
    return found


def rule_groups() -> list[dict[str, Any]]:
    """The PrometheusRule's groups: exactly what a Prometheus rule file holds."""
    doc = yaml.safe_load(RULE.read_text(encoding="utf-8"))
    assert doc["kind"] == "PrometheusRule"
    groups: list[dict[str, Any]] = doc["spec"]["groups"]
    return groups


def write_rule_file(directory: Path) -> Path:
    """The rule groups as a plain Prometheus rule file, `directory/rules.yaml`."""
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False), encoding="utf-8")
    return path


def rules() -> Iterator[dict[str, Any]]:
    """Every rule, recording and alerting."""
    for group in rule_groups():
        yield from group["rules"]


def recorded_names() -> set[str]:
    """The series the recording rules write."""
    return {rule["record"] for rule in rules() if "record" in rule}


def alert_names() -> set[str]:
    """The alerts the rules define."""
    return {rule["alert"] for rule in rules() if "alert" in rule}


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard."""
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels() -> Iterator[dict[str, Any]]:
    """Every panel that queries (rows excluded)."""
    for panel in dashboard()["panels"]:
        if panel["type"] != "row":
            yield panel


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) for every query of every panel."""
    return [(p["title"], t["expr"]) for p in panels() for t in p["targets"]]


def for_prometheus(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced; every `$` must be known."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def names_in(expr: str) -> set[str]:
    """Our metric and recording-rule names an expression reads."""
    return set(OUR_NAME.findall(expr))


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run promtool; its output is kept for the assertion message."""
    return subprocess.run(
        [debian_tool("promtool"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def drive(client: Any, subjects: tuple[str, str] = ("alice", "bob")) -> None:
    """Traffic that moves every family the dashboard shows, through a gateway TestClient.

    Two new subjects at once (their ApplyToken calls queue for quota when the limit is low),
    repeats (cache hits), a refused JWT, a revocation of the first subject (RevokeToken
    through the queue) and a look at the queue.
    """
    from tests.admin.conftest import admin_headers
    from tests.fixtures.gateway import bearer, make_jwt

    jwts = [make_jwt(s, groups=["ops"], tenant="t1") for s in subjects]
    answers = await asyncio.gather(*(client.post("/v1/token", headers=bearer(j)) for j in jwts))
    assert [a.status for a in answers] == [200, 200]
    for jwt in jwts:
        assert (await client.post("/v1/token", headers=bearer(jwt))).status == 200
    assert (await client.post("/v1/token", headers=bearer("not-a-jwt"))).status == 401
    revoked = await client.post(
        "/v1/admin/revoke", json={"subject": subjects[0]}, headers=admin_headers()
    )
    assert revoked.status == 202, await revoked.text()
    assert (await client.get("/v1/admin/revocations", headers=admin_headers())).status == 200
