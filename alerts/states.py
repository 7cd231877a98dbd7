"""The state machine of one alert rule: ok -> warning -> critical -> resolved (back to ok), with hysteresis.

Pure: it takes the current state, the value just measured and the rule's
thresholds, and says what the state becomes, whether that is a change to
record (and notify), and whether a reminder is due. A state is entered when
the value reaches its threshold, and left only once the value falls below
threshold x (1 - hysteresis): a value hovering at a threshold enters once and
stays, instead of notifying on every evaluation. For a measure where lower is
worse (the partition horizon) every comparison is mirrored: entered at or
below the threshold, left above threshold x (1 + hysteresis).

A value of None (not enough data: too few calls, a spike under its minimum
amount) counts as fine: it resolves a bad state, since nothing measurable is
wrong any more.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from models.alert import CRITICAL, OK, RESOLVED, WARNING

BAD_STATES = (WARNING, CRITICAL)


@dataclass(frozen=True)
class Thresholds:
    warning: Decimal
    critical: Decimal
    lower_is_worse: bool = False

    def __post_init__(self) -> None:
        worse = self.critical <= self.warning if self.lower_is_worse else self.critical >= self.warning
        if not worse:
            side = "at or below" if self.lower_is_worse else "at or above"
            raise ValueError(f"critical_threshold must be {side} warning_threshold")


@dataclass(frozen=True)
class Decision:
    state: str  # the state after this evaluation: ok | warning | critical
    change: str | None  # the history's to_state (warning | critical | resolved), None: no change
    threshold: Decimal | None  # the threshold the change crossed (for resolved: the warning threshold)
    reminder_due: bool  # no change, still bad, and the last notification is older than the reminder interval


def _reaches(value: Decimal, threshold: Decimal, lower_is_worse: bool) -> bool:
    return value <= threshold if lower_is_worse else value >= threshold


def _clears(value: Decimal, threshold: Decimal, lower_is_worse: bool, hysteresis: Decimal) -> bool:
    if lower_is_worse:
        return value > threshold * (1 + hysteresis)
    return value < threshold * (1 - hysteresis)


def next_state(current: str, value: Decimal | None, thresholds: Thresholds, hysteresis: Decimal) -> str:
    """The state ``value`` puts a rule in that is now ``current``."""
    if current not in (OK, WARNING, CRITICAL):
        raise ValueError(f"state must be ok, warning or critical, got {current!r}")
    if value is None:
        return OK
    low = thresholds.lower_is_worse
    if _reaches(value, thresholds.critical, low):
        return CRITICAL
    if current == CRITICAL and not _clears(value, thresholds.critical, low, hysteresis):
        return CRITICAL
    if _reaches(value, thresholds.warning, low):
        return WARNING
    if current in BAD_STATES and not _clears(value, thresholds.warning, low, hysteresis):
        return WARNING
    return OK


def decide(
    current: str,
    value: Decimal | None,
    thresholds: Thresholds,
    *,
    hysteresis: Decimal,
    last_notified_at: datetime | None,
    now: datetime,
    reminder_every: timedelta,
) -> Decision:
    """What one evaluation does to a rule: its new state, the change to record, whether to remind."""
    state = next_state(current, value, thresholds, hysteresis)
    if state != current:
        change = RESOLVED if state == OK else state
        threshold = {CRITICAL: thresholds.critical, WARNING: thresholds.warning, OK: thresholds.warning}[state]
        return Decision(state=state, change=change, threshold=threshold, reminder_due=False)
    due = state in BAD_STATES and (last_notified_at is None or now - last_notified_at >= reminder_every)
    return Decision(state=state, change=None, threshold=None, reminder_due=due)
