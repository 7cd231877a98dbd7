"""Monthly partitions of ``analytics_events``: created ahead, on demand, and retired.

Creating. A partition is created as a plain table ``(LIKE parent)`` and then
attached: ``ATTACH PARTITION`` takes SHARE UPDATE EXCLUSIVE on the parent, which
does not conflict with inserts (ROW EXCLUSIVE) or reads (ACCESS SHARE), while
``CREATE TABLE .. PARTITION OF`` would take ACCESS EXCLUSIVE and stall both.
ATTACH builds the parent's indexes on the new, empty table, so every partition
has them. The two statements are the function ``analytics_events_create_month``
(migration 0005), SECURITY DEFINER and owned by the table's owner, so that a
worker connected as a role that owns nothing (storage.roles) can create its
month. A transaction-scoped advisory lock serialises creators (two beat
processes, two workers, a migration) so that each month is created once, and a
short ``lock_timeout`` with retries keeps a creator from queueing behind a long
DDL while holding others up.

There is no DEFAULT partition on purpose: rows parked in it would block creating
their month (PostgreSQL must move or refuse them) and it forbids
``DETACH .. CONCURRENTLY``. Instead the write path creates a missing month on
the spot (see storage.events) and refuses events outside the accepted window
(``AcceptWindow``), so that a bad clock cannot create a partition for 2999.

Retiring. Retention detaches partitions older than the kept months with
``DETACH PARTITION .. CONCURRENTLY`` (no ACCESS EXCLUSIVE on the parent; needs
an autocommit connection) and drops them unless they are to be kept detached.
It never looks at the current month or later ones. A session advisory lock of
its own lets one retention run at a time; it is not the creators' lock, because
``DETACH .. CONCURRENTLY`` waits for every transaction using the parent, and a
writer waiting for the creators' lock inside such a transaction would wait in
a circle that PostgreSQL cannot see. The two never touch the same months.
While a concurrent detach waits for older transactions it keeps its SHARE
UPDATE EXCLUSIVE lock, so a creator's ATTACH waits too: ``lock_timeout`` and
the retries bound that wait, and a batch whose month still could not be
created fails as a whole and is retried by the ingest task, never dropped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import TypeVar

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from config import DEFAULTS, Settings
from retry_policy import Backoff, call_with_retry
from schema.event import earliest_timestamp, too_old
from storage.sqlstate import sqlstate, sqlstate_in

logger = logging.getLogger(__name__)

PARENT_TABLE = "analytics_events"
PARTITION_NAME = re.compile(rf"^{PARENT_TABLE}_(\d{{4}})_(\d{{2}})$")
PARTITION_NAME_SQL = rf"^{PARENT_TABLE}_[0-9]{{4}}_[0-9]{{2}}$"  # the same, as a POSIX regex
# Arbitrary constants naming our advisory locks (they take a bigint).
PARTITION_LOCK_KEY = 0x5041_5254  # "PART": creating partitions, transaction-scoped
RETENTION_LOCK_KEY = 0x5245_5445  # "RETE": one retention run at a time, session-scoped

LOCK_BACKOFF = Backoff(base_s=0.2, cap_s=5.0)  # with jitter: creators racing for the lock spread out
# SQLSTATEs worth another attempt: lock_timeout expired, deadlock detected.
RETRYABLE_SQLSTATES = frozenset({"55P03", "40P01"})
_lock_not_granted = sqlstate_in(RETRYABLE_SQLSTATES)
CHECK_VIOLATION = "23514"
NO_PARTITION_MESSAGE = "no partition of relation"
# The one place a month is created: a SECURITY DEFINER function owned by the
# table's owner (migration 0005), so that a worker role owning nothing may call it.
CREATE_MONTH = text("SELECT analytics_events_create_month(:month_start)")

T = TypeVar("T")


class PartitionLockTimeout(RuntimeError):
    """The parent table stayed locked through every attempt."""


@dataclass(frozen=True, order=True)
class Month:
    year: int
    month: int

    def __post_init__(self) -> None:
        if not 1 <= self.month <= 12:
            raise ValueError(f"month must be 1..12, got {self.month}")

    @classmethod
    def of(cls, moment: datetime | date) -> Month:
        """The UTC month of ``moment`` (an aware datetime is converted; naive means UTC)."""
        if isinstance(moment, datetime) and moment.utcoffset() is not None:
            moment = moment.astimezone(UTC)
        return cls(moment.year, moment.month)

    @classmethod
    def parse(cls, value: str) -> Month:
        """``YYYY-MM`` as typed by an operator."""
        match = re.fullmatch(r"(\d{4})-(\d{2})", value.strip())
        if not match:
            raise ValueError(f"month must look like YYYY-MM, got {value!r}")
        return cls(int(match[1]), int(match[2]))

    @classmethod
    def from_table_name(cls, name: str) -> Month | None:
        match = PARTITION_NAME.match(name)
        return cls(int(match[1]), int(match[2])) if match else None

    def shift(self, months: int) -> Month:
        index = self.year * 12 + (self.month - 1) + months
        return Month(index // 12, index % 12 + 1)

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.shift(1).start

    @property
    def table_name(self) -> str:
        return f"{PARENT_TABLE}_{self.year:04d}_{self.month:02d}"

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


# --- policy ------------------------------------------------------------------


@dataclass(frozen=True)
class AcceptWindow:
    """Timestamps the write path stores; anything else is dead-lettered with a reason.

    ``oldest`` is the later of now - EVENT_MAX_PAST_AGE_DAYS and the start of
    retention (schema.event.earliest_timestamp, the bound ``track()`` applies
    too); ``oldest_setting`` names the one that sets it. Inside the window a
    missing month is created; outside it, creating one would either be undone
    by retention or let a broken clock (or a hostile tenant) litter the table
    with far-past or far-future months.
    """

    oldest: datetime | None  # None: no lower bound
    newest: datetime  # inclusive: now + the allowed clock skew
    oldest_setting: str = "PARTITION_RETENTION_MONTHS"

    def refusal(self, timestamp: datetime) -> str | None:
        """Why ``timestamp`` is refused, or None when it is accepted (naive means UTC)."""
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=UTC)
        if timestamp > self.newest:
            return (
                f"timestamp {timestamp.isoformat()} is too far in the future: the latest"
                f" accepted is {self.newest.isoformat()} (EVENT_MAX_FUTURE_SKEW_S)"
            )
        if self.oldest is not None and timestamp < self.oldest:
            return too_old(timestamp, self.oldest, self.oldest_setting)
        return None


@dataclass(frozen=True)
class PartitionPolicy:
    """The partition settings in one value, so that callers pass one thing.

    The defaults are Settings' own (config.DEFAULTS): ``PartitionPolicy()``
    equals ``from_settings`` of an environment that sets nothing.
    """

    months_ahead: int = DEFAULTS.partition_months_ahead
    retention_months: int = DEFAULTS.partition_retention_months  # 0: keep every month
    keep_detached: bool = DEFAULTS.partition_keep_detached
    max_future_skew: timedelta = timedelta(seconds=DEFAULTS.event_max_future_skew_s)
    max_past_age_days: int = DEFAULTS.event_max_past_age_days
    max_partitions_per_batch: int = DEFAULTS.ingest_max_partitions_per_batch
    lock_timeout_ms: int = DEFAULTS.partition_lock_timeout_ms
    lock_retries: int = DEFAULTS.partition_lock_retries

    def __post_init__(self) -> None:
        # A negative retention would reach the current month; say so at once.
        for name in ("months_ahead", "retention_months", "lock_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        for name in ("lock_timeout_ms", "max_past_age_days", "max_partitions_per_batch"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_settings(cls, settings: Settings) -> PartitionPolicy:
        return cls(
            months_ahead=settings.partition_months_ahead,
            retention_months=settings.partition_retention_months,
            keep_detached=settings.partition_keep_detached,
            max_future_skew=timedelta(seconds=settings.event_max_future_skew_s),
            max_past_age_days=settings.event_max_past_age_days,
            max_partitions_per_batch=settings.ingest_max_partitions_per_batch,
            lock_timeout_ms=settings.partition_lock_timeout_ms,
            lock_retries=settings.partition_lock_retries,
        )

    def oldest_kept(self, now: datetime) -> Month | None:
        """First month retention keeps: the current one and ``retention_months`` before it."""
        if self.retention_months == 0:
            return None
        return Month.of(now).shift(-self.retention_months)

    def window(self, now: datetime) -> AcceptWindow:
        oldest, setting = earliest_timestamp(now, self.max_past_age_days, self.retention_months)
        return AcceptWindow(oldest=oldest, newest=now + self.max_future_skew, oldest_setting=setting)


def months_ahead(now: datetime, ahead: int) -> list[Month]:
    """The current month and the ``ahead`` months after it."""
    current = Month.of(now)
    return [current.shift(i) for i in range(ahead + 1)]


# --- inspecting ----------------------------------------------------------------


@dataclass(frozen=True)
class PartitionInfo:
    """One monthly table, attached or left detached by retention."""

    name: str
    month: Month | None  # None: attached under a name that is not ours
    attached: bool
    detach_pending: bool  # an interrupted DETACH .. CONCURRENTLY; finished by retention
    rows_estimate: int | None  # None until the table was first analyzed
    size_bytes: int
    indexes: tuple[str, ...] = field(default=())


def list_partitions(conn: Connection) -> list[PartitionInfo]:
    """Attached partitions and detached monthly tables, oldest first."""
    rows = conn.execute(
        text(
            "SELECT c.relname, i.inhrelid IS NOT NULL, coalesce(i.inhdetachpending, false),"
            "  c.reltuples::bigint, pg_total_relation_size(c.oid),"
            "  array(SELECT ic.relname FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid"
            "        WHERE x.indrelid = c.oid ORDER BY ic.relname)"
            " FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema()"
            " LEFT JOIN pg_inherits i ON i.inhrelid = c.oid"
            "  AND i.inhparent = to_regclass(:parent)"
            " WHERE c.relkind = 'r' AND (c.relname ~ :pattern OR i.inhrelid IS NOT NULL)"
            " ORDER BY c.relname"
        ),
        {"parent": PARENT_TABLE, "pattern": PARTITION_NAME_SQL},
    )
    return [
        PartitionInfo(
            name=name,
            month=Month.from_table_name(name),
            attached=attached,
            detach_pending=pending,
            rows_estimate=None if tuples < 0 else tuples,
            size_bytes=size,
            indexes=tuple(indexes),
        )
        for name, attached, pending, tuples, size, indexes in rows
    ]


def existing_months(conn: Connection) -> set[Month]:
    """Months with an attached partition."""
    return {p.month for p in list_partitions(conn) if p.attached and p.month is not None}


def has_default_partition(conn: Connection) -> bool:
    return bool(
        conn.execute(
            text("SELECT partdefid <> 0 FROM pg_partitioned_table WHERE partrelid = to_regclass(:parent)"),
            {"parent": PARENT_TABLE},
        ).scalar()
    )


def is_missing_partition(exc: DBAPIError) -> bool:
    """True for PostgreSQL's "no partition of relation .. found for row"."""
    orig = exc.orig
    return getattr(orig, "pgcode", None) == CHECK_VIOLATION and NO_PARTITION_MESSAGE in str(orig)


