"""The routing document: which model versions serve, and which users see the canary.

The operator writes it into a ConfigMap (key `routing.json`); every serving pod mounts it and
routes by it. A user is in the canary when `bucket(salt, user_id) < canaryWeightBasisPoints`:
the bucket is a keyed hash, the same in every pod, process and restart, so cohorts are sticky,
and raising the weight only moves users from stable into the canary, never back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from .merchandising import Merchandising, MerchandisingError
from .merchandising import parse as parse_merchandising
from .versions import VersionError, validate_version

SCHEMA_VERSION = 1
CONFIGMAP_KEY = "routing.json"
BASIS_POINTS = 10_000

Cohort = Literal["stable", "canary"]


class RoutingError(ValueError):
    """A routing document that does not follow this contract."""


def bucket(salt: str, user_id: str) -> int:
    """0..9999, uniform, stable: blake2b of the salt and the user id (not Python's hash())."""
    digest = hashlib.blake2b(
        user_id.encode("utf-8"), digest_size=8, key=salt.encode("utf-8")[:64]
    ).digest()
    return int.from_bytes(digest, "big") % BASIS_POINTS


@dataclass(frozen=True)
class Routing:
    stable: str | None
    canary: str | None = None
    canary_weight_basis_points: int = 0
    salt: str = ""
    generation: int = 0
    # Rises when stored versions were rewritten in place (users forgotten): every pod loads
    # its routed versions again, whatever it has loaded.
    models_revision: int = 0
    # The guide's rules and exploration (spec.serving): every pod applies them at once.
    merchandising: Merchandising = field(default_factory=Merchandising)

    def __post_init__(self) -> None:
        if not 0 <= self.canary_weight_basis_points <= BASIS_POINTS:
            raise RoutingError(
                f"canaryWeightBasisPoints must be 0..{BASIS_POINTS}, "
                f"got {self.canary_weight_basis_points}"
            )
        if self.generation < 0:
            raise RoutingError(f"generation must be >= 0, got {self.generation}")
        for name in ("stable", "canary"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                validate_version(value, f"routing {name}")
            except VersionError as exc:
                raise RoutingError(f"{name} must be a version name: {exc}") from exc

    def cohort(self, user_id: str) -> Cohort:
        if self.canary is None or self.canary_weight_basis_points == 0:
            return "stable"
        in_canary = bucket(self.salt, user_id) < self.canary_weight_basis_points
        return "canary" if in_canary else "stable"

    def versions(self) -> set[str]:
        return {v for v in (self.stable, self.canary) if v}

    def to_document(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "stable": self.stable,
            "canary": self.canary,
            "canaryWeightBasisPoints": self.canary_weight_basis_points,
            "salt": self.salt,
            "generation": self.generation,
            "modelsRevision": self.models_revision,
        }
        if not self.merchandising.empty:
            document["merchandising"] = self.merchandising.to_document()
        return document

    def dumps(self) -> str:
        return json.dumps(self.to_document(), sort_keys=True)


def parse(text: str) -> Routing:
    """Read a routing document (JSON, or YAML for hand-written files)."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RoutingError(f"routing is neither JSON nor YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise RoutingError("routing must be an object")
    schema = document.get("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise RoutingError(f"routing schema {schema} is not {SCHEMA_VERSION}")
    weight = document.get("canaryWeightBasisPoints", 0)
    generation = document.get("generation", 0)
    revision = document.get("modelsRevision", 0)
    for name, value in (
        ("canaryWeightBasisPoints", weight),
        ("generation", generation),
        ("modelsRevision", revision),
    ):
        if not isinstance(value, int) or isinstance(value, bool):
            raise RoutingError(f"{name} must be an integer, got {value!r}")
    try:
        merchandising = parse_merchandising(document.get("merchandising"))
    except MerchandisingError as exc:
        raise RoutingError(f"merchandising: {exc}") from exc
    return Routing(
        stable=document.get("stable"),
        canary=document.get("canary"),
        canary_weight_basis_points=weight,
        salt=str(document.get("salt", "")),
        generation=generation,
        models_revision=revision,
        merchandising=merchandising,
    )
