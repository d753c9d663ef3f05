"""The kubectl plugin against an in-memory guide: what it prints and which annotations it sets."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from shopping_guide_operator import plugin


class FakeGuides:
    def __init__(self, guide: dict[str, Any]) -> None:
        self.guide = guide
        self.patches: list[tuple[str, str, dict[str, str]]] = []
        self.erasures: list[tuple[str, dict[str, Any]]] = []

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        if name != self.guide["metadata"]["name"]:
            error = Exception("not found")
            error.status = 404  # type: ignore[attr-defined]
            raise error
        return self.guide

    def annotate(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        self.patches.append((namespace, name, annotations))

    def request_erasure(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.erasures.append((namespace, body))
        return {**body, "metadata": {"name": body["metadata"]["generateName"] + "x7k2q"}}


GUIDE: dict[str, Any] = {
    "metadata": {"name": "storefront", "namespace": "shop"},
    "spec": {"model": {"algorithm": "als"}},
    "status": {
        "phase": "Progressing",
        "message": "canary v2 at 25% (step 2/3, Progressing)",
        "stable": {"version": "v1"},
        "routing": {"stable": "v1", "canary": "v2", "weight": 25},
        "canary": {
            "version": "v2", "weight": 25, "step": 1, "steps": 3, "phase": "Progressing",
            "failures": 1, "inconclusive": 0,
            "last_verdict": {"result": "Fail", "at": 1_800_000_000, "reasons": ["low ctr"],
                             "values": {"clickThroughRatio": 0.5, "requests": 812.0,
                                        "latencyP99Ms": None}},
        },
        "history": [
            {"version": "v2", "outcome": "Canary", "reason": "gate", "at": "2027-01-15T08:00:00Z"},
            {"version": "v1", "outcome": "Promoted", "reason": "n", "at": "2027-01-14T08:00:00Z"},
        ],
    },
}  # fmt: skip


def test_status_shows_canary_step_weight_and_each_measured_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert plugin.main(["-n", "shop", "status", "storefront"], FakeGuides(GUIDE)) == 0
    out = capsys.readouterr().out
    assert "Stable:   v1" in out
    assert "Canary:   v2  weight 25%  step 2/3  Progressing  failures 1" in out
    assert "Analysis: Fail at 2027-01-15T08:00:00Z: low ctr" in out
    assert "clickThroughRatio    0.5" in out
    assert "requests             812" in out
    assert "latencyP99Ms         -" in out


def test_history_lists_newest_first(capsys: pytest.CaptureFixture[str]) -> None:
    plugin.main(["history", "storefront"], FakeGuides(GUIDE))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["AT", "VERSION", "OUTCOME", "REASON"]
    assert lines[1].split()[1:3] == ["v2", "Canary"]
    assert lines[2].split()[1:3] == ["v1", "Promoted"]


@pytest.mark.parametrize(
    ("command", "annotation"),
    [
        ("promote", "shoppingguide.io/promote"),
        ("abort", "shoppingguide.io/abort"),
        ("retry", "shoppingguide.io/retry"),
        ("retrain", "shoppingguide.io/retrain"),
    ],
)
def test_actions_set_their_annotation_to_a_fresh_value(command: str, annotation: str) -> None:
    guides = FakeGuides(GUIDE)
    assert plugin.main(["-n", "shop", command, "storefront"], guides) == 0
    plugin.main(["-n", "shop", command, "storefront"], guides)
    (ns, name, first), (_, _, second) = guides.patches
    assert (ns, name, list(first)) == ("shop", "storefront", [annotation])
    assert first[annotation] != second[annotation]  # the operator acts once per value


def test_rollback_names_the_version() -> None:
    guides = FakeGuides(GUIDE)
    plugin.main(["-n", "shop", "rollback", "storefront", "--to", "v1"], guides)
    ((_, _, annotations),) = guides.patches
    assert annotations["shoppingguide.io/rollback-to"].startswith("v1@")


def test_a_missing_guide_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert plugin.main(["-n", "shop", "status", "nope"], FakeGuides(GUIDE)) == 1
    assert "not found in shop" in capsys.readouterr().err


def test_rollback_needs_a_version() -> None:
    with pytest.raises(SystemExit):
        plugin.main(["rollback", "storefront"], FakeGuides(GUIDE))


@pytest.mark.parametrize(
    "argv",
    [
        ["-n", "shop", "status", "storefront"],
        ["status", "storefront", "-n", "shop"],
        ["status", "-n", "shop", "storefront"],
        ["--namespace=shop", "status", "storefront", "--context", "prod"],
    ],
)
def test_kubectls_global_flags_work_anywhere_on_the_line(argv: list[str]) -> None:
    args = plugin.parse_args(argv)
    assert (args.command, args.name, args.namespace) == ("status", "storefront", "shop")


def test_a_flag_before_the_command_is_not_reset_by_the_subcommand() -> None:
    args = plugin.parse_args(["--kubeconfig", "/k", "--context", "c", "history", "storefront"])
    assert (args.kubeconfig, args.context, args.namespace) == ("/k", "c", None)


def test_bad_usage_exits_2_with_the_commands_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        plugin.parse_args(["rollback", "storefront"])
    assert exited.value.code == 2
    assert "--to" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("version", "why"),
    [
        ("v9", "v9 was never stable in this guide's history (versions that were: v1)"),
        ("v2", "v2 was never stable"),  # a canary that never became stable
    ],
)
def test_rollback_to_a_version_never_stable_is_refused(
    version: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    guides = FakeGuides(GUIDE)
    assert plugin.main(["-n", "shop", "rollback", "storefront", "--to", version], guides) == 1
    err = capsys.readouterr().err
    assert f"Error: cannot roll storefront back to {version}: {why}" in err
    assert guides.patches == []


def test_rollback_while_pinned_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    pinned = {**GUIDE, "spec": {"model": {"algorithm": "als", "pinnedVersion": "v1"}}}
    guides = FakeGuides(pinned)
    assert plugin.main(["rollback", "storefront", "--to", "v1"], guides) == 1
    assert "serving is pinned to v1" in capsys.readouterr().err
    assert guides.patches == []


def test_rollback_to_a_restored_version_or_the_stable_one() -> None:
    status = {
        **GUIDE["status"],
        "stable": {"version": "v5"},
        "history": [{"version": "v3", "outcome": "Restored"}],
    }
    guides = FakeGuides({**GUIDE, "status": status})
    for version in ("v3", "v5"):
        assert plugin.main(["rollback", "storefront", "--to", version], guides) == 0
    assert [next(iter(a.values())).split("@")[0] for _, _, a in guides.patches] == ["v3", "v5"]


def test_forget_sends_only_hashes_of_the_user_ids(capsys: pytest.CaptureFixture[str]) -> None:
    guides = FakeGuides(GUIDE)
    assert (
        plugin.main(["forget", "storefront", "12748", "17850", "12748", "-n", "shop"], guides) == 0
    )
    ((namespace, body),) = guides.erasures
    assert namespace == "shop"
    assert body["kind"] == "ShoppingGuideErasure" and body["spec"]["guide"] == "storefront"
    assert body["spec"]["userIdSha256"] == sorted(
        hashlib.sha256(u.encode()).hexdigest() for u in ("12748", "17850")
    )
    assert "12748" not in json.dumps(body)
    assert "storefront-forget-x7k2q created: 2 users" in capsys.readouterr().out
    assert guides.patches == []  # a request object, not an annotation on the guide


def test_forget_for_a_guide_that_does_not_exist_fails(capsys: pytest.CaptureFixture[str]) -> None:
    guides = FakeGuides(GUIDE)
    assert plugin.main(["forget", "nope", "12748"], guides) == 1
    assert guides.erasures == []
    assert "not found" in capsys.readouterr().err


def test_status_shows_the_last_trending_refresh(capsys: pytest.CaptureFixture[str]) -> None:
    trending = {"phase": "Succeeded", "completedAt": "2027-01-15T09:00:00Z",
                "message": "trending refreshed in 1 versions (v1)"}  # fmt: skip
    guide = {**GUIDE, "status": {**GUIDE["status"], "trending": trending}}
    assert plugin.main(["-n", "shop", "status", "storefront"], FakeGuides(guide)) == 0
    out = capsys.readouterr().out
    assert "Trending: Succeeded 2027-01-15T09:00:00Z  trending refreshed in 1 versions (v1)" in out
    plugin.main(["-n", "shop", "status", "storefront"], FakeGuides(GUIDE))
    assert "Trending:" not in capsys.readouterr().out
