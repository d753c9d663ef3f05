"""Pure translation of a container spec into a host process: command, environment, paths."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ImageProfile:
    """What an image would contribute: its ENTRYPOINT, CMD and ENV (from its Dockerfile)."""

    needle: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


# The one place where images map to installed console scripts: the first profile whose needle
# occurs in the image's name (registry, path, tag and digest stripped) stands in for the image.
IMAGES: tuple[ImageProfile, ...] = (
    ImageProfile(
        "recommender",
        ("shopping-guide",),
        ("--help",),
        (("PYTHONUNBUFFERED", "1"), ("OPENBLAS_NUM_THREADS", "1")),
    ),
    ImageProfile("operator", ("shopping-guide-operator",), (), (("PYTHONUNBUFFERED", "1"),)),
)

DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"

# The directory holding the console scripts of the interpreter that runs the agent.
SCRIPTS_DIR = Path(sys.executable).parent


class SpecError(ValueError):
    """A container spec the node cannot run (reported as CreateContainerConfigError)."""


def image_name(image: str) -> str:
    """`registry:5000/org/shopping-guide-recommender:1.0@sha256:..` -> `shopping-guide-...`."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[0]


def image_profile(image: str) -> ImageProfile | None:
    name = image_name(image)
    for profile in IMAGES:
        if profile.needle in name:
            return profile
    return None


