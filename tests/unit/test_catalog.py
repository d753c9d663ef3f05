"""The catalogue, content similarity and the hybrid model, including brand-new items."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from shopping_guide.artifacts import ModelStore
from shopping_guide.catalog import Catalog, CatalogSchema, load_catalog
from shopping_guide.cli import main
from shopping_guide.content import build_text_index, content_similarity, tokenize
from shopping_guide.errors import DataError

CATALOG = """item_id,title,category,price,in_stock
a1,Red paper lantern,lighting|garden,4.5,true
a2,Blue paper lantern,lighting,5.0,true
b1,Ceramic coffee mug,kitchen,3.0,false
b2,Ceramic tea mug,kitchen,2.5,true
"""


def test_load_catalog_with_categories_price_and_stock(
    write_file: Callable[[str, str], Path],
) -> None:
    catalog = load_catalog(write_file("c.csv", CATALOG), CatalogSchema(stock_col="in_stock"))
    assert list(catalog.item_ids) == ["a1", "a2", "b1", "b2"]
    assert catalog.categories_of(0) == ["lighting", "garden"]
    assert catalog.price.tolist() == [4.5, 5.0, 3.0, 2.5]
    assert catalog.in_stock.tolist() == [True, True, False, True]


def test_duplicate_items_and_missing_columns_are_clear_errors(
    write_file: Callable[[str, str], Path],
) -> None:
    with pytest.raises(DataError, match="'a1' is listed more than once"):
        load_catalog(write_file("d.csv", CATALOG + "a1,again,x,1,true\n"), CatalogSchema())
    with pytest.raises(DataError, match="missing column 'title'"):
        load_catalog(write_file("m.csv", "item_id,name\na,b\n"), CatalogSchema())


def test_tokenize_is_columnar_and_drops_stopwords() -> None:
    import pyarrow as pa

    tokens, parents = tokenize(pa.array(["The RED lantern, set of 2!", None]))
    assert tokens.to_pylist() == ["red", "lantern"]
    assert parents.tolist() == [0, 0]


def test_content_similarity_links_items_that_share_words(
    write_file: Callable[[str, str], Path],
) -> None:
    catalog = load_catalog(write_file("c.csv", CATALOG), CatalogSchema())
    index = build_text_index(catalog)
    similar = content_similarity(index, neighbours=1).toarray()
    assert similar.argmax(axis=1).tolist() == [1, 0, 3, 2]
    assert np.diag(similar).max() == 0
    scores, matched = index.scores("paper lanterns and a lantern")
    assert matched == ["lantern", "paper"]
    assert scores.argmax() in (0, 1) and scores[2] == 0


def test_reindex_keeps_metadata_and_blanks_unknown_items(
    write_file: Callable[[str, str], Path],
) -> None:
    catalog = load_catalog(write_file("c.csv", CATALOG), CatalogSchema())
    again = catalog.reindex(np.array(["b2", "zz", "a1"]))
    assert again.titles.tolist() == ["Ceramic tea mug", "", "Red paper lantern"]
    assert np.isnan(again.price[1]) and again.categories_of(1) == []
    assert sorted(again.categories_of(2)) == ["garden", "lighting"]


def test_attributes_are_kept_for_serving_and_match_case_insensitively(
    write_file: Callable[[str, str], Path],
) -> None:
    text = (
        "item_id,title,attributes\n"
        'a1,Red lantern,"{""colour"": ""Red"", ""brand"": ""Acme""}"\n'
        "a2,Blue lantern,colour=blue; brand = acme\n"
        "b1,Mug,\n"
    )
    catalog = load_catalog(
        write_file("a.csv", text),
        CatalogSchema(category_col=None, price_col=None, attributes_col="attributes"),
    )
    assert catalog.with_attribute("brand", ["ACME"]).tolist() == [True, True, False]
    assert catalog.with_attribute("colour", ["red", "green"]).tolist() == [True, False, False]
    # A served model has no attribute dicts, only what to_arrays kept; reindexing keeps it too.
    served = Catalog.from_arrays(catalog.to_arrays(), catalog.item_ids)
    assert served is not None and served.attributes is None
    assert served.with_attribute("colour", ["blue"]).tolist() == [False, True, False]
    again = served.reindex(np.array(["b1", "zz", "a2"]))
    assert again.with_attribute("brand", ["acme"]).tolist() == [False, False, True]


def test_a_model_saved_without_attributes_matches_none(
    write_file: Callable[[str, str], Path],
) -> None:
    arrays = load_catalog(write_file("c.csv", CATALOG), CatalogSchema()).to_arrays()
    assert not any(name.startswith("catalog_attribute") for name in arrays)
    served = Catalog.from_arrays(arrays, np.array(["a1", "a2", "b1", "b2"]))
    assert served is not None
    assert not served.with_attribute("colour", ["red"]).any()


def test_a_brand_new_item_is_recommended_and_similar_through_content(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Everyone who buys lanterns buys both; "a3" is a new lantern nobody has bought yet.
    events = tmp_path / "events.csv"
    lines = ["user_id,item_id"]
    for u in range(30):
        lines += [f"u{u},a1", f"u{u},a2"] if u % 2 else [f"u{u},b1", f"u{u},b2"]
    events.write_text("\n".join(lines) + "\n")
    catalog = tmp_path / "catalog.csv"
    catalog.write_text(CATALOG + "a3,Green paper lantern,lighting,4.0,true\n")
    store = tmp_path / "models"
    code = main(["train", "--events", str(events), "--catalog", str(catalog), "--model-store",
                 str(store), "--algorithm", "itemknn", "--content-weight", "0.5"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["data"]["items"] == 5
    assert set(result["hybrid"]) >= {"collaborative", "cold_items", "content_weight"}
    loaded = ModelStore(store).load(result["version"])
    assert Catalog.from_arrays(loaded.extras, loaded.item_ids) is not None
    model, names = loaded.model, loaded.item_ids
    lanterns = np.array([i for i, u in enumerate(loaded.user_ids) if int(u[1:]) % 2])
    mugs = np.array([i for i, u in enumerate(loaded.user_ids) if not int(u[1:]) % 2])
    # The new lantern reaches every lantern buyer's top two (beside a held-out lantern)...
    ids, _ = model.recommend(lanterns, model.user_items[lanterns], 2)
    assert all("a3" in names[row] for row in ids)
    # ... and no mug buyer's first place.
    ids, _ = model.recommend(mugs, model.user_items[mugs], 1)
    assert "a3" not in set(names[ids[:, 0]])


def test_tuning_chooses_the_content_weight_on_the_validation_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.csv"
    lines = ["user_id,item_id"]
    for u in range(40):
        lines += [f"u{u},a1", f"u{u},a2"] if u % 2 else [f"u{u},b1", f"u{u},b2"]
    events.write_text("\n".join(lines) + "\n")
    catalog = tmp_path / "catalog.csv"
    catalog.write_text(CATALOG + "a3,Green paper lantern,lighting,4.0,true\n")
    code = main(["train", "--events", str(events), "--catalog", str(catalog), "--model-store",
                 str(tmp_path / "m"), "--algorithm", "itemknn", "--content-weight", "0.3",
                 "--tune", "--tune-trials", "2"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    tuned = result["tuning"]["content_weight"]
    assert set(tuned["validation"]) == {"0.3", "0", "0.1", "0.2", "0.5", "0.7"}
    best = max(tuned["validation"].values())
    assert tuned["validation"][f"{tuned['chosen']:g}"] == best
    # The given weight is the first candidate: kept unless another one beats it.
    assert tuned["chosen"] == 0.3 or tuned["validation"]["0.3"] < best
    assert result["hybrid"]["content_weight"] == tuned["chosen"]
