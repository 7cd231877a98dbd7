"""Errors an operator causes, as one line saying what to do; anything else is a bug and keeps its traceback.

"Caused by the operator" means the services or the settings: PostgreSQL not
reachable, its database missing or not migrated, a login or a grant refused,
the broker not reachable. ``python -m cli --debug`` shows the traceback of
those too.
"""

from __future__ import annotations

import re
import socket

import amqp.exceptions
import kombu.exceptions
import redis.exceptions
from kombu.utils.url import maybe_sanitize_url
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, ProgrammingError

from config import get_settings
from monitoring.escape import escape

UNDEFINED_TABLE = "42P01"
INSUFFICIENT_PRIVILEGE = "42501"
INVALID_CATALOG_NAME = "3D000"  # the database does not exist
CONNECTION_CLASSES = ("08", "28", "57P")  # connection exceptions, login refused, server shutting down
# psycopg2 gives no SQLSTATE for a refused connection: its text tells the cases apart.
MISSING_DATABASE = re.compile(r'database ".*" does not exist')
LOGIN_REFUSED = re.compile(r'password authentication failed|role ".*" does not exist|no pg_hba\.conf entry')

# The broker's client libraries: kombu wraps some errors, redis-py and py-amqp raise their own, and
# py-amqp lets socket errors through. Not every OSError: a BrokenPipeError is the terminal's pipe
# closing (`| head`), not the broker.
BROKER_ERRORS: tuple[type[Exception], ...] = (
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    amqp.exceptions.ConnectionError,
    amqp.exceptions.AccessRefused,
    ConnectionRefusedError,
    ConnectionResetError,
    ConnectionAbortedError,
    TimeoutError,
    socket.gaierror,  # unknown host name
)

BROKER_LOGIN_REFUSED = (amqp.exceptions.AccessRefused, redis.exceptions.AuthenticationError)
# What user_error may recognise; the CLI catches only these.
OPERATOR_ERROR_TYPES: tuple[type[Exception], ...] = (DBAPIError, *BROKER_ERRORS)
DEBUG_HINT = "--debug shows the traceback"


def user_error(exc: BaseException) -> str | None:
    """The one-line message for an error the operator can fix; None for anything else (a bug)."""
    if isinstance(exc, DBAPIError):
        return _database_error(exc)
    if isinstance(exc, BROKER_ERRORS):
        url = maybe_sanitize_url(get_settings().celery_broker_url)
        if isinstance(exc, BROKER_LOGIN_REFUSED):
            return f"the broker at {url} refused the login ({_first_line(exc)}); check CELERY_BROKER_URL"
        return f"cannot reach the broker at {url} ({_first_line(exc)}); start it or set CELERY_BROKER_URL"
    return None


def _database_error(exc: DBAPIError) -> str | None:
    settings = get_settings()
    url = make_url(settings.database_url)
    where = f"PostgreSQL at {url.render_as_string(hide_password=True)}"
    reason = _first_line(exc.orig if exc.orig is not None else exc)
    code = _sqlstate(exc)
    if isinstance(exc, ProgrammingError) and code == UNDEFINED_TABLE:
        return f"{where}: {reason}: the database is not migrated; run python -m cli migrate"
    if code == INSUFFICIENT_PRIVILEGE:
        return (
            f"{where}: {reason}: DATABASE_URL's role lacks a grant (python -m cli migrate --create-roles grants them)"
        )
    if not isinstance(exc, OperationalError | InterfaceError):
        return None
    if code == INVALID_CATALOG_NAME or (code is None and MISSING_DATABASE.search(reason)):
        return f"{where}: {reason}; create it and its tables with python -m cli migrate, or set DATABASE_URL"
    if code is None and LOGIN_REFUSED.search(reason):
        return f"{where} refused the login ({reason}); check the user and password in DATABASE_URL"
    if code is None or code.startswith(CONNECTION_CLASSES):
        return f"cannot reach {where} ({reason}); start it or set DATABASE_URL"
    return None


def _sqlstate(exc: DBAPIError) -> str | None:
    """psycopg2's ``pgcode``; None for a connection that was never made."""
    code = getattr(exc.orig, "pgcode", None)
    return code if isinstance(code, str) else None


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of the error's text, control characters escaped (it may quote input)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return escape(lines[0] if lines else type(exc).__name__)
