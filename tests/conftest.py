"""Shared fixtures: a real PostgreSQL database, migrated with Alembic.

Tests run against a database of their own (``analytics_test`` on the server
named by DATABASE_URL), created fresh for each session, and publish to a queue
of their own, so a developer's running worker never takes their messages.
The environment is set before anything reads Settings, and worker
subprocesses inherit it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from config.settings import Settings

TEST_DATABASE = os.environ.get("TEST_DATABASE_NAME", "analytics_test")
UNLIMITED_FOR_TESTS = "1000000/second"


def pytest_configure(config: pytest.Config) -> None:
    base = make_url(os.environ.get("DATABASE_URL", Settings.model_fields["database_url"].default))
    os.environ["ANALYTICS_ADMIN_DATABASE_URL"] = base.set(database="postgres").render_as_string(
        hide_password=False
    )
    os.environ["DATABASE_URL"] = base.set(database=TEST_DATABASE).render_as_string(hide_password=False)
    os.environ.setdefault("INGEST_QUEUE", f"ingest-test-{uuid.uuid4().hex[:8]}")
    # Tests send requests as fast as they can with one key; the rate limits have tests of their own.
    for setting in ("RATE_LIMIT_INGEST", "RATE_LIMIT_READ"):
        os.environ.setdefault(setting, UNLIMITED_FOR_TESTS)


def _recreate_database(admin_url: str, name: str) -> None:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


@pytest.fixture(scope="session")
def database_url() -> str:
    """URL of a freshly created and migrated test database."""
    from alembic import command
    from alembic.config import Config

    from config import get_settings

    url = os.environ["DATABASE_URL"]
    _recreate_database(os.environ["ANALYTICS_ADMIN_DATABASE_URL"], make_url(url).database or "")
    get_settings.cache_clear()
    command.upgrade(Config(os.path.join(os.path.dirname(__file__), "..", "alembic.ini")), "head")
    return url


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def clean_tables(engine: Engine) -> None:
    """Empty the event, dead-letter and rollup tables before a test that needs them empty."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE analytics_events, dead_letters, rollup_pending_batches,"
                " rollup_hourly, rollup_daily, rollup_daily_users"
            )
        )
