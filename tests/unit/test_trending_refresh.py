"""Trending refreshed from fresher events without a retrain: `shopping-guide refresh-trending`
rewrites a stored version's trending arrays, in place, and nothing else."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from shopping_guide.artifacts import ModelStore, user_sha256
from shopping_guide.cli import main
from shopping_guide.object_store import S3Options, open_store
from shopping_guide.trending import Trending
from tests.conftest import two_taste_rows
from tests.s3 import S3Server

END = datetime(2026, 11, 30, tzinfo=UTC)
TRENDING = ["--trending-window-hours", "48", "--trending-min-count", "5"]


def _events(path: Path, burst: dict[str, list[str]] | None = None) -> Path:
    """The two-taste purchases spread over the 60 days before END; `burst`: item -> users who
    bought it again in the last day."""
    rows = two_taste_rows()
    lines = ["user_id,item_id,ts"]
    for n, (user, item) in enumerate(rows):
        at = END - timedelta(days=60) + timedelta(days=58) * n / len(rows)
        lines.append(f"{user},{item},{at:%Y-%m-%dT%H:%M:%S}")
    for item, users in (burst or {}).items():
        for n, user in enumerate(users):
            lines.append(f"{user},{item},{END - timedelta(hours=n % 20):%Y-%m-%dT%H:%M:%S}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _trained(
    tmp_path: Path, store: str, capsys: pytest.CaptureFixture[str], flags: list[str] | None = None
) -> str:
    events = _events(tmp_path / "old.csv")
    code = main(["train", "--events", str(events), "--model-store", store, "--time-col", "ts",
                 "--algorithm", "itemknn", "--guide", "shop/guide", *TRENDING,
                 *(flags or [])])  # fmt: skip
    assert code == 0
    return str(json.loads(capsys.readouterr().out)["version"])


def _trending_ids(store: str, version: str, s3: S3Options | None = None) -> list[str]:
    loaded = open_store(store, "shop/guide", s3).load(version)
    found = Trending.from_arrays(loaded.extras)
    assert found is not None
    return [str(loaded.item_ids[i]) for i in found.items]


def test_a_burst_in_fresher_events_trends_after_a_refresh_and_nothing_else_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "models")
    version = _trained(tmp_path, store, capsys)
    assert "b3" not in _trending_ids(store, version)
    before = ModelStore(Path(store), "shop/guide").load(version)

    fresh = _events(tmp_path / "new.csv", {"b3": [f"b-user-{u}" for u in range(12)]})
    code = main(["refresh-trending", "--model-store", store, "--guide", "shop/guide",
                 "--events", str(fresh), "--time-col", "ts", *TRENDING])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["versions"]) == [version]  # the newest, without --version or --routing
    record = result["versions"][version]
    assert record["items"] >= 1 and record["unknown_item_events"] == 0
    assert record["window_end"].startswith("2026-11-30T00:00:00")

    assert _trending_ids(store, version)[0] == "b3"
    after = ModelStore(Path(store), "shop/guide").load(version)  # checksums verified
    assert after.manifest["trending_refresh"] == record
    np.testing.assert_array_equal(after.user_ids, before.user_ids)
    np.testing.assert_array_equal(after.item_ids, before.item_ids)
    assert (after.model.user_items != before.model.user_items).nnz == 0
    assert after.manifest["metrics"] == before.manifest["metrics"]


def test_forgotten_users_do_not_count_and_routed_versions_are_the_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "models")
    version = _trained(tmp_path, store, capsys)
    burst = [f"b-user-{u}" for u in range(12)]
    # All but three of the burst's shoppers asked to be forgotten: b3 no longer trends.
    forget = [a for u in burst[3:] for a in ("--user-sha256", user_sha256(u))]
    assert main(["forget-users", "--model-store", store, *forget]) == 0
    capsys.readouterr()
    routing = tmp_path / "routing.json"
    routing.write_text(json.dumps({"stable": version, "canary": None, "canaryWeight": 0}))
    fresh = _events(tmp_path / "new.csv", {"b3": burst})
    code = main(["refresh-trending", "--model-store", store, "--guide", "shop/guide",
                 "--events", str(fresh), "--time-col", "ts", "--routing", str(routing),
                 *TRENDING])  # fmt: skip
    assert code == 0
    assert list(json.loads(capsys.readouterr().out)["versions"]) == [version]
    assert "b3" not in _trending_ids(store, version)


def test_events_without_times_or_an_unknown_version_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "models")
    version = _trained(tmp_path, store, capsys)
    fresh = _events(tmp_path / "new.csv")
    common = ["refresh-trending", "--model-store", store, "--guide", "shop/guide",
              "--events", str(fresh)]  # fmt: skip
    assert main([*common, "--time-col", "when"]) == 1
    assert "when" in capsys.readouterr().err
    assert main([*common, "--time-col", "ts", "--version", "v-19990101-000000-aaaa"]) == 1
    assert "v-19990101-000000-aaaa" in capsys.readouterr().err
    # The version that was there is untouched by the failed runs.
    assert "trending_refresh" not in ModelStore(Path(store), "shop/guide").manifest(version)


def test_a_version_in_a_bucket_is_refreshed_in_place(
    tmp_path: Path, s3_server: S3Server, s3_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--s3-endpoint", s3_server.endpoint]
    version = _trained(tmp_path, s3_store, capsys, flags)
    s3 = S3Options(endpoint=s3_server.endpoint)
    before = open_store(s3_store, "shop/guide", s3).manifest(version)
    fresh = _events(tmp_path / "new.csv", {"b3": [f"b-user-{u}" for u in range(12)]})
    code = main(["refresh-trending", "--model-store", s3_store, "--guide", "shop/guide",
                 "--events", str(fresh), "--time-col", "ts", "--version", version,
                 *flags, *TRENDING])  # fmt: skip
    assert code == 0
    capsys.readouterr()
    assert _trending_ids(s3_store, version, s3)[0] == "b3"
    after = open_store(s3_store, "shop/guide", s3).manifest(version)
    # Only the trending arrays have new contents, and only they were uploaded (new keys).
    digest = {n: f["sha256"] for n, f in before["files"].items()}
    changed = {n for n, f in after["files"].items() if f["sha256"] != digest.get(n)}
    assert changed and all(n.startswith("trending_") for n in changed), changed
    uploaded = {n for n, f in after["files"].items() if f.get("key", n) != n}
    assert uploaded == changed
