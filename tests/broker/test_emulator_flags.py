"""`authserver emulator --mqtt-port`, `--enforce-groups`: off unless asked, flag or environment."""

from __future__ import annotations

import pytest

from authserver.emulator.cli import build_parser, config_from_args


def test_mqtt_listener_is_off_by_default() -> None:
    config = config_from_args(build_parser({}).parse_args([]))
    assert config.mqtt_port is None
    assert config.expire_notice_seconds == 300


def test_mqtt_port_from_flag_or_environment() -> None:
    env = {"AUTHSERVER_EMULATOR_MQTT_PORT": "1883", "AUTHSERVER_EMULATOR_HOST": "127.0.0.2"}
    config = config_from_args(build_parser(env).parse_args([]))
    assert (config.mqtt_host, config.mqtt_port) == ("127.0.0.2", 1883)
    flagged = build_parser(env).parse_args(["--mqtt-port", "2883", "--expire-notice-seconds", "5"])
    config = config_from_args(flagged)
    assert config.mqtt_port == 2883
    assert config.expire_notice_seconds == 5
    assert "AUTHSERVER_EMULATOR_MQTT_PORT" in build_parser({}).format_help()


def test_groups_are_not_enforced_by_default() -> None:
    assert config_from_args(build_parser({}).parse_args([])).enforce_groups is False
    off = {"AUTHSERVER_EMULATOR_ENFORCE_GROUPS": "no"}
    assert config_from_args(build_parser(off).parse_args([])).enforce_groups is False


def test_enforce_groups_from_flag_or_environment() -> None:
    assert config_from_args(build_parser({}).parse_args(["--enforce-groups"])).enforce_groups
    on = {"AUTHSERVER_EMULATOR_ENFORCE_GROUPS": "true"}
    assert config_from_args(build_parser(on).parse_args([])).enforce_groups
    assert "AUTHSERVER_EMULATOR_ENFORCE_GROUPS" in build_parser({}).format_help()


def test_enforce_groups_refuses_a_word_it_does_not_know(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser({"AUTHSERVER_EMULATOR_ENFORCE_GROUPS": "sometimes"})
    assert exited.value.code == 2
    assert "AUTHSERVER_EMULATOR_ENFORCE_GROUPS='sometimes'" in capsys.readouterr().err
