"""HTTP endpoints (aiohttp). Every client mistake is a 4xx with `{"error": {code, message}}`."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shopping_guide_contracts.routing import Cohort

from ..errors import ArtifactError
from .batcher import OverloadedError, Scoring, ScoringConfig
from .feedback import Served, ServedLog
from .guide import QueryError, guide, profile
from .metrics import ServerMetrics
from .registry import Registry, Snapshot
from .scorer import Filters, Query, Ranked, ServingModel

log = logging.getLogger(__name__)

MAX_K = 1000
MAX_BATCH = 1000
MAX_LIST = 10_000
MAX_ID_LENGTH = 256
MAX_BODY_BYTES = 1 << 20
# Rows of top-k one request may ask for (users x k): bounds its time and its response size.
MAX_SCORED_ROWS = 100_000
BATCH_PART = 100  # users of a batch request scored in one go
FEEDBACK_EVENTS = ("click", "cart", "purchase")

# Paths whose requests are counted and timed, by the metric label they get.
_ENDPOINTS = {
    "/v1/recommendations": "recommendations",
    "/v1/recommendations:batch": "batch",
    "/v1/items/{item_id}/similar": "similar",
    "/v1/feedback": "feedback",
    "/v1/users/{user_id}/profile": "profile",
    "/v1/guide": "guide",
}

REGISTRY = web.AppKey("registry", Registry)
METRICS = web.AppKey("metrics", ServerMetrics)
SERVED = web.AppKey("served", ServedLog)
STATE = web.AppKey("state", dict)
SCORING = web.AppKey("scoring", Scoring)


class RequestError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


# Input parsing ---------------------------------------------------------------------------
def _user_id(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise RequestError("invalid_user_id", "user_id is required and must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise RequestError("invalid_user_id", f"user_id is longer than {MAX_ID_LENGTH} characters")
    return value


def _k(value: Any, default: int = 10) -> int:
    if value is None:
        return default
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_K:
        raise RequestError("invalid_k", f"k must be an integer from 1 to {MAX_K}, got {value!r}")
    return value


def _ids(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [v for v in value.split(",") if v]
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise RequestError(f"invalid_{name}", f"{name} must be a list of item ids")
    if len(value) > MAX_LIST:
        raise RequestError(f"invalid_{name}", f"{name} holds more than {MAX_LIST} ids")
    return [str(v) for v in value]


def _flag(value: Any, name: str, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    raise RequestError(f"invalid_{name}", f"{name} must be true or false")


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise RequestError("body_too_large", f"body exceeds {MAX_BODY_BYTES} bytes", 413)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise RequestError("body_too_large", f"body exceeds {MAX_BODY_BYTES} bytes", 413) from exc
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError("malformed_json", f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise RequestError("malformed_json", "body must be a JSON object")
    return body


def _price(value: Any, name: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        price = float(value)
    except (TypeError, ValueError) as exc:
        raise RequestError(f"invalid_{name}", f"{name} must be a number") from exc
    if not price >= 0:
        raise RequestError(f"invalid_{name}", f"{name} must be >= 0")
    return price


def _filters(options: Mapping[str, Any]) -> Filters | None:
    """Catalogue filters from a JSON `filters` object or from query parameters."""
    raw = options.get("filters", options)
    if not isinstance(raw, Mapping):
        raise RequestError("invalid_filters", "filters must be an object")
    categories = raw.get("categories", raw.get("category"))
    filters = Filters(
        categories=tuple(_ids(categories, "categories")),
        min_price=_price(raw.get("min_price"), "min_price"),
        max_price=_price(raw.get("max_price"), "max_price"),
        in_stock_only=_flag(raw.get("in_stock_only"), "in_stock_only", False),
    )
    return None if filters.empty else filters


def _items(model: ServingModel, item_ids: list[str], scores: list[float]) -> list[dict[str, Any]]:
    """Response items; with a catalogue, each also carries its title."""
    items: list[dict[str, Any]] = [
        {"item_id": i, "score": round(s, 6)} for i, s in zip(item_ids, scores, strict=True)
    ]
    if model.catalog is not None and items:
        for item, index in zip(items, model.items.lookup(item_ids), strict=True):
            title = str(model.catalog.titles[index])
            if title:
                item["title"] = title
    return items


def _check_work(ks: Sequence[int], field: str) -> None:
    """The bound on the work of one request: at most MAX_SCORED_ROWS rows of top-k."""
    rows = sum(ks)
    if rows > MAX_SCORED_ROWS:
        raise RequestError(
            "too_much_work",
            f"{field}: {len(ks)} users with k up to {max(ks)} ask for {rows} scored rows; "
            f"one request may ask for at most {MAX_SCORED_ROWS} (users x k): lower k or "
            "split the batch",
            422,
        )


# Handlers --------------------------------------------------------------------------------
def _query(options: Mapping[str, Any]) -> Query:
    allow_raw = options.get("allow_items", options.get("allow"))
    return Query(
        user_id=_user_id(options.get("user_id")),
        k=_k(options.get("k")),
        exclude=tuple(_ids(options.get("exclude_items", options.get("exclude")), "exclude_items")),
        allow=None if allow_raw is None else tuple(_ids(allow_raw, "allow_items")),
        exclude_seen=_flag(options.get("exclude_seen"), "exclude_seen", True),
        recent_items=tuple(_ids(options.get("recent_items"), "recent_items")),
        filters=_filters(options),
    )


def _respond(
    request: web.Request,
    model: ServingModel,
    cohort: Cohort,
    query: Query,
    ranked: Ranked,
    items: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A scored request's answer, recorded for feedback and counted (on the event loop)."""
    app = request.app
    metrics = app[METRICS]
    recommendation_id = uuid.uuid4().hex
    user_id = query.user_id
    app[SERVED].add(recommendation_id, Served(model.version, cohort, user_id))
    metrics.recommendations.labels(model.version, cohort).inc()
    if not ranked.item_ids:
        metrics.empty.labels(model.version, cohort).inc()
    if ranked.strategy != "personalized":
        metrics.cold_starts.labels(model.version, cohort, ranked.strategy).inc()
    request["labels"] = (model.version, cohort)
    body: dict[str, Any] = {
        "recommendation_id": recommendation_id,
        "user_id": user_id,
        "model_version": model.version,
        "cohort": cohort,
        "cold_start": ranked.strategy != "personalized",
        "strategy": ranked.strategy,
        "items": _items(model, ranked.item_ids, ranked.scores) if items is None else items,
    }
    if ranked.unknown_items:
        body["unknown_items"] = ranked.unknown_items[:100]
    return body


