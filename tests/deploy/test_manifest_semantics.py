"""What the rendered manifests promise: probes, hardening, spread, wiring, Redis per overlay."""

from __future__ import annotations

import ipaddress
import re
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest

from authserver.web.health import STORE_PING_TIMEOUT
from tests.deploy.helpers import (
    KUSTOMIZATIONS,
    ROOT,
    Doc,
    find,
    generated_name,
    one,
    secret_data,
)

ALL = sorted(KUSTOMIZATIONS)
GATEWAY = "authserver"


def gateway(docs: list[Doc]) -> Doc:
    """The gateway Deployment."""
    return one(docs, "Deployment", GATEWAY)


def container(deployment: Doc) -> dict[str, Any]:
    """The single container of a Deployment."""
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(only, dict)
    return only


def env_of(docs: list[Doc], deployment: Doc) -> dict[str, str]:
    """The environment a container gets from its envFrom ConfigMaps/Secrets and env values."""
    values: dict[str, str] = {}
    spec = container(deployment)
    for source in spec.get("envFrom", []):
        if "configMapRef" in source:
            values.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        if "secretRef" in source:
            values.update(secret_data(one(docs, "Secret", source["secretRef"]["name"])))
    values.update({e["name"]: e["value"] for e in spec.get("env", []) if "value" in e})
    return values


