"""Trending now from fresher events, without a retrain.

Trending moves by the hour; a model is retrained daily or weekly. `shopping-guide
refresh-trending` reads the newest events (only the item, time and user columns: the user to
leave forgotten shoppers out), computes trending for each version named, against that
version's own items, and rewrites the version in place with the new `trending_*` arrays
(`store.replace`: a reader sees the old version or the new one, never a mix). Everything else
in the version is left as it was, and its manifest records the refresh. Users who asked to be
forgotten are left out of the counts, as in training.
Serving pods load a rewritten version when the routing's `modelsRevision` rises.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError
from .events import EventSchema, Format, InvalidPolicy, load_events
from .object_store import AnyStore
from .training import item_positions, without_forgotten
from .trending import TrendingConfig, compute


def refresh(
    store: AnyStore,
    versions: list[str],
    events: Path,
    schema: EventSchema,
    config: TrendingConfig,
    fmt: Format | None = None,
    policy: InvalidPolicy = "error",
    source: str | None = None,
) -> dict[str, Any]:
    """Rewrite each of `versions` with trending from `events`; returns what was done."""
    if schema.time_col is None:
        raise ConfigError("refreshing trending needs the events' time column (--time-col)")
    if not versions:
        raise ConfigError("no model version to refresh")
    found = without_forgotten(store, load_events(events, schema, fmt, policy))
    if found.timestamp is None or not len(found.timestamp):
        raise DataError("no events with a time to compute trending from", events)
    at = datetime.now(UTC).isoformat(timespec="seconds")
    done: dict[str, Any] = {}
    for version in versions:
        loaded = store.load(version)
        items = item_positions(found.items, loaded.item_ids)
        trending = compute(items, found.timestamp, len(loaded.item_ids), config)
        extras = {k: v for k, v in loaded.extras.items() if not k.startswith("trending_")}
        extras.update(trending.to_arrays())
        record = {
            "at": at,
            "events": source or str(events),
            "window_end": datetime.fromtimestamp(trending.window_end, UTC).isoformat(),
            "window_hours": config.window_hours,
            "items": len(trending),
            # Events of items this version does not know cannot trend in it.
            "unknown_item_events": int((items < 0).sum()),
        }
        meta = {k: v for k, v in loaded.manifest.items() if k not in ("files", "version")}
        meta["trending_refresh"] = record
        store.replace(version, loaded.model, loaded.user_ids, loaded.item_ids, meta, extras)
        done[version] = record
    return {"versions": done}
