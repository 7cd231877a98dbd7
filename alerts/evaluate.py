"""One evaluation cycle: every enabled rule measured, its state machine stepped, changes recorded and notified.

One evaluator at a time: a cycle holds a session advisory lock for its whole
run, and a second cycle (another host, an overlapping beat tick) that cannot
take it returns at once. The lock goes with the connection, so a killed
evaluator frees it.

Every rule is measured in one read-only snapshot of the rollups
(``queries.rollups.snapshot``), so a cycle judges all rules at one instant.
A rule whose step changes its state, or is due a reminder, is then written in
one transaction of its own: its state row is locked (``FOR UPDATE``), the step
is decided again against the state as committed, and the new state, the
history row and the notification (the outbox webhook delivery reads) commit
together or not at all. The other rules (most of them, most of the time) only
get their value and evaluation time, in batches, guarded by the state the
cycle read. A crash leaves finished rules finished and the rest untouched; a
re-run, or an evaluator that raced past the lock, finds the state already
moved and records nothing twice (``notifications`` also holds at most one row
per history row).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from alerts.measures import measure
from alerts.rules import Rule, list_rules
from alerts.states import decide
from config import Settings
from models.alert import (
    BUDGET_DAY,
    BUDGET_MONTH,
    COST_SPIKE,
    CRITICAL,
    ERROR_RATE,
    INGEST_HEALTH,
    LATENCY_P95,
    OK,
    REMINDER,
    STATE_CHANGE,
    STATES,
)
from monitoring.metrics import alert_rules_by_state
from queries.rollups import snapshot

logger = logging.getLogger(__name__)

EVALUATOR_LOCK_KEY: Final = 0x414C_5254  # "ALRT": one evaluation cycle at a time, session-scoped

ENSURE_STATE = text(
    "INSERT INTO alert_states (tenant_id, rule_id, state, since, evaluated_at)"
    " SELECT tenant_id, id, :ok, :now, :now FROM alert_rules WHERE tenant_id = :tenant AND id = :rule"
    " ON CONFLICT (tenant_id, rule_id) DO NOTHING"
)
LOCK_STATE = text(
    "SELECT state, last_notified_at FROM alert_states WHERE tenant_id = :tenant AND rule_id = :rule FOR UPDATE"
)
UPDATE_STATE = text(
    "UPDATE alert_states SET state = :state, value = :value, evaluated_at = :now,"
    " since = CASE WHEN state = :state THEN since ELSE :now END,"
    " last_notified_at = CASE WHEN :notified THEN :now ELSE last_notified_at END"
    " WHERE tenant_id = :tenant AND rule_id = :rule"
)
ADD_HISTORY = text(
    "INSERT INTO alert_history (tenant_id, rule_id, rule_name, from_state, to_state, value, threshold, at)"
    " VALUES (:tenant, :rule, :name, :from_state, :to_state, :value, :threshold, :now) RETURNING id"
)
ADD_NOTIFICATION = text(
    "INSERT INTO notifications (tenant_id, id, rule_id, history_id, kind, state, payload, created_at)"
    " VALUES (:tenant, :id, :rule, :history, :kind, :state, CAST(:payload AS jsonb), :now)"
)
# The rules whose state stays: value and evaluation time only, guarded by the state the cycle read.
QUIET_UPDATE = text(
    "UPDATE alert_states AS s SET value = v.value, evaluated_at = :now"
    " FROM unnest(CAST(:tenants AS text[]), CAST(:rules AS bigint[]), CAST(:states AS text[]),"
    " CAST(:values AS numeric[])) AS v(tenant_id, rule_id, state, value)"
    " WHERE s.tenant_id = v.tenant_id AND s.rule_id = v.rule_id AND s.state = v.state"
)
QUIET_BATCH: Final = 1000
MESSAGE_DECIMALS: Final = 4
MESSAGE_STEP: Final = Decimal(1).scaleb(-MESSAGE_DECIMALS)
STATE_COUNTS = text(
    "SELECT s.state, count(*) FROM alert_states s JOIN alert_rules r ON r.tenant_id = s.tenant_id"
    " AND r.id = s.rule_id WHERE r.enabled GROUP BY s.state"
)

UNITS: Final = {BUDGET_DAY: "USD", BUDGET_MONTH: "USD", COST_SPIKE: "x baseline", ERROR_RATE: "of calls",
                LATENCY_P95: "ms", INGEST_HEALTH: ""}  # fmt: skip
MEASURED: Final = {BUDGET_DAY: "cost today (UTC)", BUDGET_MONTH: "cost this month (UTC)",
                   COST_SPIKE: "last hour's cost", ERROR_RATE: "error rate", LATENCY_P95: "p95 latency",
                   INGEST_HEALTH: ""}  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    """What one rule's evaluation recorded."""

    state: str
    change: str | None  # warning | critical | resolved, None: no change
    notification_id: uuid.UUID | None


