"""Helpers of the alert tests: a priced model, events tracked and rolled up, rules stored."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from alerts.rules import Rule, add_rule, parse_rule
from pricing.overrides import parse_override, set_override
from storage.rollups import run_until_idle
from tests.rollup_checks import event, ingest

# A fixed instant, so that day, month and hour boundaries are where the tests put them.
NOW = datetime(2026, 6, 15, 12, 30, tzinfo=UTC)
MODEL = "alert-model"  # priced by a tenant override: every call costs CALL_FEE, whatever its tokens
UNPRICED_MODEL = "alert-unpriced-model"
CALL_FEE = Decimal("0.25")
PRICED_FROM = date(2026, 1, 1)


@pytest.fixture
def priced_tenant(engine: Engine, tenant: str) -> str:
    """``tenant``, with MODEL priced at CALL_FEE per call (and nothing per token)."""
    raw = {"model_pattern": MODEL, "effective_from": PRICED_FROM.isoformat(), "reason": "alert tests",
           "input_per_mtok": "0", "output_per_mtok": "0", "call_fee": str(CALL_FEE), "tenant_id": tenant}  # fmt: skip
    with Session(engine) as session, session.begin():
        set_override(session, parse_override(raw))
    return tenant


@pytest.fixture
def no_rules(engine: Engine) -> Iterator[None]:
    """No other test's rules: an evaluation cycle sees only this test's."""
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM alert_rules"))
    yield


def track(engine: Engine, tenant: str, moments: list[datetime], *, roll_up: bool = True, **fields: Any) -> None:
    """Store one event per moment for ``tenant`` (MODEL unless ``model`` says otherwise), then roll up."""
    fields.setdefault("model", MODEL)
    ingest(engine, [event(moment, tenant=tenant, **fields) for moment in moments])
    if roll_up:
        run_until_idle(engine)


def store_rule(engine: Engine, tenant: str, **fields: Any) -> Rule:
    with engine.begin() as conn:
        return add_rule(conn, tenant, parse_rule(fields), created_by="tests")
