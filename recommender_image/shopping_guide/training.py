"""One training run: events in, an evaluated, versioned artifact and a result document out."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from shopping_guide_contracts import training_result

from .algorithms import AUTO, AUTO_FAMILIES, Value, fit, resolve_params
from .ann import AnnIndex
from .artifacts import forgotten_user_hashes, forgotten_users, user_sha256
from .baskets import (
    BasketModel,
    Baskets,
    basket_matrix,
    evaluate_baskets,
    fit_bought_together,
    popularity_scorer,
    similar_items_scorer,
    split_baskets,
    weights_scorer,
)
from .catalog import Catalog, CatalogSchema, catalog_from_table, derive_from_events, load_catalog
from .content import build_text_index, content_similarity
from .errors import ArtifactError, ConfigError
from .evaluation import evaluate, evaluate_champion, sample_users
from .events import Events, EventSchema, Format, InvalidPolicy, load_events, read_columns
from .hybrid import cold_item_evaluation, extend_items
from .interactions import Interactions, Scale, build_interactions
from .model import Model
from .object_store import AnyStore, S3Options, is_object_uri, open_events, open_store
from .splits import SplitKind, split
from .trending import TrendingConfig
from .trending import compute as compute_trending
from .trending import evaluate as evaluate_trending
from .tuning import Method, search, search_families, tune_content_weight


@dataclass
class TrainConfig:
    # A local path or s3://bucket/key (downloaded first, see object_store.open_events).
    events: Path | str
    # A claim's directory or s3://bucket/prefix.
    model_store: Path | str
    s3: S3Options | None = None
    events_s3: S3Options | None = None
    schema: EventSchema = field(default_factory=EventSchema)
    format: Format | None = None
    on_invalid: InvalidPolicy = "error"
    exclude_items: Sequence[str] = ()
    min_user_items: int = 1
    half_life_days: float | None = None
    scale: Scale = "raw"
    algorithm: str = "als"
    params: dict[str, Value] = field(default_factory=dict)
    split: SplitKind = "random"
    test_fraction: float = 0.2
    seed: int = 0
    k: int = 10
    metric: str = "ndcg@10"
    eval_users: int | None = 10_000
    tune: bool = False
    tune_method: Method = "random"
    tune_budget_seconds: float = 600.0
    tune_trials: int = 30
    champion: str | None = None
    keep: int = 5
    protect: Sequence[str] = ()
    # `NAMESPACE/NAME`: the guide whose directory of the store this run writes and prunes.
    guide: str | None = None
    # A routing file: what it routes when the run prunes is never pruned.
    routing: Path | None = None
    refit: bool = False
    ann_min_items: int | None = 200_000
    catalog: Path | None = None
    catalog_schema: CatalogSchema = field(default_factory=CatalogSchema)
    catalog_format: Format | None = None
    # Derive the catalogue from product columns of the events file instead: (title, price).
    catalog_from_events: tuple[str, str | None] | None = None
    content_weight: float = 0.3
    content_neighbours: int = 100
    # Frequently bought together, from the schema's basket column: the model, partners kept
    # per item, and how many baskets a pair must share (Jaccard).
    basket_model: BasketModel = "auto"
    basket_neighbours: int = 20
    basket_min_count: int = 2
    # Trending now, from the schema's time column (none without one).
    trending: TrendingConfig = field(default_factory=TrendingConfig)


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 6) for name, value in metrics.items()}


def train(config: TrainConfig) -> dict[str, Any]:
    """Run the whole pipeline; raises ShoppingGuideError subclasses on bad input."""
    if not is_object_uri(config.events):
        # No scratch space for a local file: a read-only container may have none.
        return _train(replace(config, events=Path(config.events)), source=str(config.events))
    with tempfile.TemporaryDirectory(prefix="shopping-guide-events-") as scratch:
        events = open_events(str(config.events), config.events_s3, Path(scratch))
        return _train(replace(config, events=events), source=str(config.events))


def _train(config: TrainConfig, source: str) -> dict[str, Any]:
    if config.k < 1:
        raise ConfigError("k must be at least 1")
    if config.metric not in training_result.metric_keys(config.k):
        raise ConfigError(
            f"metric must be one of {', '.join(training_result.metric_keys(config.k))}"
        )
    # Validate parameters before reading a large file.
    if config.algorithm == AUTO:
        if config.params:
            raise ConfigError(
                f"--param {', '.join(sorted(config.params))} needs a named algorithm: "
                f"--algorithm auto tunes each of {', '.join(AUTO_FAMILIES)} with its own space"
            )
        params: dict[str, Value] = {}
    else:
        params = resolve_params(config.algorithm, config.params)
    algorithm = config.algorithm
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 3)
        return now

    store = open_store(config.model_store, config.guide, config.s3)
    events = load_events(Path(config.events), config.schema, config.format, config.on_invalid)
    events = without_forgotten(store, events)
    mark = lap("load", started)
    data = _aggregate(config, events)
    mark = lap("aggregate", mark)
    catalog = _catalog(config)
    content = None
    extras: dict[str, Any] = {}
    if catalog is not None:
        if not 0.0 <= config.content_weight <= 1.0:
            raise ConfigError("content weight must be between 0 and 1")
        data = extend_items(data, catalog.item_ids, config.exclude_items)
        catalog = catalog.reindex(data.item_ids)
        text_index = build_text_index(catalog)
        content = content_similarity(text_index, config.content_neighbours)
        extras = {**catalog.to_arrays(), **text_index.to_arrays()}
        mark = lap("catalog", mark)
    holdout = split(data, config.split, config.test_fraction, config.seed)
    users = sample_users(holdout, config.eval_users, config.seed)
    mark = lap("split", mark)

    tuning: dict[str, Any] | None = None
    if config.tune or algorithm == AUTO:
        options: dict[str, Any] = {
            "split_kind": config.split,
            "fraction": config.test_fraction,
            "metric": config.metric,
            "k": config.k,
            "seed": config.seed,
            "method": config.tune_method,
            "max_users": config.eval_users,
        }
        budget, trials = config.tune_budget_seconds, config.tune_trials
        if algorithm == AUTO:
            found = search_families(
                AUTO_FAMILIES, holdout.train, budget_seconds=budget, max_trials=trials, **options
            )
            algorithm = found.algorithm
        else:
            found = search(
                algorithm, config.params, holdout.train, budget_seconds=budget,
                max_trials=trials, **options,
            )  # fmt: skip
        params = found.best
        tuning = {
            "method": config.tune_method,
            "trials": sum(int(f["trials"]) for f in found.families.values())
            if found.families
            else len(found.trials),
            "stopped_by_budget": found.stopped_by_budget,
            "best_validation": round(found.best_score, 6),
        }
        if found.families:
            tuning["families"] = found.families
        mark = lap("tune", mark)

    content_weight = config.content_weight
    if content is not None and tuning is not None:
        content_weight, weights = tune_content_weight(
            algorithm, params, holdout.train, content, content_weight,
            **{key: value for key, value in options.items() if key != "method"},
        )  # fmt: skip
        tuning["content_weight"] = {"chosen": content_weight, "validation": weights}
        mark = lap("tune_content_weight", mark)

    model = fit(algorithm, params, holdout.train.matrix, config.seed)
    mark = lap("fit", mark)
    hybrid: dict[str, Any] | None = None
    if content is not None:
        collaborative = evaluate(model, holdout, users, config.k)
        model.content_similarity, model.content_weight = content, content_weight
        hybrid = {
            "content_weight": content_weight,
            "collaborative": _rounded(collaborative),
            "cold_items": cold_item_evaluation(
                data, algorithm, params, content, content_weight, config.k,
                config.seed, config.eval_users,
            ),
        }  # fmt: skip
    metrics = evaluate(model, holdout, users, config.k)
    popularity = evaluate(Model.popularity_baseline(holdout.train.matrix), holdout, users, config.k)
    mark = lap("evaluate", mark)
    bought_together: dict[str, Any] | None = None
    baskets: Baskets | None = None
    if events.baskets is not None:
        baskets = basket_matrix(events.baskets, events.items, data.item_ids)
        bought_together = _evaluate_bought_together(
            config, events, baskets, data, algorithm, params
        )
        mark = lap("bought_together", mark)

    trending: dict[str, Any] | None = None
    if events.timestamp is not None:
        trending, trending_arrays = _trending(config.trending, events, data.item_ids)
        extras = {**extras, **trending_arrays}
        mark = lap("trending", mark)

    champion: dict[str, Any] | None = None
    champion_error: str | None = None
    if config.champion:
        try:
            loaded = store.load(config.champion)
            champion = {
                "version": config.champion,
                "metrics": _rounded(
                    evaluate_champion(loaded, holdout.train, holdout, users, config.k)
                ),
            }
        except ArtifactError as exc:
            # A broken champion must not block a good challenger; the gate sees the reason.
            champion_error = str(exc)
        mark = lap("champion", mark)

    served, served_data = model, holdout.train
    if config.refit:
        served, served_data = fit(algorithm, params, data.matrix, config.seed), data
        served.content_similarity, served.content_weight = (
            model.content_similarity,
            (model.content_weight),
        )
        mark = lap("refit", mark)

    if baskets is not None:
        served.bought_together, _ = fit_bought_together(
            baskets.matrix, config.basket_model, config.basket_neighbours, config.basket_min_count
        )
        mark = lap("bought_together_fit", mark)
    if (
        config.ann_min_items is not None
        and served.item_factors is not None
        and served.n_items >= config.ann_min_items
    ):
        # Built once here, so that serving pods only load it.
        served.ann_index = AnnIndex.build(served.item_factors).to_bytes()
        mark = lap("ann", mark)

    data_summary = {
        "users": data.shape[0],
        "items": data.shape[1],
        "interactions": data.nnz,
        "rows": events.rows_read,
        "skipped_rows": sum(events.skipped.values()),
        "skipped_by_reason": dict(events.skipped.most_common(5)),
        "filtered_rows": events.filtered,
        "fingerprint": data.fingerprint(),
    }
    evaluation = {
        "split": config.split,
        "test_fraction": config.test_fraction,
        "seed": config.seed,
        "k": config.k,
        "users": len(users),
    }
    version, path = store.write(
        served,
        served_data.user_ids,
        served_data.item_ids,
        {
            "metrics": _rounded(metrics),
            "baseline": {"popularity": _rounded(popularity)},
            "data": {**data_summary, "source": source},
            "evaluation": evaluation,
            "refit": config.refit,
            "hybrid": hybrid,
            "trending": trending,
        },
        extras=extras,
    )
    store.prune(
        config.keep,
        {version, *config.protect, *([config.champion] if config.champion else [])},
        routing=config.routing,
    )
    lap("write", mark)
    timings["total"] = round(time.perf_counter() - started, 3)

    result: dict[str, Any] = {
        "schema": training_result.SCHEMA_VERSION,
        "version": version,
        "artifact": str(path),
        "algorithm": algorithm,
        "params": params,
        "metrics": _rounded(metrics),
        "baseline": {"popularity": _rounded(popularity)},
        "data": data_summary,
        "evaluation": evaluation,
        "timings": timings,
    }
    if champion is not None:
        result["champion"] = champion
    if champion_error is not None:
        result["champion_error"] = champion_error
    if tuning is not None:
        result["tuning"] = tuning
    if hybrid is not None:
        result["hybrid"] = hybrid
    if bought_together is not None:
        result["bought_together"] = bought_together
    if trending is not None:
        result["trending"] = trending
    return training_result.validate(result)


def _aggregate(config: TrainConfig, events: Events) -> Interactions:
    return build_interactions(
        events,
        exclude_items=config.exclude_items,
        min_user_items=config.min_user_items,
        half_life_days=config.half_life_days,
        scale=config.scale,
    )


def _evaluate_bought_together(
    config: TrainConfig,
    events: Events,
    baskets: Baskets,
    data: Interactions,
    algorithm: str,
    params: dict[str, Value],
) -> dict[str, Any]:
    """Held-out baskets: one item of each hidden, ranked from the rest, by the bought-together
    weights, by popularity among the baskets, and by the similar items of the collaborative
    model, refitted for this without the held-out baskets' events (so it never saw them)."""
    holdout = split_baskets(baskets.matrix, config.test_fraction, config.seed)
    weights, kind = fit_bought_together(
        holdout.train, config.basket_model, config.basket_neighbours, config.basket_min_count
    )
    popularity = np.asarray(holdout.train.sum(axis=0), dtype=np.float32).ravel()
    unseen = events.where(~np.isin(baskets.of_row, holdout.test))
    blind = _aggregate(config, unseen)
    cf = fit(algorithm, params, _align_items(blind, data.item_ids), config.seed)
    k = config.k
    return {
        "model": kind,
        "baskets": int((np.diff(baskets.matrix.indptr) > 0).sum()),
        "test_baskets": len(holdout.hidden),
        "neighbours": config.basket_neighbours,
        "metrics": _rounded(evaluate_baskets(weights_scorer(weights), holdout, k)),
        "baseline": {
            "popularity": _rounded(evaluate_baskets(popularity_scorer(popularity), holdout, k)),
            "similar_items": _rounded(evaluate_baskets(similar_items_scorer(cf), holdout, k)),
        },
    }


