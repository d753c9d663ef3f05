"""Every command README.md shows is run by something, so the README cannot drift from the
product: a make target that exists, a command the demo runs (hack/demo.py's SHOWN), or a
command listed here with the tests that run it. The README's training and serving commands
are run here, as written."""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import ModuleType

import pytest

from shopping_guide.cli import main
from tests.conftest import two_taste_rows
from tests.server.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"

# Commands that neither a make target nor the demo runs, and the tests that run them. A README
# command that is in none of the three fails test_every_readme_command_is_run_by_something.
RUN_BY_TESTS: dict[str, tuple[str, ...]] = {
    # podman builds the same Dockerfiles (hack/images.sh); docker's CLI takes the same flags.
    "docker build -f recommender_image/Dockerfile -t REGISTRY/shopping-guide/recommender:0.1.0 .": (
        "tests/images/test_recommender_image.py::test_metadata_user_and_size",
    ),
    "docker build -f operator/Dockerfile -t REGISTRY/shopping-guide/operator:0.1.0 .": (
        "tests/images/test_operator_image.py::test_metadata_user_and_size",
    ),
    "helm install shopping-guide charts/shopping-guide -n shopping-guide-system "
    "--create-namespace --set image.repository=REGISTRY/shopping-guide/operator": (
        "tests/e2e/test_product.py::test_the_operator_runs_from_its_image_under_the_charts_service_account",
    ),
    "kubectl apply -f examples/storefront.yaml": (
        "tests/e2e/test_crd_validation.py::test_the_examples_are_accepted",
    ),
    **{
        f"kubectl shoppingguide {action} storefront -n shop": (
            "tests/unit/test_plugin.py::test_actions_set_their_annotation_to_a_fresh_value",
        )
        for action in ("promote", "abort", "retry", "retrain")
    },
    "kubectl shoppingguide rollback storefront --to v20261128-101500-3fa2c1 -n shop": (
        "tests/unit/test_plugin.py::test_rollback_names_the_version",
    ),
    "kubectl shoppingguide forget storefront 12748 17850 -n shop": (
        "tests/unit/test_plugin.py::test_forget_sends_only_hashes_of_the_user_ids",
    ),
    "shopping-guide train --events events.csv.gz --model-store ./models --user-col user_id "
    "--item-col item_id --event-col event --event-weight view=1,cart=4,purchase=10 "
    "--algorithm als --tune": ("tests/unit/test_readme.py::test_the_training_command_trains",),
    "shopping-guide serve --model-store ./models --routing routing.json --port 8080": (
        "tests/unit/test_readme.py::test_the_serving_command_serves",
    ),
}


