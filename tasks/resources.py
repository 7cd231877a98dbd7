"""The worker process's database engines: one of each per process, owned by its lifecycle.

Every task and the dead-lettering consumer take their engine and sessions
from here, so a worker process holds one pool (``DATABASE_URL``) and, only
when retention runs, one small owner pool (``DATABASE_OWNER_URL``), instead
of one per task class.

The Celery app (tasks.app) connects the lifecycle: ``open_engines`` at
``worker_init`` (the main process, which runs the consumer, and the tasks
too with the threads or solo pool); ``after_fork`` at
``worker_process_init`` (a prefork child: the engines it inherited get a
fresh pool, the parent's connections are left untouched, as SQLAlchemy
prescribes for a fork); ``close_engines`` at ``worker_process_shutdown``
(the child) and ``worker_shutdown`` (the main process). A task run outside a
worker (``task.apply()``, a script) opens them on first use. Making an
engine connects nothing: the first query does.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from config import Settings, get_settings
from storage.db import make_engine, make_owner_engine, make_session_factory


@dataclass(frozen=True)
class ProcessEngines:
    """The engines of one process, and the pid that made their pools."""

    engine: Engine
    owner_engine: Engine
    sessions: sessionmaker[Session]
    pid: int


_lock = threading.Lock()
_current: ProcessEngines | None = None


def open_engines(settings: Settings) -> ProcessEngines:
    """Make this process's engines from ``settings`` (idempotent: an open set is kept)."""
    global _current
    with _lock:
        if _current is None:
            engine = make_engine(settings)
            _current = ProcessEngines(
                engine=engine,
                owner_engine=make_owner_engine(settings),
                sessions=make_session_factory(engine),
                pid=os.getpid(),
            )
        return _current


def after_fork() -> None:
    """In a forked child: inherited engines start a pool of their own (the parent's stays its own).

    Nothing to do in the process that made them (the solo pool sends the same
    signal without forking) or when nothing was inherited.
    """
    global _current
    with _lock:
        inherited = _current
        if inherited is None or inherited.pid == os.getpid():
            return
        for engine in (inherited.engine, inherited.owner_engine):
            engine.dispose(close=False)  # drops the parent's pooled connections without closing them
        _current = ProcessEngines(inherited.engine, inherited.owner_engine, inherited.sessions, os.getpid())


def close_engines() -> None:
    """Close this process's pooled connections; a later use opens the engines again."""
    global _current
    with _lock:
        closing, _current = _current, None
    if closing is not None and closing.pid == os.getpid():
        closing.engine.dispose()
        closing.owner_engine.dispose()


def current() -> ProcessEngines:
    """This process's engines, opened from the process's settings if the lifecycle has not yet
    (and given their own pool if a fork happened without ``worker_process_init``)."""
    found = _current
    if found is None:
        return open_engines(get_settings())
    if found.pid != os.getpid():
        after_fork()
        return current()
    return found


def engine() -> Engine:
    return current().engine


def session_factory() -> sessionmaker[Session]:
    return current().sessions


def owner_engine() -> Engine:
    """As the tables' owner (DATABASE_OWNER_URL, else DATABASE_URL): partition retention only."""
    return current().owner_engine