# --- locking -------------------------------------------------------------------


def _set_lock_timeout(conn: Connection, value: str, *, local: bool) -> str:
    """Set ``lock_timeout`` (e.g. ``"2000ms"``); returns the previous value."""
    previous = conn.execute(text("SELECT current_setting('lock_timeout')")).scalar_one()
    conn.execute(text("SELECT set_config('lock_timeout', :value, :local)"), {"value": value, "local": local})
    return str(previous)


def _ms(timeout_ms: int) -> str:
    return f"{int(timeout_ms)}ms"


def with_lock_retry(action: Callable[[], T], policy: PartitionPolicy, what: str) -> T:
    """Run ``action``; when it gave up waiting for a lock, back off and try again.

    Waiting briefly and retrying, instead of waiting long, keeps a DDL statement
    from sitting in the lock queue where it would hold up later requests.
    """

    def log_retry(exc: Exception, attempt: int, pause: float) -> None:
        logger.warning("%s: lock not granted (%s); retry in %.2fs", what, sqlstate(exc), pause)

    try:
        return call_with_retry(
            action,
            attempts=policy.lock_retries + 1,
            retryable=_lock_not_granted,
            backoff=LOCK_BACKOFF,
            on_retry=log_retry,
        )
    except DBAPIError as exc:
        if not _lock_not_granted(exc):
            raise
        raise PartitionLockTimeout(
            f"could not {what}: {PARENT_TABLE} stayed locked through"
            f" {policy.lock_retries + 1} attempts of {policy.lock_timeout_ms} ms"
            " (a long transaction or DDL holds it; see pg_locks)"
        ) from exc


