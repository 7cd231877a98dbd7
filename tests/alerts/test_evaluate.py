"""The evaluation cycle: states, history and the notification outbox, with one evaluator at a time.

A month budget crossed by tracked events goes warning, then critical, then
resolved when the month rolls over; a reminder comes at most every
ALERT_REMINDER_HOURS. Two evaluators at once (the lock, and two racing past
it), an evaluation rolled back before its commit and an evaluator process
killed mid-transaction leave exactly one notification per state change.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine, text

from alerts.evaluate import EVALUATOR_LOCK_KEY, _write_quiet, evaluate_all, evaluate_rule, record
from alerts.rules import Rule
from config import Settings
from devtools.processes import REPO_ROOT
from models.alert import CRITICAL, OK, RESOLVED, WARNING
from storage.partitions import Month
from tests.alerts.conftest import CALL_FEE, NOW, store_rule, track

pytestmark = pytest.mark.usefixtures("no_rules")

SETTINGS = Settings()
REMINDER = timedelta(hours=SETTINGS.alert_reminder_hours)
NOTIFICATIONS = (
    "SELECT kind, state, history_id, payload FROM notifications WHERE tenant_id = :t ORDER BY created_at, kind"
)
HISTORY = "SELECT from_state, to_state, value, threshold FROM alert_history WHERE tenant_id = :t ORDER BY id"
STATE = "SELECT state, value FROM alert_states WHERE tenant_id = :t"
RACERS = 4
GAUGE = "analytics_alert_rules"
KILLED_EXIT = -9


def rows(engine: Engine, query: str, tenant: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(query), {"t": tenant}))


def budget(engine: Engine, tenant: str) -> Rule:
    """Warning at 3 calls' cost, critical at 5."""
    return store_rule(engine, tenant, name="monthly", kind="budget_month", warning_threshold=3 * CALL_FEE,
                      critical_threshold=5 * CALL_FEE)  # fmt: skip


def test_budget_goes_warning_critical_resolved_with_one_notification_each(engine: Engine, priced_tenant: str) -> None:
    t = priced_tenant
    rule = budget(engine, t)
    assert evaluate_all(engine, SETTINGS, NOW).changes == 0  # no calls yet: ok, nothing recorded
    track(engine, t, [NOW - timedelta(hours=2)] * 3)
    report = evaluate_all(engine, SETTINGS, NOW)
    assert (report.rules, report.changes, report.states[WARNING]) == (1, 1, 1)
    assert evaluate_all(engine, SETTINGS, NOW + timedelta(minutes=1)).changes == 0  # still warning: no repeat
    track(engine, t, [NOW - timedelta(hours=1)] * 2)
    evaluate_all(engine, SETTINGS, NOW + timedelta(minutes=2))
    next_month = Month.of(NOW).shift(1).start + timedelta(minutes=5)
    evaluate_all(engine, SETTINGS, next_month)

    assert rows(engine, HISTORY, t) == [
        (OK, WARNING, 3 * CALL_FEE, 3 * CALL_FEE),
        (WARNING, CRITICAL, 5 * CALL_FEE, 5 * CALL_FEE),
        (CRITICAL, RESOLVED, Decimal(0), 3 * CALL_FEE),
    ]
    sent = rows(engine, NOTIFICATIONS, t)
    assert [(n.kind, n.state) for n in sent] == [("state_change", WARNING), ("state_change", CRITICAL),
                                                 ("state_change", RESOLVED)]  # fmt: skip
    assert all(n.history_id is not None for n in sent)
    critical = sent[1].payload
    assert critical["rule"]["id"] == rule.id and critical["rule"]["name"] == "monthly"
    assert (critical["previous_state"], critical["value"], critical["threshold"]) == (
        WARNING, str(5 * CALL_FEE), str(5 * CALL_FEE)
    )  # fmt: skip
    assert critical["message"].startswith("[CRITICAL] monthly: cost this month (UTC) is 1.25 USD")
    assert len({n.payload["id"] for n in sent}) == 3
    assert rows(engine, STATE, t) == [(OK, Decimal(0))]


def test_a_reminder_at_most_every_reminder_interval_while_bad(engine: Engine, priced_tenant: str) -> None:
    t = priced_tenant
    budget(engine, t)
    track(engine, t, [NOW - timedelta(hours=2)] * 6)
    assert evaluate_all(engine, SETTINGS, NOW).changes == 1
    assert evaluate_all(engine, SETTINGS, NOW + REMINDER - timedelta(seconds=1)).reminders == 0
    assert evaluate_all(engine, SETTINGS, NOW + REMINDER).reminders == 1
    assert evaluate_all(engine, SETTINGS, NOW + REMINDER + timedelta(minutes=1)).reminders == 0
    sent = rows(engine, NOTIFICATIONS, t)
    assert [(n.kind, n.state, n.history_id) for n in sent[1:]] == [("reminder", CRITICAL, None)]
    assert sent[1].payload["message"].endswith("reminder: still critical")
    by_state = {state: REGISTRY.get_sample_value(GAUGE, {"state": state}) for state in (OK, WARNING, CRITICAL)}
    assert by_state == {OK: 0, WARNING: 0, CRITICAL: 1}  # the only enabled rule (no_rules)


