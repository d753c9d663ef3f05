"""What a training run may prune, from the operator's Job arguments to the trainer's pruning:
never what the guide may still route or roll back to, never another guide's versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shopping_guide.algorithms import fit
from shopping_guide.artifacts import ModelStore
from shopping_guide.cli import main
from shopping_guide.events import EventSchema, load_events
from shopping_guide.interactions import build_interactions
from shopping_guide_operator.builders.training import (
    build_cronjob,
    build_job,
    protected_versions,
)
from shopping_guide_operator.spec import Guide
from tests.conftest import two_taste_rows
from tests.unit.operator.conftest import BASE, deep_merge

STATUS: dict[str, Any] = {
    "stable": {"version": "v-stable"},
    "canary": {"version": "v-canary", "weight": 10},
    "lastCanary": {"version": "v-retry", "phase": "RolledBack"},
    "routing": {"stable": "v-pinned", "canary": "v-canary"},
    "history": [
        {"version": "v-canary", "outcome": "Canary"},
        {"version": "v-restored", "outcome": "Restored"},
        {"version": "v-rejected", "outcome": "Rejected"},
        {"version": "v-promoted", "outcome": "Promoted"},
        {"version": "v-stable", "outcome": "Promoted"},
    ],
}
PROTECTED = [
    "v-canary", "v-pinned", "v-promoted", "v-restored", "v-retry", "v-stable",
]  # fmt: skip


def guide(**spec: Any) -> Guide:
    return Guide.parse(deep_merge(BASE, {"spec": spec}))


def args_of(manifest: dict[str, Any]) -> list[str]:
    pod = manifest["spec"]["template"]["spec"]
    return list(pod["containers"][0]["args"])


def test_the_pin_canary_and_every_version_once_stable_are_protected() -> None:
    pinned = guide(model={"pinnedVersion": "v-pinned"})
    assert protected_versions(pinned, STATUS) == PROTECTED
    # The pin is the spec's: protected even before any status.
    assert protected_versions(pinned, None) == ["v-pinned"]
    args = args_of(build_job(pinned, "abcdef0123456789", 0, "initial", "v-stable", STATUS))
    protect = [args[i + 1] for i, a in enumerate(args) if a == "--protect"]
    assert protect == PROTECTED
    assert args[args.index("--guide") + 1] == "shop/storefront"
    assert args[args.index("--routing") + 1] == "/etc/shopping-guide/routing/routing.json"


def test_the_cronjob_protects_what_the_status_names_at_each_pass() -> None:
    scheduled = guide(training={"schedule": "0 */6 * * *"})
    before = build_cronjob(scheduled, "v-stable", {"stable": {"version": "v-stable"}})
    after = build_cronjob(scheduled, "v-stable", STATUS)
    assert before is not None and after is not None
    template = after["spec"]["jobTemplate"]
    assert args_of(before["spec"]["jobTemplate"]) != args_of(template)  # so it is re-applied
    assert {"v-restored", "v-promoted", "v-canary"} <= set(args_of(template))
    pod = template["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["routing"]["configMap"] == {"name": "storefront-routing", "optional": True}


def _events(tmp_path: Path) -> Path:
    path = tmp_path / "events.csv"
    rows = "".join(f"{u},{i},purchase\n" for u, i in two_taste_rows())
    path.write_text("user_id,item_id,event\n" + rows)
    return path


def _as_run_here(args: list[str], tmp_path: Path, events: Path) -> list[str]:
    """The Job's arguments with the pod's paths replaced by local ones."""
    paths = {
        "/data/exports/interactions.csv": str(events),
        "/models": str(tmp_path / "models"),
        "/etc/shopping-guide/routing/routing.json": str(tmp_path / "routing.json"),
        "/dev/termination-log": str(tmp_path / "termination-log"),
    }
    out = [paths.get(a, a) for a in args]
    assert out.count(str(tmp_path / "models")) == 1
    return [*out, "--param", "iterations=2"]


def test_a_run_with_keep_1_prunes_only_what_no_one_may_route(tmp_path: Path) -> None:
    events = _events(tmp_path)
    data = build_interactions(
        load_events(events, EventSchema(event_col="event", event_weights={"purchase": 1.0}))
    )
    model = fit("itemknn", {"neighbours": 5}, data.matrix, 0)
    root = tmp_path / "models"
    mine = ModelStore(root, "shop/storefront")
    names = ["v-old", *PROTECTED, "v-rejected"]
    for name in names:
        mine.write(model, data.user_ids, data.item_ids, {}, name)
    # The same guide name in another namespace, and a flat version of the earlier release.
    twin = ModelStore(root, "outlet/storefront")
    twin.write(model, data.user_ids, data.item_ids, {}, "v-twin-stable")
    ModelStore(root).write(model, data.user_ids, data.item_ids, {}, "v-flat")
    (tmp_path / "routing.json").write_text(
        json.dumps({"schema": 1, "stable": "v-old", "canary": None, "generation": 3})
    )

    pinned = guide(model={"pinnedVersion": "v-pinned"}, modelStore={"keep": 1})
    status = {**STATUS, "routing": {}, "lastCanary": None}
    job = build_job(pinned, "abcdef0123456789", 0, "initial", "v-stable", status)
    assert main(_as_run_here(args_of(job), tmp_path, events)) == 0

    result = json.loads((tmp_path / "termination-log").read_text())
    assert result["champion"]["version"] == "v-stable"
    kept = set(mine.versions())
    # Gone: never stable, not routed. Kept: the new version, what the operator named, and
    # v-old, routed by the routing file when the run pruned though the status never said so.
    assert kept == {result["version"], "v-old", *PROTECTED} - {"v-retry"}
    assert twin.versions() == ["v-twin-stable"]
    assert ModelStore(root).versions() == ["v-flat"]


def test_an_unreadable_routing_file_stops_pruning(tmp_path: Path) -> None:
    events = _events(tmp_path)
    data = build_interactions(
        load_events(events, EventSchema(event_col="event", event_weights={"purchase": 1.0}))
    )
    model = fit("itemknn", {"neighbours": 5}, data.matrix, 0)
    store = ModelStore(tmp_path / "models", "shop/a")
    for name in ("v1", "v2", "v3"):
        store.write(model, data.user_ids, data.item_ids, {}, name)
    routing = tmp_path / "routing.json"
    routing.write_text("{not json")
    assert store.prune(1, routing=routing) == []
    routing.unlink()  # no routing yet: nothing routed
    assert store.prune(1, routing=routing) == ["v1", "v2"]


@pytest.mark.parametrize("value", ["v1,v2", "v1, v2,"])
def test_protect_takes_a_list(value: str, tmp_path: Path) -> None:
    from shopping_guide.cli import _versions, build_parser

    parsed = build_parser().parse_args(
        ["train", "--events", "e.csv", "--model-store", "m", "--protect", value, "--protect", "v3"]
    )
    assert _versions(parsed.protect) == ["v1", "v2", "v3"]
