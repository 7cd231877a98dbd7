"""Alert rules: validation of a new rule (errors name the field) and the rule store.

A rule's kind says what is measured and in which unit its thresholds are:
``budget_day``/``budget_month`` (USD spent in the current UTC day / calendar
month), ``cost_spike`` (ratio of the last hour's cost to the same hour's
average over the previous days; ``min_amount_usd`` is required, and a last
hour cheaper than it never fires), ``error_rate`` (a fraction, over
``window_minutes``, once ``min_calls`` calls were made), ``latency_p95``
(milliseconds, same window and minimum) and ``ingest_health`` (one ``metric``
of the whole pipeline; admin only). Budgets and spikes may be narrowed to a
feature and/or a model, error rate and latency to a feature (the rollups'
latency and error figures are not kept per model per window).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from sqlalchemy import Connection, Row, delete, insert, select

from alerts.states import Thresholds
from models.alert import (
    BUDGET_DAY,
    BUDGET_MONTH,
    COST_SPIKE,
    CREATED_BY_LEN,
    DEAD_LETTERS_ADDED,
    ERROR_RATE,
    INGEST_HEALTH,
    INGEST_METRICS,
    LATENCY_P95,
    LOWER_IS_WORSE,
    RULE_KINDS,
    RULE_NAME_LEN,
    AlertHistory,
    AlertRule,
    AlertState,
)
from schema.event import MAX_FEATURE_NAME_LEN, MAX_INT32, MAX_MODEL_LEN

FIELDS: Final = (
    "name", "kind", "feature", "model", "metric", "warning_threshold", "critical_threshold",
    "window_minutes", "min_calls", "min_amount_usd", "enabled",
)  # fmt: skip
MAX_THRESHOLD: Final = Decimal(10) ** 12  # far above any budget, ratio, latency or lag; keeps numbers sane
MAX_WINDOW_MINUTES: Final = 7 * 24 * 60
WINDOWED_KINDS: Final = (ERROR_RATE, LATENCY_P95)
FEATURE_KINDS: Final = (BUDGET_DAY, BUDGET_MONTH, COST_SPIKE, ERROR_RATE, LATENCY_P95)
MODEL_KINDS: Final = (BUDGET_DAY, BUDGET_MONTH, COST_SPIKE)
MAX_ERROR_RATE: Final = Decimal(1)


class RuleError(ValueError):
    """Bad rule input; ``field`` names the field at fault."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class NewRule:
    """A validated rule, not stored yet (``parse_rule`` builds it)."""

    name: str
    kind: str
    feature: str | None
    model: str | None
    metric: str | None
    warning_threshold: Decimal
    critical_threshold: Decimal
    window_minutes: int | None
    min_calls: int
    min_amount_usd: Decimal | None
    enabled: bool


@dataclass(frozen=True)
class Rule(NewRule):
    """A stored rule."""

    tenant_id: str
    id: int
    created_at: datetime
    created_by: str

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.warning_threshold, self.critical_threshold, self.metric in LOWER_IS_WORSE)

    @classmethod
    def of(cls, row: Any) -> Rule:
        return cls(**{name: getattr(row, name) for name in (*FIELDS, "tenant_id", "id", "created_at", "created_by")})


def _decimal(field_name: str, raw: Any, maximum: Decimal = MAX_THRESHOLD) -> Decimal:
    if isinstance(raw, bool) or raw is None:
        raise RuleError(field_name, "a decimal number is required")
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise RuleError(field_name, "must be a finite number")
        raw = repr(raw)
    try:
        value = (
            Decimal(raw.strip()) if isinstance(raw, str) else Decimal(raw) if isinstance(raw, int | Decimal) else None
        )
    except InvalidOperation:
        raise RuleError(field_name, f"not a decimal number: {str(raw)[:40]!r}") from None
    if value is None:
        raise RuleError(field_name, "a decimal number is required")
    if not value.is_finite():
        raise RuleError(field_name, "must be a finite number")
    if value < 0:
        raise RuleError(field_name, "must not be negative")
    if value > maximum:
        raise RuleError(field_name, f"{value} is above the largest accepted value {maximum}")
    return value


