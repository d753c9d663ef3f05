"""HTTP endpoints (aiohttp). Every client mistake is a 4xx with `{"error": {code, message}}`.

Bodies and query strings are decoded into the types of `schema` (unknown fields are errors)
and answers are encoded from them, the same types `/openapi.json` documents.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime

import msgspec
from aiohttp import hdrs, web
from msgspec import UNSET, UnsetType
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shopping_guide_contracts.routing import Cohort

from ..errors import ArtifactError
from . import openapi
from .attribution import Attributor
from .baskets import complete
from .batcher import OverloadedError, Scoring, ScoringConfig
from .decoding import MAX_BODY_BYTES, RequestError, decode_body, decode_query
from .fallback import Reason
from .guide import QueryError, guide, profile
from .metrics import ServerMetrics
from .registry import Registry, Snapshot
from .schema import (
    BasketRequest,
    BasketResponse,
    BatchRequest,
    BoughtTogetherQuery,
    CatalogFilters,
    EmptyQuery,
    ErrorDetail,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    GuideRequest,
    GuideResponse,
    Health,
    ItemPath,
    ProfileResponse,
    Readiness,
    RecommendationQuery,
    RecommendationRequest,
    RecommendationResponse,
    ScoredItem,
    SimilarQuery,
    SimilarResponse,
    SourcedItem,
    TrendingItem,
    TrendingQuery,
    TrendingResponse,
    UserPath,
)
from .scorer import Filters, Query, Ranked, ServingModel

log = logging.getLogger(__name__)

# Paths whose requests are counted and timed, by the metric label they get.
_ENDPOINTS = {
    "/v1/recommendations": "recommendations",
    "/v1/recommendations:batch": "batch",
    "/v1/items/{item_id}/similar": "similar",
    "/v1/items/{item_id}/bought-together": "bought_together",
    "/v1/baskets:complete": "basket",
    "/v1/feedback": "feedback",
    "/v1/users/{user_id}/profile": "profile",
    "/v1/guide": "guide",
    "/v1/trending": "trending",
}

REGISTRY = web.AppKey("registry", Registry)
METRICS = web.AppKey("metrics", ServerMetrics)
ATTRIBUTOR = web.AppKey("attributor", Attributor)
SCORING = web.AppKey("scoring", Scoring)
STATE = web.AppKey("state", dict)
# The (model_version, cohort) a request was served with: the labels of its metrics.
LABELS = web.RequestKey("labels", tuple[str, str])

_ENCODER = msgspec.json.Encoder()
# Rows of top-k one request may ask for (users x k): bounds its time and its response size.
MAX_SCORED_ROWS = 100_000
BATCH_PART = 100  # users of a batch request scored in one go


def _respond(body: msgspec.Struct, status: int = 200) -> web.Response:
    return web.Response(body=_ENCODER.encode(body), status=status, content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return _respond(ErrorResponse(ErrorDetail(code, message)), status)


# From the request types to the scorer's -------------------------------------------------
def _filters(given: CatalogFilters | None) -> Filters | None:
    if given is None:
        return None
    filters = Filters(
        categories=tuple(given.categories),
        min_price=given.min_price,
        max_price=given.max_price,
        in_stock_only=given.in_stock_only,
    )
    return None if filters.empty else filters


def _from_query(query: RecommendationQuery) -> RecommendationRequest:
    filters = CatalogFilters(
        categories=query.categories,
        min_price=query.min_price,
        max_price=query.max_price,
        in_stock_only=query.in_stock_only,
    )
    return RecommendationRequest(
        user_id=query.user_id,
        k=query.k,
        exclude_items=query.exclude_items,
        allow_items=query.allow_items,
        exclude_seen=query.exclude_seen,
        recent_items=query.recent_items,
        filters=filters,
    )


def _batch_requests(body: BatchRequest) -> list[RecommendationRequest]:
    """One request per shopper: the batch's options, overridden by an entry's own."""
    if (body.user_ids is UNSET) == (body.requests is UNSET):
        raise RequestError("invalid_batch", "send either `user_ids: [...]` or `requests: [...]`")
    shared = RecommendationRequest(
        user_id="",
        k=body.k,
        exclude_items=body.exclude_items,
        allow_items=body.allow_items,
        exclude_seen=body.exclude_seen,
        recent_items=body.recent_items,
        filters=body.filters,
    )
    if body.user_ids is not UNSET:
        return [msgspec.structs.replace(shared, user_id=u) for u in body.user_ids]
    assert body.requests is not UNSET
    return [
        msgspec.structs.replace(
            shared,
            **{
                name: value
                for name, value in msgspec.structs.asdict(entry).items()
                if value is not UNSET
            },
        )
        for entry in body.requests
    ]


def _items(
    model: ServingModel,
    item_ids: list[str],
    scores: list[float],
    reason: Reason | UnsetType = UNSET,
) -> list[ScoredItem]:
    """Response items; with a catalogue, each also carries its title."""
    items = [
        ScoredItem(i, round(s, 6), UNSET, reason) for i, s in zip(item_ids, scores, strict=True)
    ]
    if model.catalog is not None and items:
        for item, index in zip(items, model.items.lookup(item_ids), strict=True):
            title = str(model.catalog.titles[index])
            if title:
                item.title = title
    return items


def _ranked_items(model: ServingModel, ranked: Ranked) -> list[ScoredItem]:
    """A list's items, each with the reason it is there (and the item it follows from)."""
    if ranked.reasons is None:
        # One reason for all (the hot path): set as the items are made, not item by item.
        return _items(model, ranked.item_ids, ranked.scores, ranked.reason_of(0))
    items = _items(model, ranked.item_ids, ranked.scores)
    because = ranked.because or [None] * len(items)
    for item, reason, source in zip(items, ranked.reasons, because, strict=True):
        item.reason = reason
        if source is not None:
            item.because = source
    return items