def code_blocks(markdown: str) -> list[list[str]]:
    """The lines of each code block: indented by four spaces after a blank line, or fenced."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    fenced = False
    previous_blank = True
    for line in markdown.splitlines():
        if line.startswith("```"):
            if fenced:
                blocks.append(current or [])
                current, fenced = None, False
            else:
                current, fenced = [], True
        elif fenced:
            assert current is not None
            current.append(line)
        elif line.startswith("    ") and (current is not None or previous_blank):
            current = current if current is not None else []
            current.append(line[4:])
        elif current is not None and not line.strip():
            current.append("")
        else:
            if current:
                blocks.append(current)
            current = None
        previous_blank = not line.strip()
    if current:
        blocks.append(current)
    return blocks


def commands(markdown: str) -> list[str]:
    """Each shell command of the code blocks, continuation lines joined, comments dropped,
    spaced as shlex reads it."""
    out: list[str] = []
    for block in code_blocks(markdown):
        text = re.sub(r"\\\n\s*", " ", "\n".join(block))
        for line in text.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                out.append(shlex.join(words))
    return out


def make_targets() -> set[str]:
    targets: set[str] = set()
    for path in (REPO / "Makefile", *REPO.glob("hack/*.mk")):
        targets |= set(re.findall(r"^([A-Za-z0-9][\w.-]*):", path.read_text(), re.M))
    return targets


def demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo", REPO / "hack" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def unrun(command: str, targets: set[str], shown: set[str]) -> str | None:
    """Why nothing runs `command`, or None."""
    words = shlex.split(command)
    if words[0] == "make":
        missing = [w for w in words[1:] if not w.startswith("-") and w not in targets]
        return f"no make target {missing}" if missing else None
    if command in shown or command in RUN_BY_TESTS:
        return None
    return "neither a make target, nor in hack/demo.py's SHOWN, nor in RUN_BY_TESTS"


def test_every_readme_command_is_run_by_something() -> None:
    found = commands(README.read_text())
    assert len(found) >= 15, found  # the parser sees the README's code blocks
    shown = {shlex.join(shlex.split(line)) for line in demo().SHOWN}
    problems = [f"{c}: {why}" for c in found if (why := unrun(c, make_targets(), shown))]
    assert not problems, "README commands nobody runs:\n" + "\n".join(problems)


def test_a_new_readme_command_that_nothing_runs_fails() -> None:
    text = README.read_text() + "\n\n    kubectl shoppingguide pause storefront -n shop\n"
    shown = {shlex.join(shlex.split(line)) for line in demo().SHOWN}
    new = commands(text)[-1]
    assert new == "kubectl shoppingguide pause storefront -n shop"
    assert unrun(new, make_targets(), shown) is not None
    assert unrun("make demo-down", make_targets(), shown) is None
    assert unrun("make no-such-target", make_targets(), shown) is not None


def test_code_blocks_join_continuations_and_drop_comments() -> None:
    text = (
        "Intro:\n\n    make a   # the first\n    # a comment line\n    tool run \\\n"
        "        --flag 'two words'\n\nprose with    four spaces\n\n```\nfenced --x\n```\n"
    )
    assert commands(text) == ["make a", "tool run --flag 'two words'", "fenced --x"]


def test_every_named_test_exists() -> None:
    for tests in RUN_BY_TESTS.values():
        for name in tests:
            path, _, function = name.partition("::")
            source = (REPO / path).read_text()
            assert re.search(rf"^def {function}\(", source, re.M), f"{name} does not exist"


def test_the_demo_runs_its_shown_commands_with_the_clusters_kubectl() -> None:
    module = demo()
    cluster = module.Cluster(Path("/state/kubeconfig"), Path("/cache/bin"), {})
    assert module.shown_argv("kubectl shoppingguide status storefront -n shop", cluster) == [
        "/cache/bin/kubectl", "shoppingguide", "status", "storefront", "-n", "shop",
        "--kubeconfig", "/state/kubeconfig",
    ]  # fmt: skip
    assert {shlex.split(line)[0] for line in module.SHOWN} == {"kubectl"}


def readme_command(prefix: str) -> list[str]:
    (command,) = [c for c in commands(README.read_text()) if c.startswith(prefix)]
    return shlex.split(command)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """The README's training command, as written, in a directory with an events.csv.gz."""
    root = tmp_path_factory.mktemp("readme")
    kinds = ["view", "cart", "purchase"]
    rows = [f"{u},{i},{kinds[n % 3]}" for n, (u, i) in enumerate(two_taste_rows(12, 6))]
    with gzip.open(root / "events.csv.gz", "wt") as out:
        out.write("user_id,item_id,event\n" + "\n".join(rows) + "\n")
    argv = readme_command("shopping-guide train")
    buffer = io.StringIO()
    cwd = Path.cwd()
    os.chdir(root)
    try:
        with contextlib.redirect_stdout(buffer):
            code = main(argv[1:])
    finally:
        os.chdir(cwd)
    assert code == 0
    return root, json.loads(buffer.getvalue())


def test_the_training_command_trains(trained: tuple[Path, dict[str, object]]) -> None:
    root, result = trained
    assert result["algorithm"] == "als" and "tuning" in result
    assert (root / "models" / str(result["version"]) / "manifest.json").exists()


def test_the_serving_command_serves(trained: tuple[Path, dict[str, object]]) -> None:
    """The README's serving command on a free port of 127.0.0.1 rather than 8080 on every
    interface: other servers may hold 8080 on this machine."""
    root, result = trained
    (root / "routing.json").write_text(json.dumps({"stable": result["version"], "salt": "s"}))
    argv = readme_command("shopping-guide serve")
    port = free_port()
    argv[argv.index("--port") + 1] = str(port)
    process = subprocess.Popen(
        [sys.executable, "-m", "shopping_guide.cli", *argv[1:], "--host", "127.0.0.1"],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert process.poll() is None, "the server exited"
                assert time.monotonic() < deadline, "the server did not get ready"
                time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/v1/recommendations?user_id=a-user-1&k=3"
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
        assert body["model_version"] == result["version"] and len(body["items"]) == 3
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
