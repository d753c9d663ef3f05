"""Merchandiser rules and exploration: what a guide's `spec.serving` says about every list.

The operator copies `spec.serving.rules` and `spec.serving.exploration` into the routing
document (see `routing.py`), so every serving pod applies a change at its next routing
reload, at once and without a restart. The document's form is the CRD's (camelCase, RFC 3339
times); both sides parse it here, so what the operator writes a pod can read.

Rules, each with an optional `from`/`until` window:
  pin            `item` at `position` (1 = first)
  boost, bury    items that `match` (categories, items, attribute values) move `positions`
                 places up or down the list (bury without `positions`: to the end)
  promote        at least `share` of the slots go to items that `match`
  hideOutOfStock never an item the catalogue marks out of stock
  noRepurchase   never what the shopper bought, except in `repeatableCategories`
  diversity      at most `maxPerCategory` items of one category in a list
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, get_args

RuleType = Literal["pin", "boost", "bury", "promote", "hideOutOfStock", "noRepurchase", "diversity"]
RULE_TYPES: tuple[str, ...] = get_args(RuleType)
MAX_RULES = 100
MAX_SHIFT = 1000
MAX_POSITION = 1000


class MerchandisingError(ValueError):
    """Rules that do not follow this contract."""


@dataclass(frozen=True)
class Match:
    """Items a rule is about: those of any of `categories`, those named in `items`, and those
    whose catalogue attribute has one of the listed values (`{"brand": ["acme"]}`)."""

    categories: tuple[str, ...] = ()
    items: tuple[str, ...] = ()
    # (key, values) pairs, sorted by key: hashable, as the server caches a mask per match.
    attributes: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.categories or self.items or self.attributes)

    def to_document(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.categories:
            out["categories"] = list(self.categories)
        if self.items:
            out["items"] = list(self.items)
        if self.attributes:
            out["attributes"] = {key: list(values) for key, values in self.attributes}
        return out


@dataclass(frozen=True)
class Rule:
    type: RuleType
    match: Match = field(default_factory=Match)
    item: str | None = None
    position: int | None = None
    positions: int | None = None
    share: float | None = None
    max_per_category: int | None = None
    repeatable_categories: tuple[str, ...] = ()
    start: datetime | None = None
    until: datetime | None = None

    def active(self, now: datetime) -> bool:
        return (self.start is None or self.start <= now) and (
            self.until is None or now < self.until
        )

    def to_document(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if not self.match.empty:
            out["match"] = self.match.to_document()
        for name, value in (
            ("item", self.item),
            ("position", self.position),
            ("positions", self.positions),
            ("share", self.share),
            ("maxPerCategory", self.max_per_category),
        ):
            if value is not None:
                out[name] = value
        if self.repeatable_categories:
            out["repeatableCategories"] = list(self.repeatable_categories)
        if self.start is not None:
            out["from"] = self.start.isoformat()
        if self.until is not None:
            out["until"] = self.until.isoformat()
        return out


@dataclass(frozen=True)
class Merchandising:
    rules: tuple[Rule, ...] = ()
    # The share of each list's slots for items with little exposure (0: none).
    exploration_share: float = 0.0

    @property
    def empty(self) -> bool:
        return not self.rules and self.exploration_share == 0

    def to_document(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rules": [rule.to_document() for rule in self.rules]}
        if self.exploration_share:
            out["exploration"] = {"share": self.exploration_share}
        return out


def parse(document: Mapping[str, Any] | None) -> Merchandising:
    """`{"rules": [...], "exploration": {"share": ...}}`, checked rule by rule."""
    if document is None:
        return Merchandising()
    if not isinstance(document, Mapping):
        raise MerchandisingError("merchandising must be an object")
    rules = document.get("rules") or []
    if not isinstance(rules, list) or len(rules) > MAX_RULES:
        raise MerchandisingError(f"rules must be a list of at most {MAX_RULES}")
    exploration = document.get("exploration") or {}
    if not isinstance(exploration, Mapping):
        raise MerchandisingError("exploration must be an object")
    share = _number(exploration.get("share", 0), "exploration.share")
    if not 0 <= share <= 0.5:
        raise MerchandisingError(f"exploration.share must be 0..0.5, got {share}")
    return Merchandising(tuple(_rule(rule, f"rules[{n}]") for n, rule in enumerate(rules)), share)


def _rule(raw: Any, where: str) -> Rule:
    if not isinstance(raw, Mapping):
        raise MerchandisingError(f"{where} must be an object")
    kind = raw.get("type")
    if kind not in RULE_TYPES:
        raise MerchandisingError(f"{where}.type must be one of {', '.join(RULE_TYPES)}")
    match = _match(raw.get("match"), f"{where}.match")
    start, until = (
        _time(raw.get("from"), f"{where}.from"),
        _time(raw.get("until"), f"{where}.until"),
    )
    if start is not None and until is not None and until <= start:
        raise MerchandisingError(f"{where}: until must be after from")
    rule = Rule(kind, match, start=start, until=until)
    if kind == "pin":
        item, position = raw.get("item"), raw.get("position")
        if not isinstance(item, str) or not item:
            raise MerchandisingError(f"{where}: a pin names its item")
        return replace(
            rule, item=item, position=_int(position, f"{where}.position", 1, MAX_POSITION)
        )
    if kind in ("boost", "bury", "promote") and match.empty:
        raise MerchandisingError(
            f"{where}: {kind} needs match.categories, match.items or match.attributes"
        )
    if kind in ("boost", "bury"):
        positions = raw.get("positions")
        if positions is None and kind == "boost":
            raise MerchandisingError(f"{where}: boost needs positions")
        shift = None if positions is None else _int(positions, f"{where}.positions", 1, MAX_SHIFT)
        return replace(rule, positions=shift)
    if kind == "promote":
        share = _number(raw.get("share"), f"{where}.share")
        if not 0 < share <= 1:
            raise MerchandisingError(f"{where}.share must be in (0, 1], got {share}")
        return replace(rule, share=share)
    if kind == "diversity":
        most = _int(raw.get("maxPerCategory"), f"{where}.maxPerCategory", 1, MAX_POSITION)
        return replace(rule, max_per_category=most)
    if kind == "noRepurchase":
        repeatable = _strings(
            raw.get("repeatableCategories") or [], f"{where}.repeatableCategories"
        )
        return replace(rule, repeatable_categories=repeatable)
    return rule


def _match(raw: Any, where: str) -> Match:
    if raw is None:
        return Match()
    if not isinstance(raw, Mapping):
        raise MerchandisingError(f"{where} must be an object")
    attributes = raw.get("attributes") or {}
    if not isinstance(attributes, Mapping) or not all(
        isinstance(key, str) and key for key in attributes
    ):
        raise MerchandisingError(f"{where}.attributes must map attribute names to value lists")
    return Match(
        _strings(raw.get("categories") or [], f"{where}.categories"),
        _strings(raw.get("items") or [], f"{where}.items"),
        tuple(
            (key, _strings(attributes[key], f"{where}.attributes.{key}"))
            for key in sorted(attributes)
            if attributes[key]
        ),
    )


def _strings(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise MerchandisingError(f"{where} must be a list of strings")
    if not all(isinstance(v, str) and v for v in raw):
        raise MerchandisingError(f"{where} must be a list of non-empty strings")
    return tuple(raw)


def _number(raw: Any, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise MerchandisingError(f"{where} must be a number, got {raw!r}")
    return float(raw)


def _int(raw: Any, where: str, low: int, high: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
        raise MerchandisingError(f"{where} must be an integer {low}..{high}, got {raw!r}")
    return raw


def _time(raw: Any, where: str) -> datetime | None:
    if raw is None:
        return None
    if isinstance(raw, datetime):  # YAML reads an unquoted timestamp as one
        value = raw
    elif isinstance(raw, str):
        try:
            value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError as exc:
            raise MerchandisingError(f"{where} must be an RFC 3339 time, got {raw!r}") from exc
    else:
        raise MerchandisingError(f"{where} must be an RFC 3339 time, got {raw!r}")
    if value.tzinfo is None:
        raise MerchandisingError(f"{where} needs a time zone (Z or +01:00), got {raw!r}")
    return value
