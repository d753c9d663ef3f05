"""Plain-dict ShoppingGuides for the operator's unit tests."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from shopping_guide_operator.spec import Guide

BASE: dict[str, Any] = {
    "apiVersion": "shoppingguide.io/v1alpha1",
    "kind": "ShoppingGuide",
    "metadata": {"name": "storefront", "namespace": "shop", "uid": "uid-1", "generation": 3},
    "spec": {
        "image": "registry.example.com/shopping-guide/recommender:0.1.0",
        "data": {
            "interactions": {
                "persistentVolumeClaim": {"claimName": "events"},
                "path": "exports/interactions.csv",
                "format": "csv",
                "columns": {"event": "event"},
            },
            "eventWeights": {"view": 1, "purchase": 10, "cart": 4},
        },
        "modelStore": {"persistentVolumeClaim": {"claimName": "models"}, "keep": 4},
        "model": {"algorithm": "als", "factors": 32, "alpha": 2.0},
        "training": {"qualityGate": {"metric": "ndcg@10", "minimum": 0.05, "maxRegression": 0.02}},
        "serving": {
            "replicas": 3,
            "autoscaling": {
                "minReplicas": 2,
                "maxReplicas": 20,
                "targetCPUUtilizationPercentage": 70,
            },
        },
    },
}


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        elif value is None:
            out.pop(key, None)
        else:
            out[key] = copy.deepcopy(value)
    return out


@pytest.fixture
def body() -> dict[str, Any]:
    return copy.deepcopy(BASE)


@pytest.fixture
def make_guide() -> Callable[..., Guide]:
    """A guide from BASE with `spec` merged in (None removes a key)."""

    def make(spec: dict[str, Any] | None = None, **meta: Any) -> Guide:
        body = deep_merge(BASE, {"spec": spec or {}, "metadata": meta})
        return Guide.parse(body)

    return make