# --- creating ------------------------------------------------------------------


def ensure_months(
    conn: Connection, months: Iterable[Month], *, lock_timeout_ms: int = DEFAULTS.partition_lock_timeout_ms
) -> list[Month]:
    """Create the missing ones of ``months``; returns those it created.

    Runs inside the caller's transaction (a migration's, say); commit to publish
    the partitions. ``ensure_partitions`` is the variant with its own
    transaction and retries.
    """
    # Local to the transaction, and restored below so that a caller's later
    # statements (the next migration, say) keep their own setting.
    previous = _set_lock_timeout(conn, _ms(lock_timeout_ms), local=True)
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PARTITION_LOCK_KEY})
    tables = {p.month: p for p in list_partitions(conn) if p.month is not None}
    created = []
    for month in sorted(set(months)):
        found = tables.get(month)
        if found is not None:
            if not found.attached:
                # Kept detached by retention: re-attaching would bring old rows
                # back and creating would collide. Rows of this month are
                # dead-lettered by the writer with PostgreSQL's reason.
                logger.error(
                    "%s exists but is detached; not creating %s (re-attach or drop it)",
                    found.name,
                    month,
                )
            continue
        # The DDL itself is the owner's function (migration 0005): CREATE TABLE
        # (LIKE ..) + ATTACH need the table's owner, and the worker role is not.
        if conn.execute(CREATE_MONTH, {"month_start": month.start.date()}).scalar_one():
            created.append(month)
    _set_lock_timeout(conn, previous, local=True)
    return created


