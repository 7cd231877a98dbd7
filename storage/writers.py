"""How a chunk of rows reaches the table: ``bulk_insert_mappings`` or COPY.

Both run inside the caller's SAVEPOINT and raise SQLAlchemy's IntegrityError /
DataError / OperationalError with the driver's error attached, so
storage.events treats them alike: dedupe, missing partitions, bisection, and
retry are the writer-independent part. Chosen by ``INGEST_WRITER``.

``bulk`` (the default): ``Session.bulk_insert_mappings``, one multi-row INSERT
per 1,000 rows. ``copy``: psycopg2 ``copy_expert`` of a text-format buffer,
about three times less database CPU per row; choose it when the database is
the ceiling (see the benchmarks).

Building the COPY buffer is the copy writer's largest Python cost (a profile
of the worker under load, BENCHMARKS.md), so ``_copy_value`` dispatches on the
exact type first and escapes a string only when it holds a character that
needs it; UUIDs go as 32 hex digits, which PostgreSQL accepts.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, cast
from uuid import UUID

import psycopg2
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from models import AnalyticsEvent

Writer = Callable[[Session, Sequence[dict[str, Any]]], None]

COPY_COLUMNS = tuple(column.name for column in AnalyticsEvent.__table__.columns)
COPY_STATEMENT = f"COPY {AnalyticsEvent.__tablename__} ({', '.join(COPY_COLUMNS)}) FROM STDIN"  # names from the model, never from input
NULL = "\\N"
# COPY text format: these characters must be escaped in a value (NUL is refused upstream).
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def bulk_insert(session: Session, mappings: Sequence[dict[str, Any]]) -> None:
    session.bulk_insert_mappings(AnalyticsEvent, mappings, render_nulls=True)


def _copy_text(value: str) -> str:
    # Four substring tests cost a tenth of the translate() they usually spare.
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_ESCAPES)
    return value


def _copy_value(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return _copy_text(value)
    if kind is int:
        return str(value)
    if value is None:
        return NULL
    if kind is datetime:
        iso: str = value.isoformat()
        return iso
    if kind is UUID:
        hex_id: str = value.hex
        return hex_id
    # Subclasses (enums, pendulum-style datetimes): the same rules, the slow way.
    if isinstance(value, str):
        return _copy_text(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return value.hex
    return str(value)


def copy_buffer(mappings: Sequence[dict[str, Any]]) -> io.StringIO:
    """The COPY text-format input of ``mappings``, columns in ``COPY_COLUMNS`` order.

    Public so that the benchmark's raw-COPY ceiling sends exactly what the writer sends.
    """
    lines = ["\t".join([_copy_value(mapping.get(column)) for column in COPY_COLUMNS]) for mapping in mappings]
    lines.append("")  # every row ends with a newline
    return io.StringIO("\n".join(lines))


def copy_rows(session: Session, mappings: Sequence[dict[str, Any]]) -> None:
    buffer = copy_buffer(mappings)
    dbapi_connection = session.connection().connection.dbapi_connection
    assert dbapi_connection is not None
    try:
        with cast(psycopg2.extensions.connection, dbapi_connection).cursor() as cursor:
            cursor.copy_expert(COPY_STATEMENT, buffer)
    except psycopg2.Error as exc:
        # The same exception classes as the ORM path, so storage.events handles both alike.
        raise DBAPIError.instance(COPY_STATEMENT, None, exc, psycopg2.Error) from exc


WRITERS: dict[str, Writer] = {"bulk": bulk_insert, "copy": copy_rows}
