"""Shared fixtures: a real PostgreSQL database migrated with Alembic, the brokers, a private Redis.

Tests run against a database of their own (``analytics_test`` on the server
named by DATABASE_URL), created fresh for each session, and publish to a queue
of their own, so a developer's running worker never takes their messages.
The environment is set before anything reads Settings, and worker
subprocesses inherit it.

A test that takes ``broker_url`` runs once per broker (RabbitMQ and Redis);
``@pytest.mark.brokers("rabbitmq")`` narrows it. A module may set
``REDIS_URL`` to use a Redis database number of its own (kombu keeps its
unacknowledged-message index per database). Helpers that are not fixtures
live in the ``devtools`` package, never in a test module.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from kombu import Connection
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from config.settings import Settings
from devtools.servers import PrivateRedis

TEST_DATABASE = os.environ.get("TEST_DATABASE_NAME", "analytics_test")
UNLIMITED_FOR_TESTS = "1000000/second"
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
# A database number of its own: Redis keeps kombu's unacked index per database,
# and the test workers restore unacked messages after a short visibility timeout.
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/12")
BROKER_KINDS = ("rabbitmq", "redis")
BROKER_CHECK_TIMEOUT_S = 3


def pytest_configure(config: pytest.Config) -> None:
    base = make_url(os.environ.get("DATABASE_URL", Settings.model_fields["database_url"].default))
    os.environ["ANALYTICS_ADMIN_DATABASE_URL"] = base.set(database="postgres").render_as_string(hide_password=False)
    os.environ["DATABASE_URL"] = base.set(database=TEST_DATABASE).render_as_string(hide_password=False)
    os.environ.setdefault("INGEST_QUEUE", f"ingest-test-{uuid.uuid4().hex[:8]}")
    # Tests send requests as fast as they can with one key; the rate limits have tests of their own.
    for setting in ("RATE_LIMIT_INGEST", "RATE_LIMIT_READ"):
        os.environ.setdefault(setting, UNLIMITED_FOR_TESTS)
    config.addinivalue_line("markers", "brokers(*kinds): run a test taking broker_url on these brokers only")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``broker_url``: one run per broker kind, all of BROKER_KINDS unless ``@pytest.mark.brokers`` names fewer."""
    if "broker_url" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("brokers")
        kinds = list(marker.args) if marker else list(BROKER_KINDS)
        metafunc.parametrize("broker_url", kinds, indirect=True)


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


# --- brokers ------------------------------------------------------------------------


@pytest.fixture
def broker_url(request: pytest.FixtureRequest) -> str:
    """URL of the machine's broker of the parametrized kind (see pytest_generate_tests); fails if unreachable."""
    kind = request.param
    url = RABBITMQ_URL if kind == "rabbitmq" else getattr(request.module, "REDIS_URL", REDIS_URL)
    try:
        with Connection(url, connect_timeout=BROKER_CHECK_TIMEOUT_S) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:  # noqa: BLE001 - any failure to connect is the same finding
        pytest.fail(f"{kind} broker at {url} is not reachable: {exc}")
    return url


@pytest.fixture
def queue(broker_url: str) -> Iterator[str]:
    """An ingest queue of this test's own; deleted afterwards with its dead-letter queue."""
    from tasks.broker import dead_queue_name  # imported late: tasks reads Settings, set up in pytest_configure

    name = f"ingest-test-{uuid.uuid4().hex[:10]}"
    yield name
    # Tidy the shared broker: the queue is unique to this test.
    if broker_url.startswith("redis"):
        client = redis.Redis.from_url(broker_url)
        # Messages a killed worker left unacknowledged would otherwise be
        # restored to the deleted queue by some later worker's sweep.
        for tag, entry in client.hscan_iter("unacked"):
            try:
                routing_key = json.loads(entry)[2]
            except (ValueError, IndexError, TypeError):
                continue
            if routing_key == name:
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
        keys = list(client.scan_iter(match=f"*{name}*"))  # the queue, its .dead list, kombu's bindings
        if keys:
            client.delete(*keys)
        client.close()
    else:
        with Connection(broker_url) as conn:
            conn.default_channel.queue_delete(name)
            conn.default_channel.queue_delete(dead_queue_name(name))


@pytest.fixture
def tenant() -> str:
    """A tenant id of this test's own: its rows are the only ones a test counts."""
    return f"tenant-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private redis-server on a spare port, not started yet (a test may begin with the broker down);
    stopped at teardown."""
    server = PrivateRedis(tmp_path / "redis")
    yield server
    server.stop()


# --- web ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(database_url: str) -> Iterator[TestClient]:
    """The web app in process, its lifespan run once per module, on the test database."""
    from web.app import app

    with TestClient(app) as test_client:
        yield test_client
