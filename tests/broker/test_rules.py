"""The broker's rules without sockets: passwords, ClientIds, coverage, notice codes."""

from __future__ import annotations

import pytest

from authserver.clock import ManualClock
from authserver.emulator import mqtt_auth
from authserver.emulator.broker import p2p_target
from authserver.emulator.mqtt_auth import ConnectRefused, Grants, Refusal
from authserver.emulator.state import EmulatorState

INSTANCE = "post-cn-test"


def make_state() -> EmulatorState:
    return EmulatorState(
        access_keys={"LTAIk": "secret"},
        instance_ids=[INSTANCE],
        qps={},
        clock=ManualClock(),
        timestamp_tolerance=900,
    )


@pytest.mark.parametrize(
    ("password", "tokens"),
    [
        ("R|a", {"R": "a"}),
        ("W|b|R|a", {"R": "a", "W": "b"}),
        ("RW|c", {"RW": "c"}),
        ("R|a|W|b|RW|c", {"R": "a", "W": "b", "RW": "c"}),
    ],
)
def test_passwords_in_any_order(password: str, tokens: dict[str, str]) -> None:
    assert mqtt_auth.parse_password(password) == tokens


@pytest.mark.parametrize("password", ["", "R", "R|", "R|a|R|b", "X|a", "R|a|W", "|a", "r|a"])
def test_malformed_passwords(password: str) -> None:
    with pytest.raises(ConnectRefused):
        mqtt_auth.parse_password(password)


@pytest.mark.parametrize(
    ("client_id", "valid"),
    [
        ("GID_test@@@dev-1", True),
        ("GID-test@@@d_2", True),
        ("GID_test@@@" + "d" * 53, True),  # 64 characters
        ("GID_test@@@" + "d" * 54, False),  # 65
        ("GID_te@@@d", False),  # the GroupId is too short
        ("GID_test@@@dev.1", False),
        ("GID_test@@@", False),
        ("test@@@dev", False),
        ("GID_test@@@a@@@b", False),
        ("GID_test@@@dev/1", False),
    ],
)
def test_client_ids(client_id: str, valid: bool) -> None:
    assert mqtt_auth.valid_client_id(client_id) is valid


def test_judging_subscribe_publish_and_receive() -> None:
    state = make_state()
    far = state.now_ms() + 3600_000
    read = state.issue_token(INSTANCE, "R", ("a/+", "b/#"), far)
    write = state.issue_token(INSTANCE, "W", ("a/x",), far)
    grants = Grants(INSTANCE, {"R": read, "W": write})
    sub, pub, recv = mqtt_auth.SUBSCRIBE, mqtt_auth.PUBLISH, mqtt_auth.RECEIVE
    assert grants.judge(state, sub, "a/x") is None
    assert grants.judge(state, sub, "a/+") is None
    assert grants.judge(state, sub, "b/#") is None
    assert grants.judge(state, sub, "b/c/+") is None
    assert grants.judge(state, sub, "a/#") == Refusal(4, "R")  # broader than a/+
    assert grants.judge(state, sub, "#") == Refusal(4, "R")
    assert grants.judge(state, sub, "a/x/#/y") == Refusal(4, "R")  # not a filter at all
    assert grants.judge(state, pub, "a/x") is None
    assert grants.judge(state, pub, "a/y") == Refusal(4, "W")
    assert grants.judge(state, pub, "a/+") == Refusal(4, "W")  # wildcards are no topic
    assert grants.judge(state, recv, "b/1/2") is None
    assert grants.judge(state, recv, "c") == Refusal(4, "R")
    assert Grants(INSTANCE, {"R": read}).judge(state, pub, "a/x") == Refusal(5, "W")
    assert Grants(INSTANCE, {"W": write}).judge(state, sub, "a/x") == Refusal(5, "R")
    state.revoke_token(write, INSTANCE)
    # A revoked token ends the session whatever it was asked for.
    assert grants.judge(state, sub, "a/x") == Refusal(3, "W")


def test_rw_token_and_expiry() -> None:
    state = make_state()
    clock = state.clock
    assert isinstance(clock, ManualClock)
    both = state.issue_token(INSTANCE, "R,W", ("t/#",), state.now_ms() + 600_000)
    grants = Grants(INSTANCE, {"RW": both})
    assert grants.judge(state, mqtt_auth.PUBLISH, "t/1") is None
    assert grants.judge(state, mqtt_auth.SUBSCRIBE, "t/#") is None
    assert grants.expiring(state, 300_000) == []
    clock.advance(301)
    assert grants.expiring(state, 300_000) == [("RW", state.now_ms() + 299_000)]
    assert grants.expiring(state, 300_000) == []  # once per token
    clock.advance(300)
    assert grants.check(state) == Refusal(2, "RW")


def test_connect_refusals_name_their_reason() -> None:
    state = make_state()
    token = state.issue_token(INSTANCE, "R", ("a",), state.now_ms() + 600_000)
    user = f"Token|LTAIk|{INSTANCE}"
    cid = "GID_test@@@d"
    assert mqtt_auth.authenticate(state, cid, user, f"R|{token}").tokens == {"R": token}
    cases = {
        "client_id": (None, user, f"R|{token}"),
        "no_credentials": (cid, None, None),
        "username": (cid, "Token|LTAIk", f"R|{token}"),
        "instance": (cid, "Token|LTAIk|post-cn-other", f"R|{token}"),
        "access_key": (cid, f"Token|nobody|{INSTANCE}", f"R|{token}"),
        "forged": (cid, user, f"W|{token}"),
        "signature": (cid, f"Signature|LTAIk|{INSTANCE}", "AAAA"),
    }
    for reason, (client_id, username, password) in cases.items():
        with pytest.raises(ConnectRefused) as refused:
            mqtt_auth.authenticate(state, client_id, username, password)
        assert refused.value.reason == reason
    signed = mqtt_auth.sign_client_id("secret", cid)
    assert mqtt_auth.authenticate(state, cid, f"Signature|LTAIk|{INSTANCE}", signed).full


@pytest.mark.parametrize(
    ("topic", "target"),
    [
        ("chat/p2p/GID_x@@@d", "GID_x@@@d"),
        ("chat/p2p/", None),
        ("chat/room/GID_x@@@d", None),
        ("a/b/p2p/GID_x@@@d", None),
        ("p2p/GID_x@@@d", None),
    ],
)
def test_p2p_topics(topic: str, target: str | None) -> None:
    assert p2p_target(topic) == target