def _int(field_name: str, raw: Any, minimum: int, maximum: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise RuleError(field_name, "a whole number is required")
    try:
        value = int(raw)
    except ValueError:
        raise RuleError(field_name, f"not a whole number: {str(raw)[:40]!r}") from None
    if not minimum <= value <= maximum:
        raise RuleError(field_name, f"must be between {minimum} and {maximum}, got {value}")
    return value


def _text(raw: Mapping[str, Any], field_name: str, max_len: int, *, required: bool) -> str | None:
    value = raw.get(field_name)
    if value is None or value == "":
        if required:
            raise RuleError(field_name, "is required")
        return None
    if not isinstance(value, str):
        raise RuleError(field_name, "must be a string")
    if not value.strip():
        raise RuleError(field_name, "must not be blank")
    if len(value) > max_len or "\x00" in value:
        raise RuleError(field_name, f"must be at most {max_len} characters, without NUL")
    return value


def _only_for(raw: Mapping[str, Any], field_name: str, kind: str, kinds: tuple[str, ...]) -> None:
    if raw.get(field_name) not in (None, "") and kind not in kinds:
        raise RuleError(field_name, f"{kind} rules do not take it (only {', '.join(kinds)})")


def parse_rule(raw: Mapping[str, Any]) -> NewRule:
    """Validate one rule given as field -> value (strings or numbers); errors name the field."""
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise RuleError(unknown[0], f"unknown field (known: {', '.join(FIELDS)})")
    name = _text(raw, "name", RULE_NAME_LEN, required=True)
    kind = _text(raw, "kind", max(map(len, RULE_KINDS)), required=True)
    if kind not in RULE_KINDS:
        raise RuleError("kind", f"must be one of {', '.join(RULE_KINDS)}")
    _only_for(raw, "feature", kind, FEATURE_KINDS)
    _only_for(raw, "model", kind, MODEL_KINDS)
    _only_for(raw, "metric", kind, (INGEST_HEALTH,))
    _only_for(raw, "min_calls", kind, WINDOWED_KINDS)
    _only_for(raw, "min_amount_usd", kind, (COST_SPIKE,))
    metric = _text(raw, "metric", max(map(len, INGEST_METRICS)), required=kind == INGEST_HEALTH)
    if kind == INGEST_HEALTH and metric not in INGEST_METRICS:
        raise RuleError("metric", f"must be one of {', '.join(INGEST_METRICS)}")
    windowed = kind in WINDOWED_KINDS or metric == DEAD_LETTERS_ADDED
    if not windowed and raw.get("window_minutes") not in (None, ""):
        raise RuleError("window_minutes", "only error_rate, latency_p95 and dead_letters_added rules take it")
    window = _int("window_minutes", raw.get("window_minutes"), 1, MAX_WINDOW_MINUTES) if windowed else None
    maximum = MAX_ERROR_RATE if kind == ERROR_RATE else MAX_THRESHOLD
    warning = _decimal("warning_threshold", raw.get("warning_threshold"), maximum)
    critical = _decimal("critical_threshold", raw.get("critical_threshold"), maximum)
    try:
        Thresholds(warning, critical, metric in LOWER_IS_WORSE)
    except ValueError as exc:
        raise RuleError("critical_threshold", str(exc).removeprefix("critical_threshold ")) from None
    min_calls = raw.get("min_calls")
    min_amount = None
    if kind == COST_SPIKE:
        min_amount = _decimal("min_amount_usd", raw.get("min_amount_usd"))
        if min_amount == 0:
            raise RuleError("min_amount_usd", "must be above 0 (a spike from pennies must not page anyone)")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RuleError("enabled", "must be true or false")
    assert name is not None and kind is not None  # required above
    return NewRule(
        name=name,
        kind=kind,
        feature=_text(raw, "feature", MAX_FEATURE_NAME_LEN, required=False),
        model=_text(raw, "model", MAX_MODEL_LEN, required=False),
        metric=metric,
        warning_threshold=warning,
        critical_threshold=critical,
        window_minutes=window,
        min_calls=0 if min_calls in (None, "") else _int("min_calls", min_calls, 0, MAX_INT32),
        min_amount_usd=min_amount,
        enabled=enabled,
    )


# --- the store -----------------------------------------------------------------


class DuplicateRuleName(Exception):
    """The tenant already has a rule of that name."""


def add_rule(conn: Connection, tenant_id: str, rule: NewRule, created_by: str = "") -> Rule:
    """Store ``rule`` for ``tenant_id``; a name the tenant already uses raises DuplicateRuleName."""
    taken = conn.execute(
        select(AlertRule.id).where(AlertRule.tenant_id == tenant_id, AlertRule.name == rule.name)
    ).first()
    if taken is not None:
        raise DuplicateRuleName(f"name: the tenant already has a rule named {rule.name!r} (id {taken.id})")
    values = {name: getattr(rule, name) for name in FIELDS}
    row = conn.execute(
        insert(AlertRule)
        .values(tenant_id=tenant_id, created_by=created_by[:CREATED_BY_LEN], **values)
        .returning(*AlertRule.__table__.columns)
    ).one()
    return Rule.of(row)


@dataclass(frozen=True)
class RuleWithState:
    rule: Rule
    state: str | None  # None: not evaluated yet
    value: Decimal | None
    since: datetime | None
    evaluated_at: datetime | None
    last_notified_at: datetime | None = None


def list_rules(conn: Connection, tenant_id: str | None, *, enabled_only: bool = False) -> list[RuleWithState]:
    """A tenant's rules (every tenant's for None) with their current state, by tenant and id."""
    query = (
        select(
            AlertRule.__table__,
            AlertState.state,
            AlertState.value,
            AlertState.since,
            AlertState.evaluated_at,
            AlertState.last_notified_at,
        )
        .outerjoin(AlertState, (AlertState.tenant_id == AlertRule.tenant_id) & (AlertState.rule_id == AlertRule.id))
        .order_by(AlertRule.tenant_id, AlertRule.id)
    )
    if tenant_id is not None:
        query = query.where(AlertRule.tenant_id == tenant_id)
    if enabled_only:
        query = query.where(AlertRule.enabled)
    rows = conn.execute(query).all()
    return [
        RuleWithState(Rule.of(row), row.state, row.value, row.since, row.evaluated_at, row.last_notified_at)
        for row in rows
    ]


def delete_rule(conn: Connection, tenant_id: str, rule_id: int) -> bool:
    """Delete one rule (its state goes with it; its history and notifications stay). False: no such rule."""
    result = conn.execute(delete(AlertRule).where(AlertRule.tenant_id == tenant_id, AlertRule.id == rule_id))
    return bool(result.rowcount)


def get_rule(conn: Connection, tenant_id: str, rule_id: int) -> Rule | None:
    row = conn.execute(
        select(AlertRule.__table__).where(AlertRule.tenant_id == tenant_id, AlertRule.id == rule_id)
    ).first()
    return None if row is None else Rule.of(row)


def history(conn: Connection, tenant_id: str, *, rule_id: int | None = None, limit: int) -> list[Row[Any]]:
    """A tenant's state changes (alert_history rows), newest first (optionally one rule's), at most ``limit``."""
    query = select(AlertHistory.__table__).where(AlertHistory.tenant_id == tenant_id)
    if rule_id is not None:
        query = query.where(AlertHistory.rule_id == rule_id)
    query = query.order_by(AlertHistory.at.desc(), AlertHistory.id.desc()).limit(limit)
    return list(conn.execute(query))
