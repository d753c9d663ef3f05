"""The training Job's arguments are ones the trainer really accepts, catalogue included."""

from __future__ import annotations

import copy
from typing import Any

from shopping_guide.cli import build_parser
from shopping_guide_operator.builders.training import trainer_args
from shopping_guide_operator.spec import Guide
from tests.unit.operator.conftest import BASE


def guide(**data: Any) -> Guide:
    body = copy.deepcopy(BASE)
    body["spec"]["data"].update(data)
    return Guide.parse(body)


def test_online_retail_options_reach_the_trainer() -> None:
    args = trainer_args(
        guide(
            excludeItems=["POST", "BANK CHARGES"],
            catalog={
                "fromEvents": {"title": "Description", "price": "UnitPrice"},
                "contentWeight": 0.25,
            },
            minUserItems=5,
        ),
        champion="v1",
    )
    parsed = build_parser().parse_args(args)
    assert parsed.exclude_items == "POST,BANK CHARGES"
    assert parsed.catalog_from_events == "Description,UnitPrice"
    assert parsed.content_weight == 0.25
    assert parsed.min_user_items == 5
    assert parsed.champion == "v1" and parsed.protect == ["v1"]


def test_without_a_catalogue_no_catalogue_flags() -> None:
    args = trainer_args(guide(), champion=None)
    parsed = build_parser().parse_args(args)
    assert parsed.catalog_from_events is None and parsed.exclude_items == ""


def test_the_store_arguments_reach_the_trainer() -> None:
    body = copy.deepcopy(BASE)
    body["spec"]["model"]["pinnedVersion"] = "v0"
    args = trainer_args(Guide.parse(body), champion="v1", protect=["v2", "v1"])
    parsed = build_parser().parse_args(args)
    assert parsed.guide == "shop/storefront"
    assert parsed.protect == ["v0", "v1", "v2"]  # the pin, the champion, the list: once each
    assert str(parsed.routing) == "/etc/shopping-guide/routing/routing.json"
    assert parsed.keep == 4
