"""Bought together and basket completion over real HTTP, on a model trained with baskets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shopping_guide.cli import main

from .conftest import Server, running_server

# Orders of three sets; shoppers buy across sets, so only the orders say what goes together.
SETS = [["lamp", "shade", "bulb"], ["pen", "ink", "nib"], ["cup", "saucer", "spoon"]]
CATALOG = {"lamp": 30.0, "shade": 12.0, "bulb": 3.0, "pen": 9.0, "ink": 4.0, "nib": 2.0,
           "cup": 6.0, "saucer": 5.0, "spoon": 1.0, "rug": 80.0}  # fmt: skip


@pytest.fixture(scope="module")
def basket_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("baskets")
    lines = ["order,user,item,title,price"]
    for order in range(240):
        for n, item in enumerate(SETS[order % 3]):
            if (order + n) % 5:  # most orders hold the whole set
                lines.append(f"o{order},u{order % 37},{item},{item.title()},{CATALOG[item]}")
    lines += [f"r{n},u{n},rug,Rug,80.0" for n in range(60)]  # the bestseller, bought alone
    (root / "events.csv").write_text("\n".join(lines) + "\n")
    store = root / "store"
    assert main(["train", "--events", str(root / "events.csv"), "--model-store", str(store),
                 "--user-col", "user", "--item-col", "item", "--basket-col", "order",
                 "--catalog-from-events", "title,price", "--algorithm", "als",
                 "--param", "factors=4"]) == 0  # fmt: skip
    (version,) = [p.name for p in store.iterdir() if p.name.startswith("v")]
    with running_server(store, version, root / "server") as srv:
        yield srv


def test_bought_together_names_the_items_of_the_same_orders(basket_server: Server) -> None:
    status, body = basket_server.get("/v1/items/lamp/bought-together?k=4")
    assert status == 200, body
    items = body["items"]
    assert [i["source"] for i in items[:2]] == ["bought_together"] * 2
    assert {i["item_id"] for i in items[:2]} == {"shade", "bulb"}
    assert items[0]["title"] in ("Shade", "Bulb")
    # The rest of the slots are still filled, by the next source, never with lamp itself.
    assert len(items) == 4 and "lamp" not in {i["item_id"] for i in items}
    assert all(i["source"] != "bought_together" for i in items[2:])


def test_a_basket_is_completed_from_all_its_items_within_the_filters(
    basket_server: Server,
) -> None:
    status, body = basket_server.request(
        "POST", "/v1/baskets:complete", {"items": ["pen", "ink", "mystery"], "k": 3}
    )
    assert status == 200, body
    assert body["items"][0] == {**body["items"][0], "item_id": "nib", "source": "bought_together"}
    assert body["unknown_items"] == ["mystery"]
    cheap = {"items": ["cup"], "k": 5, "filters": {"max_price": 5.5}}
    status, body = basket_server.request("POST", "/v1/baskets:complete", cheap)
    assert status == 200
    assert [i["item_id"] for i in body["items"][:2]] == ["saucer", "spoon"]
    assert all(CATALOG[i["item_id"]] <= 5.5 for i in body["items"])
    assert len(body["items"]) == 5  # other sources fill what bought-together leaves


def test_basket_mistakes_are_clear(basket_server: Server) -> None:
    status, body = basket_server.get("/v1/items/nothing/bought-together")
    assert status == 404 and body["error"]["code"] == "unknown_item"
    status, body = basket_server.request("POST", "/v1/baskets:complete", {"items": []})
    assert status == 400 and "items" in body["error"]["message"]
    status, body = basket_server.request(
        "POST", "/v1/baskets:complete", {"items": ["pen"], "cart": ["x"]}
    )
    assert status == 400 and body["error"]["code"] == "unknown_field"
