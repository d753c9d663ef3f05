"""Trending now, the fallback chain with its reasons, and merchandiser rules, over real HTTP
on a model trained with timestamps and a catalogue (categories, stock)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shopping_guide.cli import main

from .conftest import Server, running_server

END = datetime(2026, 3, 1, tzinfo=UTC)
LIGHTS = [f"l{i}" for i in range(8)]
MUGS = [f"m{i}" for i in range(8)]
TEA = [f"t{i}" for i in range(3)]
NEW = ["n0", "n1", "n2"]  # barely bought: exploration's items
CATEGORY = {
    **dict.fromkeys(LIGHTS, "lights"), **dict.fromkeys(MUGS, "mugs"),
    **dict.fromkeys(TEA, "tea"), **dict.fromkeys(NEW, "new"),
}  # fmt: skip
OUT_OF_STOCK = {"m6"}


def _at(days_ago: float) -> str:
    return (END - timedelta(days=days_ago)).strftime("%Y-%m-%d %H:%M:%S")


def shop_events() -> list[str]:
    """Light shoppers and mug shoppers, both buying tea; in the last week l7 takes off."""
    lines = ["user,item,ts"]
    for group, items in (("L", LIGHTS[:7]), ("M", MUGS)):
        for u in range(30):
            for n, item in enumerate(items):
                if n != u % len(items):
                    lines.append(f"{group}{u},{item},{_at(10 + (u + n) % 25)}")
            lines.append(f"{group}{u},{TEA[u % 3]},{_at(9 + u % 20)}")
    lines += [f"L{u},l7,{_at(12 + u)}" for u in range(4)]  # quiet before
    lines += [f"L{u},l7,{_at(0.1 + u / 5)}" for u in range(4, 30)]  # 26 this week
    lines += [f"X{n},{item},{_at(20)}" for n, item in enumerate(NEW)]
    return lines


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shop")
    (root / "events.csv").write_text("\n".join(shop_events()) + "\n")
    catalog = ["item_id,title,category,price,stock"] + [
        f"{i},{i.upper()} item,{c},{2.0 + n},{'no' if i in OUT_OF_STOCK else 'yes'}"
        for n, (i, c) in enumerate(CATEGORY.items())
    ]
    (root / "catalog.csv").write_text("\n".join(catalog) + "\n")
    store = root / "store"
    assert main(["train", "--events", str(root / "events.csv"), "--model-store", str(store),
                 "--user-col", "user", "--item-col", "item", "--time-col", "ts",
                 "--catalog", str(root / "catalog.csv"), "--catalog-stock-col", "stock",
                 "--algorithm", "als", "--param", "factors=4", "--content-weight", "0",
                 "--trending-min-count", "10"]) == 0  # fmt: skip
    return root


@pytest.fixture(scope="module")
def shop_server(shop: Path) -> Iterator[Server]:
    (version,) = [p.name for p in (shop / "store").iterdir() if p.name.startswith("v")]
    with running_server(shop / "store", version, shop / "server") as srv:
        yield srv


# Trending ---------------------------------------------------------------------------------
def test_trending_names_the_item_that_took_off_with_its_counts(shop_server: Server) -> None:
    status, body = shop_server.get("/v1/trending?k=5")
    assert status == 200, body
    first = body["items"][0]
    assert first["item_id"] == "l7" and first["title"] == "L7 item"
    assert first["recent_count"] == 26 and first["baseline_count"] == 4
    assert first["score"] > 1.5
    assert body["window_hours"] == 168.0
    assert body["window_end"].startswith("2026-02-28T")
    assert "empty_reason" not in body


def test_trending_takes_the_catalogue_filters(shop_server: Server) -> None:
    status, body = shop_server.get("/v1/trending?categories=lights&max_price=100")
    assert status == 200 and [i["item_id"] for i in body["items"]] == ["l7"]
    status, body = shop_server.get("/v1/trending?categories=mugs")
    assert status == 200 and body["items"] == [] and body["empty_reason"] == "filtered_out"
    status, body = shop_server.get("/v1/trending?k=0")
    assert status == 400 and body["error"]["code"] == "invalid_k"
    status, body = shop_server.get("/v1/trending?colour=red")
    assert status == 400 and body["error"]["code"] == "unknown_field"


def test_a_model_without_timestamps_says_it_has_no_trending_data(server: Server) -> None:
    status, body = server.get("/v1/trending")
    assert status == 200
    assert body["items"] == [] and body["empty_reason"] == "no_trending_data"
    assert body["window_end"] is None


def test_the_trainer_reports_trending_offline(shop: Path) -> None:
    (version,) = [p for p in (shop / "store").iterdir() if p.name.startswith("v")]
    manifest = json.loads((version / "manifest.json").read_text())
    found = manifest["trending"]
    assert found["items"] == 1 and found["window_hours"] == 168.0 and found["min_count"] == 10
    assert set(found["evaluation"]) >= {"next_window_per_item", "next_window_lift"}


# Reasons and the fallback chain -------------------------------------------------------------
def test_every_item_says_why_it_is_there(shop_server: Server) -> None:
    status, body = shop_server.get("/v1/recommendations?user_id=L3&k=4")
    assert status == 200, body
    assert [i["reason"] for i in body["items"]] == ["personalized"] * 4
    assert "empty_reason" not in body


def test_a_stranger_gets_trending_items_first_then_popular_ones(shop_server: Server) -> None:
    status, body = shop_server.get("/v1/recommendations?user_id=nobody&k=4")
    assert status == 200 and body["strategy"] == "popular"
    assert body["items"][0] == {**body["items"][0], "item_id": "l7", "reason": "trending"}
    assert [i["reason"] for i in body["items"][1:]] == ["popular"] * 3


def test_an_empty_list_says_why(shop_server: Server) -> None:
    status, body = shop_server.get("/v1/recommendations?user_id=L3&categories=furniture")
    assert status == 200 and body["items"] == [] and body["empty_reason"] == "filtered_out"


# Rules from the routing document ------------------------------------------------------------
def test_rules_in_the_routing_apply_without_a_restart(shop_server: Server) -> None:
    version = shop_server.models.als
    base = {"stable": version, "salt": "s1"}
    _, before = shop_server.get("/v1/recommendations?user_id=M2&k=5")
    assert "t0" not in [i["item_id"] for i in before["items"][:1]]
    rules = [
        {"type": "pin", "item": "t0", "position": 1},
        {"type": "hideOutOfStock"},
        {"type": "diversity", "maxPerCategory": 3},
    ]
    shop_server.routing.write(
        {**base, "generation": 2, "merchandising": {"rules": rules, "exploration": {"share": 0.2}}}
    )

    shop_server.wait_generation(2)
    body = shop_server.get("/v1/recommendations?user_id=M2&k=5")[1]
    items = body["items"]
    assert items[0]["reason"] == "pinned"
    assert "m6" not in [i["item_id"] for i in items]  # out of stock
    assert sum(1 for i in items if i["item_id"].startswith("m")) <= 3
    assert items[-1]["reason"] == "exploration"
    # Batches follow the same rules.
    batch = shop_server.request("POST", "/v1/recommendations:batch", {"user_ids": ["M2"], "k": 5})[
        1
    ]
    assert batch["results"][0]["items"] == items
    assert shop_server.process.poll() is None  # the same process, never restarted
    shop_server.routing.write({**base, "generation": 3})
    # Rules gone from the routing: the model's own list again.
    shop_server.wait_for(
        lambda: shop_server.get("/v1/recommendations?user_id=M2&k=5")[1]["items"] == before["items"]
    )


def test_a_routing_with_bad_rules_is_refused_and_serving_goes_on(shop_server: Server) -> None:
    version = shop_server.models.als
    shop_server.routing.write({"stable": version, "salt": "s1", "generation": 4,
                               "merchandising": {"rules": [{"type": "shuffle"}]}})  # fmt: skip
    shop_server.wait_for(
        lambda: "rules[0].type" in (shop_server.get("/readyz")[1]["routing_error"] or "")
    )
    status, body = shop_server.get("/v1/recommendations?user_id=M2&k=3")
    assert status == 200 and len(body["items"]) == 3
