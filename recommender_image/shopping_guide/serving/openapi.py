"""The OpenAPI 3.1 document of the server, generated from the types of `schema`.

The server decodes and encodes with the same types, so the document cannot drift from what
the server does; `docs/openapi.json` is this module's output (`make openapi`), and a test
holds it equal. `python -m shopping_guide.serving.openapi` prints it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import msgspec

from . import schema as s

JSON = dict[str, Any]
REF = "#/components/schemas/{name}"
API_VERSION = "v1"


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    # status -> (body type, description); errors are `ErrorResponse`
    responses: dict[int, tuple[type, str]]
    body: type | None = None
    query: type | None = None
    path_params: type | None = None
    tags: tuple[str, ...] = field(default=("recommendations",))


_BAD = (s.ErrorResponse, "a field is unknown, missing or out of range; the message names it")
_TOO_LARGE = (s.ErrorResponse, "the body exceeds 1 MiB")
_NO_MODEL = (
    s.ErrorResponse,
    "no model is loaded yet, or the server is overloaded (code `overloaded`, with Retry-After)",
)

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "get", "/v1/recommendations", "getRecommendations", "Top-k items for one shopper",
        {200: (s.RecommendationResponse, "the list"), 400: _BAD, 503: _NO_MODEL},
        query=s.RecommendationQuery,
    ),
    Operation(
        "post", "/v1/recommendations", "recommend", "Top-k items for one shopper",
        {200: (s.RecommendationResponse, "the list"), 400: _BAD, 413: _TOO_LARGE,
         503: _NO_MODEL},
        body=s.RecommendationRequest,
    ),
    Operation(
        "post", "/v1/recommendations:batch", "recommendBatch", "Top-k items for many shoppers",
        {200: (s.BatchResponse, "one list per shopper, in order"), 400: _BAD,
         413: _TOO_LARGE,
         422: (s.ErrorResponse, "users x k exceeds 100,000 scored rows; the message says so"),
         503: _NO_MODEL},
        body=s.BatchRequest,
    ),
    Operation(
        "get", "/v1/items/{item_id}/similar", "similarItems", "Items similar to one item",
        {200: (s.SimilarResponse, "the similar items"), 400: _BAD,
         404: (s.ErrorResponse, "the model does not know the item"), 503: _NO_MODEL},
        query=s.SimilarQuery, path_params=s.ItemPath,
    ),
    Operation(
        "get", "/v1/items/{item_id}/bought-together", "boughtTogether",
        "Items bought together with one item",
        {200: (s.BasketResponse, "the items, each with the source that filled its slot"),
         400: _BAD, 404: (s.ErrorResponse, "the model does not know the item"),
         503: _NO_MODEL},
        query=s.BoughtTogetherQuery, path_params=s.ItemPath, tags=("baskets",),
    ),
    Operation(
        "post", "/v1/baskets:complete", "completeBasket", "What to add to a basket",
        {200: (s.BasketResponse, "the items, each with the source that filled its slot"),
         400: _BAD, 413: _TOO_LARGE, 503: _NO_MODEL},
        body=s.BasketRequest, tags=("baskets",),
    ),
    Operation(
        "post", "/v1/feedback", "feedback", "What a shopper did with a recommended item",
        {202: (s.FeedbackResponse, "counted, attributed to what served the list"), 400: _BAD,
         413: _TOO_LARGE},
        body=s.FeedbackRequest, tags=("feedback",),
    ),
    Operation(
        "get", "/v1/users/{user_id}/profile", "userProfile", "What the model knows of a shopper",
        {200: (s.ProfileResponse, "top categories and items"), 400: _BAD,
         404: (s.ErrorResponse, "the model knows nothing of this shopper"), 503: _NO_MODEL},
        query=s.EmptyQuery, path_params=s.UserPath, tags=("shoppers",),
    ),
    Operation(
        "post", "/v1/guide", "guide", "Items for a shopper's words, explained",
        {200: (s.GuideResponse, "the matching items"),
         400: (s.ErrorResponse, "a bad field, or a query the catalogue cannot answer"),
         413: _TOO_LARGE, 503: _NO_MODEL},
        body=s.GuideRequest, tags=("guide",),
    ),
    Operation(
        "get", "/v1/trending", "trending", "Items trending now, within the catalogue filters",
        {200: (s.TrendingResponse, "the items, best first; empty with a reason"),
         400: (s.ErrorResponse, "a bad parameter, or filters on a model without a catalogue"),
         503: _NO_MODEL},
        query=s.TrendingQuery,
    ),
    Operation(
        "get", "/healthz", "healthz", "Liveness", {200: (s.Health, "the process answers")},
        tags=("operations",),
    ),
    Operation(
        "get", "/readyz", "readyz", "Readiness, with the state of each routed version",
        {200: (s.Readiness, "the stable version serves"),
         503: (s.Readiness, "not ready: no stable version yet, or draining")},
        tags=("operations",),
    ),
)  # fmt: skip


def _not_null(prop: JSON) -> JSON:
    """A parameter left out is the field's null: a query string has no null of its own."""
    alternatives = [a for a in prop.get("anyOf", []) if a.get("type") != "null"]
    if len(alternatives) != 1:
        return prop
    return {**{k: v for k, v in prop.items() if k not in ("anyOf", "default")}, **alternatives[0]}


