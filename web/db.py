"""The web process's database access: one engine per process, made at startup."""

from __future__ import annotations

from fastapi import FastAPI, Request
from sqlalchemy.orm import Session, sessionmaker

from config import get_settings
from storage.db import make_engine, make_session_factory


def open_database(app: FastAPI) -> None:
    """Called from the lifespan, i.e. in each uvicorn worker after it forked."""
    app.state.sessions = make_session_factory(make_engine(get_settings()))


def close_database(app: FastAPI) -> None:
    app.state.sessions.kw["bind"].dispose()


def sessions(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessions
