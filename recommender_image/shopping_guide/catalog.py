"""The product catalogue: titles, categories, attributes, prices, stock, and a text index.

Read from CSV/TSV/JSON Lines/Parquet with the events loader's error reporting, or derived from
an events log that carries product columns (Online Retail: StockCode, Description,
UnitPrice). Everything is columnar: tokenizing, TF-IDF and the category matrix are Arrow and
scipy operations, with no Python loop over items.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from .errors import DataError
from .events import Format, InvalidPolicy, read_columns
from .model import get_sparse, put_sparse

STOPWORDS = [
    "a",
    "an",
    "and",
    "the",
    "of",
    "for",
    "in",
    "on",
    "with",
    "to",
    "set",
    "x",
    "s",
    "t",
    "pack",
    "box",
    "size",
    "small",
    "large",
]
# Colour words double as attributes of products named after them.
COLOURS = [
    "red",
    "pink",
    "blue",
    "green",
    "white",
    "black",
    "yellow",
    "orange",
    "purple",
    "ivory",
    "cream",
    "gold",
    "silver",
    "grey",
    "gray",
    "brown",
    "natural",
]


@dataclass(frozen=True)
class CatalogSchema:
    item_col: str = "item_id"
    title_col: str = "title"
    category_col: str | None = "category"
    attributes_col: str | None = None
    price_col: str | None = "price"
    stock_col: str | None = None
    category_separator: str = "|"


@dataclass
class Catalog:
    item_ids: npt.NDArray[np.str_]
    titles: npt.NDArray[np.str_]
    categories: sp.csr_matrix  # item x category, 1 where the item belongs
    category_names: npt.NDArray[np.str_]
    attributes: list[dict[str, str]] | None
    price: npt.NDArray[np.float32]  # NaN where unknown
    in_stock: npt.NDArray[np.bool_]
    # What serving matches merchandiser rules on: item x "key=value" (both lowercased), 1 where
    # the item has that value. Built from `attributes` when not given; a served model has only
    # this form (the dicts stay in training, for the text features).
    attribute_matrix: sp.csr_matrix | None = None
    attribute_names: npt.NDArray[np.str_] | None = None

    def __post_init__(self) -> None:
        if self.attribute_matrix is None or self.attribute_names is None:
            self.attribute_matrix, self.attribute_names = _attribute_matrix(
                self.attributes, len(self.item_ids)
            )

    def __len__(self) -> int:
        return len(self.item_ids)

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        out: dict[str, npt.NDArray[Any]] = {
            "catalog_titles": self.titles,
            "catalog_price": self.price,
            "catalog_in_stock": self.in_stock,
            "catalog_category_names": self.category_names,
        }
        put_sparse(out, "catalog_categories", self.categories)
        if self.attribute_names is not None and len(self.attribute_names):
            assert self.attribute_matrix is not None
            out["catalog_attribute_names"] = self.attribute_names
            put_sparse(out, "catalog_attributes", self.attribute_matrix)
        return out

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, npt.NDArray[Any]], item_ids: npt.NDArray[np.str_]
    ) -> Catalog | None:
        if "catalog_titles" not in arrays:
            return None
        return cls(
            item_ids=item_ids,
            titles=arrays["catalog_titles"],
            categories=get_sparse(arrays, "catalog_categories"),
            category_names=arrays["catalog_category_names"],
            attributes=None,
            price=arrays["catalog_price"],
            in_stock=arrays["catalog_in_stock"],
            # Versions trained before attributes were kept have none: no rule matches on them.
            attribute_matrix=get_sparse(arrays, "catalog_attributes")
            if "catalog_attribute_names" in arrays
            else None,
            attribute_names=arrays.get("catalog_attribute_names"),
        )

    def categories_of(self, item: int) -> list[str]:
        lo, hi = self.categories.indptr[item], self.categories.indptr[item + 1]
        return [str(c) for c in self.category_names[self.categories.indices[lo:hi]]]

    def reindex(self, item_ids: npt.NDArray[np.str_]) -> Catalog:
        """This catalogue in another item order; items it lacks get empty metadata."""
        position = pc.index_in(pa.array(item_ids), value_set=pa.array(self.item_ids))
        index = np.asarray(pc.fill_null(position, -1), dtype=np.int64)
        known = index >= 0
        safe = np.where(known, index, 0)
        only_known = sp.diags(known.astype(np.float32))
        categories = only_known @ self.categories[safe]
        categories.eliminate_zeros()
        assert self.attribute_matrix is not None
        attribute_matrix = only_known @ self.attribute_matrix[safe]
        attribute_matrix.eliminate_zeros()
        return Catalog(
            item_ids=item_ids,
            titles=np.where(known, self.titles[safe], ""),
            categories=sp.csr_matrix(categories),
            category_names=self.category_names,
            attributes=None
            if self.attributes is None
            else [self.attributes[i] if ok else {} for i, ok in zip(safe, known, strict=True)],
            price=np.where(known, self.price[safe], np.nan).astype(np.float32),
            in_stock=np.where(known, self.in_stock[safe], True),
            attribute_matrix=sp.csr_matrix(attribute_matrix),
            attribute_names=self.attribute_names,
        )

    def with_attribute(self, key: str, values: Sequence[str]) -> npt.NDArray[np.bool_]:
        """Items whose attribute `key` is any of `values` (case-insensitive)."""
        assert self.attribute_matrix is not None and self.attribute_names is not None
        wanted = np.isin(self.attribute_names, [f"{key}={v}".lower() for v in values])
        return np.asarray(self.attribute_matrix[:, wanted].sum(axis=1)).ravel() > 0


def _strings(values: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.fill_null(pc.cast(values, pa.string()), "")


def _attribute_matrix(
    attributes: list[dict[str, str]] | None, n_items: int
) -> tuple[sp.csr_matrix, npt.NDArray[np.str_]]:
    rows: list[int] = []
    pairs: list[str] = []
    for row, values in enumerate(attributes or ()):
        for key, value in values.items():
            if key.strip() and value.strip():
                rows.append(row)
                pairs.append(f"{key.strip()}={value.strip()}".lower())
    codes = pc.dictionary_encode(pa.array(pairs, pa.string()))
    matrix = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (np.asarray(rows, np.int64), np.asarray(codes.indices))),
        shape=(n_items, len(codes.dictionary)),
    )
    matrix.data[:] = 1.0
    return matrix, np.asarray(codes.dictionary.to_pylist(), dtype=np.str_)


def _category_matrix(
    labels: pa.ChunkedArray, separator: str
) -> tuple[sp.csr_matrix, npt.NDArray[np.str_]]:
    if pa.types.is_list(labels.type) or pa.types.is_large_list(labels.type):
        lists = labels
    else:
        lists = pc.split_pattern(_strings(labels), separator)
    lists = pa.chunked_array(lists).combine_chunks()
    flat = pc.utf8_trim_whitespace(pc.cast(pc.list_flatten(lists), pa.string()))
    parents = np.asarray(pc.list_parent_indices(lists), dtype=np.int64)
    keep = np.asarray(pc.fill_null(pc.greater(pc.utf8_length(flat), 0), False))
    codes = pc.dictionary_encode(pc.utf8_lower(pc.filter(flat, pa.array(keep))))
    matrix = sp.csr_matrix(
        (np.ones(int(keep.sum()), np.float32), (parents[keep], np.asarray(codes.indices))),
        shape=(len(labels), len(codes.dictionary)),
    )
    matrix.data[:] = 1.0  # an item listed twice in a category is still in it once
    names = np.asarray(codes.dictionary.to_pylist(), dtype=np.str_)
    return matrix, names


def catalog_from_table(table: pa.Table, schema: CatalogSchema | None = None) -> Catalog:
    """A catalogue from an in-memory table (column names as `derive_from_events` writes)."""
    schema = schema or CatalogSchema(
        item_col="item", title_col="title", category_col="category",
        attributes_col="attributes", price_col="price" if "price" in table.column_names else None,
    )  # fmt: skip
    return _from_table(table, schema, Path("<derived catalogue>"), "skip")


def load_catalog(
    path: Path,
    schema: CatalogSchema,
    fmt: Format | None = None,
    policy: InvalidPolicy = "error",
) -> Catalog:
    columns = [
        c
        for c in (
            schema.item_col,
            schema.title_col,
            schema.category_col,
            schema.attributes_col,
            schema.price_col,
            schema.stock_col,
        )
        if c
    ]
    table, _ = read_columns(path, columns, fmt, policy)
    return _from_table(table, schema, path, policy)


def _from_table(
    table: pa.Table, schema: CatalogSchema, path: Path, policy: InvalidPolicy
) -> Catalog:
    if table.num_rows == 0:
        raise DataError("catalogue has a header but no rows", path)
    items = _strings(table.column(schema.item_col))
    missing = np.asarray(pc.equal(pc.utf8_trim_whitespace(items), ""))
    if missing.any() and policy == "error":
        row = int(np.argmax(missing)) + 1
        raise DataError("missing item id", path, row=row, column=schema.item_col)
    duplicate = pc.count_distinct(items).as_py() != len(items)
    if duplicate:
        counts = pc.value_counts(items)
        twice = next(v["values"] for v in counts.to_pylist() if v["counts"] > 1)
        raise DataError(f"item {twice!r} is listed more than once", path, column=schema.item_col)
    keep = pa.array(~missing)
    table = table.filter(keep)
    items = pc.filter(items, keep)

    price = np.full(table.num_rows, np.nan, dtype=np.float32)
    if schema.price_col:
        raw = table.column(schema.price_col)
        try:
            price = np.asarray(pc.fill_null(pc.cast(raw, pa.float64()), np.nan), np.float32)
        except pa.ArrowInvalid as exc:
            raise DataError(f"price is not a number: {exc}", path, column=schema.price_col) from exc
    in_stock = np.ones(table.num_rows, dtype=bool)
    if schema.stock_col:
        text = pc.utf8_lower(_strings(table.column(schema.stock_col)))
        in_stock = ~np.asarray(pc.is_in(text, value_set=pa.array(["false", "0", "no", "n"])))
    if schema.category_col:
        categories, names = _category_matrix(table.column(schema.category_col),
                                             schema.category_separator)  # fmt: skip
    else:
        categories, names = sp.csr_matrix((table.num_rows, 0), dtype=np.float32), np.array([], str)
    attributes = None
    if schema.attributes_col:
        attributes = [
            _attributes(v) for v in _strings(table.column(schema.attributes_col)).to_pylist()
        ]
    return Catalog(
        item_ids=np.asarray(items.to_pylist(), dtype=np.str_),
        titles=np.asarray(_strings(table.column(schema.title_col)).to_pylist(), dtype=np.str_),
        categories=categories,
        category_names=names,
        attributes=attributes,
        price=price,
        in_stock=in_stock,
    )


def _attributes(text: str) -> dict[str, str]:
    """A JSON object, or `key=value;key=value`."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"attributes are not a JSON object: {text[:80]!r}") from exc
        return {str(k): str(v) for k, v in value.items()}
    pairs = (part.partition("=") for part in text.split(";") if part.strip())
    return {k.strip(): v.strip() for k, _, v in pairs if k.strip()}


