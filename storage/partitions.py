"""Monthly partitions of ``analytics_events``.

A partition is created as a plain table ``(LIKE parent)`` and then attached:
``ATTACH PARTITION`` takes SHARE UPDATE EXCLUSIVE on the parent, so inserts and
dashboard reads keep running, while ``CREATE TABLE .. PARTITION OF`` would take
ACCESS EXCLUSIVE. A transaction-scoped advisory lock serialises concurrent
callers (two beat processes, a worker and a migration) so that each month is
created once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone

from sqlalchemy import Connection, text

PARENT_TABLE = "analytics_events"
# Arbitrary constant naming our advisory lock (pg_advisory_xact_lock takes a bigint).
PARTITION_LOCK_KEY = 0x5041_5254  # "PART"
LOCK_TIMEOUT = "5s"


@dataclass(frozen=True, order=True)
class Month:
    year: int
    month: int

    @classmethod
    def of(cls, moment: datetime | date) -> Month:
        return cls(moment.year, moment.month)

    def shift(self, months: int) -> Month:
        index = self.year * 12 + (self.month - 1) + months
        return Month(index // 12, index % 12 + 1)

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=timezone.utc)

    @property
    def end(self) -> datetime:
        return self.shift(1).start

    @property
    def table_name(self) -> str:
        return f"{PARENT_TABLE}_{self.year:04d}_{self.month:02d}"


def existing_months(conn: Connection) -> set[Month]:
    rows = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_class p ON p.oid = i.inhparent"
            " WHERE p.relname = :parent"
        ),
        {"parent": PARENT_TABLE},
    ).scalars()
    months = set()
    prefix = PARENT_TABLE + "_"
    for name in rows:
        year, month = name.removeprefix(prefix).split("_")
        months.add(Month(int(year), int(month)))
    return months


def ensure_months(conn: Connection, months: list[Month]) -> list[Month]:
    """Create the missing ones of ``months``; returns those it created.

    Runs inside the caller's transaction; commit to publish the partitions.
    """
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PARTITION_LOCK_KEY})
    present = existing_months(conn)
    created = []
    quote = conn.dialect.identifier_preparer.quote
    for month in sorted(set(months) - present):
        name = quote(month.table_name)
        conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        conn.execute(
            text(
                f"CREATE TABLE {name} (LIKE {PARENT_TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            )
        )
        # FOR VALUES takes no bound parameters; the literals come from Month's
        # integers, never from input.
        bounds = f"FROM ('{month.start.isoformat()}') TO ('{month.end.isoformat()}')"
        conn.execute(text(f"ALTER TABLE {PARENT_TABLE} ATTACH PARTITION {name} FOR VALUES {bounds}"))
        created.append(month)
    return created


def months_ahead(now: datetime, ahead: int) -> list[Month]:
    """The current month and the ``ahead`` months after it."""
    current = Month.of(now.astimezone(timezone.utc))
    return [current.shift(i) for i in range(ahead + 1)]
