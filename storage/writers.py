"""How a chunk of rows reaches the table: ``bulk_insert_mappings`` or COPY.

Both run inside the caller's SAVEPOINT and raise SQLAlchemy's IntegrityError /
DataError / OperationalError with the driver's error attached, so
storage.events treats them alike: dedupe, missing partitions, bisection, and
retry are the writer-independent part. Chosen by ``INGEST_WRITER``.

``bulk`` (the default): ``Session.bulk_insert_mappings``, one multi-row INSERT
per 1,000 rows. ``copy``: psycopg2 ``copy_expert`` of a text-format buffer,
about three times less database CPU per row; choose it when the database is
the ceiling (see the benchmarks).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import psycopg2
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from models import AnalyticsEvent

Writer = Callable[[Session, Sequence[dict[str, Any]]], None]

COPY_COLUMNS = tuple(column.name for column in AnalyticsEvent.__table__.columns)
COPY_STATEMENT = (
    f"COPY {AnalyticsEvent.__tablename__} ({', '.join(COPY_COLUMNS)}) FROM STDIN"
)  # names from the model, never from input
NULL = "\\N"
# COPY text format: these characters must be escaped in a value (NUL is refused upstream).
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def bulk_insert(session: Session, mappings: Sequence[dict[str, Any]]) -> None:
    session.bulk_insert_mappings(AnalyticsEvent, mappings, render_nulls=True)


def _copy_value(value: Any) -> str:
    if value is None:
        return NULL
    if isinstance(value, str):
        return value.translate(_ESCAPES)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)  # int, UUID


def copy_rows(session: Session, mappings: Sequence[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    for mapping in mappings:
        buffer.write("\t".join([_copy_value(mapping.get(column)) for column in COPY_COLUMNS]))
        buffer.write("\n")
    buffer.seek(0)
    dbapi_connection = session.connection().connection.dbapi_connection
    assert dbapi_connection is not None
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.copy_expert(COPY_STATEMENT, buffer)
    except psycopg2.Error as exc:
        # The same exception classes as the ORM path, so storage.events handles both alike.
        raise DBAPIError.instance(COPY_STATEMENT, None, exc, psycopg2.Error) from exc


WRITERS: dict[str, Writer] = {"bulk": bulk_insert, "copy": copy_rows}