@dataclass
class EvaluationReport:
    rules: int = 0
    changes: int = 0
    reminders: int = 0
    failed: int = 0
    skipped: str | None = None  # why nothing was evaluated (another evaluator holds the lock)
    states: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"rules": self.rules, "changes": self.changes, "reminders": self.reminders, "failed": self.failed,
                "skipped": self.skipped, "states": dict(self.states), "seconds": round(self.seconds, 3)}  # fmt: skip


def _text(value: Decimal | None) -> str | None:
    """An exact decimal as a plain string without trailing zeros (1.250000 -> "1.25", 1E+2 -> "100")."""
    return None if value is None else f"{value.normalize():f}"


def _readable(value: Decimal) -> Decimal:
    """``value`` cut to MESSAGE_DECIMALS places for the message (a ratio has 28 digits); the payload keeps all."""
    return value.quantize(MESSAGE_STEP) if value.as_tuple().exponent < -MESSAGE_DECIMALS else value  # type: ignore[operator]


def describe(rule: Rule) -> str:
    """What the rule measures, in words: ``p95 latency of feature 'search'``."""
    what = rule.metric or MEASURED[rule.kind]
    scope = [f"{name} {value!r}" for name, value in (("feature", rule.feature), ("model", rule.model)) if value]
    return f"{what} of {' and '.join(scope)}" if scope else what


def payload(
    rule: Rule, notification_id: uuid.UUID, kind: str, state: str, previous: str, value: Decimal | None,
    threshold: Decimal | None, now: datetime,
) -> dict[str, Any]:  # fmt: skip
    """The notification's body: what receivers get (amounts as exact decimal strings)."""
    unit = UNITS[rule.kind]
    shown = "has too little data" if value is None else f"is {_text(_readable(value))} {unit}".rstrip()
    limit = "" if threshold is None else f" (threshold {_text(threshold)} {unit})".replace(" )", ")")
    verb = "reminder: still" if kind == REMINDER else "now"
    message = f"[{state.upper()}] {rule.name}: {describe(rule)} {shown}{limit}; {verb} {state}"
    return {
        "id": str(notification_id),
        "tenant_id": rule.tenant_id,
        "kind": kind,
        "state": state,
        "previous_state": previous,
        "rule": {
            "id": rule.id,
            "name": rule.name,
            "kind": rule.kind,
            "feature": rule.feature,
            "model": rule.model,
            "metric": rule.metric,
            "warning_threshold": _text(rule.warning_threshold),
            "critical_threshold": _text(rule.critical_threshold),
        },
        "value": _text(value),
        "threshold": _text(threshold),
        "at": now.isoformat(),
        "message": message,
    }


def _notify(
    conn: Connection, rule: Rule, kind: str, state: str, previous: str, value: Decimal | None,
    threshold: Decimal | None, history_id: int | None, now: datetime,
) -> uuid.UUID:  # fmt: skip
    notification_id = uuid.uuid4()
    body = payload(rule, notification_id, kind, state, previous, value, threshold, now)
    conn.execute(ADD_NOTIFICATION, {"tenant": rule.tenant_id, "id": notification_id, "rule": rule.id,
                                    "history": history_id, "kind": kind, "state": state,
                                    "payload": json.dumps(body), "now": now})  # fmt: skip
    return notification_id


def record(conn: Connection, rule: Rule, value: Decimal | None, settings: Settings, now: datetime) -> Outcome | None:
    """Step ``rule``'s state machine with ``value`` inside the caller's transaction (None: the rule is gone)."""
    keys = {"tenant": rule.tenant_id, "rule": rule.id}
    conn.execute(ENSURE_STATE, {**keys, "ok": OK, "now": now})
    row = conn.execute(LOCK_STATE, keys).first()
    if row is None:
        return None
    decision = decide(
        row.state,
        value,
        rule.thresholds,
        hysteresis=settings.alert_hysteresis_ratio,
        last_notified_at=row.last_notified_at,
        now=now,
        reminder_every=timedelta(hours=settings.alert_reminder_hours),
    )
    notification_id = None
    if decision.change is not None:
        history_id = conn.execute(ADD_HISTORY, {**keys, "name": rule.name, "from_state": row.state,
                                                "to_state": decision.change, "value": value,
                                                "threshold": decision.threshold, "now": now}).scalar_one()  # fmt: skip
        notification_id = _notify(conn, rule, STATE_CHANGE, decision.change, row.state, value, decision.threshold,
                                  history_id, now)  # fmt: skip
    elif decision.reminder_due:
        threshold = rule.critical_threshold if decision.state == CRITICAL else rule.warning_threshold
        notification_id = _notify(conn, rule, REMINDER, decision.state, row.state, value, threshold, None, now)
    conn.execute(UPDATE_STATE, {**keys, "state": decision.state, "value": value, "now": now,
                                "notified": notification_id is not None})  # fmt: skip
    return Outcome(decision.state, decision.change, notification_id)


