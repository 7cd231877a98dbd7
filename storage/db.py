"""Engine and session factories. Nothing connects until first use."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from config import Settings

POOL_SIZE = 2  # one worker process writes one batch at a time
POOL_RECYCLE_S = 1800


def make_engine(settings: Settings) -> Engine:
    return create_engine(
        settings.database_url,
        pool_size=POOL_SIZE,
        pool_pre_ping=True,  # a restarted database must not fail the first batch after it
        pool_recycle=POOL_RECYCLE_S,
    )


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)
