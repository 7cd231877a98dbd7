"""``prices.refresh`` (beat) rewrites the whole rate table in one transaction."""

from __future__ import annotations

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from celeryconfig import build
from config import get_settings
from pricing.rates import ensure_priced
from tasks.names import PRICES_REFRESH
from tasks.prices import refresh


def test_refresh_task_rewrites_the_registered_pairs(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        ensure_priced(session, [("gpt-4o", "")])
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM cost_rates WHERE model = 'gpt-4o'"))  # as if the catalog had changed
    result = refresh.apply().get()
    assert result["pairs"] >= 1 and result["rows"] >= 1
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM cost_rates WHERE model = 'gpt-4o'")).scalar_one() == 1


def test_beat_schedules_the_refresh() -> None:
    entries = build(get_settings())["beat_schedule"]
    assert any(entry["task"] == PRICES_REFRESH for entry in entries.values())
