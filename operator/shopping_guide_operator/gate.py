"""The offline quality gate: a trainer result in, a verdict with reasons out. Pure.

Two checks, both on the configured metric of the holdout:
- an absolute floor (`minimum`);
- a bounded regression against the stable model, scored by the trainer on the very same
  holdout (`champion` in the result). `maxRegression` is an absolute difference of the metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .spec import Gate


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    metric: str
    value: float | None
    champion_value: float | None = None
    reasons: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        if self.reasons:
            return "; ".join(self.reasons)
        shown = "n/a" if self.value is None else f"{self.value:.4f}"
        text = f"{self.metric} {shown} passes"
        if self.champion_value is not None:
            text += f" (stable model: {self.champion_value:.4f})"
        return text


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def evaluate(result: dict[str, Any], gate: Gate, stable_version: str | None) -> GateVerdict:
    """Judge a decoded training result against the gate and the current stable version."""
    metric = gate.metric
    value = _number((result.get("metrics") or {}).get(metric))
    if value is None:
        return GateVerdict(False, metric, None, reasons=(f"the result has no metric {metric}",))
    reasons: list[str] = []
    if value < gate.minimum:
        reasons.append(f"{metric} {value:.4f} is below the minimum {gate.minimum}")

    champion_value: float | None = None
    if stable_version is not None and gate.max_regression is not None:
        champion = result.get("champion") or {}
        champion_value = _number((champion.get("metrics") or {}).get(metric))
        if champion.get("version") != stable_version or champion_value is None:
            # Without a like-for-like score of the stable model nothing proves the new one is
            # not worse; the stable model keeps serving.
            detail = result.get("champion_error") or "no score of it in the result"
            reasons.append(
                f"the stable model {stable_version} was not scored on the same holdout ({detail})"
            )
            champion_value = None
        elif champion_value - value > gate.max_regression:
            reasons.append(
                f"{metric} {value:.4f} is {champion_value - value:.4f} below the stable model's "
                f"{champion_value:.4f} (maxRegression {gate.max_regression})"
            )
    return GateVerdict(not reasons, metric, value, champion_value, tuple(reasons))
