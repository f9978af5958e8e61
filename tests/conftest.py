"""Fixtures for the whole suite live in tests/fixtures; this file only registers them."""

pytest_plugins = [
    "tests.fixtures.redis",
    "tests.fixtures.redis_cluster",
    "tests.fixtures.emulator",
    "tests.fixtures.gateway",
]
