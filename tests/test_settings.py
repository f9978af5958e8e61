"""Settings come from the environment; every problem is reported at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from authserver.redis_conn import SOCKET_TIMEOUT
from authserver.settings import (
    DEFAULT_REDIS_REPLICAS,
    MAX_REPLICA_TIMEOUT_MS,
    SettingsError,
    load_settings,
)
from tests.fixtures.gateway import EXAMPLE_POLICY

GOOD = {
    "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIexample",
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "secret",
    "AUTHSERVER_MQTT_INSTANCE_ID": "post-cn-test",
    "AUTHSERVER_POLICY_FILE": str(EXAMPLE_POLICY),
    "AUTHSERVER_JWT_SECRET": "x" * 32,
    "AUTHSERVER_JWT_ISSUER": "https://login.example.com/",
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


def test_the_http_layer_has_bounded_timeouts_and_header_lines() -> None:
    defaults = load_settings(GOOD)
    assert (defaults.keepalive_timeout, defaults.body_read_timeout) == (75.0, 10.0)
    assert defaults.max_header_bytes == 16384
    tuned = load_settings(
        {
            **GOOD,
            "AUTHSERVER_KEEPALIVE_TIMEOUT": "30",
            "AUTHSERVER_BODY_READ_TIMEOUT": "2.5",
            "AUTHSERVER_MAX_HEADER_BYTES": "32768",
        }
    )
    assert (tuned.keepalive_timeout, tuned.body_read_timeout) == (30.0, 2.5)
    assert tuned.max_header_bytes == 32768
    with pytest.raises(SettingsError) as caught:
        load_settings(
            {
                **GOOD,
                "AUTHSERVER_KEEPALIVE_TIMEOUT": "0",
                "AUTHSERVER_BODY_READ_TIMEOUT": "soon",
                "AUTHSERVER_MAX_HEADER_BYTES": "8192",  # the longest JWT would not fit
            }
        )
    text = "\n".join(caught.value.problems)
    for fragment in (
        "AUTHSERVER_KEEPALIVE_TIMEOUT='0' must be at least 0.1",
        "AUTHSERVER_BODY_READ_TIMEOUT='soon' is not a number",
        "AUTHSERVER_MAX_HEADER_BYTES=8192 must be at least 8256",
    ):
        assert fragment in text, fragment


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
        "AUTHSERVER_JWT_ISSUER",
        "AUTHSERVER_POLICY_FILE",
        "AUTHSERVER_PORT",
        "AUTHSERVER_REDIS_URL",
        "RS256 cannot be used with a shared secret",
        "at least 64 bytes",
    ):
        assert fragment in text, fragment


@pytest.mark.parametrize("source", ["secret", "public key", "JWKS"])
def test_an_issuer_is_required_whatever_the_key_source(tmp_path: Path, source: str) -> None:
    # Subjects are unique only within one issuer: a JWKS shared by many tenants, or a secret
    # two services share, would otherwise let one issuer's "alice" use another's tokens.
    pem = tmp_path / "key.pem"
    pem.write_text("-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----\n")
    env = {k: v for k, v in GOOD.items() if k not in ("AUTHSERVER_JWT_SECRET",)}
    env.update(
        {
            "secret": {"AUTHSERVER_JWT_SECRET": "x" * 32},
            "public key": {"AUTHSERVER_JWT_PUBLIC_KEY_FILE": str(pem)},
            "JWKS": {"AUTHSERVER_JWT_JWKS_URL": "https://login.example.com/jwks.json"},
        }[source]
    )
    assert load_settings(env).jwt.issuer == "https://login.example.com/"
    for missing in ({}, {"AUTHSERVER_JWT_ISSUER": "  "}):
        without = {k: v for k, v in env.items() if k != "AUTHSERVER_JWT_ISSUER"} | missing
        with pytest.raises(SettingsError) as caught:
            load_settings(without)
        assert any("AUTHSERVER_JWT_ISSUER is required" in p for p in caught.value.problems)


def test_jwt_max_age_is_off_by_default_and_validated() -> None:
    assert load_settings(GOOD).jwt.max_age is None
    assert load_settings({**GOOD, "AUTHSERVER_JWT_MAX_AGE": "900"}).jwt.max_age == 900
    assert load_settings({**GOOD, "AUTHSERVER_JWT_MAX_AGE": " "}).jwt.max_age is None
    for bad, says in [("0", "at least 1"), ("-5", "at least 1"), ("an hour", "not a number")]:
        with pytest.raises(SettingsError) as caught:
            load_settings({**GOOD, "AUTHSERVER_JWT_MAX_AGE": bad, "AUTHSERVER_PORT": "x"})
        problems = "\n".join(caught.value.problems)
        assert f"AUTHSERVER_JWT_MAX_AGE={bad!r}" in problems
        assert says in problems
        assert "AUTHSERVER_PORT" in problems  # reported together with the others


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


def test_the_answer_caches_byte_bound() -> None:
    assert load_settings(GOOD).answer_cache_bytes == 64 * 1024 * 1024
    tuned = load_settings({**GOOD, "AUTHSERVER_ANSWER_CACHE_BYTES": "1048576"})
    assert tuned.answer_cache_bytes == 1024 * 1024
    with pytest.raises(SettingsError, match="ANSWER_CACHE_BYTES"):
        load_settings({**GOOD, "AUTHSERVER_ANSWER_CACHE_BYTES": "lots"})


def test_every_cache_has_an_entry_and_a_byte_bound() -> None:
    defaults = load_settings(GOOD)
    assert (defaults.jwt.cache_size, defaults.jwt.cache_bytes) == (100_000, 64 * 2**20)
    assert (defaults.plan_cache_size, defaults.plan_cache_bytes) == (20_000, 32 * 2**20)
    assert defaults.token_cache_bytes == 256 * 2**20
    tuned = load_settings(
        {
            **GOOD,
            "AUTHSERVER_JWT_CACHE_SIZE": "10",
            "AUTHSERVER_JWT_CACHE_BYTES": "2097152",
            "AUTHSERVER_PLAN_CACHE_SIZE": "0",
            "AUTHSERVER_PLAN_CACHE_BYTES": "1048576",
            "AUTHSERVER_TOKEN_CACHE_BYTES": "3145728",
        }
    )
    assert (tuned.jwt.cache_size, tuned.jwt.cache_bytes) == (10, 2 * 2**20)
    assert (tuned.plan_cache_size, tuned.plan_cache_bytes) == (0, 2**20)
    assert tuned.token_cache_bytes == 3 * 2**20
    # Below a mebibyte a single large entry might not fit: every such bound is reported.
    with pytest.raises(SettingsError) as raised:
        load_settings(
            {
                **GOOD,
                "AUTHSERVER_JWT_CACHE_BYTES": "1000",
                "AUTHSERVER_PLAN_CACHE_BYTES": "lots",
                "AUTHSERVER_TOKEN_CACHE_BYTES": "-1",
                "AUTHSERVER_JWT_CACHE_SIZE": "-1",
            }
        )
    text = str(raised.value)
    for name in ("JWT_CACHE_BYTES", "PLAN_CACHE_BYTES", "TOKEN_CACHE_BYTES", "JWT_CACHE_SIZE"):
        assert name in text


def test_the_local_quota_share_follows_the_replica_count() -> None:
    assert load_settings(GOOD).quota_share == 1.0
    with_redis = {**GOOD, "AUTHSERVER_REDIS_URL": "redis://127.0.0.1:6379/0"}
    assert load_settings(with_redis).quota_share == pytest.approx(1 / DEFAULT_REDIS_REPLICAS)
    assert load_settings({**with_redis, "AUTHSERVER_REPLICAS": "4"}).quota_share == 0.25
    with pytest.raises(SettingsError, match="AUTHSERVER_REPLICAS"):
        load_settings({**GOOD, "AUTHSERVER_REPLICAS": "0"})


def test_settings_is_a_leaf() -> None:
    # Configuration is read before any service exists: importing it must not pull in the
    # HTTP client, Redis, the verifier or the token service (STYLE: settings a leaf).
    code = (
        "import sys, authserver.settings\n"
        "heavy = {'aiohttp', 'redis', 'jwt', 'authserver.cloud.client', 'authserver.cloud.quota',\n"
        "         'authserver.identity.verifier', 'authserver.ratelimit', 'authserver.tokens'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_the_event_loop_is_uvloop_where_installed_unless_asked_otherwise() -> None:
    assert load_settings(GOOD).event_loop == "auto"
    for choice in ("uvloop", "asyncio", "AsyncIO"):
        assert load_settings({**GOOD, "AUTHSERVER_EVENT_LOOP": choice}).event_loop == choice.lower()
    with pytest.raises(SettingsError, match="AUTHSERVER_EVENT_LOOP='tokio' is not auto"):
        load_settings({**GOOD, "AUTHSERVER_EVENT_LOOP": "tokio"})


def test_revocation_replicas_are_off_by_default_and_validated() -> None:
    defaults = load_settings(GOOD)
    assert (defaults.revocation_min_replicas, defaults.revocation_replica_timeout) == (0, 500)
    redis = {**GOOD, "AUTHSERVER_REDIS_URL": "redis://cache:6379/0"}
    chosen = load_settings(
        {
            **redis,
            "AUTHSERVER_REVOCATION_MIN_REPLICAS": "1",
            "AUTHSERVER_REVOCATION_REPLICA_TIMEOUT": "250",
        }
    )
    assert (chosen.revocation_min_replicas, chosen.revocation_replica_timeout) == (1, 250)
    with pytest.raises(SettingsError) as caught:
        load_settings(
            {
                **redis,
                "AUTHSERVER_REVOCATION_MIN_REPLICAS": "-1",
                "AUTHSERVER_REVOCATION_REPLICA_TIMEOUT": "0",
            }
        )
    problems = "\n".join(caught.value.problems)
    assert "AUTHSERVER_REVOCATION_MIN_REPLICAS='-1' must be at least 0" in problems
    assert "AUTHSERVER_REVOCATION_REPLICA_TIMEOUT='0' must be at least 1" in problems
    with pytest.raises(SettingsError, match="at most 1500"):
        load_settings({**redis, "AUTHSERVER_REVOCATION_REPLICA_TIMEOUT": "5000"})
    # Without Redis, queued revocations live in the process: no replica to wait for.
    with pytest.raises(SettingsError, match="REVOCATION_MIN_REPLICAS=1 needs AUTHSERVER_REDIS_URL"):
        load_settings({**GOOD, "AUTHSERVER_REVOCATION_MIN_REPLICAS": "1"})


def test_the_replica_timeout_stays_below_the_redis_socket_timeout() -> None:
    # WAIT holds the connection for the timeout: past the socket timeout, a replica that does
    # not answer would read as an unreachable Redis (store_unavailable), not as unreplicated.
    assert MAX_REPLICA_TIMEOUT_MS < SOCKET_TIMEOUT * 1000
