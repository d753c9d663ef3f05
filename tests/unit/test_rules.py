"""Merchandiser rules, the fallback chain and exploration, on a model whose ranking is known:
every user ranks i0, i1, i2, ... in that order (one factor, falling with the index)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from shopping_guide.artifacts import LoadedModel
from shopping_guide.catalog import Catalog
from shopping_guide.model import Model
from shopping_guide.serving import fallback
from shopping_guide.serving.scorer import Filters, Query, Ranked, ServingModel
from shopping_guide_contracts.merchandising import Merchandising, MerchandisingError, parse

N_ITEMS, N_USERS = 20, 10
# Even items lights, odd items tea, the last four mugs; i3 is out of stock.
CATEGORY = ["lights" if i % 2 == 0 else "tea" for i in range(16)] + ["mugs"] * 4
# i6 and i9 are red (spelt two ways), i8 is Acme's.
ATTRIBUTES = {6: {"colour": "Red"}, 8: {"brand": "Acme", "colour": "blue"}, 9: {"colour": "red"}}


def _model() -> ServingModel:
    rows, cols = [0, 0], [0, 1]  # u0 bought i0 (lights) and i1 (tea)
    for user in range(1, N_USERS):  # i10 is bought by 9 users, i11 by 8, ... i18 by 1
        for item in range(10, 10 + N_USERS - user):
            rows.append(user)
            cols.append(item)
    history = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), (N_USERS, N_ITEMS))
    model = Model.from_factors(
        "als",
        {"regularization": 0.1, "alpha": 1.0},
        np.ones((N_USERS, 1), np.float32),
        np.arange(N_ITEMS, 0, -1, dtype=np.float32).reshape(-1, 1),
        history,
    )
    names = np.array(["lights", "tea", "mugs"])
    item_ids = np.array([f"i{i}" for i in range(N_ITEMS)])
    catalog = Catalog(
        item_ids=item_ids,
        titles=item_ids,
        categories=sp.csr_matrix(
            (
                np.ones(N_ITEMS, np.float32),
                (np.arange(N_ITEMS), [list(names).index(c) for c in CATEGORY]),
            ),
            shape=(N_ITEMS, len(names)),
        ),
        category_names=names,
        attributes=[ATTRIBUTES.get(i, {}) for i in range(N_ITEMS)],
        price=np.ones(N_ITEMS, np.float32),
        in_stock=np.array([i != 3 for i in range(N_ITEMS)]),
    )
    loaded = LoadedModel(
        "v-test", Path("/nonexistent"), {}, model,
        np.array([f"u{u}" for u in range(N_USERS)]), item_ids, catalog.to_arrays(),
    )  # fmt: skip
    return ServingModel(loaded, ann_min_items=None)


@pytest.fixture(scope="module")
def model() -> ServingModel:
    return _model()


def ask(model: ServingModel, *rules: dict[str, Any], k: int = 5, **query: Any) -> Ranked:
    policy = parse({"rules": list(rules)}) if rules else None
    return model.recommend_many(
        [Query(query.pop("user_id", "u0"), k, merchandising=policy, **query)]
    )[0]


def ids(ranked: Ranked) -> list[str]:
    return ranked.item_ids


def test_without_rules_the_list_is_the_models(model: ServingModel) -> None:
    ranked = ask(model)
    assert ids(ranked) == ["i2", "i3", "i4", "i5", "i6"]  # i0, i1 bought
    assert ranked.reasons is None and ranked.reason_of(0) == "personalized"


def test_a_pin_puts_its_item_at_its_position(model: ServingModel) -> None:
    ranked = ask(model, {"type": "pin", "item": "i15", "position": 2})
    assert ids(ranked) == ["i2", "i15", "i3", "i4", "i5"]
    assert ranked.reasons == ["personalized", "pinned", *["personalized"] * 3]
    # A pin the request's filters exclude is not shown.
    ranked = ask(model, {"type": "pin", "item": "i15", "position": 2}, filters=Filters(("lights",)))
    assert "i15" not in ids(ranked)


def test_boost_and_bury_shift_positions(model: ServingModel) -> None:
    boost = {"type": "boost", "match": {"categories": ["tea"]}, "positions": 2}
    # Each tea item overtakes two places: i3 passes i2, i5 passes i4 and lands after i2.
    assert ids(ask(model, boost)) == ["i3", "i2", "i5", "i4", "i7"]
    bury = {"type": "bury", "match": {"items": ["i2"]}}
    assert ids(ask(model, bury)) == ["i3", "i4", "i5", "i6", "i7"]
    bury_one = {"type": "bury", "match": {"items": ["i2"]}, "positions": 1}
    assert ids(ask(model, bury_one)) == ["i3", "i2", "i4", "i5", "i6"]


def test_boost_and_bury_by_catalogue_attribute(model: ServingModel) -> None:
    # Case does not matter, on either side; a served model has the attributes from its arrays.
    red = {"type": "boost", "match": {"attributes": {"COLOUR": ["RED"]}}, "positions": 10}
    assert ids(ask(model, red)) == ["i6", "i9", "i2", "i3", "i4"]
    # Any of the values, and any of the attributes, matches.
    either = {"attributes": {"colour": ["pink", "red"], "brand": ["acme"]}}
    assert ids(ask(model, {"type": "boost", "match": either, "positions": 10})) == [
        "i6", "i8", "i9", "i2", "i3",
    ]  # fmt: skip
    assert ids(ask(model, {"type": "bury", "match": {"attributes": {"colour": ["red"]}}})) == [
        "i2", "i3", "i4", "i5", "i7",
    ]  # fmt: skip
    # A value no item has matches nothing; the list is the model's.
    none = {"type": "boost", "match": {"attributes": {"colour": ["teal"]}}, "positions": 3}
    assert ids(ask(model, none)) == ids(ask(model))


def test_out_of_stock_items_are_hidden_and_the_list_still_fills(model: ServingModel) -> None:
    assert ids(ask(model, {"type": "hideOutOfStock"})) == ["i2", "i4", "i5", "i6", "i7"]


def test_what_was_bought_never_comes_back_except_repeatable_categories(
    model: ServingModel,
) -> None:
    rule = {"type": "noRepurchase", "repeatableCategories": ["tea"]}
    # u0 bought i0 (lights) and i1 (tea): the tea comes back, the light does not.
    assert ids(ask(model, rule)) == ["i1", "i2", "i3", "i4", "i5"]
    assert ids(ask(model, {"type": "noRepurchase"}, exclude_seen=False))[:1] == ["i2"]


def test_diversity_caps_each_category(model: ServingModel) -> None:
    ranked = ask(model, {"type": "diversity", "maxPerCategory": 2})
    assert ids(ranked) == ["i2", "i3", "i4", "i5", "i16"]


def test_a_promotion_takes_its_share_of_the_lowest_slots(model: ServingModel) -> None:
    rule = {"type": "promote", "match": {"categories": ["mugs"]}, "share": 0.4}
    ranked = ask(model, rule)
    assert ids(ranked) == ["i2", "i3", "i4", "i16", "i17"]
    assert ranked.reasons == [*["personalized"] * 3, "promoted", "promoted"]


def test_a_rule_only_acts_within_its_window(model: ServingModel) -> None:
    now = datetime.now(UTC)
    past, future = (now - timedelta(days=1)).isoformat(), (now + timedelta(days=1)).isoformat()
    pin = {"type": "pin", "item": "i15", "position": 1}
    assert ids(ask(model, {**pin, "until": past}))[0] == "i2"
    assert ids(ask(model, {**pin, "from": future}))[0] == "i2"
    assert ids(ask(model, {**pin, "from": past, "until": future}))[0] == "i15"


def test_the_chain_fills_a_short_list_similar_then_popular(model: ServingModel) -> None:
    query = Query("u0", 5)
    short = Ranked(["i2"], [18.0], "personalized")
    user = int(model.users.one("u0"))
    done = fallback.finish(model, query, short, model.eligible(query, user), user)
    assert done.item_ids[0] == "i2" and len(done.item_ids) == 5
    assert done.reasons == ["personalized", *["similar_to_recent"] * 4]
    assert done.because is not None and set(done.because[1:]) <= {"i0", "i1"}
    # Without anything to be similar to, the most popular eligible items fill in.
    stranger = Query("stranger", 3, filters=Filters(("mugs",)))
    cold = model.recommend_many([stranger])[0]
    assert cold.item_ids == ["i16", "i17", "i18"] and cold.reason_of(0) == "popular"


def test_an_empty_list_says_the_filters_left_nothing(model: ServingModel) -> None:
    ranked = ask(model, {"type": "hideOutOfStock"}, allow=("i3",))
    assert ranked.item_ids == [] and ranked.empty_reason == "filtered_out"


def test_exploration_gives_its_share_to_little_exposed_items_the_same_each_time(
    model: ServingModel,
) -> None:
    policy = Merchandising(exploration_share=0.2)
    query = Query("u5", 10, merchandising=policy)
    first, again = model.recommend_many([query, query])
    assert first.item_ids == again.item_ids
    assert first.reasons is not None and first.reasons[-2:] == ["exploration"] * 2
    assert first.reasons[:8] == ["personalized"] * 8
    # u5 bought i10..i13; the 8 model slots are i0..i7, so the least exposed of the rest are
    # i19 (no one), i18 (1 shopper), i17 (2), i16, i15, i14: a pool of 3 per slot.
    assert set(first.item_ids[-2:]) <= {"i19", "i18", "i17", "i16", "i15", "i14"}
    assert len(set(first.item_ids)) == 10
    # Another shopper draws from the same pool, in an order of their own.
    lists = model.recommend_many([Query(f"u{u}", 10, merchandising=policy) for u in range(6, 10)])
    others = {tuple(ranked.item_ids[-2:]) for ranked in lists}
    assert len(others) > 1


def test_batched_answers_with_rules_equal_answers_alone(model: ServingModel) -> None:
    rules = [{"type": "hideOutOfStock"}, {"type": "diversity", "maxPerCategory": 2}]
    policy = parse({"rules": rules, "exploration": {"share": 0.2}})
    queries = [Query(f"u{u}", 6, merchandising=policy) for u in range(N_USERS)]
    together = model.recommend_many(queries)
    for query, answer in zip(queries, together, strict=True):
        alone = model.recommend_many([query])[0]
        assert (alone.item_ids, alone.reasons) == (answer.item_ids, answer.reasons)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"rules": [{"type": "shuffle"}]}, "rules[0].type must be one of"),
        ({"rules": [{"type": "pin", "position": 1}]}, "a pin names its item"),
        ({"rules": [{"type": "pin", "item": "x", "position": 0}]}, "position must be an integer"),
        ({"rules": [{"type": "boost", "positions": 2}]}, "boost needs match"),
        ({"rules": [{"type": "promote", "match": {"items": ["a"]}, "share": 2}]}, "share"),
        ({"rules": [{"type": "diversity"}]}, "maxPerCategory"),
        ({"rules": [{"type": "hideOutOfStock", "from": "tomorrow"}]}, "RFC 3339"),
        ({"rules": [{"type": "hideOutOfStock", "from": "2026-01-01T00:00:00"}]}, "time zone"),
        ({"rules": [{"type": "hideOutOfStock", "from": "2026-02-01T00:00:00Z",
                     "until": "2026-01-01T00:00:00Z"}]}, "until must be after from"),
        ({"exploration": {"share": 0.9}}, "exploration.share"),
        ({"rules": [{"type": "bury", "match": {"attributes": ["colour"]}}]},
         "rules[0].match.attributes must map attribute names to value lists"),
        ({"rules": [{"type": "bury", "match": {"attributes": {"colour": "red"}}}]},
         "rules[0].match.attributes.colour must be a list of strings"),
    ],
)  # fmt: skip
def test_bad_rules_are_refused_with_the_rule_named(document: dict[str, Any], message: str) -> None:
    with pytest.raises(MerchandisingError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(document)


def test_rules_round_trip_through_the_document() -> None:
    document = {
        "rules": [
            {"type": "pin", "item": "x", "position": 3, "from": "2026-01-01T00:00:00+00:00"},
            {"type": "promote", "match": {"categories": ["mugs"]}, "share": 0.2},
            {"type": "bury", "match": {"items": ["y"], "attributes": {"brand": ["a", "b"]}}},
            {"type": "noRepurchase", "repeatableCategories": ["tea"]},
        ],
        "exploration": {"share": 0.1},
    }
    assert parse(parse(document).to_document()) == parse(document)
    assert parse(document).to_document() == document


def test_no_repurchase_leaves_a_strangers_viewed_items_to_exclude_seen(model: ServingModel) -> None:
    rule = {"type": "noRepurchase"}
    # Viewed, not bought: with exclude_seen off they may be recommended.
    ranked = ask(model, rule, user_id="stranger", recent_items=("i2",), exclude_seen=False)
    assert "i2" in ids(ranked)
    assert "i2" not in ids(ask(model, rule, user_id="stranger", recent_items=("i2",)))