def _with_rules(query: Query, snapshot: Snapshot) -> Query:
    """The query under the guide's rules and exploration, from the routing in effect."""
    routing = snapshot.routing
    if routing is None or routing.merchandising.empty:
        return query
    return dataclasses.replace(query, merchandising=routing.merchandising)


# Handlers --------------------------------------------------------------------------------
def _query(options: RecommendationRequest) -> Query:
    return Query(
        user_id=options.user_id,
        k=options.k,
        exclude=tuple(options.exclude_items),
        allow=None if options.allow_items is None else tuple(options.allow_items),
        exclude_seen=options.exclude_seen,
        recent_items=tuple(options.recent_items),
        filters=_filters(options.filters),
    )


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


def _answer(
    request: web.Request,
    model: ServingModel,
    cohort: Cohort,
    query: Query,
    ranked: Ranked,
    items: list[ScoredItem] | None = None,
) -> RecommendationResponse:
    """A scored request's answer, counted (on the event loop) and signed for feedback."""
    app = request.app
    metrics = app[METRICS]
    metrics.recommendations.labels(model.version, cohort).inc()
    metrics.impressions.labels(model.version, cohort).inc(len(ranked.item_ids))
    if not ranked.item_ids:
        metrics.empty.labels(model.version, cohort).inc()
    if ranked.strategy != "personalized":
        metrics.cold_starts.labels(model.version, cohort, ranked.strategy).inc()
    request[LABELS] = (model.version, cohort)
    return RecommendationResponse(
        recommendation_id=app[ATTRIBUTOR].issue(model.version, cohort),
        user_id=query.user_id,
        model_version=model.version,
        cohort=cohort,
        cold_start=ranked.strategy != "personalized",
        strategy=ranked.strategy,
        items=_ranked_items(model, ranked) if items is None else items,
        unknown_items=ranked.unknown_items[:100] if ranked.unknown_items else UNSET,
        empty_reason=UNSET if ranked.empty_reason is None else ranked.empty_reason,
    )


async def _recommend_one(
    request: web.Request, snapshot: Snapshot, options: RecommendationRequest
) -> RecommendationResponse:
    query = _with_rules(_query(options), snapshot)
    model, cohort = snapshot.route(query.user_id)
    if model is None:
        raise RequestError("no_model", "no model is loaded yet", 503)
    try:
        ranked = await request.app[SCORING].recommend(model, query)
    except ArtifactError as exc:
        raise RequestError("no_catalog", str(exc)) from exc
    return _answer(request, model, cohort, query, ranked)


async def recommendations_get(request: web.Request) -> web.Response:
    options = _from_query(decode_query(request.query, RecommendationQuery))
    snapshot = request.app[REGISTRY].snapshot
    return _respond(await _recommend_one(request, snapshot, options))


async def recommendations_post(request: web.Request) -> web.Response:
    options = await decode_body(request, RecommendationRequest)
    snapshot = request.app[REGISTRY].snapshot
    return _respond(await _recommend_one(request, snapshot, options))


Scored = tuple[ServingModel, Cohort, Query, Ranked, list[ScoredItem]]


