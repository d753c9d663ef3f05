"""Merchandiser rules applied to a scored list, after scoring (see `fallback.finish`).

Two kinds. Rules that say which items may appear at all (`hideOutOfStock`, `noRepurchase`)
narrow the eligible items before the list is filled, so the fallback chain fills what they
drop. Rules that say where items go rearrange the filled list, in this order, each later step
winning over the earlier ones: boost and bury (a rank shift: a boosted item overtakes
`positions` items, a buried one falls behind as many, or to the end; scores of different
sources do not compare, positions do), diversity (at most N per category: the rest leave the
list), the promotion quota (the lowest slots that miss it go to the best matching items), and
pins last (an item at its position, if the request's filters allow it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from shopping_guide_contracts.merchandising import Match, Rule

if TYPE_CHECKING:
    from .fallback import Candidate
    from .scorer import ServingModel

Mask = npt.NDArray[np.bool_]


def active(rules: Sequence[Rule], now: datetime | None = None) -> tuple[Rule, ...]:
    """The rules in force now: outside its `from`/`until` window a rule does nothing."""
    if not rules:
        return ()
    now = now or datetime.now(UTC)
    return tuple(rule for rule in rules if rule.active(now))


def replaces_exclude_seen(rules: Sequence[Rule]) -> bool:
    """A `noRepurchase` rule decides what a shopper's history may bring back."""
    return any(rule.type == "noRepurchase" for rule in rules)


def matches(model: ServingModel, match: Match) -> Mask:
    """Items of any of the match's categories or attribute values, or named by it (cached per
    model)."""
    cache = model.match_cache
    if match in cache:
        return cache[match]
    mask = np.zeros(len(model.item_ids), dtype=bool)
    catalog = model.catalog
    if match.categories and catalog is not None:
        wanted = np.isin(catalog.category_names, [c.lower() for c in match.categories])
        mask |= np.asarray(catalog.categories[:, wanted].sum(axis=1)).ravel() > 0
    if catalog is not None:
        for key, values in match.attributes:
            mask |= catalog.with_attribute(key, values)
    if match.items:
        found = model.items.lookup(match.items)
        mask[found[found >= 0]] = True
    cache[match] = mask
    return mask


def keep_mask(
    rules: Sequence[Rule], model: ServingModel, history: npt.NDArray[np.int64]
) -> Mask | None:
    """Items the rules allow at all (None: all)."""
    keep: Mask | None = None
    for rule in rules:
        if rule.type == "hideOutOfStock" and model.catalog is not None:
            allowed = model.catalog.in_stock.astype(bool)
        elif rule.type == "noRepurchase" and len(history):
            bought = history
            if rule.repeatable_categories:
                repeatable = matches(model, Match(categories=rule.repeatable_categories))
                bought = bought[~repeatable[bought]]
            allowed = np.ones(len(model.item_ids), dtype=bool)
            allowed[bought] = False
        else:
            continue
        keep = allowed if keep is None else keep & allowed
    return keep


def arrange(
    rules: Sequence[Rule],
    pool: list[Candidate],
    k: int,
    model: ServingModel,
    eligible: Mask,
) -> list[Candidate]:
    """The filled list rearranged by the rules: boost/bury, diversity, promotion, pins."""
    for rule in rules:
        if rule.type in ("boost", "bury"):
            pool = _shift(pool, matches(model, rule.match), rule)
    for rule in rules:
        if rule.type == "diversity" and rule.max_per_category is not None:
            pool = _diverse(pool, model, rule.max_per_category)
    for rule in rules:
        if rule.type == "promote" and rule.share is not None:
            pool = _promote(pool, k, model, matches(model, rule.match) & eligible, rule.share)
    for rule in rules:
        if rule.type == "pin" and rule.item is not None and rule.position is not None:
            pool = _pin(pool, model, eligible, rule.item, rule.position)
    return pool


def _shift(pool: list[Candidate], matching: Mask, rule: Rule) -> list[Candidate]:
    if rule.type == "bury" and rule.positions is None:
        step = math.inf
    else:
        step = float(rule.positions or 0) * (-1 if rule.type == "boost" else 1)
    # Half a place more, so that a moved item lands before (after) the one it reaches.
    keys = [
        n + (step + math.copysign(0.5, step) if matching[c.item] else 0.0)
        for n, c in enumerate(pool)
    ]
    order = sorted(range(len(pool)), key=keys.__getitem__)
    return [pool[n] for n in order]


def _diverse(pool: list[Candidate], model: ServingModel, most: int) -> list[Candidate]:
    catalog = model.catalog
    if catalog is None:
        return pool
    counts: dict[int, int] = {}
    kept = []
    for candidate in pool:
        indptr = catalog.categories.indptr
        lo, hi = indptr[candidate.item], indptr[candidate.item + 1]
        categories = catalog.categories.indices[lo:hi].tolist()
        if any(counts.get(c, 0) >= most for c in categories):
            continue
        for c in categories:
            counts[c] = counts.get(c, 0) + 1
        kept.append(candidate)
    return kept


def _promote(
    pool: list[Candidate], k: int, model: ServingModel, matching: Mask, share: float
) -> list[Candidate]:
    from .fallback import Candidate

    top = pool[:k]
    missing = math.ceil(share * k) - sum(bool(matching[c.item]) for c in top)
    if missing <= 0:
        return pool
    present = {c.item for c in top}
    offers = [c.item for c in pool[k:] if matching[c.item]][:missing]
    if len(offers) < missing:
        order = model.popular_order[matching[model.popular_order]]
        more = [int(i) for i in order[: missing + len(present) + len(offers)]]
        offers += [i for i in more if i not in present and i not in offers]
    scores = {c.item: c.score for c in pool}
    popularity = model.model.popularity
    promoted = [
        Candidate(i, scores.get(i, float(popularity[i])), "promoted") for i in offers[:missing]
    ]
    while promoted and len(top) < k:
        top.append(promoted.pop(0))
    # The lowest slots that miss the quota go to the matching items, the best one highest.
    slots = [n for n in range(len(top)) if not matching[top[n].item]][-len(promoted) :]
    for slot, offer in zip(slots, promoted, strict=False):
        top[slot] = offer
    used = {c.item for c in top}
    return top + [c for c in pool if c.item not in used]


def _pin(
    pool: list[Candidate], model: ServingModel, eligible: Mask, item_id: str, position: int
) -> list[Candidate]:
    from .fallback import Candidate

    item = model.items.one(item_id)
    if item < 0 or not eligible[item]:
        return pool  # unknown to this version, or outside the request's filters
    score = next((c.score for c in pool if c.item == item), 0.0)
    rest = [c for c in pool if c.item != item]
    at = min(position - 1, len(rest))
    return [*rest[:at], Candidate(item, score, "pinned"), *rest[at:]]
