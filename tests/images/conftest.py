"""Fixtures for the tests of the built container images (`make images`), run with podman.

Every test here is marked `images`. Podman or an image that is missing fails the run in CI
and skips it elsewhere, with the command that builds it. Containers run as the images run in
a cluster: the image's numeric user, a read-only root filesystem without podman's writable
/tmp, /var/tmp and /run (a test adds a tmpfs where the chart mounts an emptyDir), no
capabilities, no privilege escalation, and no network unless a test serves on the host's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import required

REPO = Path(__file__).resolve().parents[2]
IMAGES_SH = REPO / "hack" / "images.sh"
IMAGES_DIR = Path(__file__).resolve().parent
USER = "10001:10001"
# The bundle hack/images.sh hands the build as its secret "ca".
CA_BUNDLE = Path(os.environ.get("SHOPPING_GUIDE_CA_BUNDLE") or "/etc/ssl/certs/ca-certificates.crt")
PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s+(.*?)-----END CERTIFICATE-----", re.S)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # tryfirst: the marker must be on the items before `-m` deselection runs.
    for item in items:
        if IMAGES_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.images)


def ulimit_flags() -> list[str]:
    """Podman's default limits lowered to this process's hard limits (as hack/images.sh does):
    without CAP_SYS_RESOURCE the runtime cannot raise them and the container does not start."""
    flags = []
    for name, limit, default in (
        ("nofile", resource.RLIMIT_NOFILE, 1_048_576),
        ("nproc", resource.RLIMIT_NPROC, 32_768),
    ):
        hard = resource.getrlimit(limit)[1]
        value = default if hard == resource.RLIM_INFINITY else min(default, hard)
        flags += ["--ulimit", f"{name}={value}:{value}"]
    return flags


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    writable: bool = False

    def flag(self) -> str:
        return f"type=bind,source={self.source},target={self.target}" + (
            "" if self.writable else ",readonly"
        )


@dataclass(frozen=True)
class Podman:
    path: str

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.path, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        return done

    def run_flags(
        self,
        mounts: Sequence[Mount] = (),
        network: str = "none",
        entrypoint: str | None = None,
        tmpfs: Sequence[str] = (),
    ) -> list[str]:
        flags = [
            *ulimit_flags(),
            "--read-only",
            "--read-only-tmpfs=false",
            "--cap-drop=ALL",
            "--security-opt=no-new-privileges",
            f"--user={USER}",
            f"--network={network}",
            "--pull=never",
        ]
        flags += [f"--mount={mount.flag()}" for mount in mounts]
        flags += [f"--tmpfs={path}:rw,nosuid,nodev,size=64m,mode=1777" for path in tmpfs]
        if entrypoint is not None:
            flags.append(f"--entrypoint={entrypoint}")
        return flags

    def run(
        self,
        image: str,
        *args: str,
        mounts: Sequence[Mount] = (),
        entrypoint: str | None = None,
        check: bool = True,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """Runs the image to completion (no network), the way a cluster would run it."""
        flags = self.run_flags(mounts, entrypoint=entrypoint)
        return self("run", "--rm", *flags, image, *args, check=check, timeout=timeout)

    def python(self, image: str, code: str, *args: str) -> Any:
        """Runs Python code in the image; what it prints is read as JSON."""
        done = self.run(image, "-c", code, *args, entrypoint="python3")
        return json.loads(done.stdout)

    def inspect(self, image: str) -> dict[str, Any]:
        document: list[dict[str, Any]] = json.loads(self("image", "inspect", image).stdout)
        return document[0]


@dataclass
class Service:
    """A container running in the background on the host's network."""

    podman: Podman
    name: str

    def logs(self) -> str:
        done = self.podman("logs", self.name, check=False)
        return done.stdout + done.stderr

    def wait_for(self, url: str, timeout: float = 60) -> tuple[int, bytes]:
        """Polls URL until it answers 200; fails with the container's log otherwise."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                status, body = http_get(url, timeout=2)
                if status == 200:
                    return status, body
                last = (status, body[:300])
            except OSError as exc:
                last = exc
            running = self.podman("container", "inspect", "--format", "{{.State.Running}}",
                                  self.name, check=False)  # fmt: skip
            if running.stdout.strip() != "true":
                break
            time.sleep(0.5)
        raise AssertionError(f"{url} did not answer 200 ({last!r}); log:\n{self.logs()[-6000:]}")


@pytest.fixture(scope="session")
def podman() -> Podman:
    path = shutil.which("podman")
    if path is None:
        required("podman is not installed (apt-get install podman), so no image can be tested")
        raise AssertionError  # unreachable: required() raises
    return Podman(path)


@pytest.fixture
def service(podman: Podman) -> Iterator[Any]:
    """Starts containers in the background (host network); removes them afterwards."""
    started: list[Service] = []

    def start(
        image: str,
        *args: str,
        mounts: Sequence[Mount] = (),
        environment: Mapping[str, str] | None = None,
        tmpfs: Sequence[str] = (),
    ) -> Service:
        name = f"shopping-guide-test-{uuid.uuid4().hex[:10]}"
        flags = podman.run_flags(mounts, network="host", tmpfs=tmpfs)
        flags += [f"--env={key}={value}" for key, value in (environment or {}).items()]
        podman("run", "--detach", f"--name={name}", *flags, image, *args)
        started.append(Service(podman, name))
        return started[-1]

    yield start
    for container in started:
        podman("rm", "--force", "--time=5", container.name, check=False)


def image_tags() -> dict[str, str]:
    """recommender / operator -> the tag `make images` gives it."""
    out = subprocess.run(
        [str(IMAGES_SH), "--print-tags"], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout.split()
    return {tag.rsplit("/", 1)[1].split(":")[0]: tag for tag in out}


def built(podman: Podman, name: str) -> str:
    tag = image_tags()[name]
    if podman("image", "exists", tag, check=False).returncode != 0:
        required(f"{tag} is not built: run `make images`")
    return tag


@pytest.fixture(scope="session")
def recommender_image(podman: Podman) -> str:
    return built(podman, "recommender")


@pytest.fixture(scope="session")
def operator_image(podman: Podman) -> str:
    return built(podman, "operator")


def images_sh(*args: str) -> str:
    done = subprocess.run(
        [str(IMAGES_SH), *args], capture_output=True, text=True, check=False, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def check_metadata(podman: Podman, image: str, title: str, entrypoint: str, limit: int) -> None:
    """OCI labels, the numeric user, the entrypoint and the size budget."""
    found = podman.inspect(image)
    labels = found["Config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == title
    assert labels["org.opencontainers.image.description"]
    assert labels["org.opencontainers.image.version"] == image.rsplit(":", 1)[1]
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert "org.opencontainers.image.source" in labels
    assert found["Config"]["User"] == USER
    assert found["Config"]["Entrypoint"] == [entrypoint]
    environment = dict(line.split("=", 1) for line in found["Config"]["Env"])
    assert environment["PATH"].startswith("/opt/venv/bin:")
    assert not {"PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"} & environment.keys()
    assert found["Size"] < limit, f"{image}: {found['Size'] / 1e6:.0f} MB"


# What the final stage must not carry: a compiler, pip or the build's sources.
NO_TOOLS = """
import importlib.util, json, os, shutil
print(json.dumps({
    "tools": [t for t in ("gcc", "cc", "c++", "g++", "make", "pip", "pip3") if shutil.which(t)],
    "pip": importlib.util.find_spec("pip") is not None,
    "setuptools": importlib.util.find_spec("setuptools") is not None,
    "src": os.path.exists("/src"),
    "secrets": os.listdir("/run/secrets") if os.path.isdir("/run/secrets") else [],
    "bundle": open("/etc/ssl/certs/ca-certificates.crt", "rb").read().decode(),
    "uid": os.getuid(),
}))
"""


def check_no_build_tools(podman: Podman, image: str) -> dict[str, Any]:
    found: dict[str, Any] = podman.python(image, NO_TOOLS)
    assert found["tools"] == [] and not found["pip"] and not found["setuptools"]
    assert not found["src"]
    assert found["secrets"] == []
    assert found["uid"] == 10001
    return found


def pem_bodies(text: bytes) -> set[bytes]:
    return {b"".join(body.split()) for body in PEM.findall(text)}


def check_ca_in_no_layer(archive: Path, image_bundle: str) -> None:
    """The build's CA bundle is in no layer of the saved image: no file has its digest or
    holds one of the certificates it adds to the image's own (Debian's) bundle."""
    if not CA_BUNDLE.is_file():
        pytest.skip(f"{CA_BUNDLE} does not exist: the build had no CA secret")
    bundle = CA_BUNDLE.read_bytes()
    digest = hashlib.sha256(bundle).digest()
    extra = pem_bodies(bundle) - pem_bodies(image_bundle.encode())
    # A certificate's first line of base64 is in a file however the PEM is wrapped.
    needles = [body[:64] for body in extra]
    scanned = 0
    with tarfile.open(archive) as outer:
        layers = [m for m in outer.getmembers() if m.isfile() and m.name.endswith(".tar")]
        assert layers, f"{archive} holds no layers"
        for layer in layers:
            stream = outer.extractfile(layer)
            assert stream is not None
            with tarfile.open(fileobj=stream, mode="r|") as files:
                for member in files:
                    if not member.isfile():
                        continue
                    data = files.extractfile(member)
                    content = data.read() if data is not None else b""
                    scanned += 1
                    assert hashlib.sha256(content).digest() != digest, member.name
                    flat = b"".join(content.split()) if b"CERTIFICATE" in content else b""
                    for needle in needles:
                        assert needle not in flat, f"{layer.name}: {member.name} holds the CA"
    assert scanned > 1000
