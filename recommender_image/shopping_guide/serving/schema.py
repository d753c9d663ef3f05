"""The HTTP API's types: one msgspec Struct per request and response body, and per query.

msgspec rather than pydantic v2: it decodes, validates and encodes in one C pass several
times faster than pydantic on small bodies (the serving fast path), and its structs give both
`forbid_unknown_fields` and the JSON Schema that `openapi.py` publishes. Limits are `Meta`
constraints so that the server enforces exactly what the OpenAPI document says.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from shopping_guide_contracts.routing import Cohort

from .fallback import EmptyReason, Reason
from .guide import MAX_QUERY_LENGTH
from .scorer import Strategy

MAX_K = 1000
MAX_BATCH = 1000
MAX_LIST = 10_000
MAX_ID_LENGTH = 256
# An issued id is about 70 characters; anything much longer is not one of ours.
MAX_RECOMMENDATION_ID_LENGTH = 512

FeedbackEvent = Literal["view", "click", "cart", "purchase"]

UserId = Annotated[
    str,
    Meta(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"\S", description="a shopper's id"),
]
ItemId = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH, description="an item's id")]
ItemIds = Annotated[list[ItemId], Meta(max_length=MAX_LIST)]
Category = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH)]
K = Annotated[int, Meta(ge=1, le=MAX_K, description="how many items to return")]
Price = Annotated[float, Meta(ge=0)]
_BATCH = Meta(min_length=1, max_length=MAX_BATCH)


class _Request(Struct, forbid_unknown_fields=True):
    """Requests name every field they accept: any other field is an error, not ignored."""


# Requests ---------------------------------------------------------------------------------
class CatalogFilters(_Request):
    """Only items of the catalogue that pass every filter given."""

    categories: Annotated[list[Category], Meta(max_length=MAX_LIST)] = []
    min_price: Price | None = None
    max_price: Price | None = None
    in_stock_only: bool = False


class RecommendationRequest(_Request):
    """The top `k` items for one shopper."""

    user_id: UserId
    k: K = 10
    exclude_items: Annotated[ItemIds, Meta(description="never recommend these")] = []
    allow_items: Annotated[
        ItemIds | None, Meta(description="recommend only among these (null: all items)")
    ] = None
    exclude_seen: Annotated[bool, Meta(description="leave out what the shopper bought")] = True
    recent_items: Annotated[
        ItemIds, Meta(description="items just viewed: a shopper the model does not know yet")
    ] = []
    filters: CatalogFilters | None = None


class RecommendationQuery(_Request):
    """`GET /v1/recommendations`: the options of `RecommendationRequest` as query parameters,
    lists comma-separated, filters flat."""

    user_id: UserId
    k: K = 10
    exclude_items: ItemIds = []
    allow_items: ItemIds | None = None
    exclude_seen: bool = True
    recent_items: ItemIds = []
    categories: Annotated[list[Category], Meta(max_length=MAX_LIST)] = []
    min_price: Price | None = None
    max_price: Price | None = None
    in_stock_only: bool = False


class BatchEntry(_Request):
    """One shopper of a batch; the options it leaves out are the batch's."""

    user_id: UserId
    k: K | UnsetType = UNSET
    exclude_items: ItemIds | UnsetType = UNSET
    allow_items: ItemIds | UnsetType | None = UNSET
    exclude_seen: bool | UnsetType = UNSET
    recent_items: ItemIds | UnsetType = UNSET
    filters: CatalogFilters | UnsetType | None = UNSET


class BatchRequest(_Request):
    """Many shoppers at once: either `user_ids` (same options for all) or `requests`."""

    user_ids: Annotated[list[UserId], _BATCH] | UnsetType = UNSET
    requests: Annotated[list[BatchEntry], _BATCH] | UnsetType = UNSET
    k: K = 10
    exclude_items: ItemIds = []
    allow_items: ItemIds | None = None
    exclude_seen: bool = True
    recent_items: ItemIds = []
    filters: CatalogFilters | None = None


class SimilarQuery(_Request):
    """`GET /v1/items/{item_id}/similar`: with `user_id`, the model of the shopper's cohort."""

    k: K = 10
    user_id: UserId | None = None


