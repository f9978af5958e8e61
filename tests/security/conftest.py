"""Fixtures for the hostile-input tests: keys, a clock, JWKS and attacker servers, API keys."""

from __future__ import annotations

import pytest

from authserver.clock import ManualClock
from tests.admin.conftest import api_keys_file
from tests.identity.conftest import attacker_server, jwks_server
from tests.identity.tokens import Keys, Minter, generate_keys

__all__ = ["api_keys_file", "attacker_server", "jwks_server"]


@pytest.fixture(scope="session")
def keys() -> Keys:
    """Keys of every family, generated once (RSA generation is slow)."""
    return generate_keys()


@pytest.fixture
def clock() -> ManualClock:
    """The gateway's and the emulator's clock, at the time the identity corpus assumes."""
    return ManualClock()


@pytest.fixture
def minter(clock: ManualClock) -> Minter:
    """Signs tokens relative to the manual clock."""
    return Minter(clock)
