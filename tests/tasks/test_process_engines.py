"""One database engine per process (tasks.resources, cli.engines).

A Celery worker process holds one pool, whatever tasks it runs and whether
its consumer dead-letters a message: counted in ``pg_stat_activity`` by the
worker's ``application_name`` after it ran every kind of task one after the
other (one connection per process that touched the database). A forked
child gets a pool of its own and never closes its parent's connections. A CLI
command leaves no connection open behind it.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from kombu import Connection
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from cli.main import cli
from config import get_settings
from devtools.messages import make_message, wire_rows
from devtools.processes import wait_for
from devtools.workers import Worker, celery_worker, describe
from tasks import resources
from tasks.names import INGEST_WRITE_BATCH, PARTITIONS_ENSURE_AHEAD, ROLLUPS_RUN

SETTLE_TIMEOUT_S = 30
# A worker process that touched the database holds one pooled connection: the
# threads pool runs the consumer and the tasks in one process, prefork runs the
# consumer in the main process and the tasks in the child (concurrency 1).
CONNECTIONS_PER_POOL = {"threads": 1, "prefork": 2}


BACKEND_EXIT_TIMEOUT_S = 5.0


def backends(engine: Engine, application_name: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :app"),
                {"app": application_name},
            ).scalar_one()
        )


def succeeded(worker: Worker, task: str) -> bool:
    return re.search(rf"Task {re.escape(task)}\[[^\]]+\] succeeded", worker.log()) is not None


def dead_lettered(engine: Engine, marker: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM dead_letters WHERE payload LIKE '%' || :m || '%'"), {"m": marker}
            ).scalar_one()
        )


@pytest.fixture
def second_queue(broker_url: str, queue: str) -> Iterator[str]:
    """A queue beside the ingest queue, for tasks that are not ingest (the ingest queue refuses them)."""
    name = f"{queue}-other"
    yield name
    with Connection(broker_url) as conn:
        conn.default_channel.queue_delete(name)


@pytest.mark.brokers("rabbitmq")
@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_worker_process_holds_one_pool_for_every_task_and_its_consumer(
    engine: Engine, broker_url: str, queue: str, second_queue: str, tenant: str, tmp_path: Path, pool: str
) -> None:
    from tasks.app import app

    def both_queues(cmd: list[str]) -> list[str]:
        return [f"{queue},{second_queue}" if arg == queue else arg for arg in cmd]

    marker = f"not-ingest-{uuid.uuid4().hex}"
    with celery_worker(broker_url, queue, log_dir=tmp_path, pool=pool, wrap=both_queues, stop_timeout=1.0) as worker:
        with Connection(broker_url) as conn:
            app.send_task(INGEST_WRITE_BATCH, args=[make_message(wire_rows(tenant, 3))], queue=queue,
                          connection=conn)  # fmt: skip
            wait_for(lambda: len(worker.results()) == 1, SETTLE_TIMEOUT_S, lambda: describe(worker))
            # On the ingest queue, another task is dead-lettered by the consumer (tasks.admission).
            app.send_task(ROLLUPS_RUN, kwargs={"marker": marker}, queue=queue, connection=conn)
            wait_for(lambda: dead_lettered(engine, marker) == 1, SETTLE_TIMEOUT_S, lambda: describe(worker))
            for task in (ROLLUPS_RUN, PARTITIONS_ENSURE_AHEAD):
                app.send_task(task, queue=second_queue, connection=conn)
                wait_for(lambda task=task: succeeded(worker, task), SETTLE_TIMEOUT_S, lambda: describe(worker))
        assert worker.results() == [{"stored": 3, "duplicates": 0, "dead_lettered": 0}]
        assert backends(engine, worker.app_name) == CONNECTIONS_PER_POOL[pool], describe(worker)


def test_a_forked_child_gets_its_own_pool_and_leaves_the_parents_connection_alone(database_url: str) -> None:
    resources.close_engines()
    opened = resources.open_engines(get_settings())
    try:
        with opened.engine.connect() as conn:  # pooled afterwards: the child inherits it
            parent_backend = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports through its exit code
            code = 1
            try:
                resources.after_fork()  # as worker_process_init does
                with resources.engine().connect() as conn:
                    code = 0 if conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != parent_backend else 2
                resources.close_engines()
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the child must use a connection of its own"
        with opened.engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == parent_backend
    finally:
        resources.close_engines()


@pytest.mark.parametrize("command", [["dead-letters", "list"], ["api-keys", "list"], ["partitions", "list"]])
def test_a_cli_command_leaves_no_connection_open(
    engine: Engine, database_url: str, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    app_name = f"cli-{uuid.uuid4().hex[:8]}"
    url = make_url(database_url).update_query_dict({"application_name": app_name})
    monkeypatch.setenv("DATABASE_URL", url.render_as_string(hide_password=False))
    get_settings.cache_clear()  # the CLI reads DATABASE_URL from the environment
    try:
        result = CliRunner().invoke(cli, command)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    # A closed connection's backend leaves pg_stat_activity when it exits, a moment later on a busy machine;
    # one the CLI kept open (an engine never disposed) stays for as long as this process lives.
    wait_for(lambda: backends(engine, app_name) == 0, BACKEND_EXIT_TIMEOUT_S,
             lambda: f"{backends(engine, app_name)} connection(s) of {command} still open")  # fmt: skip
