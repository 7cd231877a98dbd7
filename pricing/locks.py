"""The one lock that serialises writes to the price tables (overrides and the materialized rates).

A transaction-scoped advisory lock: a refresh deletes and inserts a pair's
rate rows, and two at once would collide on the primary key; an override's
"one active row per date" check must not race another writer. Writers are
rare (an operator's change, the hourly refresh, a pair seen for the first
time), so one lock for all of them costs nothing and cannot deadlock.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import text
from sqlalchemy.orm import Session

PRICES_LOCK: Final = 0x5052_4943  # "PRIC", pg_advisory_xact_lock(bigint)


def lock_prices(session: Session) -> None:
    """Take the prices lock until the caller's transaction ends."""
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PRICES_LOCK})
