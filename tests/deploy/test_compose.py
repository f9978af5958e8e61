"""deploy/compose.yaml: valid Compose, and gateway, Redis and emulator wired to each other."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema  # type: ignore[import-untyped]
import pytest

from tests.deploy.helpers import DEPLOY, ROOT, load_docs

COMPOSE = DEPLOY / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed compose file (anchors and merge keys resolved)."""
    (doc,) = load_docs(COMPOSE)
    return doc


def compose_spec_errors(doc: dict[str, Any]) -> list[str]:
    """Problems against the Compose Specification schema shipped with check-jsonschema."""
    schema_file = resources.files("check_jsonschema") / "builtin_schemas/vendor/compose-spec.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


def test_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    """The file validates against the Compose Specification JSON schema."""
    assert not compose_spec_errors(compose)


def test_schema_check_is_not_vacuous(compose: dict[str, Any]) -> None:
    """A misspelled service key is reported, so the check above means something."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["gateway"]["helthcheck"] = {}
    assert compose_spec_errors(broken)


def test_services(compose: dict[str, Any]) -> None:
    """Gateway and emulator built from the repository's Dockerfile; Redis from a pinned tag."""
    services = compose["services"]
    assert set(services) == {"gateway", "redis", "emulator"}
    for name in ("gateway", "emulator"):
        build = services[name]["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]).is_file()
    assert services["gateway"]["image"] == services["emulator"]["image"]
    assert services["gateway"]["command"] == ["serve"]
    assert services["emulator"]["command"] == ["emulator"]
    redis_image = services["redis"]["image"]
    assert redis_image.startswith("redis:7")
    assert not redis_image.endswith(":latest")


def test_hardened_like_kubernetes(compose: dict[str, Any]) -> None:
    """Read-only root with a tmpfs /tmp, no capabilities, no privilege gain."""
    for name, service in compose["services"].items():
        assert service["read_only"] is True, name
        assert "/tmp" in service["tmpfs"], name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name


def test_gateway_waits_for_healthy_dependencies(compose: dict[str, Any]) -> None:
    """`up` starts the gateway only after Redis and the emulator pass their healthchecks."""
    services = compose["services"]
    depends = services["gateway"]["depends_on"]
    assert set(depends) == {"redis", "emulator"}
    for name, condition in depends.items():
        assert condition == {"condition": "service_healthy"}
        assert services[name]["healthcheck"]["test"][0] == "CMD"
    gateway_check = services["gateway"]["healthcheck"]["test"]
    assert any("/readyz" in part or "/healthz" in part for part in gateway_check)


def test_gateway_points_at_local_redis_and_emulator(compose: dict[str, Any]) -> None:
    """Redis URL and MQTT endpoint name the compose services and the ports they listen on."""
    services = compose["services"]
    env = services["gateway"]["environment"]
    emulator_env = services["emulator"]["environment"]
    redis = urlsplit(env["AUTHSERVER_REDIS_URL"])
    assert (redis.scheme, redis.hostname, redis.port) == ("redis", "redis", 6379)
    endpoint = urlsplit(env["AUTHSERVER_MQTT_ENDPOINT"])
    assert endpoint.hostname == "emulator"
    assert endpoint.port == int(emulator_env["AUTHSERVER_EMULATOR_PORT"])
    assert emulator_env["AUTHSERVER_EMULATOR_HOST"] == "0.0.0.0"
    assert env["AUTHSERVER_HOST"] == "0.0.0.0"
    assert env["AUTHSERVER_MQTT_INSTANCE_ID"] in emulator_env["AUTHSERVER_EMULATOR_INSTANCE_IDS"]


def test_demo_credentials_match_and_are_marked(compose: dict[str, Any]) -> None:
    """The gateway signs with the key pair the emulator accepts; values say they are demo-only."""
    services = compose["services"]
    env = services["gateway"]["environment"]
    emulator_env = services["emulator"]["environment"]
    assert env["ALIBABA_CLOUD_ACCESS_KEY_ID"] == emulator_env["AUTHSERVER_EMULATOR_ACCESS_KEY_ID"]
    assert (
        env["ALIBABA_CLOUD_ACCESS_KEY_SECRET"]
        == emulator_env["AUTHSERVER_EMULATOR_ACCESS_KEY_SECRET"]
    )
    for value in (env["ALIBABA_CLOUD_ACCESS_KEY_SECRET"], env["AUTHSERVER_JWT_SECRET"]):
        assert "not-for-production" in value
    assert len(env["AUTHSERVER_JWT_SECRET"].encode()) >= 32
    assert "LOCAL DEMO ONLY" in COMPOSE.read_text(encoding="utf-8")


def test_policy_is_mounted_from_the_repository(compose: dict[str, Any]) -> None:
    """The example policy directory is bind-mounted read-only where the env points."""
    gateway = compose["services"]["gateway"]
    policy_file = PurePosixPath(gateway["environment"]["AUTHSERVER_POLICY_FILE"])
    (mount,) = (v for v in gateway["volumes"] if v["target"] == str(policy_file.parent))
    assert mount["type"] == "bind"
    assert mount["read_only"] is True
    source = (DEPLOY / mount["source"]).resolve()
    assert source == ROOT / "policies"
    assert (source / policy_file.name).is_file()


def test_ports_are_published_on_loopback_only(compose: dict[str, Any]) -> None:
    """Demo credentials never listen beyond this machine."""
    services = compose["services"]
    assert services["gateway"]["ports"] == ["127.0.0.1:8080:8080"]
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:")
