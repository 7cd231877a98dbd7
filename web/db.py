"""The web process's database access: one engine per process, made at startup.

Every connection of the web engine runs with ``statement_timeout`` =
API_STATEMENT_TIMEOUT_MS (set when the connection is opened): a read of the
API or the dashboard, or an API-key lookup, that would take longer is
cancelled by PostgreSQL instead of holding a worker thread and a connection.
``statement_timeout_handler`` (registered on the app for OperationalError) answers
that cancellation 503 with a message naming the setting.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from psycopg2.errors import QueryCanceled
from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from config import Settings, get_settings
from storage.db import make_engine, make_session_factory

STATEMENT_TIMEOUT_SETTING = "API_STATEMENT_TIMEOUT_MS"
SERVICE_UNAVAILABLE = 503


def _set_statement_timeout(engine: Engine, timeout_ms: int) -> None:
    """Every new connection of ``engine`` gets ``statement_timeout`` (a bound parameter, never text)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SELECT set_config('statement_timeout', %s, false)", (f"{timeout_ms}ms",))
        dbapi_connection.commit()  # psycopg2 opened a transaction for the SELECT; the setting is session-wide


def open_database(app: FastAPI, settings: Settings) -> None:
    """The process's one engine, in ``app.state``: called from the lifespan, i.e. in each
    uvicorn worker after it forked. Every route reaches it through ``sessions`` or ``web_engine``."""
    engine = make_engine(settings)
    _set_statement_timeout(engine, settings.api_statement_timeout_ms)
    app.state.statement_timeout_ms = settings.api_statement_timeout_ms
    app.state.engine = engine
    app.state.sessions = make_session_factory(engine)


def close_database(app: FastAPI) -> None:
    """Called when the lifespan ends: closes the pooled connections."""
    app.state.engine.dispose()


def sessions(request: Request) -> sessionmaker[Session]:
    """The web process's sessions (bound to ``web_engine``)."""
    factory: sessionmaker[Session] = request.app.state.sessions
    return factory


def web_engine(request: Request) -> Engine:
    """The web process's engine (statement timeout applied), for reads that need a Connection."""
    engine: Engine = request.app.state.engine
    return engine


def timed_out(exc: BaseException) -> bool:
    """Whether a database error is PostgreSQL cancelling a statement (statement_timeout)."""
    return isinstance(exc, OperationalError) and isinstance(exc.orig, QueryCanceled)


def timeout_message(timeout_ms: int) -> str:
    return (
        f"the query took longer than {STATEMENT_TIMEOUT_SETTING} ({timeout_ms:,} ms) and was cancelled; "
        "narrow the range (or ask for one feature) and try again"
    )


async def statement_timeout_handler(request: Request, exc: Exception) -> JSONResponse:
    """Registered for OperationalError on the app: a statement the timeout cancelled is a 503
    naming the setting (not a 500); any other database error is raised on, to the 500 handler."""
    if not timed_out(exc):
        raise exc
    timeout_ms = getattr(request.app.state, "statement_timeout_ms", get_settings().api_statement_timeout_ms)
    return JSONResponse({"detail": timeout_message(timeout_ms)}, status_code=SERVICE_UNAVAILABLE)
