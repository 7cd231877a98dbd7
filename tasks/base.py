"""Task base class handing each task its worker process's database engine."""

from __future__ import annotations

from typing import Any

from celery import Task
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from tasks import resources


class DatabaseTask(Task[..., Any]):
    """The process's engines (tasks.resources), shared by every task and the consumer."""

    abstract = True

    @property
    def engine(self) -> Engine:
        return resources.engine()

    @property
    def session_factory(self) -> sessionmaker[Session]:
        return resources.session_factory()

    @property
    def owner_engine(self) -> Engine:
        """As the tables' owner (DATABASE_OWNER_URL, else DATABASE_URL): partition retention only."""
        return resources.owner_engine()
