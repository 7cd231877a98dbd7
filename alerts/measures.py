"""The value each kind of rule is compared with, read from the rollups plus the not-yet-rolled-up tail.

Every reader takes a connection (the evaluator opens ``queries.rollups.snapshot``),
a rule and the evaluation instant, and returns a Decimal, or None when there is
not enough data to judge (fewer calls than ``min_calls``, a spike cheaper than
``min_amount_usd``, every call of a budget unpriced). Nothing scans raw
partitions: cost comes from ``queries.cost`` (priced at query time), calls,
errors and latency from the rollup cells of ``queries.rollups``.

Windows are read at the rollups' resolution: a window of ``window_minutes``
ending now covers the whole UTC hours it meets (the current hour so far
included), so it reacts within one evaluation and never sees less than asked.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Final

from sqlalchemy import Connection, text

from alerts.rules import Rule
from models.alert import (
    BUDGET_DAY,
    BUDGET_MONTH,
    COST_SPIKE,
    DEAD_LETTERS_ADDED,
    ERROR_RATE,
    INGEST_HEALTH,
    INGEST_LAG_S,
    LATENCY_P95,
    PARTITION_HORIZON_DAYS,
    ROLLUP_LAG_S,
)
from queries.cost import cost_by
from queries.rollups import DAY, HOUR, Figures, floor_to, range_figures
from storage.partitions import Month, existing_months

SPIKE_BASELINE_DAYS: Final = 7  # the same hour on each of the previous week's days: a weekly cycle averaged out
SECONDS_PER_HOUR: Final = Decimal(3600)
SECONDS_PER_DAY: Final = Decimal(86_400)

Measure = Callable[[Connection, Rule, datetime], Decimal | None]


def _cost(conn: Connection, rule: Rule, start: datetime, end: datetime) -> Decimal | None:
    """The rule's cost over [start, end); 0 without calls, None when every call is unpriced."""
    rows = cost_by(conn, rule.tenant_id, start, end, "total", feature=rule.feature, model=rule.model)
    if not rows or rows[0].calls == 0:
        return Decimal(0)
    return rows[0].cost_usd  # the priced calls' cost; unpriced calls are never counted as $0


def budget_day(conn: Connection, rule: Rule, now: datetime) -> Decimal | None:
    return _cost(conn, rule, floor_to(now, DAY), now)


def budget_month(conn: Connection, rule: Rule, now: datetime) -> Decimal | None:
    return _cost(conn, rule, Month.of(now).start, now)


def _hourly_costs(conn: Connection, rule: Rule, start: datetime, end: datetime) -> dict[datetime, Decimal]:
    rows = cost_by(conn, rule.tenant_id, start, end, "hour", feature=rule.feature, model=rule.model)
    return {row.key: row.cost_usd for row in rows if row.cost_usd is not None}


def cost_spike(conn: Connection, rule: Rule, now: datetime) -> Decimal | None:
    """Cost of the last hour over the average cost of the same hour on the previous SPIKE_BASELINE_DAYS days.

    Cells are hourly, so the last hour is the current hour so far plus the
    previous hour's share that falls inside it (its cost x the fraction of it
    after now - 1 h, as if spread evenly); each baseline day is weighed the same
    way, so a spike is seen minutes after it starts, not when the hour closes.
    The baseline is at least ``min_amount_usd``: a feature that cost nothing
    last week and costs that much now is a spike, and below it nothing fires.
    """
    current = floor_to(now, HOUR)
    into = Decimal((now - current).total_seconds()) / SECONDS_PER_HOUR
    first = current - HOUR - timedelta(days=SPIKE_BASELINE_DAYS)
    costs = _hourly_costs(conn, rule, first, now)

    def window(hour: datetime, share_of_current: Decimal) -> Decimal:
        zero = Decimal(0)
        return costs.get(hour, zero) * share_of_current + costs.get(hour - HOUR, zero) * (1 - into)

    recent = window(current, Decimal(1))  # the current hour holds only the part so far
    minimum = rule.min_amount_usd or Decimal(0)
    if recent < minimum or recent == 0:
        return None
    days = range(1, SPIKE_BASELINE_DAYS + 1)
    baseline = sum((window(current - timedelta(days=d), into) for d in days), Decimal(0)) / SPIKE_BASELINE_DAYS
    return recent / max(baseline, minimum)


