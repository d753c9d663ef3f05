"""python -m tests.process_node --kubeconfig PATH --node local-0 --state-dir DIR [--stop-all]"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from kubernetes import config

from tests.process_node.agent import Agent, stop_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.process_node",
        description="A node whose pods run as local processes (tests and demos only).",
    )
    parser.add_argument("--kubeconfig", type=Path, help="default: $KUBECONFIG or ~/.kube/config")
    parser.add_argument("--node", default="local-0", help="the Node's name (default local-0)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        required=True,
        help="PIDs, pod IPs, logs, volumes",
    )
    parser.add_argument(
        "--stop-all",
        action="store_true",
        help="end every process recorded in the state directory and exit",
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The API client logs every request at DEBUG.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    state_dir = args.state_dir.resolve()
    if args.stop_all:
        count = stop_all(state_dir)
        logging.info("signalled %d process group(s)", count)
        return 0
    state_dir.mkdir(parents=True, exist_ok=True)
    api = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(args.kubeconfig) if args.kubeconfig else None
    )
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        # The pods' processes keep running: a restarted agent adopts them.
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    Agent(api, args.node, state_dir).run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