def without_forgotten(store: AnyStore, events: Events) -> Events:
    """The events less those of users who asked to be forgotten: never learned from again."""
    forgotten = forgotten_users(store)
    hashed = forgotten_user_hashes(store)
    if hashed:
        # Erasure requests name users by hash only: find which of these users they are.
        users = np.unique(events.users.to_numpy(zero_copy_only=False).astype(str))
        forgotten += [u for u in users if user_sha256(u) in hashed]
    return events.without_users(forgotten) if forgotten else events


def item_positions(items: pa.Array, item_ids: npt.NDArray[np.str_]) -> npt.NDArray[np.int64]:
    """Each event's item as an index into `item_ids` (-1: an item the model left out)."""
    found = pc.index_in(items, value_set=pa.array(item_ids.astype(str)))
    return np.asarray(pc.fill_null(found, -1), dtype=np.int64)


def _trending(
    config: TrendingConfig, events: Events, item_ids: npt.NDArray[np.str_]
) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
    """Trending items as of the newest event, and how well trending foresaw the last window."""
    assert events.timestamp is not None
    items = item_positions(events.items, item_ids)
    found = compute_trending(items, events.timestamp, len(item_ids), config)
    summary = {
        "window_hours": config.window_hours,
        "baseline_hours": config.baseline_hours,
        "min_count": config.min_count,
        "items": len(found),
        "evaluation": evaluate_trending(items, events.timestamp, len(item_ids), config),
    }
    return summary, found.to_arrays()


def _align_items(data: Interactions, item_ids: npt.NDArray[np.str_]) -> sp.csr_matrix:
    """`data`'s matrix with its columns moved to `item_ids`' order (absent items: empty)."""
    position = np.asarray(
        pc.fill_null(pc.index_in(pa.array(data.item_ids), value_set=pa.array(item_ids)), -1),
        dtype=np.int64,
    )
    coo = data.matrix.tocoo()
    keep = position[coo.col] >= 0
    return sp.csr_matrix(
        (coo.data[keep], (coo.row[keep], position[coo.col[keep]])),
        shape=(data.shape[0], len(item_ids)),
    )


def _catalog(config: TrainConfig) -> Catalog | None:
    if config.catalog is not None:
        return load_catalog(config.catalog, config.catalog_schema, config.catalog_format,
                            config.on_invalid)  # fmt: skip
    if config.catalog_from_events is None:
        return None
    title, price = config.catalog_from_events
    columns = [config.schema.item_col, title, *([price] if price else [])]
    table, _ = read_columns(Path(config.events), columns, config.format, "skip")
    derived = derive_from_events(table, config.schema.item_col, title, price)
    return catalog_from_table(derived)
