"""Settings come from the environment; every problem is reported at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from authserver.settings import DEFAULT_REDIS_REPLICAS, SettingsError, load_settings
from tests.fixtures.gateway import EXAMPLE_POLICY

GOOD = {
    "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIexample",
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "secret",
    "AUTHSERVER_MQTT_INSTANCE_ID": "post-cn-test",
    "AUTHSERVER_POLICY_FILE": str(EXAMPLE_POLICY),
    "AUTHSERVER_JWT_SECRET": "x" * 32,
}


def test_minimal_environment() -> None:
    settings = load_settings(GOOD)
    assert settings.port == 8080
    assert settings.jwt.algorithms == ("HS256",)
    assert settings.jwt.leeway == 30
    assert settings.endpoint == "https://onsmqtt.cn-hangzhou.aliyuncs.com"
    assert settings.redis_url is None
    assert settings.quota["RevokeToken"] == 5


def test_overrides() -> None:
    settings = load_settings(
        {
            **GOOD,
            "AUTHSERVER_PORT": "9000",
            "AUTHSERVER_MQTT_REGION_ID": "ap-southeast-1",
            "AUTHSERVER_REDIS_URL": "rediss://cache:6380/0",
            "AUTHSERVER_QUOTA_APPLYTOKEN": "500",
            "AUTHSERVER_JWT_ISSUER": "https://issuer",
            "AUTHSERVER_JWT_AUDIENCE": "gw",
            "AUTHSERVER_JWT_LEEWAY": "5",
        }
    )
    assert settings.port == 9000
    assert settings.endpoint == "https://onsmqtt.ap-southeast-1.aliyuncs.com"
    assert settings.redis_url == "rediss://cache:6380/0"
    assert settings.quota["ApplyToken"] == 500
    assert (settings.jwt.issuer, settings.jwt.audience, settings.jwt.leeway) == (
        "https://issuer",
        "gw",
        5,
    )


def test_every_problem_is_listed() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(
            {
                "AUTHSERVER_PORT": "eighty",
                "AUTHSERVER_POLICY_FILE": "/nonexistent.yaml",
                "AUTHSERVER_REDIS_URL": "http://nope",
                "AUTHSERVER_JWT_SECRET": "short",
                "AUTHSERVER_JWT_ALGORITHMS": "HS512,RS256",
            }
        )
    text = "\n".join(caught.value.problems)
    for fragment in (
        "ALIBABA_CLOUD_ACCESS_KEY_ID",
        "AUTHSERVER_MQTT_INSTANCE_ID",
        "AUTHSERVER_POLICY_FILE",
        "AUTHSERVER_PORT",
        "AUTHSERVER_REDIS_URL",
        "RS256 cannot be used with a shared secret",
        "at least 64 bytes",
    ):
        assert fragment in text, fragment


def test_exactly_one_key_source(tmp_path: Path) -> None:
    pem = tmp_path / "key.pem"
    pem.write_text("-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----\n")
    env = {**GOOD, "AUTHSERVER_JWT_PUBLIC_KEY_FILE": str(pem)}
    with pytest.raises(SettingsError, match="exactly one"):
        load_settings(env)
    del env["AUTHSERVER_JWT_SECRET"]
    assert load_settings(env).jwt.algorithms == ("RS256",)


def test_serve_exits_2_with_one_message(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "authserver", "serve"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "invalid configuration" in done.stderr
    assert "AUTHSERVER_MQTT_INSTANCE_ID" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_exits_2_on_a_bad_api_key_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("not-a-sha256-hash\n")
    env = {
        **GOOD,
        "AUTHSERVER_ADMIN_API_KEYS_FILE": str(keys_file),
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "authserver", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert str(keys_file) in done.stderr
    assert "Traceback" not in done.stderr


def test_the_local_quota_share_follows_the_replica_count() -> None:
    assert load_settings(GOOD).quota_share == 1.0
    with_redis = {**GOOD, "AUTHSERVER_REDIS_URL": "redis://127.0.0.1:6379/0"}
    assert load_settings(with_redis).quota_share == pytest.approx(1 / DEFAULT_REDIS_REPLICAS)
    assert load_settings({**with_redis, "AUTHSERVER_REPLICAS": "4"}).quota_share == 0.25
    with pytest.raises(SettingsError, match="AUTHSERVER_REPLICAS"):
        load_settings({**GOOD, "AUTHSERVER_REPLICAS": "0"})