def dockerfile_uid() -> int:
    """The numeric UID the image runs as (its last USER instruction)."""
    users = re.findall(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert users, "the Dockerfile has no numeric USER"
    return int(users[-1])


@pytest.mark.parametrize("name", ["base", "prod"])
def test_gateway_runs_at_least_two_replicas(rendered: dict[str, list[Doc]], name: str) -> None:
    """Replicas, HPA floor and PDB together keep a replica up through a node drain."""
    docs = rendered[name]
    replicas = gateway(docs)["spec"]["replicas"]
    hpa = one(docs, "HorizontalPodAutoscaler", GATEWAY)["spec"]
    pdb = one(docs, "PodDisruptionBudget", GATEWAY)["spec"]
    assert replicas >= 2
    assert hpa["minReplicas"] >= 2
    assert hpa["minReplicas"] <= replicas <= hpa["maxReplicas"]
    assert 1 <= pdb["minAvailable"] < hpa["minReplicas"]


def test_prod_scales_beyond_base(rendered: dict[str, list[Doc]]) -> None:
    """Prod has more replicas and larger limits than the base."""
    base, prod = gateway(rendered["base"]), gateway(rendered["prod"])
    assert prod["spec"]["replicas"] > base["spec"]["replicas"]
    assert container(prod)["resources"] != container(base)["resources"]


@pytest.mark.parametrize("name", ALL)
def test_probes(rendered: dict[str, list[Doc]], name: str) -> None:
    """Readiness asks /readyz, liveness (and start-up) /healthz, on the serving port."""
    spec = container(gateway(rendered[name]))
    port_names = {p["name"] for p in spec["ports"]}
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert spec["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert spec[probe]["httpGet"]["port"] in port_names
    # /readyz gives up on a silent Redis (reported, not failing) before the kubelet gives up
    # on /readyz: a probe timeout would fail readiness on every replica at once.
    assert spec["readinessProbe"].get("timeoutSeconds", 1) > STORE_PING_TIMEOUT


@pytest.mark.parametrize("name", ALL)
def test_every_workload_is_hardened(rendered: dict[str, list[Doc]], name: str) -> None:
    """Non-root, read-only root, no privilege escalation, no capabilities, seccomp, limits."""
    for deployment in find(rendered[name], "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for spec in pod["containers"]:
            ctx = spec["securityContext"]
            assert ctx["runAsNonRoot"] is True
            assert ctx["readOnlyRootFilesystem"] is True
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"]["drop"] == ["ALL"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(spec["resources"][kind])
            image = spec["image"]
            assert ":" in image.rsplit("/", 1)[-1], f"{image} has no tag"
            assert not image.endswith(":latest")


@pytest.mark.parametrize("name", ALL)
def test_gateway_matches_the_image(rendered: dict[str, list[Doc]], name: str) -> None:
    """Runs as the Dockerfile's UID, with a writable /tmp and a drain pause before SIGTERM."""
    deployment = gateway(rendered[name])
    pod = deployment["spec"]["template"]["spec"]
    spec = container(deployment)
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid()
    assert spec["securityContext"]["runAsUser"] == dockerfile_uid()
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmp = next(m for m in spec["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in volumes[tmp["name"]]
    assert spec["args"] == ["serve"]
    assert {"containerPort": 8080, "name": "http", "protocol": "TCP"} in spec["ports"]
    pre_stop = spec["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0].startswith("/"), "no shell in the image: exec an absolute path"
    assert "sleep" in pre_stop[-1]
    assert pod["terminationGracePeriodSeconds"] == 30
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/port"] == "8080"


@pytest.mark.parametrize("name", ALL)
def test_topology_spread(rendered: dict[str, list[Doc]], name: str) -> None:
    """Replicas spread across zones and nodes, once per key, selecting the gateway pods."""
    deployment = gateway(rendered[name])
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    constraints = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    keys = [c["topologyKey"] for c in constraints]
    assert sorted(keys) == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    for c in constraints:
        assert c["labelSelector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("name", ALL)
def test_policy_configmap_is_mounted_as_a_directory(
    rendered: dict[str, list[Doc]], name: str
) -> None:
    """The policy is a fixed-name ConfigMap mounted without subPath where the env points."""
    docs = rendered[name]
    deployment = gateway(docs)
    policy_file = PurePosixPath(env_of(docs, deployment)["AUTHSERVER_POLICY_FILE"])
    spec = container(deployment)
    mount = next(m for m in spec["volumeMounts"] if m["mountPath"] == str(policy_file.parent))
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
    volume = next(
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    )
    # No hash suffix: an edit updates the ConfigMap in place (hot reload), not a rollout.
    assert volume["configMap"]["name"] == "authserver-policy"
    assert policy_file.name in one(docs, "ConfigMap", "authserver-policy")["data"]


@pytest.mark.parametrize("name", ALL)
def test_references_resolve(rendered: dict[str, list[Doc]], name: str) -> None:
    """Every ConfigMap, Secret, ServiceAccount and scale target a pod names is rendered."""
    docs = rendered[name]
    present = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for deployment in find(docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        if "serviceAccountName" in pod:
            assert ("ServiceAccount", pod["serviceAccountName"]) in present
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in present
        for spec in pod["containers"]:
            for source in spec.get("envFrom", []):
                for ref, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    if ref in source:
                        assert (kind, source[ref]["name"]) in present
            for entry in spec.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secret_data(one(docs, "Secret", ref["name"]))
    target = one(docs, "HorizontalPodAutoscaler", GATEWAY)["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) in present


@pytest.mark.parametrize("name", ALL)
def test_secrets_stay_out_of_configmaps(rendered: dict[str, list[Doc]], name: str) -> None:
    """Credentials, the JWT secret and the Redis URL (it may hold a password) live in a Secret."""
    docs = rendered[name]
    secret = secret_data(one(docs, "Secret", "authserver-secrets"))
    for key in (
        "ALIBABA_CLOUD_ACCESS_KEY_ID",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
        "AUTHSERVER_JWT_SECRET",
        "AUTHSERVER_REDIS_URL",
    ):
        assert secret[key]
        for config in find(docs, "ConfigMap"):
            assert key not in config.get("data", {})
    assert len(secret["AUTHSERVER_JWT_SECRET"].encode()) >= 32


@pytest.mark.parametrize("name", ALL)
def test_service_and_ingresses_reach_the_gateway(rendered: dict[str, list[Doc]], name: str) -> None:
    """Service 80 -> the http port; TLS ingresses route only device, admin and API-doc paths."""
    docs = rendered[name]
    pod_labels = gateway(docs)["spec"]["template"]["metadata"]["labels"]
    service = one(docs, "Service", GATEWAY)["spec"]
    assert service["type"] == "ClusterIP"
    assert service["selector"].items() <= pod_labels.items()
    assert service["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]

    paths: dict[str, set[str]] = {}
    for ingress in find(docs, "Ingress"):
        spec = ingress["spec"]
        assert spec["ingressClassName"] == "nginx"
        tls_hosts = {h for t in spec["tls"] for h in t["hosts"]}
        assert all(t["secretName"] for t in spec["tls"])
        found = paths.setdefault(ingress["metadata"]["name"], set())
        for rule in spec["rules"]:
            assert rule["host"] in tls_hosts, "a host served without TLS"
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend == {"name": GATEWAY, "port": {"name": "http"}}
                found.add(path["path"])
    assert paths == {
        "authserver": {"/v1/token", "/openapi.json"},
        "authserver-admin": {"/v1/admin/"},
    }
    admin = one(docs, "Ingress", "authserver-admin")["metadata"]["annotations"]
    ranges = admin["nginx.ingress.kubernetes.io/whitelist-source-range"].split(",")
    assert all(ipaddress.ip_network(r.strip()) for r in ranges)


@pytest.mark.parametrize("name", ALL)
def test_network_policy(rendered: dict[str, list[Doc]], name: str) -> None:
    """Gateway pods: ingress only on 8080 from chosen peers; egress only DNS, Redis, HTTPS."""
    docs = rendered[name]
    policy = one(docs, "NetworkPolicy", GATEWAY)["spec"]
    pod_labels = gateway(docs)["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    for rule in policy["ingress"]:
        assert rule["from"], "an ingress rule open to every source"
        assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    egress_ports = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {
        ("UDP", 53),
        ("TCP", 53),
        ("TCP", 6379),
        ("TCP", 6380),
        ("TCP", 443),
    }
    https = next(r for r in policy["egress"] if r["ports"] == [{"protocol": "TCP", "port": 443}])
    (block,) = https["to"]
    excluded = {ipaddress.ip_network(c) for c in block["ipBlock"]["except"]}
    assert ipaddress.ip_network("10.0.0.0/8") in excluded
    assert ipaddress.ip_network("169.254.0.0/16") in excluded  # cloud metadata endpoints


@pytest.mark.parametrize("name", ALL)
def test_service_account_has_no_api_token(rendered: dict[str, list[Doc]], name: str) -> None:
    """The gateway never talks to the Kubernetes API."""
    assert one(rendered[name], "ServiceAccount", GATEWAY)["automountServiceAccountToken"] is False


def test_prod_uses_managed_redis_over_tls(rendered: dict[str, list[Doc]]) -> None:
    """Prod: rediss:// from the Secret and no in-cluster Redis."""
    docs = rendered["prod"]
    url = env_of(docs, gateway(docs))["AUTHSERVER_REDIS_URL"]
    assert url.startswith("rediss://")
    assert not list(find(docs, "Deployment", "redis"))
    assert container(gateway(docs))["image"].startswith("registry.example.com/authserver:")


def test_dev_runs_redis_and_the_emulator_in_cluster(rendered: dict[str, list[Doc]]) -> None:
    """Dev: the gateway's Redis URL and MQTT endpoint name in-cluster Services that exist."""
    docs = rendered["dev"]
    env = env_of(docs, gateway(docs))
    assert container(one(docs, "Deployment", "redis"))["image"].startswith("redis:7")
    for url, service_name in (
        (env["AUTHSERVER_REDIS_URL"], "redis"),
        (env["AUTHSERVER_MQTT_ENDPOINT"], "authserver-emulator"),
    ):
        parts = urlsplit(url)
        assert parts.hostname == service_name
        service = one(docs, "Service", service_name)["spec"]
        assert parts.port in {p["port"] for p in service["ports"]}
        backend = one(docs, "Deployment", service_name)["spec"]["template"]["metadata"]["labels"]
        assert service["selector"].items() <= backend.items()
    assert env["AUTHSERVER_REDIS_URL"].startswith("redis://")


def test_dev_emulator_accepts_the_gateways_key_pair(rendered: dict[str, list[Doc]]) -> None:
    """The emulator reads the same Secret keys the gateway signs with, for the same instance."""
    docs = rendered["dev"]
    env = env_of(docs, gateway(docs))
    emulator = container(one(docs, "Deployment", "authserver-emulator"))
    assert emulator["args"] == ["emulator"]
    refs = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in emulator["env"]}
    assert refs["AUTHSERVER_EMULATOR_ACCESS_KEY_ID"]["key"] == "ALIBABA_CLOUD_ACCESS_KEY_ID"
    assert refs["AUTHSERVER_EMULATOR_ACCESS_KEY_SECRET"]["key"] == "ALIBABA_CLOUD_ACCESS_KEY_SECRET"
    assert generated_name(refs["AUTHSERVER_EMULATOR_ACCESS_KEY_ID"]["name"], "authserver-secrets")
    values = {e["name"]: e.get("value") for e in emulator["env"]}
    assert env["AUTHSERVER_MQTT_INSTANCE_ID"] in values["AUTHSERVER_EMULATOR_INSTANCE_IDS"]


def test_dev_network_policy_lets_the_gateway_reach_the_emulator(
    rendered: dict[str, list[Doc]],
) -> None:
    """The base policy allows no port 8900 out, so dev must add it."""
    docs = rendered["dev"]
    extra = one(docs, "NetworkPolicy", "authserver-to-emulator")["spec"]
    ports = {p["port"] for rule in extra["egress"] for p in rule["ports"]}
    assert urlsplit(env_of(docs, gateway(docs))["AUTHSERVER_MQTT_ENDPOINT"]).port in ports