class BoughtTogetherQuery(_Request):
    """`GET /v1/items/{item_id}/bought-together`: with `user_id`, the model of the shopper's
    cohort."""

    k: K = 10
    user_id: UserId | None = None
    categories: Annotated[list[Category], Meta(max_length=MAX_LIST)] = []
    min_price: Price | None = None
    max_price: Price | None = None
    in_stock_only: bool = False


class TrendingQuery(_Request):
    """`GET /v1/trending`: the catalogue filters of `GET /v1/recommendations`; with
    `user_id`, the model of the shopper's cohort."""

    k: K = 10
    user_id: UserId | UnsetType = UNSET
    categories: Annotated[list[Category], Meta(max_length=MAX_LIST)] = []
    # Unset rather than None: a query string has no null, and the text "null" is no price.
    min_price: Price | UnsetType = UNSET
    max_price: Price | UnsetType = UNSET
    in_stock_only: bool = False


class BasketRequest(_Request):
    """`POST /v1/baskets:complete`: what to add to a cart holding `items`."""

    items: Annotated[list[ItemId], Meta(min_length=1, max_length=1000)]
    k: K = 10
    user_id: UserId | None = None
    filters: CatalogFilters | None = None


class FeedbackRequest(_Request):
    """What a shopper did with an item of a list: send the list's `recommendation_id` as it
    came, from any pod of the guide."""

    recommendation_id: Annotated[str, Meta(min_length=1, max_length=MAX_RECOMMENDATION_ID_LENGTH)]
    user_id: UserId
    item_id: ItemId
    event: FeedbackEvent
    quantity: Annotated[int, Meta(ge=1, le=1_000_000, description="units (cart, purchase)")] = 1
    price: (
        Annotated[
            float,
            Meta(ge=0, le=1e9, description="unit price paid; the catalogue's when left out"),
        ]
        | None
    ) = None


class GuideRequest(_Request):
    """A shopper's words ("christmas lights under 5"), optionally ranked for the shopper."""

    query: Annotated[str, Meta(min_length=1, max_length=MAX_QUERY_LENGTH)]
    user_id: UserId | None = None
    k: K = 10
    filters: CatalogFilters | None = None


class EmptyQuery(_Request):
    """An endpoint that takes no query parameters."""


# Responses --------------------------------------------------------------------------------
class ScoredItem(Struct):
    item_id: str
    score: Annotated[float, Meta(description="the score of the source that filled the slot")]
    title: Annotated[str, Meta(description="with a catalogue")] | UnsetType = UNSET
    reason: (
        Annotated[
            Reason,
            Meta(
                description="what filled the slot: the model (personalized), items similar "
                "to the shopper's recent ones, trending, popular, a rule (promoted, pinned) "
                "or exploration"
            ),
        ]
        | UnsetType
    ) = UNSET
    because: (
        Annotated[str, Meta(description="the shopper's item it follows from (similar_to_recent)")]
        | UnsetType
    ) = UNSET


class RecommendationResponse(Struct):
    recommendation_id: Annotated[
        str, Meta(description="send it with feedback on this list (any pod attributes it)")
    ]
    user_id: str
    model_version: str
    cohort: Cohort
    cold_start: bool
    strategy: Strategy
    items: list[ScoredItem]
    unknown_items: Annotated[list[str], Meta(description="recent_items it does not know")] | (
        UnsetType
    ) = UNSET
    empty_reason: (
        Annotated[
            EmptyReason,
            Meta(description="why `items` is empty: the filters, exclusions and rules leave none"),
        ]
        | UnsetType
    ) = UNSET


class BatchResponse(Struct):
    results: list[RecommendationResponse]


class SimilarResponse(Struct):
    item_id: str
    model_version: str
    cohort: Cohort
    items: list[ScoredItem]


class TrendingItem(Struct):
    item_id: str
    score: Annotated[float, Meta(description="the window's rate over the item's usual rate")]
    recent_count: Annotated[int, Meta(description="interactions in the window")]
    baseline_count: Annotated[int, Meta(description="interactions in the baseline window")]
    title: Annotated[str, Meta(description="with a catalogue")] | UnsetType = UNSET