def derive_from_events(
    table: pa.Table, item_col: str, title_col: str, price_col: str | None
) -> pa.Table:
    """One row per item: its most frequent title, median price, and a category and colour
    guessed from the title (the last word names the product type, as in "... T-LIGHT HOLDER").
    """
    items = _strings(table.column(item_col))
    titles = pc.utf8_trim_whitespace(_strings(table.column(title_col)))
    frame = pa.table({"item": items, "title": titles}).filter(pc.greater(pc.utf8_length(titles), 0))
    counted = frame.group_by(["item", "title"]).aggregate([("title", "count")])
    ranked = counted.sort_by([("item", "ascending"), ("title_count", "descending")])
    first = np.r_[True, np.asarray(pc.not_equal(ranked["item"][1:], ranked["item"][:-1]))]
    best = ranked.filter(pa.array(first)).select(["item", "title"])
    if price_col:
        prices = pa.table({"item": items,
                           "price": pc.cast(table.column(price_col), pa.float64())})  # fmt: skip
        prices = prices.filter(pc.greater(prices["price"], 0))
        medians = prices.group_by("item").aggregate([("price", "approximate_median")])
        best = best.join(medians, "item", join_type="left outer")
        best = best.rename_columns(["item", "title", "price"])
    last_word = pc.struct_field(
        pc.extract_regex(best["title"], r"(?P<word>[A-Za-z]+)[^A-Za-z]*$"), "word"
    )
    category = pc.fill_null(pc.utf8_lower(last_word), "")
    colour = pc.coalesce(
        *[pc.if_else(pc.match_substring_regex(best["title"], f"(?i)\\b{c}\\b"),
                     pa.scalar(f"colour={c}"), pa.scalar(None, pa.string()))
          for c in COLOURS],
        pa.scalar(""),
    )  # fmt: skip
    return best.append_column("category", category).append_column("attributes", colour)