async def _recommend_one(
    request: web.Request, snapshot: Snapshot, options: Mapping[str, Any]
) -> dict[str, Any]:
    query = _query(options)
    model, cohort = snapshot.route(query.user_id)
    if model is None:
        raise RequestError("no_model", "no model is loaded yet", 503)
    try:
        ranked = await request.app[SCORING].recommend(model, query)
    except ArtifactError as exc:
        raise RequestError("no_catalog", str(exc)) from exc
    return _respond(request, model, cohort, query, ranked)


async def recommendations_get(request: web.Request) -> web.Response:
    snapshot = request.app[REGISTRY].snapshot
    return web.json_response(await _recommend_one(request, snapshot, request.query))


async def recommendations_post(request: web.Request) -> web.Response:
    body = await _json_body(request)
    snapshot = request.app[REGISTRY].snapshot
    return web.json_response(await _recommend_one(request, snapshot, body))


Scored = tuple[ServingModel, Cohort, Query, Ranked, list[dict[str, Any]]]


def _batch_queries(shared: dict[str, Any], own: list[dict[str, Any]]) -> list[Query]:
    """Each request of a batch: its own fields over the shared ones. The shared fields are
    parsed once (an allow-list of thousands of ids, parsed again for each of a thousand
    users, would be seconds of work)."""
    base = _query({"user_id": "-", **shared}) if own else None
    queries = []
    for index, options in enumerate(own):
        try:
            if base is not None and options.keys() <= {"user_id", "k"}:
                user = _user_id(options.get("user_id", shared.get("user_id")))
                k = _k(options["k"]) if "k" in options else base.k
                queries.append(replace(base, user_id=user, k=k))
            else:
                queries.append(_query({**shared, **options}))
        except RequestError as exc:
            raise RequestError(exc.code, f"requests[{index}]: {exc.message}") from exc
    return queries


