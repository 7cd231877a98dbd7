"""Each rule kind's measure against real rollups (and the not-yet-rolled-up tail), priced at query time."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from alerts.measures import SPIKE_BASELINE_DAYS, measure
from alerts.rules import Rule
from queries.rollups import snapshot
from storage.dead_letters import Rejected, record
from tests.alerts.conftest import CALL_FEE, NOW, UNPRICED_MODEL, store_rule, track

HOUR = timedelta(hours=1)


def value(engine: Engine, rule: Rule, now: datetime = NOW) -> Decimal | None:
    with snapshot(engine) as conn:
        return measure(conn, rule, now)


def test_budget_day_and_month_cost_the_current_utc_day_and_month(engine: Engine, priced_tenant: str) -> None:
    t = priced_tenant
    track(engine, t, [NOW - timedelta(minutes=m) for m in (1, 20, 90)])  # today
    track(engine, t, [NOW - timedelta(days=1), NOW - timedelta(days=3)])  # earlier this month
    track(engine, t, [NOW - timedelta(days=20)])  # last month
    track(engine, t, [NOW + timedelta(minutes=10)])  # after now, same hour: in the hour's cell
    day = store_rule(engine, t, name="day", kind="budget_day", warning_threshold=1, critical_threshold=2)
    month = store_rule(engine, t, name="month", kind="budget_month", warning_threshold=1, critical_threshold=2)
    assert value(engine, day) == 4 * CALL_FEE  # cells are hourly: the current hour's cell is read whole
    assert value(engine, month) == 6 * CALL_FEE


def test_budget_narrowed_to_a_feature_or_model_and_unpriced_calls(engine: Engine, priced_tenant: str) -> None:
    t = priced_tenant
    track(engine, t, [NOW - HOUR] * 3, feature="search")
    track(engine, t, [NOW - HOUR] * 2, feature="chat")
    track(engine, t, [NOW - HOUR] * 5, feature="unpriced", model=UNPRICED_MODEL)
    search = store_rule(
        engine, t, name="s", kind="budget_day", feature="search", warning_threshold=1, critical_threshold=2
    )
    model = store_rule(
        engine, t, name="m", kind="budget_day", model=UNPRICED_MODEL, warning_threshold=1, critical_threshold=2
    )
    empty = store_rule(
        engine, t, name="e", kind="budget_day", feature="none", warning_threshold=1, critical_threshold=2
    )
    assert value(engine, search) == 3 * CALL_FEE
    assert value(engine, model) is None  # unknown price is never $0
    assert value(engine, empty) == 0  # no calls cost nothing


def test_budget_counts_the_not_yet_rolled_up_tail(engine: Engine, priced_tenant: str) -> None:
    t = priced_tenant
    track(engine, t, [NOW - HOUR])  # rolled up: the model gets priced
    track(engine, t, [NOW - HOUR, NOW - 2 * HOUR], roll_up=False)
    rule = store_rule(engine, t, name="d", kind="budget_day", warning_threshold=1, critical_threshold=2)
    assert value(engine, rule) == 3 * CALL_FEE


def test_cost_spike_is_the_last_hour_over_the_same_hour_of_the_previous_days(
    engine: Engine, priced_tenant: str
) -> None:
    t = priced_tenant
    # NOW is half past: the last hour is the current hour's half so far plus half of the previous hour.
    track(engine, t, [NOW - timedelta(minutes=m) for m in range(1, 11)])  # 10 calls in the current hour
    track(engine, t, [NOW - HOUR] * 4)  # 4 calls in the previous hour: half of them count
    for d in range(1, SPIKE_BASELINE_DAYS + 1):  # each day before: 2 calls in the same and in the previous hour
        track(engine, t, [NOW - timedelta(days=d)] * 2 + [NOW - timedelta(days=d) - HOUR] * 2)
    rule = store_rule(engine, t, name="spike", kind="cost_spike", warning_threshold=2, critical_threshold=5,
                      min_amount_usd="0.01")  # fmt: skip
    recent = (10 + 4 * Decimal("0.5")) * CALL_FEE
    baseline = (2 * Decimal("0.5") + 2 * Decimal("0.5")) * CALL_FEE
    assert value(engine, rule) == recent / baseline
    floor = store_rule(engine, t, name="floor", kind="cost_spike", warning_threshold=2, critical_threshold=5,
                       min_amount_usd="1.0")  # fmt: skip
    assert value(engine, floor) == recent / Decimal("1.0")
    pennies = store_rule(engine, t, name="pennies", kind="cost_spike", warning_threshold=2, critical_threshold=5,
                         min_amount_usd="100")  # fmt: skip
    assert value(engine, pennies) is None


def test_error_rate_and_latency_need_min_calls_in_the_window(engine: Engine, tenant: str) -> None:
    t = tenant
    track(engine, t, [NOW - timedelta(minutes=5)] * 6, feature="search", latency_ms=100)
    track(engine, t, [NOW - timedelta(minutes=5)] * 2, feature="search", status="error", latency_ms=4000)
    track(engine, t, [NOW - timedelta(minutes=5)] * 2, feature="chat", status="error", latency_ms=100)
    track(engine, t, [NOW - 5 * HOUR] * 50, feature="search", status="error")  # outside the window
    errors = store_rule(engine, t, name="err", kind="error_rate", feature="search", window_minutes=15, min_calls=8,
                        warning_threshold="0.1", critical_threshold="0.5")  # fmt: skip
    all_errors = store_rule(engine, t, name="all", kind="error_rate", window_minutes=15, min_calls=8,
                            warning_threshold="0.1", critical_threshold="0.5")  # fmt: skip
    too_few = store_rule(engine, t, name="few", kind="error_rate", window_minutes=15, min_calls=11,
                         warning_threshold="0.1", critical_threshold="0.5")  # fmt: skip
    latency = store_rule(engine, t, name="p95", kind="latency_p95", feature="search", window_minutes=15, min_calls=8,
                         warning_threshold=1000, critical_threshold=3000)  # fmt: skip
    assert value(engine, errors) == Decimal(2) / Decimal(8)
    assert value(engine, all_errors) == Decimal(4) / Decimal(10)
    assert value(engine, too_few) is None
    p95 = value(engine, latency)
    assert p95 is not None and 3000 < p95 <= 4000  # 2 of 8 calls took 4 s: the p95 is in their bucket
    quiet = store_rule(engine, t, name="quiet", kind="latency_p95", feature="chat", window_minutes=15, min_calls=3,
                       warning_threshold=1000, critical_threshold=3000)  # fmt: skip
    assert value(engine, quiet) is None


@pytest.mark.usefixtures("clean_tables")
def test_ingest_health_metrics(engine: Engine, tenant: str) -> None:
    rules = {
        metric: store_rule(engine, tenant, name=metric, kind="ingest_health", metric=metric, warning_threshold=30,
                           critical_threshold=60 if metric != "partition_horizon_days" else 7,
                           **({"window_minutes": 60} if metric == "dead_letters_added" else {}))
        for metric in ("ingest_lag_s", "rollup_lag_s", "dead_letters_added", "partition_horizon_days")
    }  # fmt: skip
    assert value(engine, rules["rollup_lag_s"]) == 0
    assert value(engine, rules["ingest_lag_s"]) is None  # nothing pending: nothing to judge
    track(engine, tenant, [NOW - timedelta(minutes=3)], roll_up=False)
    with Session(engine) as session, session.begin():
        stored_at = session.execute(text("SELECT max(created_at) FROM rollup_pending_batches")).scalar_one()
        record(session, [Rejected(payload={"n": 1}, reason="bad")])
    later = stored_at + timedelta(seconds=90)
    assert value(engine, rules["rollup_lag_s"], later) == Decimal(repr(90.0))
    lag = value(engine, rules["ingest_lag_s"], later)
    assert lag is not None and lag == Decimal(repr((stored_at - (NOW - timedelta(minutes=3))).total_seconds()))
    assert value(engine, rules["dead_letters_added"], stored_at + timedelta(minutes=1)) == 1
    assert value(engine, rules["dead_letters_added"], stored_at + timedelta(hours=2)) == 0
    horizon = value(engine, rules["partition_horizon_days"], later)
    assert horizon is not None and horizon > 0
