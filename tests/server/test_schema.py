"""The typed API: unknown and mistyped fields are errors that name the field, the OpenAPI
document is the one generated from the types, and the server serves it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from multidict import MultiDict

from shopping_guide.artifacts import ModelStore
from shopping_guide.serving import openapi, schema
from shopping_guide.serving.app import build_app
from shopping_guide.serving.decoding import RequestError, decode_query, validation_error
from shopping_guide.serving.registry import Registry
from tests.server.conftest import Models, Server, running_server

REPO = Path(__file__).resolve().parents[2]


def body_error(raw: bytes, kind: type[msgspec.Struct]) -> RequestError:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.json.decode(raw, type=kind)
    return validation_error(caught.value, kind)


@pytest.mark.parametrize(
    ("raw", "kind", "code", "message"),
    [
        # The typo: `exclude` for `exclude_items` was ignored and answered 200.
        (b'{"user_id": "12748", "exclude": ["85123A"]}', schema.RecommendationRequest,
         "unknown_field", "unknown field `exclude` in `$`"),
        (b'{"user_id": "u", "allow": ["a"]}', schema.RecommendationRequest,
         "unknown_field", "unknown field `allow` in `$`"),
        (b'{"user_id": "u", "filters": {"category": "x"}}', schema.RecommendationRequest,
         "unknown_field", "unknown field `category` in `$.filters`"),
        (b'{"user_id": "u", "k": "5"}', schema.RecommendationRequest,
         "invalid_k", "Expected `int`, got `str` - at `$.k`"),
        (b'{"user_id": 12748}', schema.RecommendationRequest,
         "invalid_user_id", "Expected `str`, got `int` - at `$.user_id`"),
        (b'{"user_id": "u", "filters": {"min_price": -1}}', schema.RecommendationRequest,
         "invalid_min_price", "Expected `float` >= 0.0 - at `$.filters.min_price`"),
        (b'{"k": 3}', schema.RecommendationRequest,
         "invalid_user_id", "user_id is required (missing in `$`)"),
        (b'{"requests": [{"user_id": "a"}, {"user_id": "b", "exclude": []}]}',
         schema.BatchRequest, "unknown_field", "unknown field `exclude` in `$.requests[1]`"),
        (b'{"recommendation_id": "r", "user_id": "u", "item_id": "i", "event": "like"}',
         schema.FeedbackRequest, "invalid_event",
         "Invalid enum value 'like', expected one of cart, click, purchase, view - at `$.event`"),
        (b'[1]', schema.GuideRequest, "invalid_body", "Expected `object`, got `array`"),
    ],
)  # fmt: skip
def test_body_mistakes_name_the_field_and_what_it_expects(
    raw: bytes, kind: type[msgspec.Struct], code: str, message: str
) -> None:
    error = body_error(raw, kind)
    assert (error.status, error.code) == (400, code)
    assert message in error.message, error.message


@pytest.mark.parametrize(
    ("query", "code", "message"),
    [
        ({"user_id": "u", "exclude": "a1"}, "unknown_field",
         "unknown field `exclude` in the query string"),
        ({"user_id": "u", "k": "ten"}, "invalid_k",
         "Expected `int`, got `str` - at query parameter `k`"),
        ({"user_id": "u", "exclude_seen": "maybe"}, "invalid_exclude_seen", "Expected `bool`"),
        ({"user_id": "u", "min_price": "nan"}, "invalid_min_price", ">= 0.0"),
        ({"k": "3"}, "invalid_user_id", "user_id is required (missing in the query string)"),
    ],
)  # fmt: skip
def test_query_mistakes_name_the_parameter(query: dict[str, str], code: str, message: str) -> None:
    with pytest.raises(RequestError) as caught:
        decode_query(MultiDict(query), schema.RecommendationQuery)
    assert caught.value.code == code
    assert message in caught.value.message, caught.value.message


def test_query_lists_are_comma_separated_and_parameters_given_once() -> None:
    query = MultiDict(
        user_id="u", k="3", exclude_items="a1,,a2", exclude_seen="false", categories="mug"
    )
    parsed = decode_query(query, schema.RecommendationQuery)
    assert (parsed.k, parsed.exclude_items, parsed.exclude_seen) == (3, ["a1", "a2"], False)
    assert parsed.categories == ["mug"] and parsed.allow_items is None
    with pytest.raises(RequestError, match="more than once"):
        decode_query(MultiDict([("user_id", "u"), ("k", "1"), ("k", "2")]), schema.SimilarQuery)


def test_the_document_in_docs_is_generated_from_the_types() -> None:
    assert (REPO / "docs" / "openapi.json").read_bytes() == openapi.document_bytes(), (
        "docs/openapi.json is out of date: run `make openapi`"
    )


def test_every_route_is_documented_with_its_types(tmp_path: Path) -> None:
    app = build_app(Registry(ModelStore(tmp_path), tmp_path / "routing.json"))
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    document = openapi.document()
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert routes - documented == {("get", "/openapi.json"), ("get", "/metrics")}
    assert documented <= routes
    schemas = document["components"]["schemas"]
    assert schemas["RecommendationRequest"]["additionalProperties"] is False
    assert schemas["CatalogFilters"]["additionalProperties"] is False
    k = schemas["RecommendationRequest"]["properties"]["k"]
    assert (k["minimum"], k["maximum"], k["default"]) == (1, schema.MAX_K, 10)
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                ref = response["content"]["application/json"]["schema"]["$ref"]
                if status.startswith(("4", "5")) and path != "/readyz":
                    assert ref.endswith("/ErrorResponse"), (method, path, status)


@pytest.fixture(scope="module")
def one_server(models: Models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(models.store, models.als, tmp_path_factory.mktemp("schema")) as srv:
        yield srv


def test_the_server_serves_the_document(one_server: Server) -> None:
    status, served = one_server.get("/openapi.json")
    assert status == 200 and served == openapi.document()


@pytest.mark.parametrize(
    ("method", "path", "body", "code"),
    [
        ("POST", "/v1/recommendations", {"user_id": "12748", "exclude": ["85123A"]},
         "unknown_field"),
        ("GET", "/v1/recommendations?user_id=u&allow=a1", None, "unknown_field"),
        ("GET", "/v1/users/a-user-1/profile?verbose=1", None, "unknown_field"),
        ("GET", "/v1/items/a1/similar?k=2&user=a-user-1", None, "unknown_field"),
        ("POST", "/v1/recommendations:batch", {"user_ids": ["u"], "requests": [{"user_id": "v"}]},
         "invalid_batch"),
        ("POST", "/v1/recommendations:batch", {"k": 3}, "invalid_batch"),
        ("POST", "/v1/feedback", {"recommendation_id": "r", "user_id": "u", "item_id": "i",
                                  "event": "click", "extra": 1}, "unknown_field"),
        ("GET", "/v1/users/" + "x" * 300 + "/profile", None, "invalid_user_id"),
    ],
)  # fmt: skip
def test_the_server_rejects_what_the_schema_does_not_name(
    one_server: Server, method: str, path: str, body: Any, code: str
) -> None:
    status, answer = one_server.request(method, path, body)
    assert status == 400 and answer["error"]["code"] == code, answer


def test_a_batch_entry_overrides_the_batch_options(one_server: Server) -> None:
    status, body = one_server.request(
        "POST", "/v1/recommendations:batch",
        {"k": 2, "exclude_items": ["a0"],
         "requests": [{"user_id": "a-user-0"}, {"user_id": "a-user-0", "k": 1,
                                                "exclude_items": []}]},
    )  # fmt: skip
    assert status == 200, body
    first, second = body["results"]
    assert len(first["items"]) == 2 and "a0" not in [i["item_id"] for i in first["items"]]
    assert [i["item_id"] for i in second["items"]] == ["a0"]  # its own k, nothing excluded
