"""A real S3-compatible server for the tests: versitygw over a temporary directory, on this
host (hack/build-addons.sh builds it). Stopped and started again by the outage tests."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs

from tests.conftest import REPO, required

ACCESS_KEY = "shopping-guide-test"
SECRET_KEY = "shopping-guide-test-secret"


def versitygw_binary() -> Path:
    override = os.environ.get("SHOPPING_GUIDE_VERSITYGW")
    if override:
        return Path(override)
    out = subprocess.run(
        [str(REPO / "hack" / "build-addons.sh"), "--bin-dir"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    binary = Path(out.strip()) / "versitygw"
    if not binary.exists():
        required(f"no {binary}: make cluster-binaries builds it")
    return binary


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Server:
    binary: Path
    directory: Path
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory.parent / f"versitygw-{self.port}.log").open("ab")
        env = {**os.environ, "ROOT_ACCESS_KEY": ACCESS_KEY, "ROOT_SECRET_KEY": SECRET_KEY}
        self.process = subprocess.Popen(
            [str(self.binary), "--port", f"127.0.0.1:{self.port}", "posix", str(self.directory)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"versitygw exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("versitygw did not listen within 30 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)
        self.process = None

    def filesystem(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            access_key=ACCESS_KEY, secret_key=SECRET_KEY, endpoint_override=self.endpoint,
            scheme="http", region="us-east-1", allow_bucket_creation=True,
        )  # fmt: skip

    def new_bucket(self) -> str:
        name = f"test-{secrets.token_hex(4)}"
        self.filesystem().create_dir(name)
        return name


def s3_session(directory: Path) -> Iterator[S3Server]:
    server = S3Server(versitygw_binary(), directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
