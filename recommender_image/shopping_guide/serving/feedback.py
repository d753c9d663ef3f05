"""Which model served which recommendation, for attributing feedback; bounded memory."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from shopping_guide_contracts.routing import Cohort


@dataclass(frozen=True)
class Served:
    model_version: str
    cohort: Cohort
    user_id: str


class ServedLog:
    """The newest `capacity` recommendation ids; the oldest are forgotten first."""

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, Served] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, recommendation_id: str, served: Served) -> None:
        self._entries[recommendation_id] = served
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def get(self, recommendation_id: str) -> Served | None:
        return self._entries.get(recommendation_id)
