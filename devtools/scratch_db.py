"""A throwaway database of a test's own, for migrating from an old revision and filling it as that revision had it.

The migration tests bring such a database to the revision before the one they
test, fill it with plain SQL (the models describe only the current schema), and
upgrade or downgrade it with Alembic. The helpers here are that shared part;
what each revision's rows look like stays with its test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, text

from scripts.check_migrations import drop_database
from storage.migrate import alembic_config, ensure_database

FIRST_YEAR = 2001  # the partitions of filled old databases start in January of this year
MONTHS_A_YEAR = 12
ROW_STEP = "7 min"  # between add_pending_events' events of one month


@dataclass(frozen=True)
class ScratchDatabase:
    """A database created empty (no revision); ``upgrade`` and ``downgrade`` move it between revisions."""

    url: str
    engine: Engine
    alembic: Config

    def upgrade(self, revision: str) -> None:
        command.upgrade(self.alembic, revision)

    def downgrade(self, revision: str) -> None:
        command.downgrade(self.alembic, revision)

    def rows(self, query: str, **params: Any) -> list[tuple[Any, ...]]:
        """Every row of a constant query with bound ``params``, as plain tuples."""
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(query), params)]


@contextmanager
def scratch_database(url: str) -> Iterator[ScratchDatabase]:
    """The URL's database dropped (if left over) and created empty; dropped again at exit."""
    drop_database(url)
    ensure_database(url)
    engine = create_engine(url)
    try:
        yield ScratchDatabase(url=url, engine=engine, alembic=alembic_config(url))
    finally:
        engine.dispose()
        drop_database(url)


def month_start(index: int) -> str:
    """The first day of the ``index``-th month (0: January FIRST_YEAR), as a date literal."""
    return f"{FIRST_YEAR + index // MONTHS_A_YEAR:04d}-{index % MONTHS_A_YEAR + 1:02d}-01"


def add_month_partitions(conn: Connection, months: int) -> None:
    """``months`` monthly partitions of analytics_events from January FIRST_YEAR on, named as every revision names
    them (``analytics_events_YYYY_MM``), made with plain SQL as an old schema had them."""
    for i in range(months):
        start = month_start(i)
        conn.execute(
            text(
                f"CREATE TABLE analytics_events_{start[:4]}_{start[5:7]} PARTITION OF analytics_events"
                f" FOR VALUES FROM ('{start}') TO ('{month_start(i + 1)}')"
            )
        )


def open_pending_batch(conn: Connection, min_ts: datetime | str, max_ts: datetime | str) -> int:
    """A rollup_pending_batches row spanning [min_ts, max_ts]; its batch_id, for the events to carry."""
    return int(
        conn.execute(
            text("INSERT INTO rollup_pending_batches (min_ts, max_ts) VALUES (:min_ts, :max_ts) RETURNING batch_id"),
            {"min_ts": min_ts, "max_ts": max_ts},
        ).scalar_one()
    )


def add_pending_events(
    conn: Connection, months: int, rows_a_month: int, columns: str, values: str, **params: Any
) -> None:
    """``months`` monthly partitions (add_month_partitions), one pending rollup batch spanning them, and
    ``rows_a_month`` events of that batch in each month, ROW_STEP apart from its first minute on.

    Each event's ``columns`` (besides event_id, timestamp and batch_id) get ``values``: constant SQL over the
    row's number ``r`` (1 to ``rows_a_month``) and the bound ``params``.
    """
    add_month_partitions(conn, months)
    batch = open_pending_batch(conn, month_start(0), month_start(months))
    conn.execute(
        text(
            f"INSERT INTO analytics_events (event_id, timestamp, batch_id, {columns})"
            f" SELECT gen_random_uuid(), timestamptz '{month_start(0)}' + (s * interval '1 month')"
            f" + (r * interval '{ROW_STEP}'), :batch, {values}"
            " FROM generate_series(0, :months - 1) s, generate_series(1, :rows) r"
        ),
        {**params, "batch": batch, "months": months, "rows": rows_a_month},
    )