def _score_part(snapshot: Snapshot, queries: list[Query]) -> list[Scored]:
    """Route and score part of a batch, and render its items (on a scoring thread)."""
    queries = [_with_rules(q, snapshot) for q in queries]
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
        out.append((model, cohort, query, r, _ranked_items(model, r)))
    return out


def _encode_results(results: list[RecommendationResponse]) -> bytes:
    """The batch's JSON one result at a time, on a scoring thread: one encoder call over a
    large batch would hold the GIL, and so the event loop, for all of it."""
    encode = msgspec.json.Encoder().encode  # an encoder of this thread's own
    return b'{"results":[' + b",".join(encode(r) for r in results) + b"]}"


async def recommendations_batch(request: web.Request) -> web.Response:
    body = await decode_body(request, BatchRequest)
    field = "user_ids" if body.user_ids is not UNSET else "requests"
    snapshot = request.app[REGISTRY].snapshot
    scoring = request.app[SCORING]
    requests = _batch_requests(body)
    scored: list[Scored] = []
    with scoring.reserve(len(requests)):
        queries = [_query(options) for options in requests]
        _check_work([q.k for q in queries], field)
        # In parts, so that requests scored meanwhile wait for one part, not the batch.
        for start in range(0, len(queries), BATCH_PART):
            part = queries[start : start + BATCH_PART]
            scored += await scoring.run(_score_part, snapshot, part, weight=0)
    results: list[RecommendationResponse] = []
    for start in range(0, len(scored), 100):
        results += [_answer(request, *one) for one in scored[start : start + 100]]
        await asyncio.sleep(0)  # a thousand answers signed at once would stall the loop
    request[LABELS] = ("mixed", "mixed")
    payload = await scoring.run(_encode_results, results, weight=0)
    return web.Response(body=payload, content_type="application/json")


def _model_for(request: web.Request, user_id: str | None) -> tuple[ServingModel, Cohort]:
    """The model of the shopper's cohort (the stable one without a shopper), labelled on the
    request for its metrics; 503 while none is loaded."""
    snapshot = request.app[REGISTRY].snapshot
    cohort: Cohort = "stable"
    if user_id is None:
        model = snapshot.stable
    else:
        model, cohort = snapshot.route(user_id)
    if model is None:
        raise RequestError("no_model", "no model is loaded yet", 503)
    request[LABELS] = (model.version, cohort)
    return model, cohort


async def similar_items(request: web.Request) -> web.Response:
    item_id = decode_query(request.match_info, ItemPath, "path").item_id
    query = decode_query(request.query, SimilarQuery)
    model, cohort = _model_for(request, query.user_id)
    ranked = await request.app[SCORING].run(model.similar, item_id, query.k)
    if ranked is None:
        raise RequestError("unknown_item", f"item {item_id!r} is not in model {model.version}", 404)
    return _respond(
        SimilarResponse(
            item_id=item_id,
            model_version=model.version,
            cohort=cohort,
            items=_items(model, ranked.item_ids, ranked.scores),
        )
    )


def _trending(model: ServingModel, k: int, filters: Filters | None) -> list[TrendingItem]:
    found = model.trending
    if found is None:
        return []
    indices, at = model.trending_within(k, model.candidates(None, filters))
    names = model._names(indices)
    titled = _items(model, names, found.scores[at].tolist())
    return [
        TrendingItem(item.item_id, item.score, int(recent), int(base), item.title)
        for item, recent, base in zip(titled, found.recent[at], found.baseline[at], strict=True)
    ]


async def trending(request: web.Request) -> web.Response:
    query = decode_query(request.query, TrendingQuery)
    model, cohort = _model_for(request, None if query.user_id is UNSET else query.user_id)
    filters = _filters(CatalogFilters(
        categories=query.categories,
        min_price=None if query.min_price is UNSET else query.min_price,
        max_price=None if query.max_price is UNSET else query.max_price,
        in_stock_only=query.in_stock_only,
    ))  # fmt: skip
    try:
        items = await request.app[SCORING].run(_trending, model, query.k, filters)
    except ArtifactError as exc:
        raise RequestError("no_catalog", str(exc)) from exc
    window = model.trending
    answer = TrendingResponse(
        model_version=model.version,
        cohort=cohort,
        window_hours=None if window is None else window.window_hours,
        window_end=None if window is None else _rfc3339(window.window_end),
        items=items,
    )
    if not items:
        answer.empty_reason = "no_trending_data" if window is None else "filtered_out"
    return _respond(answer)


