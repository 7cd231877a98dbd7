"""Watching and holding up the event table from outside the pipeline (tests, tools)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, text


def count_events(engine: Engine, tenant: str) -> tuple[int, int]:
    """(rows, distinct event ids) stored for ``tenant``."""
    with engine.connect() as conn:
        total, distinct = conn.execute(
            text("SELECT count(*), count(DISTINCT event_id) FROM analytics_events WHERE tenant_id = :t"),
            {"t": tenant},
        ).one()
    return total, distinct


@contextmanager
def blocked_inserts(engine: Engine) -> Iterator[Callable[[], None]]:
    """Hold a SHARE lock on analytics_events (and so its partitions) in a
    transaction of its own: every INSERT waits until it is released.

    Yields ``release``; the lock is released at exit in any case.
    """
    conn = engine.connect()
    trans = conn.begin()
    conn.execute(text("LOCK TABLE analytics_events IN SHARE MODE"))

    def release() -> None:
        if trans.is_active:
            trans.rollback()

    try:
        yield release
    finally:
        release()
        conn.close()
