"""`shopping-guide`: the recommender image's command line (train; serve)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from shopping_guide_contracts import training_result

from .algorithms import ALGORITHMS, AUTO, AUTO_FAMILIES
from .artifacts import parse_guide, routed_versions
from .baskets import BASKET_MODELS
from .catalog import CatalogSchema
from .errors import ConfigError, ShoppingGuideError
from .events import FORMATS, EventSchema
from .interactions import SCALES
from .object_store import S3Options, is_object_uri, open_events, open_store
from .splits import SPLITS
from .training import TrainConfig, train
from .trending import (
    DEFAULT_BASELINE_HOURS,
    DEFAULT_MIN_COUNT,
    DEFAULT_WINDOW_HOURS,
    TrendingConfig,
)

if TYPE_CHECKING:
    from .serving.registry import ModelSource

if TYPE_CHECKING:
    from .serving.attribution import Attributor
    from .serving.batcher import ScoringConfig
    from .serving.workers import PodReadiness

log = logging.getLogger("shopping_guide")


def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in values:
        for item in raw.split(","):
            if not item.strip():
                continue
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"{what} must look like KEY=VALUE, got {item!r}")
            out[key.strip()] = value.strip()
    return out


def _event_weights(values: Sequence[str]) -> dict[str, float]:
    weights: dict[str, float] = {}
    for name, raw in _pairs(values, "--event-weight").items():
        try:
            weights[name] = float(raw)
        except ValueError as exc:
            raise ConfigError(f"event weight for {name!r} must be a number, got {raw!r}") from exc
    return weights


def _add_guide(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--guide",
        metavar="NAMESPACE/NAME",
        help="the guide's own directory of the store, <store>/guides/NAMESPACE/NAME; versions "
        "of the flat layout of earlier releases are still found (default: the flat layout)",
    )


STORE_HELP = "a directory (the mounted claim) or s3://BUCKET[/PREFIX]"


def _add_s3(parser: argparse.ArgumentParser, of: str = "") -> None:
    """The S3 options of the model store, or (`of="events"`) of an s3:// events file."""
    flag, env = (f"--{of}-s3", f"{of.upper()}_") if of else ("--s3", "")
    group = parser.add_argument_group(
        f"object storage{' of the ' + of if of else ''} (s3:// locations; credentials from "
        f"{env}AWS_ACCESS_KEY_ID and {env}AWS_SECRET_ACCESS_KEY)"
    )
    group.add_argument(f"{flag}-endpoint", help="http(s)://HOST[:PORT] (default: AWS)")
    group.add_argument(f"{flag}-region", default="us-east-1")
    group.add_argument(
        f"{flag}-ca-file", type=Path, help="PEM bundle that signs the endpoint's TLS"
    )


def _s3(args: argparse.Namespace, of: str = "") -> S3Options:
    dest, prefix = (f"{of}_s3", f"{of.upper()}_") if of else ("s3", "")
    return S3Options(
        endpoint=getattr(args, f"{dest}_endpoint"),
        region=getattr(args, f"{dest}_region"),
        ca_file=getattr(args, f"{dest}_ca_file"),
        credentials_prefix=prefix,
    )


def _add_termination_log(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--termination-log",
        type=Path,
        help="also write the result there (Kubernetes termination message)",
    )


