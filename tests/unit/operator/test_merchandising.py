"""spec.serving.rules and exploration reach every pod through the routing document; a change
rewrites the ConfigMap only, never the pods' template (so nothing restarts)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from shopping_guide_contracts.routing import parse
from shopping_guide_operator.builders.training import trainer_args
from shopping_guide_operator.spec import SpecError

from .conftest import BASE
from .fake_cluster import FakeCluster
from .test_builders import MakeGuide
from .test_reconcile import NAME, NS, T0, _promote_v1, run

RULES: list[dict[str, Any]] = [
    {"type": "pin", "item": "85123A", "position": 1, "until": "2026-12-24T00:00:00Z"},
    {"type": "noRepurchase", "repeatableCategories": ["tea"]},
    {"type": "diversity", "maxPerCategory": 3},
]


@pytest.fixture
def world() -> FakeCluster:
    cluster = FakeCluster()
    cluster.put(copy.deepcopy(BASE))
    return cluster


def _document(world: FakeCluster) -> dict[str, Any]:
    configmap = world.get("ConfigMap", NS, "storefront-routing")
    assert configmap is not None
    document: dict[str, Any] = json.loads(configmap["data"]["routing.json"])
    return document


def _template(world: FakeCluster) -> Any:
    deployment = world.get("Deployment", NS, NAME)
    assert deployment is not None
    return copy.deepcopy(deployment["spec"]["template"])


def test_rules_land_in_the_routing_and_a_change_touches_nothing_else(world: FakeCluster) -> None:
    _promote_v1(world)
    assert "merchandising" not in _document(world)
    before, template = _document(world), _template(world)
    spec = world.objects[("ShoppingGuide", NS, NAME)]["spec"]
    spec.setdefault("serving", {}).update(rules=RULES, exploration={"share": 0.1})
    run(world, T0 + 40)
    document = _document(world)
    routing = parse(json.dumps(document))
    assert [rule.type for rule in routing.merchandising.rules] == [
        "pin",
        "noRepurchase",
        "diversity",
    ]
    assert routing.merchandising.exploration_share == 0.1
    assert document["merchandising"]["rules"][0]["item"] == "85123A"
    # The same models and generation: only the rules changed, and the pods were not touched.
    assert {k: v for k, v in document.items() if k != "merchandising"} == before
    assert _template(world) == template
    spec["serving"].pop("rules")
    spec["serving"].pop("exploration")
    run(world, T0 + 50)
    assert "merchandising" not in _document(world)


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([{"type": "pin", "position": 1}], "serving.rules[0]: a pin names its item"),
        ([{"type": "promote", "match": {"categories": ["mugs"]}}], "rules[0].share"),
        ([{"type": "bury"}], "bury needs match"),
    ],
)
def test_bad_rules_are_a_spec_error(make_guide: MakeGuide, rules: Any, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        make_guide({"serving": {"rules": rules}})
    assert message in str(caught.value)


def test_the_trending_window_goes_to_the_trainer(make_guide: MakeGuide) -> None:
    assert not any(a.startswith("--trending") for a in trainer_args(make_guide(), None))
    guide = make_guide({"serving": {"trending": {"windowHours": 48, "minCount": 20}}})
    args = trainer_args(guide, None)
    assert args[args.index("--trending-window-hours") + 1] == "48"
    assert args[args.index("--trending-min-count") + 1] == "20"
    assert "--trending-baseline-hours" not in args