def window_figures(conn: Connection, rule: Rule, now: datetime) -> Figures | None:
    """Calls, errors and latency of the rule's window (whole hours, see the module), merged over features."""
    assert rule.window_minutes is not None  # parse_rule requires it of the windowed kinds
    return range_figures(conn, rule.tenant_id, now - timedelta(minutes=rule.window_minutes), now, rule.feature)


def _enough(conn: Connection, rule: Rule, now: datetime) -> Figures | None:
    figures = window_figures(conn, rule, now)
    if figures is None or figures.calls == 0 or figures.calls < rule.min_calls:
        return None
    return figures


def error_rate(conn: Connection, rule: Rule, now: datetime) -> Decimal | None:
    figures = _enough(conn, rule, now)
    return None if figures is None else Decimal(figures.errors) / Decimal(figures.calls)


def latency_p95(conn: Connection, rule: Rule, now: datetime) -> Decimal | None:
    figures = _enough(conn, rule, now)
    if figures is None or figures.latency_p95_ms is None:
        return None
    return Decimal(repr(figures.latency_p95_ms))


# --- ingest health (the whole pipeline, every tenant) ----------------------------------------

NEWEST_BATCH = "SELECT created_at, max_ts FROM rollup_pending_batches ORDER BY batch_id DESC LIMIT 1"
OLDEST_PENDING = "SELECT min(created_at) FROM rollup_pending_batches"
DEAD_LETTERS_SINCE = "SELECT count(*) FROM dead_letters WHERE first_seen >= :since"


def _seconds(delta: timedelta) -> Decimal:
    return max(Decimal(0), Decimal(repr(delta.total_seconds())))


def ingest_lag_s(conn: Connection, rule: Rule, now: datetime) -> Decimal | None:
    """How late the newest stored batch's newest event was stored; None when every batch is rolled up.

    A backfill (old events sent on purpose) reads as lag too."""
    row = conn.execute(text(NEWEST_BATCH)).first()
    return None if row is None else _seconds(row.created_at - row.max_ts)


def rollup_lag_s(conn: Connection, rule: Rule, now: datetime) -> Decimal | None:
    """Age of the oldest stored batch not yet in the rollups (0: none waits)."""
    oldest = conn.execute(text(OLDEST_PENDING)).scalar()
    return Decimal(0) if oldest is None else _seconds(now - oldest)


def dead_letters_added(conn: Connection, rule: Rule, now: datetime) -> Decimal | None:
    """Dead letters first seen in the last ``window_minutes``."""
    assert rule.window_minutes is not None  # parse_rule requires it of this metric
    since = now - timedelta(minutes=rule.window_minutes)
    return Decimal(conn.execute(text(DEAD_LETTERS_SINCE), {"since": since}).scalar_one())


def partition_horizon_days(conn: Connection, rule: Rule, now: datetime) -> Decimal | None:
    """Days from now to the end of the last month partition in an unbroken run from the current one (0: none)."""
    months = existing_months(conn)
    month = Month.of(now)
    if month not in months:
        return Decimal(0)
    while month.shift(1) in months:
        month = month.shift(1)
    return _seconds(month.shift(1).start - now) / SECONDS_PER_DAY


INGEST_MEASURES: Final[dict[str, Measure]] = {
    INGEST_LAG_S: ingest_lag_s,
    ROLLUP_LAG_S: rollup_lag_s,
    DEAD_LETTERS_ADDED: dead_letters_added,
    PARTITION_HORIZON_DAYS: partition_horizon_days,
}


def ingest_health(conn: Connection, rule: Rule, now: datetime) -> Decimal | None:
    assert rule.metric is not None  # parse_rule requires it of ingest_health rules
    return INGEST_MEASURES[rule.metric](conn, rule, now)


MEASURES: Final[dict[str, Measure]] = {
    BUDGET_DAY: budget_day,
    BUDGET_MONTH: budget_month,
    COST_SPIKE: cost_spike,
    ERROR_RATE: error_rate,
    LATENCY_P95: latency_p95,
    INGEST_HEALTH: ingest_health,
}


def measure(conn: Connection, rule: Rule, now: datetime) -> Decimal | None:
    """The current value of ``rule`` (None: not enough data)."""
    return MEASURES[rule.kind](conn, rule, now)
