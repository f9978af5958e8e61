"""The policy's `deviceCredentials` key: default deny, load-time checks, the engine's answer."""

from __future__ import annotations

import textwrap

import pytest

from authserver.policy import ClientIdNotAllowed, PolicyLoadError, parse_policy
from authserver.policy.engine import check_device_credential, device_credential_grant
from authserver.policy.model import DeviceCredentialNotAllowed

POLICY = textwrap.dedent(
    """\
    version: 1
    clientIds: ["GID_fleet@@@{sub}"]
    everyone:
      - topics: ["devices/{sub}/#"]
        actions: [R, W]
    groups:
      sensors:
        deviceCredentials: true
        rules: []
      ops:
        - topics: ["ops/#"]
          actions: [R]
    users:
      carol:
        clientIds: ["GID_lab@@@carol-bench"]
        deviceCredentials: true
      dave:
        deviceCredentials: false
    """
)


def test_only_entries_saying_true_grant_it() -> None:
    policy = parse_policy(POLICY, "p.yaml")
    assert policy.device_credential_groups == frozenset({"sensors"})
    assert policy.device_credential_users == frozenset({"carol"})
    assert device_credential_grant(policy, "s1", {"groups": ["sensors"]}) == (
        "groups.sensors.deviceCredentials"
    )
    assert device_credential_grant(policy, "carol", {}) == "users.carol.deviceCredentials"
    for subject, claims in (("bob", {}), ("o1", {"groups": ["ops"]}), ("dave", {})):
        assert device_credential_grant(policy, subject, claims) is None


def test_default_deny_without_the_key() -> None:
    policy = parse_policy("version: 1\nclientIds: ['GID_fleet@@@{sub}']\n", "p.yaml")
    assert device_credential_grant(policy, "anyone", {"groups": ["sensors"]}) is None
    with pytest.raises(DeviceCredentialNotAllowed) as info:
        check_device_credential(policy, "anyone", {}, "GID_fleet@@@anyone")
    assert info.value.code == "device_credential_not_allowed"
    assert info.value.status == 403


def test_the_client_id_must_be_the_identitys() -> None:
    policy = parse_policy(POLICY, "p.yaml")
    sensor = {"groups": ["sensors"]}
    assert check_device_credential(policy, "s1", sensor, "GID_fleet@@@s1").startswith("groups.")
    with pytest.raises(ClientIdNotAllowed):
        check_device_credential(policy, "s1", sensor, "GID_fleet@@@s2")
    check_device_credential(policy, "carol", {}, "GID_lab@@@carol-bench")
    check_device_credential(policy, "carol", {}, "GID_fleet@@@carol")
    with pytest.raises(DeviceCredentialNotAllowed):
        check_device_credential(policy, "bob", {}, "GID_fleet@@@bob")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "version: 1\ngroups:\n  s:\n    deviceCredentials: true\n",
            "p.yaml: groups.s.deviceCredentials: a device credential is bound to a ClientId, "
            "but no clientIds list applies to groups.s",
        ),
        (
            "version: 1\nusers:\n  u:\n    clientIds: ['GID_a@@@u']\n    deviceCredentials: yes2\n",
            "p.yaml: users.u.deviceCredentials: must be true or false, not a string",
        ),
        (
            "version: 1\nclientIds: ['GID_a@@@{sub}']\ngroups:\n  s:\n    deviceCredential: true\n",
            "did you mean 'deviceCredentials'?",
        ),
        (
            "version: 1\nclientIds: ['GID_a@@@{sub}']\ndeviceCredentials: true\n",
            "p.yaml: deviceCredentials: unknown key",
        ),
    ],
)
def test_load_time_problems(text: str, expected: str) -> None:
    with pytest.raises(PolicyLoadError) as info:
        parse_policy(text, "p.yaml")
    assert any(expected in p for p in info.value.problems), info.value.problems
