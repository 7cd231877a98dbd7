"""The ingest consumers as subprocesses: the Celery worker and the aggregator.

``celery_worker(...)`` starts ``celery -A tasks.app worker`` for one broker and
one queue, waits until the worker logs that it is ready, and on exit stops it
(warm shutdown, then SIGKILL of the whole group). ``aggregator(...)`` does the
same for ``python -m tasks.aggregator``. Both log to a file and name their
PostgreSQL connections (``application_name``) so a caller can find them in
``pg_stat_activity``.
"""

from __future__ import annotations

import ast
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from devtools.processes import ManagedProcess, child_env, group_members

SUCCEEDED_RE = re.compile(r"Task ingest\.write_batch\[[^\]]+\] succeeded in [0-9.]+s: (\{.*\})")
RESULT_KEYS = ("stored", "duplicates", "dead_lettered")
# The Procfile's ingest worker: one process, a pool of threads (WORKER_POOL).
PROCFILE_POOL = "threads"
WORKER_READY_TIMEOUT_S = 30.0
WORKER_STOP_TIMEOUT_S = 10.0
AGGREGATOR_READY_TIMEOUT_S = 30.0
AGGREGATOR_STOP_TIMEOUT_S = 15.0
# Database errors: the aggregator retries within a second (a caller's env may override it).
AGGREGATOR_FAST_RETRY_ENV = {"INGEST_RETRY_MAX_S": "1"}


def worker_env(broker_url: str, queue: str, app_name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment pointed at ``broker_url`` and ``queue``, with DATABASE_URL's
    connections named ``app_name``; ``extra`` last."""
    env = child_env()
    url = make_url(env["DATABASE_URL"]).update_query_dict({"application_name": app_name})
    env.update(
        {
            "CELERY_BROKER_URL": broker_url,
            "INGEST_QUEUE": queue,
            "DATABASE_URL": url.render_as_string(hide_password=False),
        }
    )
    env.update(extra or {})
    return env


class LoggedProcess(ManagedProcess):
    """A managed subprocess with the application_name of its PostgreSQL connections."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, *, env: dict[str, str], app_name: str) -> None:
        super().__init__(name, cmd, log_path, env=env)
        self.app_name = app_name


class Worker(LoggedProcess):
    """A ``celery worker`` subprocess; its ingest results read from its log."""

    def __init__(self, cmd: list[str], log_path: Path, *, env: dict[str, str], nodename: str, app_name: str) -> None:
        super().__init__(f"worker {nodename}", cmd, log_path, env=env, app_name=app_name)
        self.nodename = nodename

    def pool_pids(self) -> list[int]:
        """The prefork pool children of the main worker process."""
        return [pid for pid, ppid in group_members(self.pid) if ppid == self.pid]

    def results(self) -> list[dict[str, Any]]:
        """Return values of the ingest tasks this worker completed, in log order."""
        results = []
        for match in SUCCEEDED_RE.finditer(self.log()):
            try:
                result = ast.literal_eval(match.group(1))
            except (ValueError, SyntaxError):  # a value without a literal repr: the counts suffice
                result = {
                    key: int(found.group(1))
                    for key in RESULT_KEYS
                    if (found := re.search(rf"'{key}': (\d+)", match.group(1)))
                }
            results.append(result)
        return results

    def wait_started(self, timeout: float) -> None:
        """Until the worker logs ``<nodename>@<host> ready.``."""
        self.wait_for_log(re.compile(rf"{re.escape(self.nodename)}@\S+ ready\."), timeout)


@contextmanager
def celery_worker(
    broker_url: str,
    queue: str,
    *,
    log_dir: Path,
    concurrency: int = 1,
    pool: str = PROCFILE_POOL,
    env: dict[str, str] | None = None,
    ready_timeout: float = WORKER_READY_TIMEOUT_S,
    stop_timeout: float = WORKER_STOP_TIMEOUT_S,
    wrap: Callable[[list[str]], list[str]] | None = None,
) -> Iterator[Worker]:
    """A running ``celery -A tasks.app worker -Q queue``; stopped (group killed) on exit.

    ``stop_timeout`` bounds the warm shutdown at exit. An idle worker on
    RabbitMQ takes about 5 s to notice SIGTERM (its event loop is asleep in
    epoll), so a caller that has checked everything may pass a short one.
    ``wrap`` rewrites the command line (e.g. to run it in a network namespace).
    """
    tag = uuid.uuid4().hex[:8]
    nodename = f"test-{tag}"
    app_name = f"worker-{tag}"
    cmd = [
        sys.executable, "-m", "celery", "-A", "tasks.app", "worker",
        "-Q", queue,
        "-n", f"{nodename}@%h",
        "-c", str(concurrency),
        "-P", pool,
        "-l", "INFO",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    worker = Worker(wrap(cmd) if wrap else cmd, Path(log_dir) / f"{nodename}.log",
                    env=worker_env(broker_url, queue, app_name, env), nodename=nodename, app_name=app_name)  # fmt: skip
    worker.start()
    try:
        worker.wait_started(ready_timeout)
        yield worker
    finally:
        worker.stop(stop_timeout)


def describe(worker: Worker, **extra: Any) -> str:
    """Context for an assertion message: worker state and the end of its log."""
    return worker.describe(**extra)


# --- the aggregator ------------------------------------------------------------------


@dataclass
class Flush:
    messages: int
    events: int
    stored: int
    duplicates: int
    dead_lettered: int


class Aggregator(LoggedProcess):
    """A ``python -m tasks.aggregator`` subprocess; its flushes read from its log."""

    def flushes(self) -> list[Flush]:
        from tasks.aggregator import COMMITTED_LOG

        flush_re = re.compile(
            re.escape(COMMITTED_LOG)
            + r": messages=(\d+) events=(\d+) stored=(\d+) duplicates=(\d+) dead_lettered=(\d+)"
        )
        return [Flush(*map(int, m.groups())) for m in flush_re.finditer(self.log())]

    def processed(self) -> int:
        return sum(f.stored + f.duplicates + f.dead_lettered for f in self.flushes())

    def stop(self, timeout: float = AGGREGATOR_STOP_TIMEOUT_S) -> int | None:
        """Warm stop (SIGTERM); SIGKILL of the group if it takes longer than ``timeout``.
        Returns the exit status of the warm stop (None if it had to be killed)."""
        return super().stop(timeout)


@contextmanager
def aggregator(broker_url: str, queue: str, log_dir: Path, env: dict[str, str] | None = None) -> Iterator[Aggregator]:
    """A running ``python -m tasks.aggregator`` on ``queue``, ready on its log line; stopped on exit."""
    from tasks.aggregator import READY_LOG

    tag = uuid.uuid4().hex[:8]
    app_name = f"aggregator-{tag}"
    process = Aggregator(app_name, [sys.executable, "-m", "tasks.aggregator"], Path(log_dir) / f"{app_name}.log",
                         env=worker_env(broker_url, queue, app_name, {**AGGREGATOR_FAST_RETRY_ENV, **(env or {})}),
                         app_name=app_name)  # fmt: skip
    process.start()
    try:
        process.wait_for_log(READY_LOG, AGGREGATOR_READY_TIMEOUT_S)
        yield process
    finally:
        process.stop()