def _versions(values: Sequence[str]) -> list[str]:
    return [v.strip() for raw in values for v in raw.split(",") if v.strip()]


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train", help="train, evaluate and store a model version")
    data = p.add_argument_group("events")
    data.add_argument(
        "--events", required=True, help="CSV/TSV/JSONL/Parquet file, a path or s3://BUCKET/KEY"
    )
    data.add_argument("--format", choices=FORMATS, help="default: from the file name")
    data.add_argument("--user-col", default="user_id")
    data.add_argument("--item-col", default="item_id")
    data.add_argument("--event-col", help="event type column (needs --event-weight)")
    data.add_argument("--weight-col", help="weight or quantity column, multiplies event weights")
    data.add_argument("--time-col", help="timestamp column (time split, time decay)")
    data.add_argument("--time-format", help="strptime format when timestamps are not ISO 8601")
    data.add_argument(
        "--basket-col",
        help="order or session column: also learn what is bought together (and evaluate it)",
    )
    data.add_argument(
        "--basket-model",
        choices=BASKET_MODELS,
        default="auto",
        help="bought together: ease (best; memory quadratic in items), jaccard (any size), "
        "auto (ease when it fits in memory)",
    )
    data.add_argument(
        "--basket-neighbours",
        type=int,
        default=20,
        help="bought-together partners kept per item",
    )
    data.add_argument(
        "--event-weight",
        action="append",
        default=[],
        metavar="TYPE=W",
        help="weight per event type, e.g. view=1,cart=4,purchase=10 (repeatable)",
    )
    data.add_argument(
        "--on-invalid",
        choices=("error", "skip"),
        default="error",
        help="skip: drop invalid rows and count them (default: stop at the first)",
    )
    data.add_argument("--exclude-items", default="", help="comma-separated item ids to ignore")
    data.add_argument(
        "--min-user-items", type=int, default=1, help="drop users with fewer distinct items"
    )
    data.add_argument("--half-life-days", type=float, help="exponential time decay of weights")
    data.add_argument(
        "--scale", choices=SCALES, default="raw", help="transform of each user x item sum"
    )
    model = p.add_argument_group("model")
    model.add_argument("--model-store", required=True, help=STORE_HELP)
    model.add_argument(
        "--algorithm",
        choices=[*ALGORITHMS, AUTO],
        default="als",
        help=f"{AUTO}: tune each of {', '.join(AUTO_FAMILIES)} and keep the best (implies --tune)",
    )
    model.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    model.add_argument("--tune", action="store_true", help="hyperparameter search first")
    model.add_argument("--tune-method", choices=("random", "grid"), default="random")
    model.add_argument("--tune-budget", type=float, default=600.0, metavar="SECONDS")
    model.add_argument("--tune-trials", type=int, default=30)
    model.add_argument(
        "--ann-min-items",
        type=int,
        default=200_000,
        help="store an approximate index from this many items (0: never)",
    )
    model.add_argument(
        "--refit",
        action="store_true",
        help="serve a model refitted on all events (metrics stay the holdout's)",
    )
    ev = p.add_argument_group("evaluation")
    ev.add_argument("--split", choices=SPLITS, default="random")
    ev.add_argument("--test-fraction", type=float, default=0.2)
    ev.add_argument("--k", type=int, default=10)
    ev.add_argument("--metric", default=None, help="metric the search optimises (ndcg@K)")
    ev.add_argument(
        "--eval-users",
        type=int,
        default=10_000,
        help="evaluate on at most this many users (seeded sample)",
    )
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--champion", help="stored version to score on the same holdout")
    cat = p.add_argument_group("catalogue (content-based and hybrid recommendations)")
    cat.add_argument("--catalog", type=Path, help="catalogue file: one row per item")
    cat.add_argument("--catalog-format", choices=FORMATS)
    cat.add_argument("--catalog-item-col", default="item_id")
    cat.add_argument("--catalog-title-col", default="title")
    cat.add_argument(
        "--catalog-category-col",
        default="category",
        help="categories, several separated by '|' (empty: none)",
    )
    cat.add_argument("--catalog-attributes-col", help="JSON object or key=value;key=value")
    cat.add_argument("--catalog-price-col", default="price", help="(empty: none)")
    cat.add_argument("--catalog-stock-col", help="in-stock flag (false/0/no = out of stock)")
    cat.add_argument(
        "--catalog-from-events",
        metavar="TITLE_COL[,PRICE_COL]",
        help="derive the catalogue from these columns of the events file",
    )
    cat.add_argument(
        "--content-weight",
        type=float,
        default=0.3,
        help="share of the content score in the hybrid score (0: pure CF)",
    )
    _add_trending(p)
    store = p.add_argument_group("model store")
    _add_guide(store)
    store.add_argument("--keep", type=int, default=5, help="versions to keep")
    store.add_argument(
        "--protect",
        action="append",
        default=[],
        metavar="VERSION[,VERSION...]",
        help="versions never pruned (repeatable)",
    )
    store.add_argument(
        "--routing",
        type=Path,
        help="routing file: the versions it routes when the run prunes are never pruned "
        "(missing: none yet; unreadable: no pruning)",
    )
    _add_termination_log(p)
    _add_s3(p)
    _add_s3(p, "events")
    p.set_defaults(handler=_run_train)


def _add_trending(p: argparse.ArgumentParser) -> None:
    trend = p.add_argument_group("trending now (needs --time-col)")
    trend.add_argument("--trending-window-hours", type=float, default=DEFAULT_WINDOW_HOURS,
                       help="the recent window whose rate is set against the baseline")  # fmt: skip
    trend.add_argument("--trending-baseline-hours", type=float, default=DEFAULT_BASELINE_HOURS,
                       help="the window before it, whose rate is the item's usual one")  # fmt: skip
    trend.add_argument("--trending-min-count", type=int, default=DEFAULT_MIN_COUNT,
                       help="interactions in the recent window an item needs to trend")  # fmt: skip


