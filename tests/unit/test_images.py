"""The container images: linted, non-root, entrypoints that exist, dependencies pinned."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGES = {
    "recommender_image/Dockerfile": ("shopping-guide", "recommender"),
    "operator/Dockerfile": ("shopping-guide-operator", "operator"),
}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def final_stage(dockerfile: str) -> str:
    return (REPO / dockerfile).read_text().rsplit("\nFROM ", 1)[1]


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_hadolint_is_clean(dockerfile: str) -> None:
    hadolint = shutil.which("hadolint") or str(
        Path(__import__("sys").executable).parent / "hadolint"
    )
    done = subprocess.run(
        [hadolint, str(REPO / dockerfile)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_final_stage_runs_as_a_numeric_non_root_user(dockerfile: str) -> None:
    users = re.findall(r"^USER (\S+)", final_stage(dockerfile), re.M)
    assert users, "no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_final_stage_has_no_compilers(dockerfile: str) -> None:
    stage = final_stage(dockerfile)
    assert not re.search(r"apt-get|build-essential|gcc|pip install", stage)
    assert "COPY --from=build /opt/venv /opt/venv" in stage


@pytest.mark.parametrize(("dockerfile", "expected"), IMAGES.items())
def test_entrypoint_is_a_declared_console_script(
    dockerfile: str, expected: tuple[str, str]
) -> None:
    script, _ = expected
    entrypoint = re.search(r'^ENTRYPOINT \["([^"]+)"\]', final_stage(dockerfile), re.M)
    assert entrypoint is not None and entrypoint.group(1) == script
    assert script in PYPROJECT["project"]["scripts"]
    assert shutil.which(script) or (Path(sys.executable).parent / script).exists()


@pytest.mark.parametrize(("dockerfile", "expected"), IMAGES.items())
def test_every_runtime_dependency_is_pinned(dockerfile: str, expected: tuple[str, str]) -> None:
    _, extra = expected
    pins = {
        line.split("==")[0].lower().replace("_", "-")
        for line in (REPO / "requirements/constraints.txt").read_text().splitlines()
        if "==" in line
    }
    wanted = (
        PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"][extra]
    )
    for requirement in wanted:
        name = re.split(r"[<>=\[ ]", requirement)[0].lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in requirements/constraints.txt"
    assert f'".[{extra}]"' in (REPO / dockerfile).read_text()