def resolve_executable(
    name: str, path_env: str | None = None, scripts_dir: Path = SCRIPTS_DIR
) -> str:
    """A console script resolves to the agent's own environment, so the image's programs run
    from the project as installed; anything else goes through PATH like exec would."""
    if "/" not in name:
        if (scripts_dir / name).is_file():
            return str(scripts_dir / name)
        found = shutil.which(name, path=path_env)
        if found is None:
            raise SpecError(f"executable {name!r} not found in {scripts_dir} or PATH")
        return found
    # An absolute path inside the image (/usr/local/bin/shopping-guide) that the host lacks.
    if not Path(name).exists() and (scripts_dir / Path(name).name).is_file():
        return str(scripts_dir / Path(name).name)
    return name


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)|\$\$")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubelet's `$(VAR)` expansion: known names are replaced, unknown references stay as
    written, and `$$` escapes a literal `$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _VAR.sub(replace, text)


class PathMapper:
    """Rewrites container paths (volume mounts, the termination log) into host paths.

    A container path is replaced where it starts a token (start of the string or after one of
    `= : , ; space quote`) and ends at the end of the string, a `/` or one of those separators,
    so `/models` maps `--model-store=/models/v1` but not `/models-old`. The longest container
    path wins, so a mount nested inside another maps to its own host directory.
    """

    _BOUNDARY = "=:,; \t\"'"

    def __init__(self, mapping: Mapping[str, str | Path]) -> None:
        cleaned = {_strip(c): str(h) for c, h in mapping.items() if _strip(c)}
        self.mapping = dict(sorted(cleaned.items(), key=lambda kv: -len(kv[0])))
        if self.mapping:
            sep = re.escape(self._BOUNDARY)
            alternatives = "|".join(re.escape(c) for c in self.mapping)
            self._pattern: re.Pattern[str] | None = re.compile(
                rf"(?:^|(?<=[{sep}]))({alternatives})(?=$|/|[{sep}])"
            )
        else:
            self._pattern = None

    def rewrite(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: self.mapping[m.group(1)], text)

    def host_path(self, container_path: str) -> Path | None:
        """The host path for an absolute container path, or None when no mount covers it."""
        path = _strip(container_path)
        for container, host in self.mapping.items():
            if path == container or path.startswith(container + "/"):
                return Path(host + path[len(container) :])
        return None


def _strip(path: str) -> str:
    return path.rstrip("/") if path != "/" else path


def build_command(
    container: Mapping[str, Any], env: Mapping[str, str], mapper: PathMapper
) -> list[str]:
    """command + args, expanded and path-mapped, with the executable resolved on the host."""
    command = [str(c) for c in container.get("command") or []]
    args = [str(a) for a in container.get("args") or []]
    if not command:
        # As a runtime does: ENTRYPOINT + args, or ENTRYPOINT + CMD when args are empty too.
        image = str(container.get("image", ""))
        profile = image_profile(image)
        if profile is None:
            raise SpecError(f"no entrypoint is known for image {image!r} and no command is set")
        command = list(profile.entrypoint)
        args = args or list(profile.cmd)
    argv = [mapper.rewrite(expand(part, env)) for part in command + args]
    argv[0] = resolve_executable(argv[0], env.get("PATH"))
    return argv


FieldLookup = Callable[[str, str, str, bool], str | None]
"""(kind "configmap"|"secret", object name, key, optional) -> value, or None when optional and
missing; raises SpecError when a required one is missing."""

SourceLookup = Callable[[str, str, bool], Mapping[str, str]]
"""(kind, object name, optional) -> all keys of a ConfigMap or Secret (for envFrom)."""


def field_value(pod: Mapping[str, Any], field_path: str) -> str:
    """The downward API's fieldRef values that a process node can know."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(p["ip"] for p in status.get("podIPs") or []),
        "status.hostIPs": ",".join(p["ip"] for p in status.get("hostIPs") or []),
    }
    if field_path in simple:
        return str(simple[field_path] or "")
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", field_path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    if field_path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(field_path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise SpecError(f"fieldRef {field_path!r} is not supported")


def build_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    base: Mapping[str, str],
    lookup: FieldLookup,
    lookup_all: SourceLookup,
    mapper: PathMapper,
) -> dict[str, str]:
    """The process environment as kubelet builds it: base, then envFrom, then env in order,
    each `value` expanded against what is defined before it; values are then path-mapped."""
    env: dict[str, str] = dict(base)
    for source in container.get("envFrom") or []:
        prefix = str(source.get("prefix") or "")
        for kind, key in (("configmap", "configMapRef"), ("secret", "secretRef")):
            ref = source.get(key)
            if ref:
                optional = bool(ref.get("optional"))
                for name, value in lookup_all(kind, ref["name"], optional).items():
                    env[prefix + name] = value
    for var in container.get("env") or []:
        name = var["name"]
        source = var.get("valueFrom")
        if source is None:
            env[name] = expand(str(var.get("value") or ""), env)
            continue
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "configMapKeyRef" in source or "secretKeyRef" in source:
            kind, ref = (
                ("configmap", source["configMapKeyRef"])
                if "configMapKeyRef" in source
                else ("secret", source["secretKeyRef"])
            )
            found = lookup(kind, ref["name"], ref["key"], bool(ref.get("optional")))
            if found is not None:
                env[name] = found
        elif "resourceFieldRef" in source:
            env[name] = resource_value(container, source["resourceFieldRef"])
        else:
            raise SpecError(f"env {name}: unsupported valueFrom {sorted(source)}")
    return {k: mapper.rewrite(v) for k, v in env.items()}


def resource_value(container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    """limits/requests as the downward API reports them (cpu rounded up to whole cores at the
    default divisor; unset limits fall back to the node's capacity)."""
    kind, _, resource = str(ref.get("resource", "")).partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(resource)
    if resource == "cpu":
        cores = parse_cpu(str(value)) if value else float(os.cpu_count() or 1)
        return str(max(1, int(-(-cores // 1))))
    if resource in ("memory", "ephemeral-storage"):
        return str(parse_quantity(str(value))) if value else "0"
    raise SpecError(f"resourceFieldRef {ref.get('resource')!r} is not supported")


def parse_cpu(text: str) -> float:
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


_SUFFIX = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}


def parse_quantity(text: str) -> int:
    for suffix, factor in _SUFFIX.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(float(text))


def mount_mapping(
    container: Mapping[str, Any],
    volume_paths: Mapping[str, Path],
    termination_log: Path,
) -> dict[str, Path]:
    """container path -> host path for every volumeMount (with subPath) and the termination
    message path."""
    mapping: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        volume = mount["name"]
        if volume not in volume_paths:
            raise SpecError(f"volumeMount {volume!r} names no volume of the pod")
        host = volume_paths[volume]
        sub = str(mount.get("subPath") or "")
        if sub:
            if sub.startswith("/") or ".." in Path(sub).parts:
                raise SpecError(f"subPath {sub!r} must be relative and stay inside the volume")
            host = host / sub
        mapping[str(mount["mountPath"])] = host
    path = str(container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH)
    mapping[path] = termination_log
    return mapping


def working_dir(container: Mapping[str, Any], mapper: PathMapper, default: Path) -> Path:
    """workingDir when a mount covers it (or it exists on the host), else the pod's directory."""
    wanted = container.get("workingDir")
    if not wanted:
        return default
    mapped = mapper.host_path(str(wanted))
    if mapped is not None:
        return mapped
    return Path(wanted) if Path(wanted).is_dir() else default


def container_ports(container: Mapping[str, Any]) -> dict[str, int]:
    return {
        str(p["name"]): int(p["containerPort"])
        for p in container.get("ports") or []
        if p.get("name")
    }
