"""The alert state machine, without a database: thresholds, hysteresis, resolution and reminders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from alerts.states import Thresholds, decide, next_state
from models.alert import CRITICAL, OK, RESOLVED, WARNING

BUDGET = Thresholds(warning=Decimal(80), critical=Decimal(100))
HORIZON = Thresholds(warning=Decimal(20), critical=Decimal(7), lower_is_worse=True)
HYSTERESIS = Decimal("0.1")
NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)
REMIND = timedelta(hours=4)


def run(values: list[Decimal | None], thresholds: Thresholds = BUDGET) -> list[str | None]:
    """The changes a sequence of evaluations records, starting from ok."""
    state, changes = OK, []
    for value in values:
        decision = decide(
            state, value, thresholds, hysteresis=HYSTERESIS, last_notified_at=NOW, now=NOW, reminder_every=REMIND
        )
        state = decision.state
        changes.append(decision.change)
    return changes


def test_rising_value_goes_warning_then_critical_then_resolved() -> None:
    values = [Decimal(v) for v in (10, 80, 95, 100, 120, 50)]
    assert run(values) == [None, WARNING, None, CRITICAL, None, RESOLVED]


def test_a_value_oscillating_around_a_threshold_changes_state_once() -> None:
    around_warning = [Decimal(v) for v in (79, 81, 78, 80, 75, 82)] * 5  # never below 80 x 0.9 = 72
    assert [c for c in run(around_warning) if c] == [WARNING]
    around_critical = [Decimal(v) for v in (99, 101, 95, 100, 91)] * 5  # never below 100 x 0.9 = 90
    assert [c for c in run(around_critical) if c] == [WARNING, CRITICAL]


def test_without_hysteresis_the_same_oscillation_would_flap() -> None:
    state, changes = OK, 0
    for value in [Decimal(79), Decimal(81)] * 5:
        new = next_state(state, value, BUDGET, Decimal(0))
        changes += new != state
        state = new
    assert changes == 9  # every value after the first (79 from ok) changes the state


def test_leaving_a_state_needs_the_value_below_the_hysteresis_band() -> None:
    assert next_state(CRITICAL, Decimal("90.01"), BUDGET, HYSTERESIS) == CRITICAL
    assert next_state(CRITICAL, Decimal("89.99"), BUDGET, HYSTERESIS) == WARNING
    assert next_state(WARNING, Decimal("72"), BUDGET, HYSTERESIS) == WARNING
    assert next_state(WARNING, Decimal("71.99"), BUDGET, HYSTERESIS) == OK
    assert next_state(CRITICAL, Decimal(10), BUDGET, HYSTERESIS) == OK  # straight to resolved


def test_critical_falling_to_warning_is_a_change_with_the_warning_threshold() -> None:
    d = decide(
        CRITICAL, Decimal(85), BUDGET, hysteresis=HYSTERESIS, last_notified_at=NOW, now=NOW, reminder_every=REMIND
    )
    assert (d.state, d.change, d.threshold) == (WARNING, WARNING, Decimal(80))


def test_not_enough_data_resolves() -> None:
    assert run([Decimal(100), None]) == [CRITICAL, RESOLVED]


def test_lower_is_worse_mirrors_every_comparison() -> None:
    values = [Decimal(v) for v in (60, 20, 21, 7, 7.5, 8, 21, 23)]
    # enters warning at 20, critical at 7; leaves critical above 7.7, warning above 22
    assert run(values, HORIZON) == [None, WARNING, None, CRITICAL, None, WARNING, None, RESOLVED]


def test_reminder_due_only_while_bad_and_after_the_interval() -> None:
    def due(state: str, value: int, last: datetime | None) -> bool:
        d = decide(
            state, Decimal(value), BUDGET, hysteresis=HYSTERESIS, last_notified_at=last, now=NOW, reminder_every=REMIND
        )
        return d.reminder_due

    assert due(CRITICAL, 120, NOW - REMIND)
    assert not due(CRITICAL, 120, NOW - REMIND + timedelta(seconds=1))
    assert due(WARNING, 85, None)
    assert not due(OK, 10, None)
    assert not due(WARNING, 120, NOW - 2 * REMIND)  # a change (to critical) is notified, not reminded


def test_thresholds_in_the_wrong_order_are_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="critical_threshold"):
        Thresholds(warning=Decimal(10), critical=Decimal(5))
    with pytest.raises(ValueError, match="critical_threshold"):
        Thresholds(warning=Decimal(5), critical=Decimal(10), lower_is_worse=True)
    with pytest.raises(ValueError, match="state"):
        next_state("resolved", Decimal(1), BUDGET, HYSTERESIS)