def _score_part(snapshot: Snapshot, queries: list[Query]) -> list[Scored]:
    """Route and score part of a batch, and render its items (on a scoring thread)."""
    routed = [snapshot.route(q.user_id) for q in queries]
    groups: dict[int, list[int]] = {}
    for index, (model, _) in enumerate(routed):
        if model is None:
            raise RequestError("no_model", "no model is loaded yet", 503)
        groups.setdefault(id(model), []).append(index)
    ranked: dict[int, Ranked] = {}
    for indices in groups.values():
        model = routed[indices[0]][0]
        assert model is not None
        try:
            answers = model.recommend_many([queries[i] for i in indices])
        except ArtifactError as exc:
            raise RequestError("no_catalog", str(exc)) from exc
        ranked.update(zip(indices, answers, strict=True))
    out: list[Scored] = []
    for index, ((model, cohort), query) in enumerate(zip(routed, queries, strict=True)):
        assert model is not None
        r = ranked[index]
        out.append((model, cohort, query, r, _items(model, r.item_ids, r.scores)))
    return out


def _encode_results(results: list[dict[str, Any]]) -> bytes:
    """The batch's JSON one result at a time: json holds the GIL for a whole call, and one
    call over a large batch would hold the event loop as long."""
    return b'{"results": [' + b", ".join(json.dumps(r).encode() for r in results) + b"]}"


async def recommendations_batch(request: web.Request) -> web.Response:
    body = await _json_body(request)
    shared = {k: v for k, v in body.items() if k not in ("requests", "user_ids")}
    if "requests" in body:
        items = body["requests"]
        if not isinstance(items, list) or not all(isinstance(r, dict) for r in items):
            raise RequestError("invalid_batch", "requests must be a list of objects")
        own = items
    elif "user_ids" in body:
        users = body["user_ids"]
        if not isinstance(users, list):
            raise RequestError("invalid_batch", "user_ids must be a list")
        own = [{"user_id": u} for u in users]
    else:
        raise RequestError("invalid_batch", "send requests: [...] or user_ids: [...]")
    if not 1 <= len(own) <= MAX_BATCH:
        raise RequestError("invalid_batch", f"a batch holds 1 to {MAX_BATCH} users")
    snapshot = request.app[REGISTRY].snapshot
    scoring = request.app[SCORING]
    field = "requests" if "requests" in body else "user_ids"
    scored: list[Scored] = []
    with scoring.reserve(len(own)):
        # Parsing alone can take longer than the event loop may stall: on a scoring thread.
        queries = await scoring.run(_batch_queries, shared, own, weight=0)
        _check_work([q.k for q in queries], field)
        # In parts, so that requests scored meanwhile wait for one part, not the batch.
        for start in range(0, len(queries), BATCH_PART):
            part = queries[start : start + BATCH_PART]
            scored += await scoring.run(_score_part, snapshot, part, weight=0)
    results = []
    for start in range(0, len(scored), 100):
        results += [_respond(request, *one) for one in scored[start : start + 100]]
        await asyncio.sleep(0)  # a thousand answers recorded at once would stall the loop
    request["labels"] = ("mixed", "mixed")
    payload = await scoring.run(_encode_results, results, weight=0)
    return web.Response(body=payload, content_type="application/json")


async def similar_items(request: web.Request) -> web.Response:
    item_id = request.match_info["item_id"]
    k = _k(request.query.get("k"))
    snapshot = request.app[REGISTRY].snapshot
    user = request.query.get("user_id")
    model, cohort = snapshot.route(_user_id(user)) if user else (snapshot.stable, "stable")
    if model is None:
        raise RequestError("no_model", "no model is loaded yet", 503)
    request["labels"] = (model.version, cohort)
    ranked = await request.app[SCORING].run(model.similar, item_id, k)
    if ranked is None:
        raise RequestError("unknown_item", f"item {item_id!r} is not in model {model.version}", 404)
    return web.json_response(
        {
            "item_id": item_id,
            "model_version": model.version,
            "cohort": cohort,
            "items": _items(model, ranked.item_ids, ranked.scores),
        }
    )


