"""The CLI's database engines: one of each per invocation, disposed when the command ends.

Every command asks here instead of building its own engine: the first call
makes the engine from the invocation's settings and registers its disposal
on the root click context, so a command that reads twice (or a group that
runs several steps) shares one pool, and nothing is left open afterwards.
Nothing connects before the first query.
"""

from __future__ import annotations

from collections.abc import Callable

import click
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from config import Settings, get_settings
from storage.db import make_engine, make_owner_engine, make_session_factory

_ENGINE_KEY = "analytics.engine"
_OWNER_ENGINE_KEY = "analytics.owner_engine"


def _per_invocation(key: str, make: Callable[[Settings], Engine]) -> Engine:
    """The engine stored under ``key`` on the invocation's root context, made on first use."""
    root = click.get_current_context().find_root()
    engine: Engine | None = root.meta.get(key)
    if engine is None:
        engine = make(get_settings())
        root.meta[key] = engine
        root.call_on_close(engine.dispose)
    return engine


def engine() -> Engine:
    """The invocation's engine (DATABASE_URL)."""
    return _per_invocation(_ENGINE_KEY, make_engine)


def sessions() -> sessionmaker[Session]:
    """Sessions bound to the invocation's engine."""
    return make_session_factory(engine())


def owner_engine() -> Engine:
    """The invocation's engine as the tables' owner (DATABASE_OWNER_URL, else DATABASE_URL): retention only."""
    return _per_invocation(_OWNER_ENGINE_KEY, make_owner_engine)
