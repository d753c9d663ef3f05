"""Simulated shoppers, run as a pod of the recommender image (standard library only).

Each shopper belongs to a taste group (its user id starts with the group's letter) and asks the
guide's Service for one recommendation; when the item is of its own group it clicks it, which
the server attributes to the model version that served the list (and, with --purchase-share,
sometimes buys it). A model trained on scrambled
events recommends other groups' items and loses its clicks. Every few seconds one JSON line on
stdout counts responses by model version, clicks and failures.

    python shopper_pod.py URL --groups abcd --users 150
    python shopper_pod.py URL --tastes tastes.json --k 5

With --tastes, the file maps each shopper to the items they will buy (for Online Retail: what a
customer bought after the training data ends); a shopper clicks the first recommended item that
is among them.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--groups", default="abcd")
    parser.add_argument("--users", type=int, default=150)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--report-every", type=float, default=2.0)
    parser.add_argument("--tastes", default=None, help="JSON: user id -> items they would click")
    parser.add_argument("--k", type=int, default=1, help="items per recommendation")
    parser.add_argument("--pause", type=float, default=0.01, help="seconds between requests")
    parser.add_argument(
        "--purchase-share", type=float, default=0.0,
        help="share of clicks followed by a purchase (1 to 3 units at the catalogue's price)",
    )  # fmt: skip
    args = parser.parse_args()
    tastes: dict[str, set[str]] = {}
    if args.tastes:
        loaded = json.loads(Path(args.tastes).read_text(encoding="utf-8"))
        tastes = {user: set(items) for user, items in loaded.items()}
    users = sorted(tastes)

    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def shop(seed: int) -> None:
        rng = random.Random(seed)
        while True:
            if tastes:
                user = rng.choice(users)
                liked = tastes[user]
            else:
                group = rng.choice(args.groups)
                user = f"{group}-user-{rng.randrange(args.users)}"
                liked = None
            try:
                with urllib.request.urlopen(
                    f"{args.url}/v1/recommendations?user_id={user}&k={args.k}", timeout=10
                ) as response:
                    body = json.loads(response.read())
            except (urllib.error.URLError, OSError, ValueError) as exc:
                with lock:
                    counts[f"failed:{type(exc).__name__}"] += 1
                time.sleep(0.2)
                continue
            version = str(body.get("model_version"))
            items = body.get("items") or []
            with lock:
                counts[f"served:{version}"] += 1
            ids = [item["item_id"] for item in items]
            if liked is None:
                clicked = ids[0] if ids and ids[0].startswith(group) else None
            else:
                clicked = next((i for i in ids if i in liked), None)
            if clicked is not None:
                feedback = {
                    "recommendation_id": body["recommendation_id"],
                    "user_id": user,
                    "item_id": clicked,
                    "event": "click",
                }
                request = urllib.request.Request(
                    f"{args.url}/v1/feedback",
                    json.dumps(feedback).encode(),
                    {"Content-Type": "application/json"},
                    method="POST",
                )
                try:
                    with urllib.request.urlopen(request, timeout=10) as response:
                        answer = json.loads(response.read())
                    with lock:
                        counts[f"clicked:{version}"] += 1
                        # Which version the pod that took the click credited it to: behind a
                        # Service, often not the pod that served the list.
                        counts[f"attributed:{answer.get('model_version')}"] += 1
                    if rng.random() < args.purchase_share:
                        bought = {**feedback, "event": "purchase", "quantity": rng.randint(1, 3)}
                        purchase = urllib.request.Request(
                            f"{args.url}/v1/feedback",
                            json.dumps(bought).encode(),
                            {"Content-Type": "application/json"},
                            method="POST",
                        )
                        with urllib.request.urlopen(purchase, timeout=10) as response:
                            paid = json.loads(response.read())
                        with lock:
                            counts[f"purchased:{version}"] += 1
                            counts["revenue_cents"] += round(100 * paid.get("revenue", 0))
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    with lock:
                        counts[f"failed:{type(exc).__name__}"] += 1
            time.sleep(args.pause)

    for n in range(args.workers):
        threading.Thread(target=shop, args=(n,), daemon=True).start()
    while True:
        time.sleep(args.report_every)
        with lock:
            print(json.dumps({"time": time.time(), **counts}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
