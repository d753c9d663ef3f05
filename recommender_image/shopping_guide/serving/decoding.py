"""Request bodies and query strings into the schema's types; every mistake a `RequestError`.

A mistake's code names the field (`invalid_k`, `unknown_field`) and its message the JSON path
msgspec reports and what the field expects, so a client sees which of its fields is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from typing import Literal, TypeVar

import msgspec
from aiohttp import web

MAX_BODY_BYTES = 1 << 20

T = TypeVar("T", bound=msgspec.Struct)
Source = Literal["body", "query", "path"]

_AT = re.compile(r" - at `(?P<path>[^`]*)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<name>[^`]*)`")
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]*)`")
_FIELD = re.compile(r"\.(\w+)")


class RequestError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def _struct_in(info: msgspec.inspect.Type) -> msgspec.inspect.StructType | None:
    """The struct a field holds, through lists and optional/unset unions."""
    if isinstance(info, msgspec.inspect.ListType):
        return _struct_in(info.item_type)
    if isinstance(info, msgspec.inspect.UnionType):
        return next(filter(None, map(_struct_in, info.types)), None)
    return info if isinstance(info, msgspec.inspect.StructType) else None


def _choices(kind: type[msgspec.Struct], fields: list[str]) -> list[str]:
    """The values a Literal field at this path allows (msgspec's message omits them)."""
    info: msgspec.inspect.Type = msgspec.inspect.type_info(kind)
    for name in fields:
        struct = _struct_in(info)
        if struct is None:
            return []
        info = next((f.type for f in struct.fields if f.name == name), msgspec.inspect.AnyType())
    return [str(v) for v in info.values] if isinstance(info, msgspec.inspect.LiteralType) else []


def validation_error(
    exc: msgspec.ValidationError, kind: type[msgspec.Struct], source: Source = "body"
) -> RequestError:
    """The client's mistake as msgspec found it, in the body, query string or path."""
    text = str(exc)
    at = _AT.search(text)
    path = at.group("path") if at else "$"
    reason = text[: at.start()] if at else text
    place = f"`{path}`"
    if source != "body":
        whole = "the query string" if source == "query" else "the path"
        place = whole if path == "$" else f"{source} parameter `{path[2:]}`"
    if unknown := _UNKNOWN.match(reason):
        name = unknown.group("name")
        return RequestError("unknown_field", f"unknown field `{name}` in {place}")
    if missing := _MISSING.match(reason):
        name = missing.group("name")
        return RequestError(f"invalid_{name}", f"{name} is required (missing in {place})")
    fields = _FIELD.findall(path)
    code = f"invalid_{fields[-1]}" if fields else "invalid_body"
    if choices := _choices(kind, fields):
        reason += f", expected one of {', '.join(choices)}"
    return RequestError(code, f"{reason} - at {place}")


@cache
def _decoder(kind: type[T]) -> msgspec.json.Decoder[T]:
    return msgspec.json.Decoder(kind)


async def decode_body(request: web.Request, kind: type[T]) -> T:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise RequestError("body_too_large", f"body exceeds {MAX_BODY_BYTES} bytes", 413)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise RequestError("body_too_large", f"body exceeds {MAX_BODY_BYTES} bytes", 413) from exc
    try:
        decoded: T = _decoder(kind).decode(raw)
    except msgspec.ValidationError as exc:
        raise validation_error(exc, kind) from exc
    except msgspec.DecodeError as exc:
        raise RequestError("malformed_json", f"body is not valid JSON: {exc}") from exc
    return decoded


@cache
def list_fields(kind: type[msgspec.Struct]) -> frozenset[str]:
    """The fields of a query type that hold lists (comma-separated in a query string)."""

    def is_list(t: msgspec.inspect.Type) -> bool:
        if isinstance(t, msgspec.inspect.UnionType):
            return any(is_list(x) for x in t.types)
        return isinstance(t, msgspec.inspect.ListType)

    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)
    return frozenset(f.name for f in info.fields if is_list(f.type))


def decode_query(query: Mapping[str, str], kind: type[T], source: Source = "query") -> T:
    """Query (or path) parameters into `kind`: each at most once, lists comma-separated
    (empty parts dropped), numbers and booleans (`true`/`false`/`1`/`0`) converted from text."""
    lists = list_fields(kind)
    values: dict[str, object] = {}
    for name, value in query.items():
        if name in values:
            raise RequestError(
                f"invalid_{name}", f"query parameter `{name}` is given more than once"
            )
        values[name] = [v for v in value.split(",") if v] if name in lists else value
    try:
        return msgspec.convert(values, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise validation_error(exc, kind, source) from exc
