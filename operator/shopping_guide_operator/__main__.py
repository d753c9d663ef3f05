"""`python -m shopping_guide_operator` / `shopping-guide-operator`: run the operator.

Uses the in-cluster service account, or the current kubeconfig ($KUBECONFIG) outside one.

The Prometheus addresses guides may name for their canary analysis are the operator's to
allow, not the guides': `--prometheus-allowed-address` (repeatable), else
$SHOPPING_GUIDE_PROMETHEUS_ALLOWED_ADDRESSES (comma-separated), else the cluster's services
only (`http(s)://*.svc:*`, `http(s)://*.svc.cluster.local:*`). Each entry is
`scheme://host[:port][/path]`; the host may start with `*.`, the port may be `*`.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence

from .prometheus_provider import DEFAULT_ALLOWED_ADDRESSES, AllowList

ENV_ALLOWED_ADDRESSES = "SHOPPING_GUIDE_PROMETHEUS_ALLOWED_ADDRESSES"


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="shopping-guide-operator", description="Runs the ShoppingGuide operator."
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable; glob patterns allowed)",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (default)"
    )
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument(
        "--peering",
        metavar="NAME",
        help="coordinate replicas through this kopf peering object (needs kopf's peering "
        "CRDs): only the replica with the highest priority works, the others stand by",
    )
    peering.add_argument("--standalone", action="store_true", help="no peering at all")
    parser.add_argument("--priority", type=int, default=None, help="peering priority")
    parser.add_argument(
        "--liveness",
        metavar="URL",
        default=None,
        help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve the operator's Prometheus metrics on this port (/metrics)",
    )
    parser.add_argument(
        "--resync",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how often each guide is reconciled without any event (default 60)",
    )
    parser.add_argument(
        "--prometheus-allowed-address",
        action="append",
        default=None,
        metavar="URL",
        help="a Prometheus address prefix guides may name, scheme://host[:port][/path] with "
        "an optional leading *. in the host and * as the port (repeatable; default "
        f"${ENV_ALLOWED_ADDRESSES}, else {', '.join(DEFAULT_ALLOWED_ADDRESSES)})",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    args = parser.parse_args(argv)
    environ = os.environ if environ is None else environ
    entries: Sequence[str] = args.prometheus_allowed_address or [
        e.strip() for e in environ.get(ENV_ALLOWED_ADDRESSES, "").split(",") if e.strip()
    ]
    try:
        args.prometheus_allowed = AllowList.parse(entries) if entries else AllowList.default()
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.log_level != "DEBUG":
        # kopf logs every watch-event handler call at INFO: one line per Job or pod change.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    import kopf

    from . import (
        handlers,  # registers the handlers with kopf's default registry
        prometheus_provider,
    )

    prometheus_provider.configure(args.prometheus_allowed)
    logging.getLogger(__name__).info(
        "Prometheus addresses allowed: %s",
        ", ".join(str(e) for e in args.prometheus_allowed.entries),
    )

    if args.resync is not None:
        handlers.OPTIONS["resync"] = args.resync
    if args.metrics_port is not None:
        from . import metrics

        metrics.serve(args.metrics_port)
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=True if args.standalone else None,
        peering_name=args.peering,
        priority=args.priority,
        liveness_endpoint=args.liveness,
    )


if __name__ == "__main__":
    main()