def ensure_partitions(engine: Engine, months: Iterable[Month], policy: PartitionPolicy) -> list[Month]:
    """``ensure_months`` in a transaction of its own, committed at once, retried on lock timeouts.

    Its own transaction publishes the partitions to every session immediately
    and holds the advisory lock for milliseconds, not for a caller's batch.
    """
    wanted = sorted(set(months))

    def attempt() -> list[Month]:
        with engine.begin() as conn:
            return ensure_months(conn, wanted, lock_timeout_ms=policy.lock_timeout_ms)

    created = with_lock_retry(attempt, policy, f"create partitions {', '.join(map(str, wanted))}")
    for month in created:
        logger.info("created partition %s", month.table_name)
    return created


# --- retiring ------------------------------------------------------------------


@dataclass(frozen=True)
class RetentionPlan:
    oldest_kept: Month | None  # None: retention is off, nothing goes
    detach: tuple[PartitionInfo, ...] = ()  # attached partitions older than oldest_kept
    drop: tuple[PartitionInfo, ...] = ()  # tables dropped after detaching (or left over detached)


@dataclass
class RetentionReport:
    plan: RetentionPlan
    dry_run: bool
    detached: list[str] = field(default_factory=list)  # table names
    dropped: list[str] = field(default_factory=list)
    skipped: str | None = None  # why nothing ran (another run holds the lock)


