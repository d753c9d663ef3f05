"""The catalogue-aware endpoints over real HTTP: filters, profiles, the guide, forgetting."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from shopping_guide.artifacts import AUDIT_LOG, ModelStore
from shopping_guide.cli import main
from tests.conftest import two_taste_rows
from tests.server.conftest import Server, running_server


def write_catalog(path: Path) -> None:
    lines = ["item_id,title,category,price,in_stock"]
    for i in range(12):
        lines.append(
            f"a{i},Paper lantern number {i},lighting,{1 + i},{'false' if i == 3 else 'true'}"
        )
        lines.append(f"b{i},Ceramic mug number {i},kitchen,{2 + i},true")
    lines.append("a99,Glass lantern brand new,lighting,5,true")
    lines.append("b99,Glass mug with a handle,kitchen,4,true")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def hybrid_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("hybrid")
    events = root / "events.csv"
    events.write_text("user_id,item_id\n" + "".join(f"{u},{i}\n" for u, i in two_taste_rows()))
    write_catalog(root / "catalog.csv")
    store = root / "store"
    out = root / "result.json"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["train", "--events", str(events), "--catalog", str(root / "catalog.csv"),
                     "--catalog-stock-col", "in_stock", "--model-store", str(store),
                     "--algorithm", "itemknn", "--content-weight", "0.3"])  # fmt: skip
    assert code == 0
    out.write_text(buffer.getvalue())
    return store, json.loads(buffer.getvalue())["version"]


@pytest.fixture
def guide_server(hybrid_store: tuple[Path, str], tmp_path: Path) -> Iterator[Server]:
    store, version = hybrid_store
    with running_server(store, version, tmp_path / "server") as srv:
        yield srv


def test_filters_by_category_price_and_stock(guide_server: Server) -> None:
    status, body = guide_server.request("POST", "/v1/recommendations", {
        "user_id": "b-user-1", "k": 20,
        "filters": {"categories": ["lighting"], "max_price": 6,
                    "in_stock_only": True}})  # fmt: skip
    assert status == 200 and body["items"]
    ids = {i["item_id"] for i in body["items"]}
    assert ids <= {"a0", "a1", "a2", "a4", "a5", "a99"}  # lanterns up to 6, a3 out of stock
    status, body = guide_server.get("/v1/recommendations?user_id=a-user-2&categories=kitchen&k=30")
    assert {i["item_id"][0] for i in body["items"]} == {"b"}


def test_new_item_reaches_lantern_buyers(guide_server: Server) -> None:
    # Nobody bought a99 yet: only its content (a lantern) can place it above every mug.
    _, body = guide_server.get("/v1/recommendations?user_id=a-user-0&k=6")
    ids = [i["item_id"] for i in body["items"]]
    assert "a99" in ids
    titles = {i["item_id"]: i["title"] for i in body["items"]}
    assert titles["a99"] == "Glass lantern brand new"
    assert all(i.startswith("a") for i in ids[: ids.index("a99") + 1])


def test_profile(guide_server: Server) -> None:
    status, body = guide_server.get("/v1/users/a-user-4/profile")
    assert status == 200
    assert body["top_categories"][0] == {"category": "lighting", "affinity": 1.0}
    assert body["interactions"]["items"] >= 8 and len(body["top_items"]) <= 10
    assert body["cohort"] == "stable"
    status, body = guide_server.get("/v1/users/nobody/profile")
    assert status == 404 and body["error"]["code"] == "unknown_user"


def test_guide_understands_price_and_category(guide_server: Server) -> None:
    status, body = guide_server.request(
        "POST", "/v1/guide", {"query": "a paper lantern under £4.5", "user_id": "b-user-0", "k": 5}
    )
    assert status == 200, body
    assert "price <= 4.5" in body["constraints"]
    assert "category: lighting" not in body["constraints"]  # "lantern" is not a category name
    assert body["matched_words"] == ["lantern", "paper"]
    assert body["items"] and all(i["price"] <= 4.5 for i in body["items"])
    assert all("lantern" in i["matched"] for i in body["items"])
    status, body = guide_server.request(
        "POST", "/v1/guide", {"query": "lighting", "user_id": "a-user-1", "k": 3}
    )
    assert status == 200 and body["personalized"] is True
    assert "category first: lighting" in body["constraints"]
    assert all(i["item_id"].startswith("a") for i in body["items"])
    assert all("because_you_bought" in i for i in body["items"])


def test_guide_ranks_items_with_every_word_first(guide_server: Server) -> None:
    # A lantern buyer's personal score favours the glass lantern; the glass mug is what was
    # asked for, and it comes first.
    status, body = guide_server.request(
        "POST", "/v1/guide", {"query": "glass mugs", "user_id": "a-user-3", "k": 6}
    )
    assert status == 200 and body["personalized"] is True
    assert body["matched_words"] == ["glass", "mug"]
    assert body["items"][0]["item_id"] == "b99"
    assert body["items"][0]["matched"] == ["glass", "mug"]
    rest = body["items"][1:]
    assert rest and all(len(i["matched"]) == 1 for i in rest)
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_guide_understands_price_ranges_and_cheap(guide_server: Server) -> None:
    status, body = guide_server.request(
        "POST", "/v1/guide", {"query": "mug between £6 and £9", "k": 20}
    )
    assert status == 200, body
    assert body["constraints"][:2] == ["price <= 9", "price >= 6"]
    assert {i["price"] for i in body["items"]} == {6, 7, 8, 9}
    status, body = guide_server.request("POST", "/v1/guide", {"query": "cheap mugs", "k": 20})
    assert status == 200, body
    # Twelve mugs cost 2 to 13, the glass mug 4: cheap is at most their median, 7.
    assert "price <= 7.00 (cheap: the lower half of the matches)" in body["constraints"]
    assert sorted(i["price"] for i in body["items"]) == [2, 3, 4, 4, 5, 6, 7]
    assert all("mug" in i["matched"] for i in body["items"])


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"query": "   "}, "empty"),
        ({"query": "x" * 501}, "length <= 500"),
        ({"query": "quantum flux capacitor"}, "appears in the catalogue"),
        ({}, "query is required"),
    ],
)
def test_bad_guide_queries(guide_server: Server, payload: dict[str, str], message: str) -> None:
    status, body = guide_server.request("POST", "/v1/guide", payload)
    assert status == 400 and message in body["error"]["message"]


def test_forgetting_a_user(guide_server: Server, hybrid_store: tuple[Path, str]) -> None:
    """The erasure flow as the pods see it: the erasure Job rewrites the store (users by
    hash), the routing's modelsRevision rises, and the server loads the rewritten version."""
    store, version = hybrid_store
    assert not guide_server.get("/v1/recommendations?user_id=a-user-7")[1]["cold_start"]
    digest = hashlib.sha256(b"a-user-7").hexdigest()
    assert main(["forget-users", "--model-store", str(store), "--user-sha256", digest]) == 0
    guide_server.routing.write(
        {"stable": version, "salt": "s", "generation": 2, "modelsRevision": 1}
    )
    guide_server.wait_generation(2)
    _, body = guide_server.get("/v1/recommendations?user_id=a-user-7")
    assert body["cold_start"] and body["strategy"] == "popular"
    assert guide_server.get("/v1/users/a-user-7/profile")[0] == 404
    loaded = ModelStore(store).load(version)
    assert "a-user-7" not in set(loaded.user_ids) and len(loaded.user_ids) == 59
    audit = (store / AUDIT_LOG).read_text()
    assert "a-user-7" not in audit and '"forget-users"' in audit
    # No way around the operator: the server itself forgets nobody.
    assert guide_server.request("DELETE", "/v1/users/a-user-12")[0] in (404, 405)


def test_a_purchase_without_a_price_takes_the_catalogues(guide_server: Server) -> None:
    _, served = guide_server.get("/v1/recommendations?user_id=a-user-1&k=3")
    item = served["items"][0]["item_id"]
    status, body = guide_server.request("POST", "/v1/feedback", {
        "recommendation_id": served["recommendation_id"], "user_id": "a-user-1",
        "item_id": item, "event": "purchase", "quantity": 2,
    })  # fmt: skip
    assert status == 202
    written = {"a99": 5.0, "b99": 4.0} | {f"a{i}": 1.0 + i for i in range(12)}
    written |= {f"b{i}": 2.0 + i for i in range(12)}  # as write_catalog writes them
    assert body["revenue"] == pytest.approx(2 * written[item])
    assert guide_server.metric(
        "shopping_guide_revenue_total", model_version=served["model_version"]
    ) == pytest.approx(body["revenue"])
