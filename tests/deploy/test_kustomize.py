"""The kustomize tree: every reference resolves, every manifest and rendering passes the schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from authserver.policy import load_policy
from tests.deploy.helpers import (
    BASE,
    DEPLOY,
    K8S_VERSIONS,
    KUSTOMIZATIONS,
    MONITORING,
    OVERLAYS,
    Doc,
    k8s_errors,
    load_docs,
)

KUSTOMIZATION_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "patches",
    "configMapGenerator",
    "secretGenerator",
    "images",
    "labels",
    "namespace",
    "components",
}


def kustomization(directory: Path) -> dict[str, Any]:
    """The parsed kustomization.yaml of a directory."""
    (doc,) = load_docs(directory / "kustomization.yaml")
    return doc


def local_references(directory: Path) -> dict[str, list[Path]]:
    """Every file or directory a kustomization names, by the field that names it."""
    doc = kustomization(directory)
    refs: dict[str, list[Path]] = {"resources": [], "patches": [], "generators": []}
    for entry in doc.get("resources", []):
        refs["resources"].append(directory / entry)
    for patch in doc.get("patches", []):
        if "path" in patch:
            refs["patches"].append(directory / patch["path"])
    for generator in doc.get("configMapGenerator", []) + doc.get("secretGenerator", []):
        for entry in generator.get("files", []):
            # `files` entries may be `key=path`.
            refs["generators"].append(directory / entry.split("=", 1)[-1])
        for entry in generator.get("envs", []):
            refs["generators"].append(directory / entry)
    return refs


def resource_files(directory: Path) -> list[Path]:
    """The manifest files (not directories) listed under `resources`."""
    return [p for p in local_references(directory)["resources"] if p.is_file()]


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_kustomization_is_well_formed(name: str) -> None:
    """Known keys only, the v1beta1 Kustomization kind, no deprecated fields."""
    doc = kustomization(KUSTOMIZATIONS[name])
    assert doc["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert doc["kind"] == "Kustomization"
    unknown = set(doc) - KUSTOMIZATION_KEYS
    assert not unknown, f"unexpected (or deprecated) kustomization fields: {unknown}"


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_kustomization_references_exist(name: str) -> None:
    """Every resource, patch and generator input names a real file inside the tree."""
    directory = KUSTOMIZATIONS[name]
    refs = local_references(directory)
    assert refs["resources"], "a kustomization with no resources"
    missing = [str(p) for paths in refs.values() for p in paths if not p.exists()]
    assert not missing, f"{name}: missing {missing}"
    for path in (p for paths in refs.values() for p in paths):
        # kustomize refuses files outside the root, except whole kustomizations.
        inside = path.resolve().is_relative_to(directory.resolve())
        assert inside or (path / "kustomization.yaml").is_file(), f"{path} escapes {directory}"


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_overlay_builds_on_base(name: str) -> None:
    """Each overlay includes the base kustomization directory."""
    resources = [p.resolve() for p in local_references(OVERLAYS[name])["resources"]]
    assert BASE.resolve() in resources


def test_every_file_under_deploy_is_used() -> None:
    """No stray manifest: each file is a kustomization, a referenced file or the compose file."""
    used = {DEPLOY / "compose.yaml"}
    for directory in (*KUSTOMIZATIONS.values(), MONITORING):
        used.add(directory / "kustomization.yaml")
        used.update(p for paths in local_references(directory).values() for p in paths)
    used = {p.resolve() for p in used}
    stray = [p for p in DEPLOY.rglob("*") if p.is_file() and p.resolve() not in used]
    assert not stray, f"files under deploy/ that nothing references: {stray}"


def manifest_cases() -> list[tuple[Path, int, str]]:
    """(file, document index, Kubernetes version) for every listed manifest."""
    cases: list[tuple[Path, int, str]] = []
    for directory in KUSTOMIZATIONS.values():
        for path in resource_files(directory):
            for index in range(len(load_docs(path))):
                cases.extend((path, index, version) for version in K8S_VERSIONS)
    return cases


@pytest.mark.parametrize(
    ("path", "index", "version"),
    manifest_cases(),
    ids=lambda v: str(v.relative_to(DEPLOY)) if isinstance(v, Path) else str(v),
)
def test_manifest_validates(path: Path, index: int, version: str) -> None:
    """Each YAML document passes the Kubernetes schema, unknown fields included."""
    doc = load_docs(path)[index]
    assert not k8s_errors(doc, version)


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_patches_target_base_objects(name: str) -> None:
    """A patch whose target is misspelled would silently do nothing."""
    base_objects = {
        (doc["kind"], doc["metadata"]["name"])
        for path in resource_files(BASE)
        for doc in load_docs(path)
    }
    for path in local_references(OVERLAYS[name])["patches"]:
        for doc in load_docs(path):
            target = (doc["kind"], doc["metadata"]["name"])
            assert target in base_objects, f"{path.name} patches unknown {target}"


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_output_validates(rendered: dict[str, list[Doc]], name: str, version: str) -> None:
    """What `kubectl apply -k` would send passes the schemas, after patches and generators."""
    errors = [e for doc in rendered[name] for e in k8s_errors(doc, version)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_rendered_names_are_unique(rendered: dict[str, list[Doc]], name: str) -> None:
    """No two objects of one kind share a name (an overlay must patch, not duplicate)."""
    keys = [(d["kind"], d["metadata"]["name"]) for d in rendered[name]]
    assert len(keys) == len(set(keys))


def test_strict_validation_catches_a_typo() -> None:
    """The validator really is strict: a misspelled field fails."""
    (deployment,) = (d for d in load_docs(BASE / "deployment.yaml") if d["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    assert k8s_errors(broken, K8S_VERSIONS[0])


def test_policy_configmap_source_is_the_example_policy() -> None:
    """deploy/base/policy.yaml is policies/example.yaml (comments aside) and loads cleanly."""
    copy = BASE / "policy.yaml"
    (example,) = load_docs(DEPLOY.parent / "policies" / "example.yaml")
    assert load_docs(copy) == [example], "re-copy policies/example.yaml into deploy/base/"
    assert load_policy(copy).version_id