def test_a_second_evaluator_returns_at_once_while_the_lock_is_held(engine: Engine, priced_tenant: str) -> None:
    budget(engine, priced_tenant)
    track(engine, priced_tenant, [NOW] * 6)
    with engine.connect() as holder:
        assert holder.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": EVALUATOR_LOCK_KEY}).scalar()
        report = evaluate_all(engine, SETTINGS, NOW)
        holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": EVALUATOR_LOCK_KEY})
    assert report.skipped and report.rules == 0
    assert rows(engine, NOTIFICATIONS, priced_tenant) == []
    assert evaluate_all(engine, SETTINGS, NOW).changes == 1


def test_evaluators_at_once_and_racing_past_the_lock_notify_once(engine: Engine, priced_tenant: str) -> None:
    rule = budget(engine, priced_tenant)
    assert evaluate_all(engine, SETTINGS, NOW).states[OK] == 1  # the state row exists: the racers share it
    track(engine, priced_tenant, [NOW] * 4)
    barrier = threading.Barrier(RACERS * 2)
    errors: list[BaseException] = []

    def cycle() -> None:
        barrier.wait()
        evaluate_all(engine, SETTINGS, NOW)

    def raced() -> None:  # an evaluator that does not take the lock at all
        barrier.wait()
        evaluate_rule(engine, rule, SETTINGS, NOW)

    def guarded(target: Any) -> Any:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 - reported below, not lost in the thread
                errors.append(exc)

        return run

    threads = [threading.Thread(target=guarded(f)) for f in (cycle, raced) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [(n.kind, n.state) for n in rows(engine, NOTIFICATIONS, priced_tenant)] == [("state_change", WARNING)]
    assert len(rows(engine, HISTORY, priced_tenant)) == 1


def test_an_evaluation_rolled_back_before_commit_leaves_nothing_and_the_rerun_notifies_once(
    engine: Engine, priced_tenant: str
) -> None:
    rule = budget(engine, priced_tenant)
    with engine.connect() as conn:
        transaction = conn.begin()
        outcome = record(conn, rule, 10 * CALL_FEE, SETTINGS, NOW)
        assert outcome is not None and outcome.change == CRITICAL
        transaction.rollback()  # what a crash before the commit amounts to
    assert rows(engine, NOTIFICATIONS, priced_tenant) == [] and rows(engine, STATE, priced_tenant) == []
    track(engine, priced_tenant, [NOW] * 6)
    evaluate_all(engine, SETTINGS, NOW)
    evaluate_all(engine, SETTINGS, NOW)
    assert [n.state for n in rows(engine, NOTIFICATIONS, priced_tenant)] == [CRITICAL]


KILLED_MID_RUN = """
import os, signal, sys
from datetime import datetime
from decimal import Decimal
from sqlalchemy import create_engine
from alerts.evaluate import record
from alerts.rules import get_rule
from config import Settings
engine = create_engine(os.environ["DATABASE_URL"])
with engine.connect() as conn:
    conn.begin()
    rule = get_rule(conn, sys.argv[1], int(sys.argv[2]))
    record(conn, rule, Decimal(sys.argv[3]), Settings(), datetime.fromisoformat(sys.argv[4]))
    print("written", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_an_evaluator_killed_mid_transaction_leaves_no_notification_and_the_rerun_notifies_once(
    engine: Engine, priced_tenant: str
) -> None:
    rule = budget(engine, priced_tenant)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_MID_RUN, priced_tenant, str(rule.id), str(10 * CALL_FEE), NOW.isoformat()],
        cwd=REPO_ROOT, env={**os.environ}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (killed.returncode, killed.stdout.strip()) == (KILLED_EXIT, "written"), killed.stderr
    assert rows(engine, NOTIFICATIONS, priced_tenant) == []
    track(engine, priced_tenant, [NOW] * 6)
    assert evaluate_all(engine, SETTINGS, NOW).changes == 1  # the killed evaluator's session lock went with it
    assert evaluate_all(engine, SETTINGS, NOW).changes == 0
    assert [n.state for n in rows(engine, NOTIFICATIONS, priced_tenant)] == [CRITICAL]


def test_the_beat_task_runs_a_cycle(engine: Engine, priced_tenant: str) -> None:
    from tasks.alerts import evaluate

    budget(engine, priced_tenant)
    track(engine, priced_tenant, [Month.of(NOW).start])  # far in the past of the real clock's month: no cost now
    result = evaluate.apply().get()
    assert result["rules"] == 1 and result["failed"] == 0 and result["skipped"] is None
    assert result["states"] == {OK: 1, WARNING: 0, CRITICAL: 0}


def test_a_quiet_evaluation_writes_the_value_but_never_over_a_state_that_moved(
    engine: Engine, priced_tenant: str
) -> None:
    rule = budget(engine, priced_tenant)
    track(engine, priced_tenant, [NOW - timedelta(hours=3)])
    evaluate_all(engine, SETTINGS, NOW)  # first evaluation: the state row, ok
    track(engine, priced_tenant, [NOW - timedelta(hours=3)])
    report = evaluate_all(engine, SETTINGS, NOW + timedelta(minutes=1))
    assert (report.rules, report.changes) == (1, 0)
    assert rows(engine, STATE, priced_tenant) == [(OK, 2 * CALL_FEE)]
    with engine.connect() as conn:
        evaluated = conn.execute(
            text("SELECT evaluated_at FROM alert_states WHERE tenant_id = :t"), {"t": priced_tenant}
        )
        assert evaluated.scalar_one() == NOW + timedelta(minutes=1)
    _write_quiet(engine, [(priced_tenant, rule.id, WARNING, Decimal(99))], NOW)  # read as warning: moved since
    assert rows(engine, STATE, priced_tenant) == [(OK, 2 * CALL_FEE)]
