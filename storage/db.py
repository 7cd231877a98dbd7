"""Engine and session factories. Nothing connects until first use."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from config import Settings

POOL_SIZE = 2  # one worker process writes one batch at a time
POOL_RECYCLE_S = 1800
# psycopg2 accepts positional %s as well as its default %(name)s. A 1,000-row
# bulk INSERT binds 13,000 parameters on the client, and positional binding
# spares a dict lookup and a long name per parameter: about 40% less worker
# CPU per row with the bulk writer (bench/results/profile.md).
PARAMSTYLE = "format"


def make_engine(settings: Settings) -> Engine:
    return create_engine(
        settings.database_url,
        pool_size=POOL_SIZE,
        pool_pre_ping=True,  # a restarted database must not fail the first batch after it
        pool_recycle=POOL_RECYCLE_S,
        paramstyle=PARAMSTYLE,
    )


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def owner_url(settings: Settings) -> str:
    """The URL of the tables' owner: DATABASE_OWNER_URL, else DATABASE_URL.

    Only migrations and partition retention use it (storage.roles): every
    other path runs as the process's own role.
    """
    return settings.database_owner_url or settings.database_url


def make_owner_engine(settings: Settings) -> Engine:
    """An engine connected as the owner (``owner_url``); small, it runs maintenance only."""
    return create_engine(owner_url(settings), pool_size=1, pool_pre_ping=True, pool_recycle=POOL_RECYCLE_S)
