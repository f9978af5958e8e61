"""deploy/monitoring's rules pass `promtool check rules` and their unit tests (`promtool test`)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.monitoring.helpers import (
    ALERT_TESTS,
    ROOT,
    alert_names,
    names_in,
    promtool,
    recorded_names,
    rule_groups,
    rules,
    write_rule_file,
)


def unit_test_dir(tmp_path: Path) -> Path:
    """rules.yaml (from the PrometheusRule) and a copy of alerts_test.yaml side by side."""
    write_rule_file(tmp_path)
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    return tmp_path


def test_promtool_check_rules(tmp_path: Path) -> None:
    path = write_rule_file(tmp_path)
    done = promtool("check", "rules", path.name, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {sum(1 for _ in rules())} rules found" in done.stdout


def test_promtool_check_rules_catches_a_broken_expression(tmp_path: Path) -> None:
    path = write_rule_file(tmp_path)
    path.write_text(path.read_text().replace("sum by (job, route)", "sum by (job, route", 1))
    done = promtool("check", "rules", path.name, cwd=tmp_path)
    assert done.returncode != 0
    assert "parse error" in done.stdout + done.stderr


def test_promtool_unit_tests_pass(tmp_path: Path) -> None:
    directory = unit_test_dir(tmp_path)
    done = promtool("test", "rules", ALERT_TESTS.name, cwd=directory)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@pytest.mark.parametrize(
    ("original", "mutated"),
    [
        # An error ratio threshold of 10 % would miss gw's 5 %.
        ('route="/v1/token"} > 0.01', 'route="/v1/token"} > 0.1'),
        # Per pod instead of per installation: one backlog alert per pod.
        (
            "max by (job) (authserver_revocation_queue_oldest_age_seconds) > 300\n"
            "              and on (job)\n"
            "            max by (job) (authserver_revocation_queue_depth) > 0",
            "authserver_revocation_queue_oldest_age_seconds > 300"
            " and authserver_revocation_queue_depth > 0",
        ),
        # Without the `for`, a one-evaluation blip of the circuit would page.
        (
            "expr: authserver_circuit_state == 2\n          for: 1m",
            "expr: authserver_circuit_state == 2",
        ),
    ],
)
def test_unit_tests_catch_a_wrong_rule(tmp_path: Path, original: str, mutated: str) -> None:
    directory = unit_test_dir(tmp_path)
    source = (ROOT / "deploy" / "monitoring" / "prometheusrule.yaml").read_text()
    assert original in source
    doc = yaml.safe_load(source.replace(original, mutated, 1))
    (directory / "rules.yaml").write_text(yaml.safe_dump({"groups": doc["spec"]["groups"]}))
    done = promtool("test", "rules", ALERT_TESTS.name, cwd=directory)
    assert done.returncode != 0, done.stdout


def test_every_alert_fires_in_a_unit_test() -> None:
    """Each alert has a case where it fires (the same cases hold the near misses)."""
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    firing = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert firing == alert_names()


def test_alerts_are_labelled_and_explained() -> None:
    for rule in rules():
        if "alert" not in rule:
            continue
        assert re.fullmatch(r"Authserver[A-Z][A-Za-z]+", rule["alert"])
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]
        assert "for" in rule, f"{rule['alert']} would fire on a single evaluation"


def test_recording_rules_follow_the_naming_convention() -> None:
    """level:metric:operation (Prometheus' convention), and recorded before they are read."""
    recorded: set[str] = set()
    for group in rule_groups():
        for rule in group["rules"]:
            for name in names_in(rule["expr"]):
                if ":" in name:
                    assert name in recorded, f"{name} is read before it is recorded"
            if "record" in rule:
                level, metric, operation = rule["record"].split(":")
                by = re.search(r"by \(([^)]*)\)", rule["expr"])
                assert by is None or level == "_".join(
                    label.strip() for label in by.group(1).split(",")
                ), rule["record"]
                assert metric.startswith("authserver_"), rule["record"]
                assert re.fullmatch(r"(rate|p\d\d_|mean)\d*m?", operation), rule["record"]
                recorded.add(rule["record"])


def readme_alert_series() -> set[str]:
    """Our metric names in the README's "Worth alerting on" table."""
    text = (ROOT / "README.md").read_text()
    table = text.split("Worth alerting on:", 1)[1].split("\n\n", 2)[1]
    return names_in(table)


def test_every_series_the_readme_says_to_alert_on_is_alerted_on() -> None:
    """The alerts read (directly or through recording rules) what the README names."""
    expanded = {rule["record"]: names_in(rule["expr"]) for rule in rules() if "record" in rule}

    def raw(name: str) -> set[str]:
        if name not in expanded:
            return {name}
        return set().union(*(raw(inner) for inner in expanded[name]))

    alerted = set().union(
        *(raw(n) for rule in rules() if "alert" in rule for n in names_in(rule["expr"]))
    )
    readme = readme_alert_series()
    # Diagnostics the README points at next to an alert, not conditions of their own.
    diagnostics = {
        "authserver_quota_waits_total",
        "authserver_quota_wait_seconds_total",
        "authserver_revocations_failures_total",
        "authserver_policy_reload_failures_total",
    }
    assert readme - diagnostics, "the README's alert table was not found"
    assert readme - diagnostics <= alerted, readme - diagnostics - alerted
    assert recorded_names()
