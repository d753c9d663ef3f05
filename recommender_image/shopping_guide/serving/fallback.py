"""The fallback chain: a list is never empty, or short, by accident.

The model's own ranking comes first; what it leaves unfilled (a catalogue filter it cannot
satisfy, a shopper it does not know, rules that drop items) is filled from items similar to
the shopper's recent ones, then trending items, then popular ones, each within the same
filters, exclusions and rules. Every item carries the reason it is there, and an empty list
says why: nothing passes the filters.

Exploration, when the guide asks for it, gives a share of the slots to items with little
exposure (the fewest interactions in training: new items too), so that they get shown and
learned; which ones is fixed per shopper, so a list does not flicker between requests.

Only lists that need it pass through here: with no rules and no exploration, a full list from
the model is returned as it was scored (`needs_finishing`).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from shopping_guide_contracts.merchandising import Merchandising

from . import rules as merch

if TYPE_CHECKING:
    from .scorer import Query, Ranked, ServingModel

Reason = Literal[
    "personalized",
    "similar_to_recent",
    "bought_together",
    "trending",
    "promoted",
    "pinned",
    "popular",
    "exploration",
]
EmptyReason = Literal["filtered_out"]
# Recent items whose similar items fill slots, and how deep each one's list is read.
ANCHORS = 3
# The least-exposed items exploration draws from, per slot it fills.
EXPLORE_POOL_PER_SLOT = 3


@dataclass
class Candidate:
    item: int
    score: float
    reason: Reason
    because: int | None = None


def depth(query: Query) -> int:
    """How many items to score for a query: rules that drop or move items need more than k."""
    if query.merchandising is None or not query.merchandising.rules:
        return query.k
    return 3 * query.k + 20


def needs_finishing(model: ServingModel, query: Query, ranked: Ranked) -> bool:
    return (
        query.merchandising is not None
        or len(ranked.item_ids) < query.k
        or (ranked.strategy == "popular" and model.trending is not None)
    )


def finish(
    model: ServingModel,
    query: Query,
    ranked: Ranked,
    eligible: npt.NDArray[np.bool_],
    user: int,
) -> Ranked:
    """The final list of `query.k`: the model's ranking within the rules, filled along the
    chain, rearranged by the rules, with exploration's share. `eligible`: the items the
    request's filters and exclusions allow."""
    policy = query.merchandising or Merchandising()
    active = merch.active(policy.rules)
    history = model.history_items(user) if user >= 0 else model.items_of(query.recent_items)
    # What a shopper bought is a known shopper's history; recent items were only viewed.
    keep = merch.keep_mask(active, model, history if user >= 0 else history[:0])
    if keep is not None:
        eligible = eligible & keep
    want = depth(query)
    pool: list[Candidate] = []
    taken: set[int] = set()
    if ranked.strategy != "popular":
        own: Reason = "personalized"
        indices = ranked.indices
        if indices is None:
            indices = model.items.lookup(ranked.item_ids)
        for item, score in zip(indices.tolist(), ranked.scores, strict=True):
            if eligible[item]:
                pool.append(Candidate(int(item), score, own))
                taken.add(int(item))
    # The chain only when the list is short: its sources cost more than the scoring itself.
    for candidate in _chain(model, query, history, eligible) if len(pool) < want else ():
        if candidate.item not in taken:
            pool.append(candidate)
            taken.add(candidate.item)
            if len(pool) >= want:
                break
    if active:
        pool = merch.arrange(active, pool, query.k, model, eligible)
    final = pool[: query.k]
    if policy.exploration_share > 0:
        final = _explore(model, query, final, eligible, policy.exploration_share)
    from .scorer import Ranked

    return Ranked(
        model._names(np.asarray([c.item for c in final], dtype=np.int64)),
        [c.score for c in final],
        ranked.strategy,
        ranked.unknown_items,
        reasons=[c.reason for c in final],
        because=[None if c.because is None else str(model.item_ids[c.because]) for c in final],
        empty_reason=None if final else "filtered_out",
    )


def _chain(
    model: ServingModel,
    query: Query,
    history: npt.NDArray[np.int64],
    eligible: npt.NDArray[np.bool_],
) -> Iterator[Candidate]:
    """Similar to recent items, trending, popular: each source's items within `eligible`."""
    anchors = _anchors(model, query, history)
    lists = []
    for anchor in anchors:
        items, scores = model.similar_indices(int(anchor), query.k + len(history))
        lists.append([(int(i), float(s), int(anchor)) for i, s in zip(items, scores, strict=True)])
    # Round robin over the anchors, so that each recent item gets its say.
    for row in range(max(map(len, lists), default=0)):
        for found in lists:
            if row < len(found) and eligible[found[row][0]]:
                item, score, anchor = found[row]
                yield Candidate(item, score, "similar_to_recent", anchor)
    if model.trending is not None:
        items, at = model.trending_within(len(model.trending), eligible)
        for item, score in zip(items, model.trending.scores[at], strict=True):
            yield Candidate(int(item), float(score), "trending")
    popularity = model.model.popularity
    for item in _eligible_in(model.popular_order, eligible):
        yield Candidate(item, float(popularity[item]), "popular")


def _eligible_in(order: npt.NDArray[np.int64], eligible: npt.NDArray[np.bool_]) -> Iterator[int]:
    """The eligible items of `order`, in that order, read in chunks: the first few usually
    suffice, and masking the whole catalogue per request would cost more than scoring."""
    for start in range(0, len(order), 256):
        chunk = order[start : start + 256]
        yield from chunk[eligible[chunk]].tolist()


def _anchors(
    model: ServingModel, query: Query, history: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """The items whose neighbours fill slots: the shopper's recent items, last first, or
    else the heaviest of their history."""
    recent = model.items_of(query.recent_items[::-1])
    if len(recent):
        return recent[:ANCHORS]
    if not len(history):
        return history
    weights = model.model.user_items[int(model.users.one(query.user_id))].toarray()[0]
    return history[np.argsort(-weights[history], kind="stable")][:ANCHORS]


def _explore(
    model: ServingModel,
    query: Query,
    final: list[Candidate],
    eligible: npt.NDArray[np.bool_],
    share: float,
) -> list[Candidate]:
    """The last `share` of the slots (never a pinned one) to least-exposed items, drawn per
    shopper from a small pool of the least interacted-with eligible items."""
    slots = int(share * query.k + 0.5)
    open_slots = (
        [n for n in range(len(final)) if final[n].reason != "pinned"][-slots:] if slots else []
    )
    if not open_slots:
        return final
    present = {c.item for c in final}
    size = EXPLORE_POOL_PER_SLOT * len(open_slots)
    pool = list(islice((i for i in _eligible_in(model.least_exposed, eligible)
                        if i not in present), size))  # fmt: skip
    if not pool:
        return final
    seed = int.from_bytes(hashlib.blake2b(query.user_id.encode(), digest_size=8).digest(), "big")
    chosen = random.Random(seed).sample(range(len(pool)), min(len(pool), len(open_slots)))
    out = list(final)
    popularity = model.model.popularity
    for slot, pick in zip(open_slots[-len(chosen) :], chosen, strict=True):
        out[slot] = Candidate(pool[pick], float(popularity[pool[pick]]), "exploration")
    return out
