"""The container images, read from their Dockerfiles: linted, non-root, entrypoints that exist,
dependencies pinned, any base, the build's CA never baked in. tests/images runs the built ones.
"""

from __future__ import annotations

import fnmatch
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
IMAGES_SH = REPO / "hack" / "images.sh"


def text(dockerfile: str) -> str:
    return (REPO / dockerfile).read_text()


def final_stage(dockerfile: str) -> str:
    return text(dockerfile).rsplit("\nFROM ", 1)[1]


def instructions(dockerfile: str) -> list[str]:
    """One string per instruction: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text(dockerfile))
    return [line.strip() for line in joined.splitlines() if line.strip() and line[0] != "#"]


def runs(dockerfile: str) -> list[str]:
    return [line for line in instructions(dockerfile) if line.startswith("RUN ")]


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_hadolint_is_clean(dockerfile: str) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
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
    stage = re.sub(r"\\\n", " ", final_stage(dockerfile))
    assert not re.search(r"build-essential|gcc|g\+\+|clang|pip install|python3-dev", stage)
    # apt in the final stage installs the OpenMP runtime only, nothing else.
    for packages in re.findall(r"apt-get[^&;]* install ([^&;]+)", stage):
        assert [p for p in packages.split() if not p.startswith("-")] == ["libgomp1"], packages
    assert "COPY --from=build /opt/venv /opt/venv" in stage


def test_recommender_image_has_the_openmp_runtime() -> None:
    # implicit's wheel links the system libgomp.so.1; the official slim image has none.
    assert "install -y --no-install-recommends libgomp1" in final_stage(
        "recommender_image/Dockerfile"
    )
    assert "libgomp1" in IMAGES_SH.read_text()  # the local base has it already


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_any_bookworm_python_base(dockerfile: str) -> None:
    before_first_from = text(dockerfile).split("\nFROM ", 1)[0]
    assert "\nARG BASE_IMAGE=python:3.11-slim-bookworm\n" in before_first_from
    stages = re.findall(r"^FROM (\S+)", text(dockerfile), re.M)
    assert stages and all(stage == "${BASE_IMAGE}" for stage in stages)
    # Debian's python is /usr/bin/python3, the official image's /usr/local/bin/python.
    assert "RUN python3 -m venv /opt/venv" in text(dockerfile)
    assert not re.search(r"(^|\s)python(\s|$)", " ".join(runs(dockerfile)))


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_the_ca_bundle_reaches_only_the_steps_that_download(dockerfile: str) -> None:
    for line in instructions(dockerfile):
        if line.startswith(("ENV ", "ARG ", "LABEL ")):
            assert not re.search(r"PIP_CERT|SSL_CERT_FILE|CAInfo|/run/secrets", line), line
        if line.startswith("COPY "):
            assert "secrets" not in line and "ca-certificates" not in line, line
    for line in runs(dockerfile):
        if re.search(r"pip install|apt-get", line):
            assert line.startswith("RUN --mount=type=secret,id=ca "), line
            # Without the secret (no proxy), the step must still run: only set when present.
            assert "if [ -s /run/secrets/ca ]" in line, line


@pytest.mark.parametrize(("dockerfile", "expected"), IMAGES.items())
def test_oci_labels(dockerfile: str, expected: tuple[str, str]) -> None:
    stage = final_stage(dockerfile)
    labels = dict(re.findall(r'(org\.opencontainers\.image\.\w+)="([^"]*)"', stage))
    assert labels["org.opencontainers.image.title"] == f"shopping-guide-{expected[1]}"
    assert labels["org.opencontainers.image.description"]
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.source"] == "${SOURCE_URL}"
    assert re.search(r"^ARG VERSION=", stage, re.M)
    # The image's licence label is the project's SPDX licence expression.
    assert PYPROJECT["project"]["license"] == labels["org.opencontainers.image.licenses"]


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
    body = text(dockerfile)
    assert f'".[{extra}]"' in body
    assert f'["optional-dependencies"]["{extra}"]' in body
    for line in runs(dockerfile):
        for install in re.findall(r"pip install[^&;]*", line):
            assert "-c requirements/constraints.txt" in install, install


def test_build_context_is_an_allow_list() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "everything is left out unless named"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    for dockerfile in IMAGES:
        for line in instructions(dockerfile):
            if line.startswith("COPY ") and "--from=" not in line:
                for source in line.split()[1:-1]:
                    path = source.rstrip("/")
                    assert any(path == a or fnmatch.fnmatch(path, a) for a in allowed), source
    for kept_out in (".venv", ".git", ".cluster", "data", ".mypy_cache", ".pytest_cache"):
        assert not any(kept_out == a or a.startswith(f"{kept_out}/") for a in allowed)


def test_images_script_names_the_tags() -> None:
    done = subprocess.run(
        [str(IMAGES_SH), "--print-tags"], capture_output=True, text=True, check=True, cwd=REPO
    )
    version = PYPROJECT["project"]["version"]
    assert done.stdout.split() == [
        f"localhost/shopping-guide/recommender:{version}",
        f"localhost/shopping-guide/operator:{version}",
    ]