def _trending_config(args: argparse.Namespace) -> TrendingConfig:
    return TrendingConfig(
        window_hours=args.trending_window_hours,
        baseline_hours=args.trending_baseline_hours,
        min_count=args.trending_min_count,
    )


def _title_price(value: str | None) -> tuple[str, str | None] | None:
    if not value:
        return None
    title, _, price = value.partition(",")
    return title.strip(), price.strip() or None


def _run_train(args: argparse.Namespace) -> int:
    if args.guide is not None:
        parse_guide(args.guide)  # before hours of training, not after
    schema = EventSchema(
        user_col=args.user_col,
        item_col=args.item_col,
        event_col=args.event_col,
        weight_col=args.weight_col,
        time_col=args.time_col,
        event_weights=_event_weights(args.event_weight),
        time_format=args.time_format,
        basket_col=args.basket_col,
    )
    config = TrainConfig(
        events=args.events,
        model_store=args.model_store,
        s3=_s3(args),
        events_s3=_s3(args, "events"),
        schema=schema,
        format=args.format,
        on_invalid=args.on_invalid,
        exclude_items=[i.strip() for i in args.exclude_items.split(",") if i.strip()],
        min_user_items=args.min_user_items,
        half_life_days=args.half_life_days,
        scale=args.scale,
        algorithm=args.algorithm,
        params=dict(_pairs(args.param, "--param")),
        split=args.split,
        test_fraction=args.test_fraction,
        seed=args.seed,
        k=args.k,
        metric=args.metric or f"ndcg@{args.k}",
        eval_users=args.eval_users,
        tune=args.tune,
        tune_method=args.tune_method,
        tune_budget_seconds=args.tune_budget,
        tune_trials=args.tune_trials,
        champion=args.champion,
        keep=args.keep,
        protect=_versions(args.protect),
        guide=args.guide,
        routing=args.routing,
        refit=args.refit,
        ann_min_items=args.ann_min_items or None,
        catalog=args.catalog,
        catalog_format=args.catalog_format,
        catalog_schema=CatalogSchema(
            item_col=args.catalog_item_col,
            title_col=args.catalog_title_col,
            category_col=args.catalog_category_col or None,
            attributes_col=args.catalog_attributes_col,
            price_col=args.catalog_price_col or None,
            stock_col=args.catalog_stock_col,
        ),
        catalog_from_events=_title_price(args.catalog_from_events),
        content_weight=args.content_weight,
        basket_model=args.basket_model,
        basket_neighbours=args.basket_neighbours,
        trending=_trending_config(args),
    )
    result = train(config)
    print(json.dumps(result, sort_keys=True))
    if args.termination_log:
        args.termination_log.write_text(training_result.encode_termination_message(result))
    return 0


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="serve recommendations over HTTP")
    p.add_argument("--model-store", required=True, help=STORE_HELP)
    p.add_argument(
        "--model-cache",
        type=Path,
        help="with an object store: the local directory routed versions are downloaded into "
        "(an emptyDir), checked and served from",
    )
    _add_s3(p)
    _add_guide(p)
    p.add_argument(
        "--routing",
        type=Path,
        required=True,
        help="routing file (the mounted ConfigMap's routing.json)",
    )
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--metrics-port",
        type=int,
        help="serve /metrics on this port (same host) instead of the serving port",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="server processes on the one port (default: the CPUs the container may use, "
        "within its CPU limit; see serving/workers.py)",
    )
    p.add_argument(
        "--guide-name",
        default=os.environ.get("SHOPPING_GUIDE_NAME", ""),
        help="the ShoppingGuide served: the `guide` label of every metric "
        "(default: $SHOPPING_GUIDE_NAME)",
    )
    p.add_argument(
        "--reload-interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how often the routing file is checked for changes",
    )
    p.add_argument(
        "--ann-min-items",
        type=int,
        default=200_000,
        help="catalogue size from which an approximate index serves (0: never)",
    )
    p.add_argument(
        "--attribution-key-file",
        type=Path,
        help="the key that signs recommendation ids, the same for every server of a guide "
        "(the operator mounts a Secret); without it a random key, and feedback is attributed "
        "only by the process that served the list",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after SIGTERM, keep answering this long with /readyz at 503 and every "
        "connection closed after its response, before the listener closes",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=20.0,
        help="seconds in-flight requests get to finish once the listener has closed",
    )
    scoring = p.add_argument_group("scoring (off the event loop; see serving/batcher.py)")
    scoring.add_argument(
        "--scoring-threads",
        type=int,
        default=None,
        help="threads per worker that score requests (default: one fewer than the CPUs, "
        "shared out over the workers, at least one)",
    )
    scoring.add_argument(
        "--no-batching",
        action="store_true",
        help="score each request on its own instead of batching concurrent ones",
    )
    scoring.add_argument(
        "--batch-window-ms",
        type=float,
        default=1.0,
        help="while a batch is scoring, how long a free thread waits for more requests",
    )
    scoring.add_argument(
        "--max-batch", type=int, default=64, help="requests scored together at most"
    )
    scoring.add_argument(
        "--max-queued",
        type=int,
        default=2048,
        help="users waiting to be scored at most; beyond, requests get 503 and Retry-After",
    )
    p.set_defaults(handler=_run_serve)