class TrendingResponse(Struct):
    """Items rising fastest, best first; the window ends at the newest event trained on."""

    model_version: str
    cohort: Cohort
    window_hours: float | None
    window_end: Annotated[str | None, Meta(description="RFC 3339; null: no timestamps")]
    items: list[TrendingItem]
    empty_reason: (
        Annotated[
            Literal["no_trending_data", "filtered_out"],
            Meta(description="why `items` is empty: no timestamps trained on, or the filters"),
        ]
        | UnsetType
    ) = UNSET


class SourcedItem(Struct):
    item_id: str
    score: float
    source: Annotated[
        Literal["bought_together", "similar_items", "popular"],
        Meta(
            description="what filled the slot: the basket model, then similarity, then popularity"
        ),
    ]
    title: Annotated[str, Meta(description="with a catalogue")] | UnsetType = UNSET


class BasketResponse(Struct):
    """Items to add, best first; empty only when the filters leave nothing."""

    model_version: str
    cohort: Cohort
    items: list[SourcedItem]
    unknown_items: Annotated[list[str], Meta(description="basket items the model does not know")]


class FeedbackResponse(Struct):
    """`model_version` and `cohort` are "unknown" unless the id is verified: an id altered,
    issued under another key, or older than the horizon (`expired`) is counted as unknown."""

    accepted: bool
    model_version: str
    cohort: Literal["stable", "canary", "unknown"]
    attribution: Literal["verified", "invalid", "expired"]
    user_id: str
    revenue: Annotated[
        float, Meta(description="what a purchase added to the version's revenue (0 otherwise)")
    ] = 0.0


class Interactions(Struct):
    items: int
    total_weight: float


class ProfileItem(Struct):
    item_id: str
    title: str
    weight: float


class ProfileCategory(Struct):
    category: str
    affinity: float


class ProfileResponse(Struct):
    user_id: str
    model_version: str
    cohort: Cohort
    interactions: Interactions
    top_items: list[ProfileItem]
    top_categories: list[ProfileCategory]


class GuideItem(Struct):
    item_id: str
    title: str
    score: float
    matched: Annotated[list[str], Meta(description="the query's words in this item's text")]
    price: float | UnsetType = UNSET
    because_you_bought: str | UnsetType = UNSET


class GuideResponse(Struct):
    query: str
    matched_words: list[str]
    constraints: Annotated[list[str], Meta(description='what the words asked ("price <= 5")')]
    personalized: bool
    model_version: str
    cohort: Cohort
    items: list[GuideItem]


class Health(Struct):
    status: Literal["ok"]


class LoadedVersion(Struct):
    version: str
    algorithm: str
    users: int
    items: int
    ann: Literal["hnsw"] | None
    load_seconds: float | None


class CanaryReadiness(Struct):
    version: str
    weight_basis_points: int
    serving: bool
    error: str | None


class Readiness(Struct):
    """Ready once the stable version serves; 503 (same body) before that or while draining."""

    ready: bool
    generation: int | None
    stable: LoadedVersion | None
    canary: CanaryReadiness | None
    routing_error: str | None
    store_error: Annotated[
        str | None,
        Meta(description="an object store that cannot be reached; the loaded versions serve"),
    ] = None
    stable_error: str | UnsetType = UNSET
    draining: bool | UnsetType = UNSET
    # Workers of this pod (serving/workers.py) still loading: ready only once all are.
    workers_loading: int | UnsetType = UNSET


class ErrorDetail(Struct):
    code: Annotated[str, Meta(description="stable, for programs: `unknown_field`, `invalid_k`")]
    message: Annotated[str, Meta(description="for people: names the field and what it expects")]


class ErrorResponse(Struct):
    error: ErrorDetail


# Path parameters ----------------------------------------------------------------------------
class ItemPath(_Request):
    item_id: ItemId


class UserPath(_Request):
    user_id: UserId


# What JSON Schema says that the types cannot: a batch names its shoppers one way, not both.
EXTRA_SCHEMA: dict[str, dict[str, Any]] = {
    "BatchRequest": {"oneOf": [{"required": ["user_ids"]}, {"required": ["requests"]}]},
}
