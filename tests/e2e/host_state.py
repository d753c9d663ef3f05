"""What the local cluster may change on the host, captured so that a test can compare the host
after `cluster.sh down` with the host before `cluster.sh up`: processes of the cluster's kind,
iptables/nftables rules, links, routes, network namespaces, mounts, cgroups, sysctls."""

from __future__ import annotations

import difflib
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

SYSCTLS = (
    "net.ipv4.ip_forward",
    "vm.overcommit_memory",
    "kernel.panic",
    "kernel.panic_on_oops",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.ipv4.conf.all.route_localnet",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
)
# Executables of the cluster's kind: a process running one of them after `down` was left behind.
CLUSTER_EXES = re.compile(
    r"/(etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kwok|kubelet|kube-proxy|"
    r"containerd|containerd-shim[-\w]*|runc|coredns|metrics-server|pause)$"
)


def _run(*args: str) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)
    except FileNotFoundError:
        return f"({args[0]} not installed)"
    return done.stdout


_EMPTY_TABLE_LINE = re.compile(r"^(\*\w+|COMMIT|:[A-Z]+ ACCEPT\s*)$")


def _rules(tool: str) -> str:
    # Counters change all the time; the rules themselves must come back exactly.
    text = re.sub(r"\[\d+:\d+\]", "", "\n".join(
        line for line in _run(tool).splitlines() if not line.startswith("#")
    ))  # fmt: skip
    # A table with no rule and every built-in chain accepting filters nothing: the same as no
    # table. The kernel creates one at the first listing and never takes it away again, so on
    # a fresh host it appears between `up` and `down`.
    tables, table = [], []
    for line in text.splitlines():
        table.append(line)
        if line == "COMMIT":
            tables.append(table)
            table = []
    kept = [t for t in tables if not all(_EMPTY_TABLE_LINE.match(line) for line in t)]
    return "\n".join(line for t in [*kept, table] for line in t)


def _processes() -> str:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = str((entry / "exe").readlink())
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if CLUSTER_EXES.search(exe.removesuffix(" (deleted)")):
            found.append(f"{entry.name} {cmdline.strip()}")
    return "\n".join(sorted(found))


# What the image builder (podman) owns; the cluster never touches it.
BUILDER = ("/var/lib/containers/", "/run/containers/", "libpod_parent")


def _mounts() -> str:
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return "\n".join(sorted(p for p in points if not any(b in p for b in BUILDER)))


def _cgroups() -> str:
    root = Path("/sys/fs/cgroup")
    found = []
    for hierarchy in sorted(root.iterdir()):
        if hierarchy.is_dir():
            found += [
                str(d) for d in sorted(hierarchy.iterdir()) if d.is_dir() and d.name not in BUILDER
            ]
    return "\n".join(found)


def _sysctls() -> str:
    lines = []
    for key in SYSCTLS:
        path = Path("/proc/sys") / key.replace(".", "/")
        if path.exists():
            lines.append(f"{key}={path.read_text().strip()}")
    return "\n".join(lines)


@dataclass(frozen=True)
class HostState:
    parts: tuple[tuple[str, str], ...]

    @classmethod
    def capture(cls) -> HostState:
        return cls(
            (
                ("processes", _processes()),
                ("iptables", _rules("iptables-save")),
                ("ip6tables", _rules("ip6tables-save")),
                ("links", re.sub(r"\s+link/\S+ \S+ brd \S+", "", _run("ip", "-o", "link", "show"))),
                (
                    "addresses",
                    re.sub(
                        r"valid_lft \S+ preferred_lft \S+", "", _run("ip", "-o", "addr", "show")
                    ),
                ),
                ("routes", _run("ip", "route", "show", "table", "all")),
                ("netns", _run("ip", "netns", "list")),
                ("mounts", _mounts()),
                ("cgroups", _cgroups()),
                ("sysctls", _sysctls()),
            )
        )

    def differences(self, after: HostState) -> str:
        """A unified diff per part that changed; empty when the host is as it was."""
        out = []
        for (name, before), (_, now) in zip(self.parts, after.parts, strict=True):
            if before != now:
                diff = difflib.unified_diff(
                    before.splitlines(), now.splitlines(), f"{name} before", f"{name} after",
                    lineterm="", n=0,
                )  # fmt: skip
                out.append("\n".join(diff))
        return "\n".join(out)