def _model_source(args: argparse.Namespace) -> ModelSource:
    from .artifacts import ModelStore
    from .object_store import ObjectModelStore
    from .serving.model_cache import ModelCache

    store = open_store(args.model_store, args.guide, _s3(args))
    if isinstance(store, ObjectModelStore):
        if args.model_cache is None:
            raise ConfigError("--model-cache is required with an object store (s3://...)")
        return ModelCache(store, args.model_cache)
    assert isinstance(store, ModelStore)
    return store


def _run_serve(args: argparse.Namespace) -> int:
    """The supervisor: checks the flags, then runs the workers (serving/workers.py)."""
    import functools

    from .serving.attribution import Attributor, load_key
    from .serving.batcher import ScoringConfig, default_threads
    from .serving.workers import Supervisor, default_workers

    workers = default_workers() if args.workers is None else args.workers
    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    # One key for every worker: feedback reaches any of them, whichever served the list.
    if args.attribution_key_file is not None:
        attributor = Attributor(load_key(args.attribution_key_file))
    else:
        attributor = Attributor.ephemeral()
    try:
        scoring = ScoringConfig(
            threads=args.scoring_threads or max(1, default_threads() // workers),
            batching=not args.no_batching,
            window_seconds=args.batch_window_ms / 1000,
            max_batch=args.max_batch,
            max_queued=args.max_queued,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    supervisor = Supervisor(
        functools.partial(_serve_worker, args, attributor, scoring),
        workers,
        metrics_address=None if args.metrics_port is None else (args.host, args.metrics_port),
        guide=args.guide_name,
    )
    return supervisor.run()


def _serve_worker(
    args: argparse.Namespace,
    attributor: Attributor,
    scoring: ScoringConfig,
    readiness: PodReadiness,
) -> None:
    """One worker process: a whole server on the shared port."""
    from .serving import collector
    from .serving.app import build_app
    from .serving.lifecycle import serve
    from .serving.metrics import ServerMetrics
    from .serving.registry import Registry

    # A fresh interpreter: the supervisor's logging setup did not come along.
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    registry = Registry(
        _model_source(args),
        args.routing,
        ann_min_items=args.ann_min_items or None,
    )
    app = build_app(
        registry,
        metrics=ServerMetrics(guide=args.guide_name),
        metrics_route=args.metrics_port is None,
        attributor=attributor,
        reload_interval=args.reload_interval,
        scoring=scoring,
        workers_loading=readiness.loading,
    )
    registry.subscribe(lambda snapshot: readiness.set(snapshot.stable is not None))
    # Each change of the loaded versions: what they hold out of the collector's sight.
    settle = collector.Settler()
    registry.subscribe(lambda snapshot: settle(snapshot.models.values()))
    asyncio.run(
        serve(
            app, args.host, args.port, drain_seconds=args.drain_seconds,
            shutdown_timeout=args.shutdown_timeout, reuse_port=True,
        )
    )  # fmt: skip


def _add_forget(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "forget-user", help="remove a user from every stored model version, every guide's"
    )
    p.add_argument("--model-store", required=True, help=STORE_HELP)
    p.add_argument("user_id")
    _add_s3(p)
    p.set_defaults(handler=_run_forget)


def _run_forget(args: argparse.Namespace) -> int:
    from .artifacts import forget_user

    changed = forget_user(open_store(args.model_store, s3=_s3(args)), args.user_id)
    print(json.dumps({"forgotten": True, "versions": changed}))
    return 0


def _add_forget_users(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "forget-users",
        help="remove users, named by the SHA-256 of their id, from every stored model version",
    )
    p.add_argument("--model-store", required=True, help=STORE_HELP)
    _add_s3(p)
    p.add_argument(
        "--user-sha256",
        action="append",
        required=True,
        metavar="HEX",
        help="lower-case hex SHA-256 of a user id (repeatable)",
    )
    _add_termination_log(p)
    p.set_defaults(handler=_run_forget_users)


def _run_forget_users(args: argparse.Namespace) -> int:
    from .artifacts import forget_users_by_hash

    digests = set(args.user_sha256)
    bad = sorted(d for d in digests if not re.fullmatch(r"[0-9a-f]{64}", d))
    if bad:
        raise ConfigError(f"--user-sha256 must be 64 lower-case hex digits, got {bad[0]!r}")
    changed = forget_users_by_hash(open_store(args.model_store, s3=_s3(args)), digests)
    document = json.dumps({"versions": changed, "users": len(digests)})
    if args.termination_log:
        args.termination_log.write_text(document)
    print(document)
    return 0


def _add_refresh_trending(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "refresh-trending",
        help="recompute trending now from fresher events and rewrite model versions with it, "
        "without a retrain",
    )
    p.add_argument("--model-store", required=True, help=STORE_HELP)
    _add_guide(p)
    p.add_argument(
        "--version",
        action="append",
        default=[],
        metavar="VERSION[,VERSION...]",
        help="versions to refresh (repeatable; default: those --routing routes, else the newest)",
    )
    p.add_argument("--routing", type=Path, help="routing file: refresh the versions it routes")
    data = p.add_argument_group(
        "events (only the item, time and user columns are read: the user to leave forgotten "
        "shoppers out)"
    )
    data.add_argument(
        "--events", required=True, help="CSV/TSV/JSONL/Parquet file, a path or s3://BUCKET/KEY"
    )
    data.add_argument("--format", choices=FORMATS, help="default: from the file name")
    data.add_argument("--user-col", default="user_id", help="to leave forgotten users out")
    data.add_argument("--item-col", default="item_id")
    data.add_argument("--time-col", required=True, help="timestamp column")
    data.add_argument("--time-format", help="strptime format when timestamps are not ISO 8601")
    data.add_argument("--on-invalid", choices=("error", "skip"), default="error")
    _add_trending(p)
    _add_termination_log(p)
    _add_s3(p)
    _add_s3(p, "events")
    p.set_defaults(handler=_run_refresh_trending)


def _run_refresh_trending(args: argparse.Namespace) -> int:
    from .trending_refresh import refresh

    store = open_store(args.model_store, args.guide, _s3(args))
    versions = _versions(args.version)
    if not versions and args.routing is not None:
        routed = routed_versions(args.routing)
        if routed is None:
            raise ConfigError(f"cannot read the routing file {args.routing}")
        versions = sorted(routed)
    if not versions:
        versions = store.versions()[-1:]
    schema = EventSchema(
        user_col=args.user_col,
        item_col=args.item_col,
        time_col=args.time_col,
        time_format=args.time_format,
    )
    options = {"fmt": args.format, "policy": args.on_invalid, "source": args.events}
    config = _trending_config(args)
    if is_object_uri(args.events):
        with tempfile.TemporaryDirectory(prefix="shopping-guide-events-") as scratch:
            events = open_events(args.events, _s3(args, "events"), Path(scratch))
            result = refresh(store, versions, events, schema, config, **options)
    else:
        result = refresh(store, versions, Path(args.events), schema, config, **options)
    document = json.dumps(result, sort_keys=True)
    if args.termination_log:
        args.termination_log.write_text(document)
    print(document)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shopping-guide", description=__doc__)
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_serve(sub)
    _add_forget(sub)
    _add_forget_users(sub)
    _add_refresh_trending(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    try:
        return int(args.handler(args))
    except (ShoppingGuideError, OSError) as exc:
        reason = str(exc).replace("\n", " ")
        print(f"shopping-guide {args.command}: {reason}", file=sys.stderr)
        log_path = getattr(args, "termination_log", None)
        if log_path:
            with contextlib.suppress(OSError):
                Path(log_path).write_text(training_result.encode_failure(reason), encoding="utf-8")
        return 1


if __name__ == "__main__":
    sys.exit(main())