def _rfc3339(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


async def _complete_basket(
    request: web.Request,
    basket: list[str],
    k: int,
    user_id: str | None,
    filters: CatalogFilters | None,
) -> BasketResponse:
    model, cohort = _model_for(request, user_id)
    try:
        candidates = model.candidates(None, _filters(filters))
    except ArtifactError as exc:
        raise RequestError("no_catalog", str(exc)) from exc
    done = await request.app[SCORING].run(complete, model, basket, k, candidates)
    names = [str(model.item_ids[i]) for i in done.indices]
    titled = _items(model, names, done.scores)
    items = [
        SourcedItem(item.item_id, item.score, source, item.title)
        for item, source in zip(titled, done.sources, strict=True)
    ]
    return BasketResponse(model.version, cohort, items, done.unknown_items[:100])


async def bought_together(request: web.Request) -> web.Response:
    item_id = decode_query(request.match_info, ItemPath, "path").item_id
    query = decode_query(request.query, BoughtTogetherQuery)
    filters = CatalogFilters(
        categories=query.categories, min_price=query.min_price, max_price=query.max_price,
        in_stock_only=query.in_stock_only,
    )  # fmt: skip
    answer = await _complete_basket(request, [item_id], query.k, query.user_id, filters)
    if answer.unknown_items:
        raise RequestError(
            "unknown_item", f"item {item_id!r} is not in model {answer.model_version}", 404
        )
    return _respond(answer)


async def complete_basket(request: web.Request) -> web.Response:
    body = await decode_body(request, BasketRequest)
    answer = await _complete_basket(request, body.items, body.k, body.user_id, body.filters)
    return _respond(answer)


async def user_profile(request: web.Request) -> web.Response:
    user_id = decode_query(request.match_info, UserPath, "path").user_id
    decode_query(request.query, EmptyQuery)
    model, cohort = request.app[REGISTRY].snapshot.route(user_id)
    if model is None:
        raise RequestError("no_model", "no model is loaded yet", 503)
    request[LABELS] = (model.version, cohort)
    found = profile(model, user_id)
    if found is None:
        raise RequestError("unknown_user", f"model {model.version} knows nothing of this user", 404)
    return _respond(msgspec.convert({**found, "cohort": cohort}, ProfileResponse))


async def guide_query(request: web.Request) -> web.Response:
    body = await decode_body(request, GuideRequest)
    model, cohort = _model_for(request, body.user_id)
    try:
        filters = _filters(body.filters) or Filters()
        answer = await request.app[SCORING].run(
            guide, model, body.query, body.user_id, body.k, filters
        )
    except QueryError as exc:
        raise RequestError("invalid_query", str(exc)) from exc
    return _respond(msgspec.convert({**answer, "cohort": cohort}, GuideResponse))


async def feedback(request: web.Request) -> web.Response:
    body = await decode_body(request, FeedbackRequest)
    # The id itself says which version and cohort served the list, whichever pod served it.
    attribution = request.app[ATTRIBUTOR].verify(body.recommendation_id)
    version, cohort = attribution.model_version, attribution.cohort
    snapshot = request.app[REGISTRY].snapshot
    # A late click on a list of a version this pod no longer serves (or never served) is
    # counted as `retired`: a series per retired version would stay in /metrics forever.
    label = version
    if version != "unknown" and version not in snapshot.models:
        label = "retired"
    metrics = request.app[METRICS]
    metrics.feedback.labels(label, cohort, body.event).inc()
    revenue = 0.0
    if body.event == "purchase":
        price = (
            body.price
            if body.price is not None
            else _catalogue_price(snapshot, version, body.item_id)
        )
        metrics.units.labels(label, cohort).inc(body.quantity)
        if price is None:
            metrics.unpriced.labels(label, cohort).inc()
        else:
            revenue = body.quantity * price
            metrics.revenue.labels(label, cohort).inc(revenue)
    request[LABELS] = (label, cohort)
    answer = FeedbackResponse(
        accepted=True,
        model_version=version,
        cohort=cohort,  # type: ignore[arg-type]
        attribution=attribution.outcome,
        user_id=body.user_id,
        revenue=round(revenue, 6),
    )
    return _respond(answer, status=202)


def _catalogue_price(snapshot: Snapshot, version: str, item_id: str) -> float | None:
    """The unit price in the catalogue of the version that served the list, else the stable
    version's (the list's version may be retired); None when neither knows it."""
    for model in (snapshot.models.get(version), snapshot.stable):
        if model is None or model.catalog is None:
            continue
        index = model.items.one(item_id)
        if index >= 0:
            price = float(model.catalog.price[index])
            if math.isfinite(price):
                return price
    return None


async def healthz(request: web.Request) -> web.Response:
    return _respond(Health("ok"))


async def readyz(request: web.Request) -> web.Response:
    ready, detail = request.app[REGISTRY].readiness()
    if request.app[STATE].get("draining"):
        ready, detail["draining"] = False, True
    loading = request.app[STATE].get("workers_loading")
    if ready and loading is not None and (count := loading()):
        # Ready here, not yet in every worker: the pod is not, whichever worker answers.
        ready = detail["ready"] = False
        detail["workers_loading"] = count
    return _respond(msgspec.convert(detail, Readiness), status=200 if ready else 503)


async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(body=openapi.document_bytes(), content_type="application/json")


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
        version, cohort = request.get(LABELS, ("none", "none"))
        metrics = request.app[METRICS]
        metrics.requests.labels(endpoint, version, cohort, str(response.status)).inc()
        metrics.latency.labels(endpoint, version, cohort).observe(time.perf_counter() - started)
    return response


def _publish(metrics: ServerMetrics, snapshot: Snapshot) -> None:
    routing = snapshot.routing
    # A stable version kept because its successor cannot load still serves: it stays.
    metrics.route({*(routing.versions() if routing else ()), *snapshot.models, *snapshot.failures})
    metrics.model_info.clear()
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
    if routing is not None:
        metrics.routing_generation_read.set(routing.generation)
    serving_canary = snapshot.canary is not None
    metrics.canary_weight.set(
        routing.canary_weight_basis_points if routing and serving_canary else 0
    )
    metrics.canary_failed.set(1 if routing and routing.canary and not serving_canary else 0)


def build_app(
    registry: Registry,
    *,
    metrics: ServerMetrics | None = None,
    attributor: Attributor | None = None,
    reload_interval: float = 2.0,
    metrics_route: bool = True,
    scoring: ScoringConfig | None = None,
    workers_loading: Callable[[], int] | None = None,
) -> web.Application:
    """The server. Without `metrics_route`, /metrics does not answer on the serving port: the
    supervisor serves it on a port of its own (workers.py), that a NetworkPolicy can open to
    scrapers and close to shoppers. Without an `attributor`, ids are signed with a key of this
    process only. `scoring`: threads, batching and queue bound (batcher.py). `workers_loading`:
    how many workers of the pod have no stable version yet (workers.py)."""
    app = web.Application(middlewares=[errors_and_metrics], client_max_size=MAX_BODY_BYTES)
    app[REGISTRY] = registry
    app[METRICS] = metrics or ServerMetrics()
    app[ATTRIBUTOR] = attributor or Attributor.ephemeral()
    app[STATE] = {"workers_loading": workers_loading}
    server_metrics = app[METRICS]
    app[SCORING] = Scoring(
        scoring, server_metrics.queued_users, server_metrics.batch_users,
        server_metrics.batch_wait, server_metrics.batch_seconds,
    )  # fmt: skip
    registry.subscribe(lambda snapshot: _publish(server_metrics, snapshot))
    app.router.add_get("/v1/recommendations", recommendations_get)
    app.router.add_post("/v1/recommendations", recommendations_post)
    app.router.add_post("/v1/recommendations:batch", recommendations_batch)
    app.router.add_get("/v1/items/{item_id}/similar", similar_items)
    app.router.add_get("/v1/items/{item_id}/bought-together", bought_together)
    app.router.add_post("/v1/baskets:complete", complete_basket)
    app.router.add_post("/v1/feedback", feedback)
    app.router.add_get("/v1/users/{user_id}/profile", user_profile)
    app.router.add_post("/v1/guide", guide_query)
    app.router.add_get("/v1/trending", trending)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi_document)
    if metrics_route:
        app.router.add_get("/metrics", metrics_endpoint)

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
        start_draining(app)

    app.cleanup_ctx.append(scoring_threads)
    app.cleanup_ctx.append(start_watching)
    app.on_response_prepare.append(_close_when_draining)
    app.on_shutdown.append(drain)
    return app


def start_draining(app: web.Application) -> None:
    """From now on /readyz answers 503 and every response closes its connection: clients that
    keep connections alive reconnect, to pods that stay, while this one still answers."""
    app[STATE]["draining"] = True


async def _close_when_draining(request: web.Request, response: web.StreamResponse) -> None:
    if request.app[STATE].get("draining"):
        # The headers are built by now: say it (the client's side) and do it (the server's).
        response.headers[hdrs.CONNECTION] = "close"
        response.force_close()


__all__ = ["ServingModel", "build_app", "start_draining"]
