"""Conditions keep lastTransitionTime until their status flips; phase follows conditions."""

from __future__ import annotations

from shopping_guide_operator import conditions as c
from shopping_guide_operator.conditions import Condition


def test_transition_time_is_kept_while_the_status_holds() -> None:
    first = c.set_conditions([], [Condition(c.READY, False, c.NO_STABLE_MODEL, "a")], 100.0, 1)
    assert first[0]["lastTransitionTime"] == "1970-01-01T00:01:40Z"
    same = c.set_conditions(
        first, [Condition(c.READY, False, c.DEPLOYMENT_UNAVAILABLE, "b")], 200.0, 2
    )
    assert same[0]["lastTransitionTime"] == "1970-01-01T00:01:40Z"
    assert (same[0]["reason"], same[0]["observedGeneration"]) == (c.DEPLOYMENT_UNAVAILABLE, 2)
    flipped = c.set_conditions(same, [Condition(c.READY, True, c.AVAILABLE, "c")], 300.0, 2)
    assert flipped[0]["lastTransitionTime"] == "1970-01-01T00:05:00Z"


def test_conditions_come_out_in_a_fixed_order() -> None:
    wanted = [
        Condition(c.DEGRADED, False, c.HEALTHY, ""),
        Condition(c.READY, True, c.AVAILABLE, ""),
        Condition(c.TRAINING, False, c.IDLE, ""),
    ]
    types = [x["type"] for x in c.set_conditions([], wanted, 0.0, 1)]
    assert types == [c.READY, c.TRAINING, c.DEGRADED]


def test_phase_priority() -> None:
    def phase(**flags: bool) -> str:
        wanted = [Condition(kind, value, "R", "") for kind, value in flags.items()]
        return c.phase(c.set_conditions([], wanted, 0.0, 1))

    assert phase(Ready=True, Degraded=True) == c.PHASE_DEGRADED
    assert phase(Ready=True, Training=True) == c.PHASE_READY
    assert phase(Ready=False, Training=True, Progressing=True) == c.PHASE_TRAINING
    assert phase(Ready=False, Training=False, Progressing=True) == c.PHASE_PROGRESSING
    assert phase(Ready=False) == c.PHASE_PENDING


def test_transitions_become_events_warning_when_bad() -> None:
    before = c.set_conditions([], [Condition(c.DEGRADED, False, c.HEALTHY, "ok")], 0.0, 1)
    after = c.set_conditions(
        before, [Condition(c.DEGRADED, True, c.TRAINING_FAILED, "boom")], 1.0, 1
    )
    assert c.transitions(before, after) == [("Warning", c.TRAINING_FAILED, "Degraded=True: boom")]
    assert c.transitions(after, after) == []


def test_rfc3339_round_trip() -> None:
    assert c.parse_rfc3339(c.now_rfc3339(1_800_000_000.0)) == 1_800_000_000.0
    assert c.parse_rfc3339(None) is None


def test_rfc3339_with_fractions_and_offsets() -> None:
    # metav1.MicroTime (Events, Leases) carries microseconds; other clients write offsets.
    assert c.parse_rfc3339("2026-01-01T00:00:00Z") == 1_767_225_600.0
    assert c.parse_rfc3339("2026-01-01T00:00:00.5Z") == 1_767_225_600.5
    assert c.parse_rfc3339("2026-01-01T00:00:00.250000Z") == 1_767_225_600.25
    assert c.parse_rfc3339("2026-01-01T02:00:00+02:00") == 1_767_225_600.0
