"""Flower, as the Procfile runs it: basic auth, RabbitMQ queue lengths from the management API.

A real worker consumes a private ingest queue; Flower (a subprocess on a
spare port) must list it, show the queue's backlog as the broker counts it,
and count the ingest tasks the worker ran, as the worker's own log has them.
The backlog is made by asking the worker, through Flower's API, to stop
consuming the queue while the producer publishes, then to consume it again.
Without credentials, or with wrong ones, Flower answers 401.

Flower runs from the Procfile's own ``flower:`` line, with its credentials and
the broker API URL in FLOWER_* environment variables: its command line, which
any local user can read (``ps``, /proc/<pid>/cmdline), holds neither.
"""

from __future__ import annotations

import os
import secrets
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from kombu import Connection
from sqlalchemy import Engine, text

from config import Settings
from devtools.processes import REPO_ROOT, spare_port, wait_for
from devtools.web import Server, serve
from devtools.workers import Worker, celery_worker, describe
from producer import Tracker
from tasks.broker import dead_queue_name
from tasks.names import INGEST_WRITE_BATCH

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
BROKER_API = "http://guest:guest@127.0.0.1:15672/api/"
FLOWER_USER = "ops"
INGEST_TASK = INGEST_WRITE_BATCH
EVENTS_PER_MESSAGE = 10
MESSAGES = 6
# RabbitMQ's management API refreshes queue figures every 5 s (collect_statistics_interval).
QUEUE_STATS_TIMEOUT_S = 30.0
TASKS_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 10.0


def _broker_count(queue: str) -> int:
    """The queue's ready messages as RabbitMQ itself counts them (passive declare)."""
    with Connection(RABBITMQ) as conn:
        return conn.default_channel.queue_declare(queue, passive=True).message_count


def procfile_command(name: str) -> str:
    """The shell command of the Procfile's process ``name``."""
    for line in (REPO_ROOT / "Procfile").read_text().splitlines():
        process, _, command = line.partition(":")
        if process.strip() == name:
            return command.strip()
    raise AssertionError(f"no {name}: line in the Procfile")


@contextmanager
def procfile_flower(log_dir: Path, auth: tuple[str, str], broker_url: str, queue: str) -> Iterator[Server]:
    """The Procfile's ``flower:`` line run by sh as honcho does, secrets in its environment only."""
    port = spare_port()
    env = {"FLOWER_PORT": str(port), "FLOWER_BASIC_AUTH": f"{auth[0]}:{auth[1]}", "FLOWER_BROKER_API": BROKER_API,
           "CELERY_BROKER_URL": broker_url, "INGEST_QUEUE": queue,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    with serve("flower", ["sh", "-c", procfile_command("flower")], port, "/api/workers", log_dir, env,
                auth=auth) as server:  # fmt: skip
        yield server


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Server, Worker, str, tuple[str, str]]]:
    """A worker on a private queue and Flower watching it, with a password made for this test."""
    queue = f"ingest-flower-{uuid.uuid4().hex[:8]}"
    auth = (FLOWER_USER, secrets.token_urlsafe(16))
    try:
        with celery_worker(RABBITMQ, queue, log_dir=tmp_path, stop_timeout=2) as worker, \
                procfile_flower(tmp_path, auth, RABBITMQ, queue) as flower:  # fmt: skip
            yield flower, worker, queue, auth
    finally:
        with Connection(RABBITMQ) as conn:
            conn.default_channel.queue_delete(queue)
            conn.default_channel.queue_delete(dead_queue_name(queue))  # the ingest queue's dead-letter queue


def _get(flower: Server, path: str, auth: tuple[str, str], **params: Any) -> Any:
    response = httpx.get(flower.url + path, params=params, auth=auth, timeout=HTTP_TIMEOUT_S)
    assert response.status_code == httpx.codes.OK, (path, response.status_code, response.text[:500])
    return response.json()


def _control(flower: Server, action: str, worker_name: str, queue: str, auth: tuple[str, str]) -> None:
    response = httpx.post(f"{flower.url}/api/worker/queue/{action}/{worker_name}", params={"queue": queue},
                          auth=auth, timeout=HTTP_TIMEOUT_S)  # fmt: skip
    assert response.status_code == httpx.codes.OK, (action, response.text)


def _queue_length(flower: Server, queue: str, auth: tuple[str, str]) -> int | None:
    lengths = _get(flower, "/api/queues/length", auth)["active_queues"]
    # A queue the management API has not sampled yet has no "messages" figure.
    return next((item.get("messages") for item in lengths if item["name"] == queue), None)


