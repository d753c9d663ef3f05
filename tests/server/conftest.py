"""A real server process on a free port, serving real artifacts from the trainer."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shopping_guide.algorithms import fit
from shopping_guide.artifacts import ModelStore
from shopping_guide.events import EventSchema, load_events
from shopping_guide.interactions import build_interactions
from tests.conftest import two_taste_rows

# The guide the fixture's server says it serves (SHOPPING_GUIDE_NAME).
GUIDE = "storefront"


@dataclass
class Models:
    store: Path
    als: str
    knn: str


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("models")
    events = root / "events.csv"
    events.write_text("user_id,item_id\n" + "".join(f"{u},{i}\n" for u, i in two_taste_rows()))
    data = build_interactions(load_events(events, EventSchema()))
    store = ModelStore(root / "store")
    versions = []
    for algorithm, params in (
        ("als", {"factors": 4, "iterations": 15, "regularization": 0.1}),
        ("itemknn", {"neighbours": 20}),
    ):
        model = fit(algorithm, params, data.matrix, seed=1)
        versions.append(store.write(model, data.user_ids, data.item_ids, {})[0])
    return Models(store.root, versions[0], versions[1])


class RoutingDir:
    """A directory laid out as kubelet lays out a mounted ConfigMap, updated the same way:
    `routing.json -> ..data/routing.json`, `..data -> ..<timestamp>`, swapped atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.count = 0
        (root / "routing.json").symlink_to(Path("..data") / "routing.json")

    @property
    def path(self) -> Path:
        return self.root / "routing.json"

    def write(self, document: dict[str, Any]) -> None:
        self.count += 1
        target = self.root / f"..{self.count:06d}"
        target.mkdir()
        (target / "routing.json").write_text(json.dumps(document))
        link = self.root / "..data_tmp"
        link.symlink_to(target.name)
        link.rename(self.root / "..data")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    routing: RoutingDir
    models: Models
    log: Path
    # Where /metrics answers: the metrics port when the server was given one.
    metrics_url: str = ""

    def request(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                payload = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            payload, status = exc.read(), exc.code
        try:
            return status, json.loads(payload)
        except ValueError:
            return status, payload.decode()

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def metrics_text(self) -> str:
        with urllib.request.urlopen((self.metrics_url or self.url) + "/metrics", timeout=30) as r:
            return str(r.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        text = self.metrics_text()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_generation(self, generation: int, timeout: float = 30.0) -> None:
        """Until every worker process has the routing of `generation` in effect (the gauge is
        their minimum): the next requests may go to any of them."""
        self.wait_for(
            lambda: self.metric("shopping_guide_routing_generation") >= generation, timeout
        )

    def wait_read(self, generation: int, timeout: float = 30.0) -> None:
        """Until every worker process has read the routing of `generation`, whether or not
        its versions loaded (a canary that fails to load holds the generation back)."""
        self.wait_for(
            lambda: self.metric("shopping_guide_routing_generation_read") >= generation, timeout
        )

    def wait_for(self, check: Any, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; server log:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)


@pytest.fixture
def server(models: Models, tmp_path: Path) -> Iterator[Server]:
    routing = RoutingDir(tmp_path / "routing")
    routing.write({"stable": models.als, "canary": None, "salt": "s1", "generation": 1})
    port, metrics_port = free_port(), free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "SHOPPING_GUIDE_NAME": GUIDE}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "shopping_guide.cli", "serve", "--model-store",
             str(models.store), "--routing", str(routing.path), "--host", "127.0.0.1",
             "--port", str(port), "--metrics-port", str(metrics_port),
             "--reload-interval", "0.2", "--shutdown-timeout", "5"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    srv = Server(
        f"http://127.0.0.1:{port}", process, routing, models, log,
        metrics_url=f"http://127.0.0.1:{metrics_port}",
    )  # fmt: skip
    try:
        srv.wait_for(lambda: _ready(srv))
        yield srv
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def _ready(srv: Server) -> bool:
    if srv.process.poll() is not None:
        raise AssertionError(f"server exited:\n{srv.log.read_text()}")
    try:
        return srv.get("/readyz")[0] == 200
    except OSError:
        return False


def corrupt_copy(store: Path, version: str, name: str) -> str:
    """A new version whose item factors no longer match their checksum."""
    shutil.copytree(store / version, store / name)
    manifest = json.loads((store / name / "manifest.json").read_text())
    manifest["version"] = name
    (store / name / "manifest.json").write_text(json.dumps(manifest))
    target = store / name / "item_factors.npy"
    raw = bytearray(target.read_bytes())
    raw[-1] ^= 0xFF
    target.write_bytes(bytes(raw))
    return name


@contextlib.contextmanager
def running_server(
    store: Path | str, version: str, root: Path, *extra: str, canary: str | None = None
) -> Iterator[Server]:
    """A server process of its own on `store`, serving `version` (and half the users a
    `canary`); `extra` are more flags of `serve`."""
    root.mkdir(parents=True, exist_ok=True)
    routing = RoutingDir(root / "routing")
    document: dict[str, Any] = {"stable": version, "salt": "s1", "generation": 1}
    if canary is not None:
        document.update(canary=canary, canaryWeightBasisPoints=5000)
    routing.write(document)
    port = free_port()
    log = root / "server.log"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "SHOPPING_GUIDE_NAME": GUIDE}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "shopping_guide.cli", "serve", "--model-store", str(store),
             "--routing", str(routing.path), "--host", "127.0.0.1", "--port", str(port),
             "--reload-interval", "0.2", "--shutdown-timeout", "5", *extra],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    models = Models(Path(store) if isinstance(store, Path) else root, version, version)
    srv = Server(f"http://127.0.0.1:{port}", process, routing, models, log)
    try:
        srv.wait_for(lambda: _ready(srv))
        yield srv
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
