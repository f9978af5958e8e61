"""Fixtures for the deploy tests."""

from __future__ import annotations

import pytest

from tests.deploy.helpers import KUSTOMIZATIONS, Doc, kustomize_build


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Doc]]:
    """Each kustomization (base, dev, prod) rendered once by kubectl's built-in kustomize."""
    return {name: kustomize_build(directory) for name, directory in KUSTOMIZATIONS.items()}