async def user_profile(request: web.Request) -> web.Response:
    user_id = _user_id(request.match_info["user_id"])
    model, cohort = request.app[REGISTRY].snapshot.route(user_id)
    if model is None:
        raise RequestError("no_model", "no model is loaded yet", 503)
    request["labels"] = (model.version, cohort)
    found = profile(model, user_id)
    if found is None:
        raise RequestError("unknown_user", f"model {model.version} knows nothing of this user", 404)
    return web.json_response({**found, "cohort": cohort})


async def guide_query(request: web.Request) -> web.Response:
    body = await _json_body(request)
    query = body.get("query")
    if not isinstance(query, str):
        raise RequestError("invalid_query", "query is required and must be a string")
    user = body.get("user_id")
    user_id = None if user is None else _user_id(user)
    k = _k(body.get("k"))
    snapshot = request.app[REGISTRY].snapshot
    model, cohort = snapshot.route(user_id) if user_id else (snapshot.stable, "stable")
    if model is None:
        raise RequestError("no_model", "no model is loaded yet", 503)
    request["labels"] = (model.version, cohort)
    try:
        filters = _filters(body) or Filters()
        answer = await request.app[SCORING].run(guide, model, query, user_id, k, filters)
    except QueryError as exc:
        raise RequestError("invalid_query", str(exc)) from exc
    return web.json_response({**answer, "cohort": cohort})


