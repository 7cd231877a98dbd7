"""Task base class giving each worker process its own database engine."""

from __future__ import annotations

from functools import cached_property

from celery import Task
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from config import get_settings
from storage.db import make_engine, make_owner_engine, make_session_factory


class DatabaseTask(Task):
    """Engine created on first use, i.e. in the pool child after the fork."""

    abstract = True

    @cached_property
    def engine(self) -> Engine:
        return make_engine(get_settings())

    @cached_property
    def session_factory(self) -> sessionmaker[Session]:
        return make_session_factory(self.engine)

    @cached_property
    def owner_engine(self) -> Engine:
        """As the tables' owner (DATABASE_OWNER_URL, else DATABASE_URL): partition retention only."""
        return make_owner_engine(get_settings())
