"""The image's install step, replayed without Docker: builder COPYs + its pip line, fresh venv."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from tests.deploy.helpers import ROOT, Instruction, dockerfile_stages, instructions

# The commands the manifests and the compose file run in the image.
SUBCOMMANDS = ("serve", "emulator")


def builder_stage() -> list[Instruction]:
    """The first stage, which builds /opt/venv."""
    return dockerfile_stages()[0]


def replay_context(stage: list[Instruction], root: Path) -> Path:
    """Lay out the builder's WORKDIR under `root` exactly as its COPY lines do; return it."""
    (workdir,) = instructions(stage, "WORKDIR")
    target = root / PurePosixPath(workdir.value).relative_to("/")
    target.mkdir(parents=True)
    for copy in instructions(stage, "COPY"):
        *sources, dest = shlex.split(copy.value)
        assert not any(s.startswith("--") for s in sources), "the builder copies from the context"
        into = target / dest
        for source in sources:
            src = ROOT / source
            assert src.exists(), f"COPY {source}: not in the repository"
            if src.is_dir():
                shutil.copytree(src, into, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                into.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, into / src.name if dest.endswith("/") else into)
    return target


def pip_install_args(stage: list[Instruction]) -> list[str]:
    """The arguments of the builder's single `RUN pip install ...` line."""
    lines = [r.value for r in instructions(stage, "RUN") if r.value.startswith("pip install")]
    assert len(lines) == 1, "keep exactly one plain `RUN pip install ...` line in the builder"
    args = shlex.split(lines[0])
    assert not {"&&", ";", "|"} & set(args), "keep the pip line a single command"
    return args[1:]


def builder_env(stage: list[Instruction], venv: Path) -> dict[str, str]:
    """The builder's ENV (PIP_* and friends), with its /opt/venv PATH pointing at our venv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    for instruction in instructions(stage, "ENV"):
        for part in shlex.split(instruction.value):
            key, _, value = part.partition("=")
            env[key] = value
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    return env


@pytest.mark.timeout(600)
def test_image_install_step_yields_a_working_cli(tmp_path: Path) -> None:
    """A fresh venv + the Dockerfile's own pip line installs an `authserver` that runs."""
    stage = builder_stage()
    (venv_line,) = (r for r in instructions(stage, "RUN") if "-m venv" in r.value)
    assert venv_line.value == "python -m venv /opt/venv"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    context = replay_context(stage, tmp_path / "image")
    env = builder_env(stage, venv)
    done = subprocess.run(
        [str(venv / "bin" / "pip"), *pip_install_args(stage)],
        cwd=context,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    cli = venv / "bin" / "authserver"
    # Nothing may come from the work tree: run from elsewhere, with only the venv's packages.
    run_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    for argv in ([], *([name] for name in SUBCOMMANDS)):
        result = subprocess.run(
            [str(cli), *argv, "--help"],
            cwd=tmp_path,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"authserver {' '.join(argv)} --help:\n{result.stderr}"
        assert "usage" in result.stdout.lower()

    # The installed package is the venv's copy, not the repository's.
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import authserver; print(authserver.__file__)"],
        cwd=tmp_path,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv)