def test_flower_shows_the_worker_its_queue_and_the_tasks_it_ran(
    running: tuple[Server, Worker, str, tuple[str, str]], engine: Engine, tmp_path: Path, database_url: str
) -> None:
    flower, worker, queue, auth = running

    # The worker, by name, consuming the private queue.
    workers = _get(flower, "/api/workers", auth, refresh=1)
    name = next((n for n in workers if n.startswith(worker.nodename + "@")), None)
    assert name is not None, sorted(workers)
    assert queue in [q["name"] for q in workers[name]["active_queues"]]

    # A backlog: the worker stops consuming (through Flower, which answers once the worker
    # confirmed), the producer publishes. Flower's queue list comes from the workers' queues as it
    # last inspected them (above), so no refresh of /api/workers until the worker consumes again.
    _control(flower, "cancel-consumer", name, queue, auth)
    tenant = f"flower-{uuid.uuid4().hex[:8]}"
    settings = Settings(celery_broker_url=RABBITMQ, ingest_queue=queue, database_url=database_url,
                        producer_batch_size=EVENTS_PER_MESSAGE, producer_spool_dir=str(tmp_path / "spool"))  # fmt: skip
    tracker = Tracker(settings)
    try:
        for _message in range(MESSAGES):
            for i in range(EVENTS_PER_MESSAGE):
                assert tracker.track(tenant_id=tenant, feature_name="summarization", user_id=f"u{i}")
            assert tracker.flush(10), "the producer could not publish"
    finally:
        tracker.close(5)
    backlog = _broker_count(queue)
    assert backlog >= MESSAGES  # at least one message per flush
    wait_for(lambda: _queue_length(flower, queue, auth) == backlog, QUEUE_STATS_TIMEOUT_S,
             lambda: f"Flower shows {_queue_length(flower, queue, auth)} messages in {queue}, RabbitMQ {backlog}")  # fmt: skip

    # The worker consumes again: every message becomes one successful ingest task.
    _control(flower, "add-consumer", name, queue, auth)

    def stored() -> int:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM analytics_events WHERE tenant_id = :t"),
                                {"t": tenant}).scalar_one()  # fmt: skip

    events = MESSAGES * EVENTS_PER_MESSAGE
    wait_for(lambda: stored() == events and len(worker.results()) == backlog, TASKS_TIMEOUT_S,
             lambda: describe(worker, stored=stored(), events=events))  # fmt: skip

    # Flower counted them: from the task events, and in the worker's own statistics.
    def succeeded() -> list[dict[str, Any]]:
        tasks = _get(flower, "/api/tasks", auth, taskname=INGEST_TASK, state="SUCCESS", workername=name)
        return list(tasks.values())

    wait_for(lambda: len(succeeded()) == backlog, TASKS_TIMEOUT_S,
             lambda: f"Flower lists {len(succeeded())} succeeded {INGEST_TASK} tasks, the worker ran {backlog}")  # fmt: skip
    assert all(task["worker"] == name and task["runtime"] > 0 for task in succeeded())
    stats = _get(flower, "/api/workers", auth, refresh=1)[name]["stats"]
    assert stats["total"].get(INGEST_TASK) == backlog, stats["total"]
    # The workers page's own figures (its JSON form): the task-succeeded events counted for the worker.
    page = {row["hostname"]: row for row in _get(flower, "/workers", auth, json=1)["data"]}
    assert page[name]["task-succeeded"] == backlog, page[name]
    wait_for(lambda: _queue_length(flower, queue, auth) == 0, QUEUE_STATS_TIMEOUT_S, "the backlog never drained")


def test_flower_refuses_requests_without_credentials(running: tuple[Server, Worker, str, tuple[str, str]]) -> None:
    flower, _, _, (user, password) = running
    for path in ("/", "/workers?json=1", "/api/workers", "/api/tasks", "/api/queues/length"):
        anonymous = httpx.get(flower.url + path, timeout=HTTP_TIMEOUT_S)
        assert anonymous.status_code == httpx.codes.UNAUTHORIZED, (path, anonymous.status_code)
        if not path.startswith("/api/"):  # Flower 2.2's API answers 401 without the challenge
            assert anonymous.headers.get("www-authenticate", "").lower().startswith("basic"), path
        wrong = httpx.get(flower.url + path, auth=(user, password + "x"), timeout=HTTP_TIMEOUT_S)
        assert wrong.status_code == httpx.codes.UNAUTHORIZED, (path, wrong.status_code)


def test_flower_command_line_holds_no_credentials(running: tuple[Server, Worker, str, tuple[str, str]]) -> None:
    flower, _, _, (user, password) = running
    # sh exec'd Flower: this pid is Flower itself, whose command line anyone on the machine can read.
    cmdline = Path(f"/proc/{flower.proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert "flower" in cmdline, cmdline
    assert password not in cmdline and "basic-auth" not in cmdline, cmdline
    assert "guest:guest" not in cmdline and "broker_api" not in cmdline, cmdline
    # ... and the credentials from the environment are the ones Flower checks.
    assert httpx.get(flower.url + "/api/workers", auth=(user, password), timeout=HTTP_TIMEOUT_S).status_code == 200