def plan_retention(conn: Connection, now: datetime, policy: PartitionPolicy) -> RetentionPlan:
    """What retention would detach and drop at ``now``; changes nothing.

    Detached tables left from an earlier run (interrupted, or kept when
    ``keep_detached`` was on) are dropped too once the policy says drop.
    """
    oldest = policy.oldest_kept(now)
    if oldest is None:
        return RetentionPlan(oldest_kept=None)
    old = [p for p in list_partitions(conn) if p.month is not None and p.month < oldest]
    detach = tuple(p for p in old if p.attached)
    drop = () if policy.keep_detached else tuple(old)
    return RetentionPlan(oldest_kept=oldest, detach=detach, drop=drop)


def _partition_state(conn: Connection, name: str) -> tuple[bool, bool] | None:
    """(attached, detach pending) of table ``name``; None if it does not exist."""
    row = conn.execute(
        text(
            "SELECT i.inhrelid IS NOT NULL, coalesce(i.inhdetachpending, false)"
            " FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema()"
            " LEFT JOIN pg_inherits i ON i.inhrelid = c.oid AND i.inhparent = to_regclass(:parent)"
            " WHERE c.relname = :name AND c.relkind = 'r'"
        ),
        {"parent": PARENT_TABLE, "name": name},
    ).one_or_none()
    return None if row is None else (row[0], row[1])


def _detach(conn: Connection, info: PartitionInfo, concurrently: bool) -> bool:
    state = _partition_state(conn, info.name)
    if state is None or not state[0]:
        return False  # already gone: a repeated run is a no-op
    pending = state[1]
    mode = "FINALIZE" if pending else ("CONCURRENTLY" if concurrently else "")
    name = conn.dialect.identifier_preparer.quote(info.name)
    conn.execute(text(f"ALTER TABLE {PARENT_TABLE} DETACH PARTITION {name} {mode}"))
    return True


def _drop(conn: Connection, info: PartitionInfo) -> bool:
    state = _partition_state(conn, info.name)
    if state is None:
        return False
    if state[0]:
        raise RuntimeError(f"refusing to drop {info.name}: it is still attached")
    conn.execute(text(f"DROP TABLE {conn.dialect.identifier_preparer.quote(info.name)}"))
    return True


def run_retention(engine: Engine, policy: PartitionPolicy, now: datetime, *, dry_run: bool = False) -> RetentionReport:
    """Detach (and drop, unless kept) every partition older than the kept months.

    With ``dry_run`` only the plan is computed. A run that finds another one
    holding the retention lock does nothing and says so in ``skipped``.
    """
    with engine.connect() as base:
        # DETACH .. CONCURRENTLY cannot run inside a transaction block.
        conn = base.execution_options(isolation_level="AUTOCOMMIT")
        if dry_run:
            return RetentionReport(plan=plan_retention(conn, now, policy), dry_run=True)
        locked = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": RETENTION_LOCK_KEY}).scalar()
        if not locked:
            return RetentionReport(
                plan=RetentionPlan(oldest_kept=policy.oldest_kept(now)),
                dry_run=False,
                skipped="another retention run holds the lock",
            )
        try:
            _set_lock_timeout(conn, _ms(policy.lock_timeout_ms), local=False)
            plan = plan_retention(conn, now, policy)
            report = RetentionReport(plan=plan, dry_run=False)
            concurrently = not has_default_partition(conn)
            for info in plan.detach:
                if with_lock_retry(partial(_detach, conn, info, concurrently), policy, f"detach {info.name}"):
                    report.detached.append(info.name)
                    logger.info("detached partition %s", info.name)
            for info in plan.drop:
                if with_lock_retry(partial(_drop, conn, info), policy, f"drop {info.name}"):
                    report.dropped.append(info.name)
                    logger.info("dropped partition %s", info.name)
            return report
        finally:
            conn.execute(text("RESET lock_timeout"))
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": RETENTION_LOCK_KEY})
