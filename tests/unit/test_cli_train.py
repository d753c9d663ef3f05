"""`shopping-guide train` end to end: one JSON document out, clean failures."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shopping_guide.artifacts import ModelStore
from shopping_guide.cli import main
from shopping_guide_contracts import training_result


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "shopping_guide.cli", "train", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )


def test_train_prints_one_result_and_writes_the_termination_log(
    two_taste_csv: Path, tmp_path: Path
) -> None:
    store, log = tmp_path / "models", tmp_path / "termination-log"
    done = run(
        [
            "--events",
            str(two_taste_csv),
            "--model-store",
            str(store),
            "--algorithm",
            "als",
            "--param",
            "factors=4",
            "--param",
            "regularization=0.1",
            "--termination-log",
            str(log),
        ]
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    training_result.validate(result)
    assert set(result["metrics"]) == {"precision@10", "recall@10", "ndcg@10", "map@10", "coverage"}
    assert result["metrics"]["ndcg@10"] > result["baseline"]["popularity"]["ndcg@10"]
    assert result["data"] | {"users": 60, "items": 24, "skipped_rows": 0} == result["data"]
    assert Path(result["artifact"]).is_dir()
    assert ModelStore(store).versions() == [result["version"]]
    message = log.read_text()
    assert len(message.encode()) <= training_result.TERMINATION_MESSAGE_LIMIT
    assert training_result.decode(message)["version"] == result["version"]


def test_failure_exits_non_zero_with_one_line_and_no_artifact(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,w\nu,i,1\nv,j,lots\n")
    store, log = tmp_path / "models", tmp_path / "termination-log"
    done = run(
        [
            "--events",
            str(bad),
            "--weight-col",
            "w",
            "--model-store",
            str(store),
            "--termination-log",
            str(log),
        ]
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"{bad}, row 2 (line 3), column 'w': not a finite number" in lines[0]
    assert done.stdout == ""
    assert not store.exists() or ModelStore(store).versions() == []
    assert "not a finite number" in json.loads(log.read_text())["error"]


def test_bad_parameter_fails_before_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "train",
            "--events",
            str(tmp_path / "absent.csv"),
            "--model-store",
            str(tmp_path / "m"),
            "--param",
            "factors=-3",
        ]
    )
    assert code == 1
    assert "factors must be >= 1" in capsys.readouterr().err


def test_champion_is_scored_on_the_same_holdout(
    two_taste_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "models")
    common = ["train", "--events", str(two_taste_csv), "--model-store", store, "--seed", "5"]
    assert main([*common, "--algorithm", "itemknn"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main([*common, "--algorithm", "als", "--champion", first["version"]]) == 0
    second = json.loads(capsys.readouterr().out)
    # Same data, same seed, same holdout: the champion scores what it scored when trained.
    assert second["champion"]["metrics"] == pytest.approx(first["metrics"], abs=1e-6)

    assert main([*common, "--champion", "v-missing"]) == 0
    third = json.loads(capsys.readouterr().out)
    assert "not found" in third["champion_error"]


def test_retention_protects_the_champion(
    two_taste_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "models")
    common = [
        "train",
        "--events",
        str(two_taste_csv),
        "--model-store",
        store,
        "--algorithm",
        "itemknn",
        "--keep",
        "1",
    ]
    assert main(common) == 0
    oldest = json.loads(capsys.readouterr().out)["version"]
    for _ in range(2):
        assert main([*common, "--champion", oldest]) == 0
    newest = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["version"]
    assert ModelStore(Path(store)).versions() == [oldest, newest]


def test_tune_reports_the_search(
    two_taste_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "train",
            "--events",
            str(two_taste_csv),
            "--model-store",
            str(tmp_path / "m"),
            "--algorithm",
            "itemknn",
            "--tune",
            "--tune-trials",
            "4",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tuning"]["trials"] == 4


def test_auto_reports_the_family_it_chose_and_stores_it(
    two_taste_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "m"
    code = main(["train", "--events", str(two_taste_csv), "--model-store", str(store),
                 "--algorithm", "auto", "--tune-trials", "4"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    families = result["tuning"]["families"]
    assert set(families) == {"ease", "itemknn", "als", "bpr"}
    chosen = max(families, key=lambda f: families[f]["best_validation"])
    assert result["algorithm"] == chosen
    assert ModelStore(store).load(result["version"]).model.algorithm == chosen


def test_auto_refuses_parameters(two_taste_csv: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    code = main(["train", "--events", str(two_taste_csv), "--model-store", str(tmp_path / "m"),
                 "--algorithm", "auto", "--param", "factors=8"])  # fmt: skip
    assert code != 0
    assert "--param factors needs a named algorithm" in capsys.readouterr().err


def test_termination_message_drops_detail_to_fit() -> None:
    document = {
        "schema": 1,
        "version": "v1",
        "artifact": "/m/v1",
        "metrics": {"ndcg@10": 0.3},
        "baseline": {"popularity": {"ndcg@10": 0.1}},
        "data": {},
        "tuning": {"log": "x" * 5000},
        "timings": {"fit": 1.0},
    }
    text = training_result.encode_termination_message(document)
    decoded = json.loads(text)
    assert "tuning" not in decoded and decoded["truncated"] and decoded["timings"] == {"fit": 1.0}
    with pytest.raises(training_result.ResultError):
        training_result.encode_termination_message({**document, "data": {"x": "y" * 5000}})


def test_forget_user_reaches_every_version_and_the_next_training(
    two_taste_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "models")
    common = ["train", "--events", str(two_taste_csv), "--model-store", store]
    for algorithm in ("als", "itemknn"):
        assert main([*common, "--algorithm", algorithm]) == 0
    capsys.readouterr()
    assert main(["forget-user", "--model-store", store, "a-user-3"]) == 0
    assert len(json.loads(capsys.readouterr().out)["versions"]) == 2
    models = ModelStore(Path(store))
    for version in models.versions():
        loaded = models.load(version)  # checksums re-verified after the rewrite
        assert "a-user-3" not in set(loaded.user_ids)
        assert loaded.model.user_items.shape[0] == len(loaded.user_ids) == 59
    assert main([*common, "--algorithm", "itemknn"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["data"]["users"] == 59
    assert "a-user-3" not in set(models.load(result["version"]).user_ids)


def test_a_guide_trains_into_its_own_directory_against_a_flat_champion(
    two_taste_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "models"
    common = ["train", "--events", str(two_taste_csv), "--model-store", str(store)]
    common += ["--algorithm", "itemknn", "--keep", "1"]
    assert main(common) == 0  # the earlier release: the flat layout
    flat = json.loads(capsys.readouterr().out)["version"]
    for _ in range(2):
        assert main([*common, "--guide", "shop/storefront", "--champion", flat]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "champion_error" not in result and result["champion"]["version"] == flat
    assert Path(result["artifact"]) == store / "guides" / "shop" / "storefront" / result["version"]
    assert ModelStore(store, "shop/storefront").versions() == [result["version"]]
    assert ModelStore(store).versions() == [flat]  # never pruned by a guide


def test_a_bad_guide_fails_before_training(two_taste_csv: Path, tmp_path: Path) -> None:
    done = run(
        ["--events", str(two_taste_csv), "--model-store", str(tmp_path / "m"), "--guide", "../x"]
    )
    assert done.returncode == 1
    assert "guide must be NAMESPACE/NAME" in done.stderr
    assert not (tmp_path / "m").exists()


def test_serve_takes_the_guide() -> None:
    from shopping_guide.cli import build_parser

    parsed = build_parser().parse_args(
        ["serve", "--model-store", "/models", "--routing", "r.json", "--guide", "shop/a"]
    )
    assert parsed.guide == "shop/a"


def test_forget_users_by_hash_rewrites_every_version_of_the_guide_and_later_trainings(
    two_taste_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the erasure Job runs: users named only by the SHA-256 of their id."""
    store = tmp_path / "models"
    common = ["train", "--events", str(two_taste_csv), "--model-store", str(store)]
    assert main([*common, "--guide", "shop/storefront"]) == 0
    assert main([*common, "--guide", "shop/storefront", "--algorithm", "itemknn"]) == 0
    capsys.readouterr()
    digests = [hashlib.sha256(u.encode()).hexdigest() for u in ("a-user-3", "b-user-1")]
    log = tmp_path / "termination-log"
    args = ["forget-users", "--model-store", str(store), "--termination-log", str(log)]
    assert main([*args, *(a for d in digests for a in ("--user-sha256", d))]) == 0
    result = json.loads(log.read_text())
    assert result["users"] == 2 and len(result["versions"]) == 2
    guide = ModelStore(store, "shop/storefront")
    for version in guide.versions():
        users = set(guide.load(version).user_ids)
        assert not {"a-user-3", "b-user-1"} & users
    # No user id was written anywhere in the store, only their hashes.
    for path in store.rglob("*"):
        if path.is_file() and path.suffix in (".txt", ".log", ".sha256", ".json"):
            assert "a-user-3" not in path.read_text()
    assert main([*common, "--guide", "shop/storefront", "--algorithm", "itemknn"]) == 0
    trained = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert "a-user-3" not in set(guide.load(trained["version"]).user_ids)
    assert trained["data"]["users"] == 58


def test_forget_users_refuses_what_is_not_a_digest(tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    args = ["forget-users", "--model-store", str(tmp_path), "--termination-log", str(log)]
    assert main([*args, "--user-sha256", "a-user-3"]) == 1
    assert "64 lower-case hex" in json.loads(log.read_text())["error"]
