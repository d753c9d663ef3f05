"""Pod IPs: one loopback address per pod, unique and persisted across agent restarts.

All of 127.0.0.0/8 routes to the loopback interface on Linux, so each pod can bind its own
address and every pod can listen on the same port, as in a real pod network.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import zlib
from collections.abc import Iterable
from pathlib import Path

# 127.0.0.0/16 is left alone (127.0.0.1 is the node itself, 127.0.0.53 a local resolver).
POOL = ipaddress.IPv4Network("127.10.0.0/16")


def pool_for(node: str) -> ipaddress.IPv4Network:
    """A /16 of its own for each node name (127.10 to 127.249), so that two agents on one
    machine (a demo beside a test run) never hand out the same address."""
    second = 10 + zlib.crc32(node.encode()) % 240
    return ipaddress.IPv4Network(f"127.{second}.0.0/16")


class PoolExhaustedError(RuntimeError):
    pass


def allocate(used: Iterable[str], pool: ipaddress.IPv4Network = POOL) -> str:
    """The lowest free host address of the pool (network and broadcast excluded)."""
    taken = set(used)
    for address in pool.hosts():
        if str(address) not in taken:
            return str(address)
    raise PoolExhaustedError(f"no free address left in {pool}")


class AddressBook:
    """pod uid -> address, in a JSON file rewritten atomically on every change."""

    def __init__(self, path: Path, pool: ipaddress.IPv4Network = POOL) -> None:
        self.path = path
        self.pool = pool
        self._lock = threading.Lock()
        self._by_uid: dict[str, str] = {}
        if path.exists():
            self._by_uid = {str(k): str(v) for k, v in json.loads(path.read_text()).items()}

    def get(self, uid: str) -> str:
        with self._lock:
            if uid not in self._by_uid:
                self._by_uid[uid] = allocate(self._by_uid.values(), self.pool)
                self._save()
            return self._by_uid[uid]

    def release(self, uid: str) -> None:
        with self._lock:
            if self._by_uid.pop(uid, None) is not None:
                self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._by_uid, indent=1, sort_keys=True))
        tmp.replace(self.path)