def evaluate_rule(engine: Engine, rule: Rule, settings: Settings, now: datetime) -> Outcome | None:
    """Measure ``rule`` in a snapshot of the rollups, then record the step in a transaction of its own."""
    with snapshot(engine) as conn:
        value = measure(conn, rule, now)
    with engine.begin() as conn:
        return record(conn, rule, value, settings, now)


def _reopened(stack: ExitStack, engine: Engine) -> tuple[ExitStack, Connection]:
    """A fresh snapshot after a failed read (the old one's transaction is aborted)."""
    try:
        stack.close()
    except SQLAlchemyError:
        logger.warning("closing a failed alert snapshot failed too", exc_info=True)
    fresh = ExitStack()
    return fresh, fresh.enter_context(snapshot(engine))


def _write_quiet(engine: Engine, quiet: list[tuple[str, int, str, Decimal | None]], now: datetime) -> None:
    """The value and evaluation time of rules whose state stays, in one statement (none of them notifies).

    A row whose state moved since the cycle read it (an evaluator racing past the lock) is left as it is."""
    if quiet:
        tenants, rules, states, values = (list(column) for column in zip(*quiet, strict=True))
        with engine.begin() as conn:
            conn.execute(QUIET_UPDATE, {"tenants": tenants, "rules": rules, "states": states, "values": values,
                                        "now": now})  # fmt: skip


def _cycle(engine: Engine, settings: Settings, now: datetime | None, report: EvaluationReport) -> None:
    """Measure every enabled rule in one snapshot; a rule whose step changes its state or is due a reminder
    is recorded in its own locked transaction (``record``), the others' values are written in batches."""
    with engine.connect() as conn:
        entries = list_rules(conn, None, enabled_only=True)
    reminder_every = timedelta(hours=settings.alert_reminder_hours)
    quiet: list[tuple[str, int, str, Decimal | None]] = []
    stack = ExitStack()
    reader = stack.enter_context(snapshot(engine))
    try:
        for entry in entries:
            rule, moment = entry.rule, now or datetime.now(UTC)
            try:
                value = measure(reader, rule, moment)
            except SQLAlchemyError:
                logger.exception("alert rule %s of tenant %s could not be measured", rule.id, rule.tenant_id)
                report.failed += 1
                stack, reader = _reopened(stack, engine)
                continue
            if entry.state is not None:
                step = decide(entry.state, value, rule.thresholds, hysteresis=settings.alert_hysteresis_ratio,
                              last_notified_at=entry.last_notified_at, now=moment, reminder_every=reminder_every)  # fmt: skip
                if step.change is None and not step.reminder_due:
                    quiet.append((rule.tenant_id, rule.id, entry.state, value))
                    report.rules += 1
                    if len(quiet) >= QUIET_BATCH:
                        _write_quiet(engine, quiet, moment)
                        quiet = []
                    continue
            try:
                with engine.begin() as writer:
                    outcome = record(writer, rule, value, settings, moment)
            except SQLAlchemyError:
                logger.exception("alert rule %s of tenant %s could not be recorded", rule.id, rule.tenant_id)
                report.failed += 1
                continue
            if outcome is None:
                continue  # deleted meanwhile
            report.rules += 1
            report.changes += outcome.change is not None
            report.reminders += outcome.change is None and outcome.notification_id is not None
        _write_quiet(engine, quiet, now or datetime.now(UTC))
    finally:
        stack.close()


def evaluate_all(engine: Engine, settings: Settings, now: datetime | None = None) -> EvaluationReport:
    """Evaluate every enabled rule once, unless another evaluator is running (then ``skipped`` says so)."""
    started = time.monotonic()
    report = EvaluationReport()
    with engine.connect() as lock_conn:
        locked = lock_conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": EVALUATOR_LOCK_KEY}).scalar()
        lock_conn.commit()  # the lock is the session's; no transaction stays open beside the cycle
        if not locked:
            report.skipped = "another evaluator holds the lock"
            return report
        try:
            _cycle(engine, settings, now, report)
            counts: dict[str, int] = {row[0]: row[1] for row in lock_conn.execute(STATE_COUNTS)}
            lock_conn.commit()
        finally:
            lock_conn.rollback()  # whatever failed, the unlock runs outside an aborted transaction
            lock_conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": EVALUATOR_LOCK_KEY})
            lock_conn.commit()
    report.states.update({state: counts.get(state, 0) for state in STATES})
    alert_rules_by_state(report.states)
    report.seconds = time.monotonic() - started
    return report
