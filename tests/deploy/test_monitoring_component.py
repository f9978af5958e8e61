"""deploy/monitoring: a kustomize Component, off by default, that renders onto either overlay."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.deploy.helpers import (
    K8S_VERSIONS,
    KUSTOMIZATIONS,
    MONITORING,
    OVERLAYS,
    Doc,
    k8s_errors,
    kustomize_build,
    load_docs,
    one,
)

MONITORING_KINDS = {"PodMonitor", "PrometheusRule"}
DASHBOARD = "authserver-dashboard"


def with_monitoring(overlay: Path, workdir: Path) -> list[Doc]:
    """Render `overlay` with the component turned on, as its commented lines say."""
    (workdir / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources:\n  - {os.path.relpath(overlay, workdir)}\n"
        f"components:\n  - {os.path.relpath(MONITORING, workdir)}\n"
    )
    return kustomize_build(workdir)


def test_is_a_component() -> None:
    (doc,) = load_docs(MONITORING / "kustomization.yaml")
    assert doc["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    assert doc["kind"] == "Component"


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_off_by_default(rendered: dict[str, list[Doc]], name: str) -> None:
    """Without the Prometheus Operator's CRDs an apply would fail: nobody gets it unasked."""
    kinds = {doc["kind"] for doc in rendered[name]}
    assert not kinds & MONITORING_KINDS
    names = {doc["metadata"]["name"] for doc in rendered[name] if doc["kind"] == "ConfigMap"}
    assert DASHBOARD not in names


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_overlay_says_how_to_turn_it_on(name: str) -> None:
    text = (OVERLAYS[name] / "kustomization.yaml").read_text()
    found = re.search(r"^# components:\n#\s+- (\S+)$", text, re.MULTILINE)
    assert found, "the overlay lost its commented `components:` lines"
    assert (OVERLAYS[name] / found.group(1)).resolve() == MONITORING.resolve()


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_renders_onto_the_overlay(
    rendered: dict[str, list[Doc]], name: str, tmp_path: Path
) -> None:
    docs = with_monitoring(OVERLAYS[name], tmp_path)
    added = {(d["kind"], d["metadata"]["name"]) for d in docs} - {
        (d["kind"], d["metadata"]["name"]) for d in rendered[name]
    }
    assert added == {
        ("PodMonitor", "authserver"),
        ("PrometheusRule", "authserver"),
        ("ConfigMap", DASHBOARD),
    }
    for version in K8S_VERSIONS:  # the ConfigMap against the schemas; the CRDs have none here
        errors = [
            e for d in docs if d["kind"] not in MONITORING_KINDS for e in k8s_errors(d, version)
        ]
        assert not errors, "\n".join(errors)

    # The dashboard: a fixed name (no copies left behind) with the Grafana sidecar's label.
    dashboard = one(docs, "ConfigMap", DASHBOARD)
    assert dashboard["metadata"]["name"] == DASHBOARD
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    (key,) = dashboard["data"]
    assert json.loads(dashboard["data"][key]) == json.loads((MONITORING / key).read_text())

    # The PodMonitor scrapes the gateway's pods on a port they name.
    monitor = one(docs, "PodMonitor", "authserver")
    deployment = one(docs, "Deployment", "authserver")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    ports = {
        port["name"]: port["containerPort"]
        for container in deployment["spec"]["template"]["spec"]["containers"]
        for port in container.get("ports", [])
    }
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in ports
    assert endpoint["path"] == "/metrics"
    # ... and the NetworkPolicy lets Prometheus in on that port.
    policy = one(docs, "NetworkPolicy", "authserver")
    prometheus_ports = {
        port["port"]
        for rule in policy["spec"]["ingress"]
        if any(
            peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
            == "prometheus"
            for peer in rule.get("from", [])
        )
        for port in rule.get("ports", [])
    }
    assert ports[endpoint["port"]] in prometheus_ports

    # The rules are the file's, untouched by kustomize.
    rule = one(docs, "PrometheusRule", "authserver")
    (source,) = load_docs(MONITORING / "prometheusrule.yaml")
    assert rule["spec"] == source["spec"]
