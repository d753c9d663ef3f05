"""`kubectl shoppingguide` (the console script `kubectl-shoppingguide`): read and steer a guide.

Reads status; steers only through annotations on the resource, which the operator acts on
once per distinct value. Those annotations are the user's write: the operator itself never
writes spec or annotations. Uses the current kubeconfig, as kubectl does.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Sequence
from typing import Any, Protocol, TextIO, cast

from .constants import (
    ANNOTATION_ABORT,
    ANNOTATION_PROMOTE,
    ANNOTATION_RETRAIN,
    ANNOTATION_RETRY,
    ANNOTATION_ROLLBACK_TO,
    GROUP,
    PLURAL,
    VERSION,
)

ERASURE_PLURAL = "shoppingguideerasures"
ACTIONS = {
    "promote": ANNOTATION_PROMOTE,
    "abort": ANNOTATION_ABORT,
    "retry": ANNOTATION_RETRY,
    "retrain": ANNOTATION_RETRAIN,
}


class Guides(Protocol):
    """The two calls the plugin makes."""

    def get(self, namespace: str, name: str) -> dict[str, Any]: ...

    def annotate(self, namespace: str, name: str, annotations: dict[str, str]) -> None: ...

    def request_erasure(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...


class KubeGuides:
    def __init__(self, context: str | None = None, kubeconfig: str | None = None) -> None:
        from kubernetes import client, config

        config.load_kube_config(config_file=kubeconfig, context=context)  # type: ignore[no-untyped-call]
        self.api = client.CustomObjectsApi()

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        found = self.api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        return cast(dict[str, Any], found)

    def annotate(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        # A dict body goes out as a JSON merge patch: only these annotations change.
        self.api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, {"metadata": {"annotations": annotations}}
        )

    def request_erasure(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        created = self.api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, ERASURE_PLURAL, body
        )
        return cast(dict[str, Any], created)


def _global_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    """kubectl's own flags, which kubectl passes on where the user wrote them: before or after
    the command. On the subcommands they default to SUPPRESS, so an absent flag there leaves
    the value given before the command alone."""
    parser.add_argument("-n", "--namespace", default=default, help="default: the context's")
    parser.add_argument("--context", default=default, help="kubeconfig context")
    parser.add_argument(
        "--kubeconfig", default=default, help="default: $KUBECONFIG or ~/.kube/config"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kubectl shoppingguide",
        description="Inspect and steer ShoppingGuide rollouts.",
        epilog="Exit codes: 0 done, 1 the API refused, the guide does not exist or cannot do "
        "that (rollback to a version that was never stable), 2 bad usage.",
    )
    _global_flags(parser, None)
    flags = argparse.ArgumentParser(add_help=False)
    _global_flags(flags, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("status", "stable, canary, weight, step and the last analysis"),
        ("history", "versions promoted, rolled back and rejected, newest first"),
        ("promote", "promote the running canary now"),
        ("abort", "roll the running canary back now"),
        ("retry", "run the last rolled-back canary again from the first step"),
        ("retrain", "start a training run now"),
    ):
        command = commands.add_parser(name, help=text, description=text, parents=[flags])
        command.add_argument("name")
    rollback = commands.add_parser(
        "rollback",
        help="make a previous stable version stable",
        description="make a previous stable version stable",
        parents=[flags],
    )
    rollback.add_argument("name")
    rollback.add_argument("--to", required=True, metavar="VERSION")
    forget = commands.add_parser(
        "forget",
        help="forget shoppers in every model version of the guide (an erasure request)",
        description="Creates a ShoppingGuideErasure naming each user by the SHA-256 of the id "
        "(no user id is sent to the cluster); the operator rewrites the guide's models without "
        "them, the serving pods reload, and later trainings skip their events. Follow it with "
        "`kubectl get sgerasure NAME`.",
        parents=[flags],
    )
    forget.add_argument("name")
    forget.add_argument("user_ids", nargs="+", metavar="USER_ID")
    return parser.parse_args(argv)


def _percent(value: Any) -> str:
    return f"{float(value):g}%" if isinstance(value, int | float) else "-"


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value:.4g}"


def show_status(guide: dict[str, Any], out: TextIO) -> None:
    status = guide.get("status") or {}
    stable = (status.get("stable") or {}).get("version") or "-"
    routing = status.get("routing") or {}
    out.write(f"Phase:    {status.get('phase', '-')}  {status.get('message', '')}\n")
    served = routing.get("stable")
    pin = (guide.get("spec", {}).get("model") or {}).get("pinnedVersion")
    out.write(f"Stable:   {stable}" + (f" (serving pinned {pin})" if pin else "") + "\n")
    if served and served != stable and not pin:
        out.write(f"Serving:  {served}\n")
    trending = status.get("trending")
    if trending:
        at = trending.get("completedAt") or trending.get("startedAt") or "-"
        out.write(f"Trending: {trending.get('phase', '-')} {at}  {trending.get('message', '')}\n")
    canary = status.get("canary")
    if not canary:
        out.write("Canary:   -\n")
        last = status.get("lastCanary")
        if last:
            ended = f"{last.get('version')} {last.get('phase')} {last.get('reason')}"
            out.write(f"Last canary: {ended}\n")
        return
    step = f"{int(canary.get('step', 0)) + 1}/{canary.get('steps', '?')}"
    out.write(
        f"Canary:   {canary.get('version')}  weight {_percent(canary.get('weight'))}  "
        f"step {step}  {canary.get('phase')}  failures {canary.get('failures', 0)}  "
        f"inconclusive {canary.get('inconclusive', 0)}\n"
    )
    if canary.get("prometheusError"):
        out.write(f"Prometheus: {canary['prometheusError']}\n")
    verdict = canary.get("last_verdict")
    if verdict:
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(verdict.get("at", 0))))
        reasons = "; ".join(verdict.get("reasons") or [])
        why = f": {reasons}" if reasons else ""
        out.write(f"Analysis: {verdict.get('result')} at {at}{why}\n")
        for key, value in sorted((verdict.get("values") or {}).items()):
            out.write(f"  {key:<20} {_number(value)}\n")


def show_history(guide: dict[str, Any], out: TextIO) -> None:
    history = (guide.get("status") or {}).get("history") or []
    out.write(f"{'AT':<21} {'VERSION':<32} {'OUTCOME':<11} REASON\n")
    for entry in history:
        out.write(
            f"{entry.get('at', '-'):<21} {entry.get('version', '-'):<32} "
            f"{entry.get('outcome', '-'):<11} {entry.get('reason', '')}\n"
        )


def rollback_refusal(guide: dict[str, Any], version: str) -> str | None:
    """Why the operator would refuse `rollback --to version`, checked before asking it. A
    version counts when the history shows it stable (Promoted or Restored): the versions a
    training run never prunes."""
    status = guide.get("status") or {}
    pin = (guide.get("spec", {}).get("model") or {}).get("pinnedVersion")
    if pin:
        return f"serving is pinned to {pin} (spec.model.pinnedVersion); change the pin instead"
    were_stable = {
        str(entry.get("version"))
        for entry in status.get("history") or []
        if entry.get("version") and entry.get("outcome") in ("Promoted", "Restored")
    }
    if version in were_stable or version == (status.get("stable") or {}).get("version"):
        return None  # the current stable: the operator says so and changes nothing
    known = ", ".join(sorted(were_stable)) or "none"
    return (
        f"{version} was never stable in this guide's history (versions that were: {known}); "
        "see `kubectl shoppingguide history`"
    )


def run(args: argparse.Namespace, guides: Guides, namespace: str, out: TextIO) -> int:
    if args.command == "status":
        show_status(guides.get(namespace, args.name), out)
        return 0
    if args.command == "history":
        show_history(guides.get(namespace, args.name), out)
        return 0
    if args.command == "forget":
        guides.get(namespace, args.name)  # a 404 here names the guide, not the request
        created = guides.request_erasure(namespace, erasure_request(args.name, args.user_ids))
        request = created.get("metadata", {}).get("name", "")
        out.write(
            f"shoppingguideerasure.shoppingguide.io/{request} created: "
            f"{len(set(args.user_ids))} users for {args.name}\n"
        )
        return 0
    # A fresh value each time: the operator acts once per distinct value.
    token = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + f".{time.time_ns() % 10**9}"
    if args.command == "rollback":
        refused = rollback_refusal(guides.get(namespace, args.name), args.to)
        if refused is not None:
            sys.stderr.write(f"Error: cannot roll {args.name} back to {args.to}: {refused}\n")
            return 1
        annotations = {ANNOTATION_ROLLBACK_TO: f"{args.to}@{token}"}
    else:
        annotations = {ACTIONS[args.command]: token}
    guides.annotate(namespace, args.name, annotations)
    out.write(f"shoppingguide.io/{args.name} {args.command} requested\n")
    return 0


def erasure_request(guide: str, user_ids: Sequence[str]) -> dict[str, Any]:
    digests = sorted({hashlib.sha256(u.encode("utf-8")).hexdigest() for u in user_ids})
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ShoppingGuideErasure",
        "metadata": {"generateName": f"{guide}-forget-"},
        "spec": {"guide": guide, "userIdSha256": digests},
    }


def current_namespace(context: str | None, kubeconfig: str | None = None) -> str:
    from kubernetes import config

    contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    if context is not None:
        active = next((c for c in contexts if c["name"] == context), active)
    return str((active or {}).get("context", {}).get("namespace") or "default")


def main(argv: Sequence[str] | None = None, guides: Guides | None = None) -> int:
    args = parse_args(argv)
    namespace = args.namespace or (
        "default" if guides is not None else current_namespace(args.context, args.kubeconfig)
    )
    try:
        api = guides if guides is not None else KubeGuides(args.context, args.kubeconfig)
        return run(args, api, namespace, sys.stdout)
    except Exception as exc:  # the API's errors, shown as kubectl shows them
        status = getattr(exc, "status", None)
        if status == 404:
            sys.stderr.write(f"Error: shoppingguide {args.name!r} not found in {namespace}\n")
            return 1
        reason = getattr(exc, "reason", None) or str(exc)
        sys.stderr.write(f"Error: {reason}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