def _parameters(properties: JSON, required: list[str], where: str) -> list[JSON]:
    params = []
    for name, given in properties.items():
        prop = _not_null(given)
        param: JSON = {"name": name, "in": where, "required": name in required, "schema": prop}
        if "description" in prop:
            param["description"] = prop["description"]
        if prop.get("type") == "array":
            # Lists are comma-separated: `exclude_items=a1,a2`; empty parts are dropped, so
            # an item of the text may be empty whatever the decoded list's items must be.
            items = {k: v for k, v in prop.get("items", {}).items() if k != "minLength"}
            param.update(style="form", explode=False, schema={**prop, "items": items})
        params.append(param)
    return params


def _operation(op: Operation, components: JSON, refs: dict[type, JSON]) -> JSON:
    out: JSON = {"operationId": op.operation_id, "summary": op.summary, "tags": list(op.tags)}
    params: list[JSON] = []
    for kind, where in ((op.path_params, "path"), (op.query, "query")):
        if kind is not None:
            component = components[kind.__name__]
            params += _parameters(component["properties"], component.get("required", []), where)
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[op.body]}},
        }
    out["responses"] = {
        str(status): {
            "description": description,
            "content": {"application/json": {"schema": refs[kind]}},
        }
        for status, (kind, description) in sorted(op.responses.items())
    }
    return out


@cache
def document() -> JSON:
    kinds: list[type] = []
    for op in OPERATIONS:
        for kind in (op.body, op.query, op.path_params, *(k for k, _ in op.responses.values())):
            if kind is not None and kind not in kinds:
                kinds.append(kind)
    schemas, components = msgspec.json.schema_components(kinds, ref_template=REF)
    refs = dict(zip(kinds, schemas, strict=True))
    for name, extra in s.EXTRA_SCHEMA.items():
        components[name].update(extra)
    paths: JSON = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, components, refs)
    for op in OPERATIONS:
        # Parameters are described inline; their structs are no schema of a body.
        for kind in (op.query, op.path_params):
            if kind is not None:
                components.pop(kind.__name__, None)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Shopping Guide recommender",
            "version": API_VERSION,
            "description": (
                "Recommendations, guided queries and feedback of one ShoppingGuide. Requests "
                "name only the fields documented here: any other field is a 400 that names it."
            ),
        },
        "paths": paths,
        "components": {"schemas": dict(sorted(components.items()))},
    }


@cache
def document_bytes() -> bytes:
    return (json.dumps(document(), indent=2) + "\n").encode()


if __name__ == "__main__":
    import sys

    sys.stdout.buffer.write(document_bytes())