async def feedback(request: web.Request) -> web.Response:
    body = await _json_body(request)
    recommendation_id = body.get("recommendation_id")
    if not isinstance(recommendation_id, str) or not recommendation_id:
        raise RequestError("invalid_recommendation_id", "recommendation_id is required")
    user_id = _user_id(body.get("user_id"))
    item = body.get("item_id")
    if not isinstance(item, str | int) or isinstance(item, bool) or not str(item):
        raise RequestError("invalid_item_id", "item_id is required")
    event = body.get("event")
    if event not in FEEDBACK_EVENTS:
        raise RequestError("invalid_event", f"event must be one of {', '.join(FEEDBACK_EVENTS)}")
    served = request.app[SERVED].get(recommendation_id)
    version, cohort = (served.model_version, served.cohort) if served else ("unknown", "unknown")
    request.app[METRICS].feedback.labels(version, cohort, event).inc()
    request["labels"] = (version, cohort)
    return web.json_response(
        {"accepted": True, "model_version": version, "cohort": cohort, "user_id": user_id},
        status=202,
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready, detail = request.app[REGISTRY].readiness()
    if request.app[STATE].get("draining"):
        ready, detail["draining"] = False, True
    return web.json_response(detail, status=200 if ready else 503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    payload = generate_latest(request.app[METRICS].registry)
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


# Wiring ----------------------------------------------------------------------------------
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    resource = request.match_info.route.resource
    endpoint = _ENDPOINTS.get(resource.canonical if resource else "", "other")
    started = time.perf_counter()
    response: web.StreamResponse
    try:
        response = await handler(request)
    except RequestError as exc:
        request.app[METRICS].errors.labels(endpoint, exc.code).inc()
        response = _error(exc.status, exc.code, exc.message)
    except OverloadedError as exc:
        request.app[METRICS].errors.labels(endpoint, "overloaded").inc()
        response = _error(503, "overloaded", str(exc))
        response.headers["Retry-After"] = str(exc.retry_after_seconds)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = "not_found" if exc.status == 404 else "http_error"
        response = _error(exc.status, code, exc.reason)
    except Exception:
        log.exception("unexpected error on %s", request.path)
        request.app[METRICS].errors.labels(endpoint, "internal").inc()
        response = _error(500, "internal", "internal error")
    if endpoint != "other":
        version, cohort = request.get("labels", ("none", "none"))
        metrics = request.app[METRICS]
        metrics.requests.labels(endpoint, version, cohort, str(response.status)).inc()
        metrics.latency.labels(endpoint, version, cohort).observe(time.perf_counter() - started)
    return response


def _publish(metrics: ServerMetrics, snapshot: Snapshot) -> None:
    metrics.model_info.clear()
    routing = snapshot.routing
    for version, model in snapshot.models.items():
        role = "canary" if routing and version == routing.canary else "stable"
        metrics.model_info.labels(version, model.algorithm, role).set(1)
        metrics.model_load_seconds.labels(version).set(model.load_seconds)
    for version in snapshot.failures:
        metrics.model_load_failures.labels(version).inc()
    # One series per routed version that does not load; gone once it loads or is unrouted.
    metrics.model_load_failed.clear()
    for version, reason in snapshot.failures.items():
        metrics.model_load_failed.labels(version, reason).set(1)
    if snapshot.generation_applied is not None:
        metrics.routing_generation.set(snapshot.generation_applied)
    serving_canary = snapshot.canary is not None
    metrics.canary_weight.set(
        routing.canary_weight_basis_points if routing and serving_canary else 0
    )
    metrics.canary_failed.set(1 if routing and routing.canary and not serving_canary else 0)


def _metrics_site(
    metrics: ServerMetrics, host: str, port: int
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def serve_metrics(app: web.Application) -> AsyncIterator[None]:
        metrics_app = web.Application()
        metrics_app[METRICS] = metrics
        metrics_app.router.add_get("/metrics", metrics_endpoint)
        runner = web.AppRunner(metrics_app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        yield
        await runner.cleanup()

    return serve_metrics


def build_app(
    registry: Registry,
    *,
    metrics: ServerMetrics | None = None,
    served_capacity: int = 200_000,
    reload_interval: float = 2.0,
    metrics_address: tuple[str, int] | None = None,
    scoring: ScoringConfig | None = None,
) -> web.Application:
    """The server. With `metrics_address` (host, port), /metrics answers there only, on a
    port of its own that a NetworkPolicy can open to scrapers and close to shoppers; without
    it, on the serving port. `scoring`: threads, batching and queue bound (batcher.py)."""
    app = web.Application(middlewares=[errors_and_metrics], client_max_size=MAX_BODY_BYTES)
    app[REGISTRY] = registry
    app[METRICS] = metrics or ServerMetrics()
    app[SERVED] = ServedLog(served_capacity)
    app[STATE] = {}
    app[SCORING] = Scoring(scoring)
    server_metrics = app[METRICS]
    registry.subscribe(lambda snapshot: _publish(server_metrics, snapshot))
    app.router.add_get("/v1/recommendations", recommendations_get)
    app.router.add_post("/v1/recommendations", recommendations_post)
    app.router.add_post("/v1/recommendations:batch", recommendations_batch)
    app.router.add_get("/v1/items/{item_id}/similar", similar_items)
    app.router.add_post("/v1/feedback", feedback)
    app.router.add_get("/v1/users/{user_id}/profile", user_profile)
    app.router.add_post("/v1/guide", guide_query)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if metrics_address is None:
        app.router.add_get("/metrics", metrics_endpoint)
    else:
        app.cleanup_ctx.append(_metrics_site(server_metrics, *metrics_address))

    async def start_watching(app: web.Application) -> AsyncIterator[None]:
        # Load in the background: /healthz answers while a large model is still loading.
        task = asyncio.create_task(registry.watch(reload_interval))
        yield
        task.cancel()

    async def scoring_threads(app: web.Application) -> AsyncIterator[None]:
        await app[SCORING].start()
        yield
        app[SCORING].close()

    async def drain(app: web.Application) -> None:
        app[STATE]["draining"] = True

    app.cleanup_ctx.append(scoring_threads)
    app.cleanup_ctx.append(start_watching)
    app.on_shutdown.append(drain)
    return app


__all__ = ["ServingModel", "build_app"]
