"""Hyperparameter search on an inner validation split, within a time budget.

The training split is split again the same way as the holdout was; candidates are fitted on
the inner training part and ranked by the chosen metric on the inner validation part, so the
holdout that reports the final metrics never influences the choice. The defaults are always
the first candidate: a tuned model is never chosen over them without beating them.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from .algorithms import Value, fit, params_of, resolve_params
from .errors import ConfigError
from .evaluation import evaluate, sample_users
from .interactions import Interactions
from .splits import SplitKind, split

Method = Literal["random", "grid"]


@dataclass
class Trial:
    params: dict[str, Value]
    score: float
    seconds: float


@dataclass
class SearchResult:
    best: dict[str, Value]
    best_score: float
    trials: list[Trial] = field(default_factory=list)
    stopped_by_budget: bool = False
    algorithm: str = ""
    # With --algorithm auto: each family's best validation score and trial count.
    families: dict[str, dict[str, float | int]] = field(default_factory=dict)


def candidates(
    algorithm: str,
    fixed: Mapping[str, Value],
    method: Method,
    seed: int,
) -> Iterator[dict[str, Value]]:
    """Defaults first, then grid order or random draws, without repeats; fixed params stay."""
    space = {p.name: p.search for p in params_of(algorithm) if p.search and p.name not in fixed}
    seen: set[tuple[tuple[str, Value], ...]] = set()

    def fresh(choice: Mapping[str, Value]) -> dict[str, Value] | None:
        params = resolve_params(algorithm, {**choice, **fixed})
        key = tuple(sorted(params.items()))
        if key in seen:
            return None
        seen.add(key)
        return params

    first = fresh({})
    if first is not None:
        yield first
    names = list(space)
    if method == "grid":
        for values in itertools.product(*(space[n] for n in names)):
            params = fresh(dict(zip(names, values, strict=True)))
            if params is not None:
                yield params
        return
    rng = np.random.default_rng(seed)
    total = int(np.prod([len(space[n]) for n in names])) if names else 1
    misses = 0
    while len(seen) < total + 1 and misses < 100:
        draw = {n: space[n][int(rng.integers(len(space[n])))] for n in names}
        params = fresh(draw)
        if params is None:
            misses += 1
            continue
        misses = 0
        yield params


def search(
    algorithm: str,
    fixed: Mapping[str, Value],
    train: Interactions,
    *,
    split_kind: SplitKind,
    fraction: float,
    metric: str,
    k: int,
    seed: int,
    budget_seconds: float,
    max_trials: int,
    method: Method = "random",
    max_users: int | None = 10_000,
    clock: Callable[[], float] = time.monotonic,
) -> SearchResult:
    inner = split(train, split_kind, fraction, seed + 1)
    users = sample_users(inner, max_users, seed + 1)
    now = clock
    deadline = now() + budget_seconds
    result = SearchResult(best={}, best_score=-np.inf, algorithm=algorithm)
    for params in candidates(algorithm, fixed, method, seed):
        if len(result.trials) >= max_trials:
            break
        if result.trials and now() >= deadline:
            result.stopped_by_budget = True
            break
        started = now()
        model = fit(algorithm, params, inner.train.matrix, seed)
        metrics = evaluate(model, inner, users, k)
        if metric not in metrics:
            raise ConfigError(f"unknown metric {metric!r}; choose one of {', '.join(metrics)}")
        trial = Trial(params, metrics[metric], now() - started)
        result.trials.append(trial)
        if trial.score > result.best_score:
            result.best, result.best_score = params, trial.score
    return result


def search_families(
    families: tuple[str, ...],
    train: Interactions,
    *,
    budget_seconds: float,
    max_trials: int,
    clock: Callable[[], float] = time.monotonic,
    **options: Any,
) -> SearchResult:
    """`--algorithm auto`: tune each family on the same inner split with an equal share of the
    trials and of what is left of the budget, and keep the family whose best candidate scores
    highest. Each family's defaults are its first candidate, so every family is tried even
    when the budget is short."""
    per_family = max(1, max_trials // len(families))
    deadline = clock() + budget_seconds
    best: SearchResult | None = None
    families_seen: dict[str, dict[str, float | int]] = {}
    stopped = False
    for index, family in enumerate(families):
        share = max(0.0, deadline - clock()) / (len(families) - index)
        found = search(
            family, {}, train, budget_seconds=share, max_trials=per_family, clock=clock, **options
        )
        families_seen[family] = {
            "best_validation": round(found.best_score, 6),
            "trials": len(found.trials),
        }
        stopped |= found.stopped_by_budget
        if best is None or found.best_score > best.best_score:
            best = found
    assert best is not None
    best.families, best.stopped_by_budget = families_seen, stopped
    return best


CONTENT_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7)


def tune_content_weight(
    algorithm: str,
    params: Mapping[str, Value],
    train: Interactions,
    content: sp.csr_matrix,
    first: float,
    *,
    split_kind: SplitKind,
    fraction: float,
    metric: str,
    k: int,
    seed: int,
    max_users: int | None = 10_000,
) -> tuple[float, dict[str, float]]:
    """The hybrid's content weight, chosen on the same inner validation split as the other
    parameters: the blend is applied at scoring time, so one fit serves every candidate. The
    given weight is the first candidate and is kept unless another one beats it."""
    inner = split(train, split_kind, fraction, seed + 1)
    users = sample_users(inner, max_users, seed + 1)
    model = fit(algorithm, params, inner.train.matrix, seed)
    model.content_similarity = content
    scores: dict[str, float] = {}
    best, best_score = first, -np.inf
    for weight in dict.fromkeys((first, *CONTENT_WEIGHTS)):
        model.content_weight = weight
        score = evaluate(model, inner, users, k)[metric]
        scores[f"{weight:g}"] = round(score, 6)
        if score > best_score:
            best, best_score = weight, score
    return best, scores
