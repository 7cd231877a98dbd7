"""Real Celery worker subprocesses for the end-to-end tests.

``celery_worker(...)`` starts ``celery -A tasks.app worker`` for one broker and
one queue in a process group of its own, waits until the worker logs that it
is ready, and on exit stops it (warm shutdown, then SIGKILL of the whole group)
so that neither the main process nor a pool child outlives the test.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parent.parent
SUCCEEDED_RE = re.compile(r"Task ingest\.write_batch\[[^\]]+\] succeeded in [0-9.]+s: (\{.*\})")
RESULT_KEYS = ("stored", "duplicates", "dead_lettered")

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, message: str | Callable[[], str], interval: float = 0.1) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:.0f}s: {text}")
        time.sleep(interval)


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    # comm may contain spaces and parentheses: the fields follow the last ')'.
    state, ppid, pgid = stat[stat.rindex(")") + 2 :].split()[:3]
    return state, int(ppid), int(pgid)


def _group_members(pgid: int) -> list[tuple[int, int]]:
    """(pid, ppid) of the live (non-zombie) processes of a process group."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            state, ppid, group = stat
            if group == pgid and state != "Z":
                members.append((int(entry), ppid))
    return members


class LoggedProcess:
    """A subprocess a test started, with its log file and the application_name
    of its PostgreSQL connections (pg_stat_activity)."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, app_name: str) -> None:
        self.proc = proc
        self.log_path = log_path
        self.app_name = app_name

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc.poll() is None


class Worker(LoggedProcess):
    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, nodename: str, app_name: str) -> None:
        super().__init__(proc, log_path, app_name)
        self.nodename = nodename

    def pool_pids(self) -> list[int]:
        """The prefork pool children of the main worker process."""
        return [pid for pid, ppid in _group_members(self.pid) if ppid == self.pid]

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

    def wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(
                    f"worker {self.nodename} exited with {self.proc.returncode} before it was ready:\n"
                    + self.log_tail()
                )
            return bool(
                re.search(rf"{re.escape(self.nodename)}@\S+ ready\.", self.log())
            )

        wait_for(ready, timeout, lambda: f"worker {self.nodename} not ready:\n{self.log_tail()}", 0.1)

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Signal the main process and every pool child at once."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 10.0) -> None:
        """Warm shutdown for up to ``timeout`` seconds, then SIGKILL whatever is
        left of the process group."""
        if self.alive():
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill_group(signal.SIGKILL)
        self.proc.wait(10)
        # Pool children are not ours to reap (their parent is the worker), but
        # they are in the worker's group: wait until the group is empty.
        wait_for(
            lambda: not _group_members(self.pid),
            10,
            f"processes of worker {self.nodename} still running after SIGKILL",
        )


def worker_env(broker_url: str, queue: str, app_name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    url = make_url(env["DATABASE_URL"]).update_query_dict({"application_name": app_name})
    env.update(
        {
            "CELERY_BROKER_URL": broker_url,
            "INGEST_QUEUE": queue,
            "DATABASE_URL": url.render_as_string(hide_password=False),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


# The Procfile's ingest worker: one process, a pool of threads (WORKER_POOL).
PROCFILE_POOL = "threads"


@contextmanager
def celery_worker(
    broker_url: str,
    queue: str,
    *,
    log_dir: Path,
    concurrency: int = 1,
    pool: str = PROCFILE_POOL,
    env: dict[str, str] | None = None,
    ready_timeout: float = 30.0,
    stop_timeout: float = 10.0,
) -> Iterator[Worker]:
    """A running ``celery -A tasks.app worker -Q queue``; stopped (group killed) on exit.

    ``stop_timeout`` bounds the warm shutdown at exit. An idle worker on
    RabbitMQ takes about 5 s to notice SIGTERM (its event loop is asleep in
    epoll), so a test that has checked everything may pass a short one.
    """
    tag = uuid.uuid4().hex[:8]
    nodename = f"test-{tag}"
    app_name = f"worker-{tag}"
    log_path = Path(log_dir) / f"{nodename}.log"
    cmd = [
        sys.executable, "-m", "celery", "-A", "tasks.app", "worker",
        "-Q", queue,
        "-n", f"{nodename}@%h",
        "-c", str(concurrency),
        "-P", pool,
        "-l", "INFO",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=worker_env(broker_url, queue, app_name, env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: killpg reaches the pool children
        )
    worker = Worker(proc, log_path, nodename, app_name)
    try:
        worker.wait_ready(ready_timeout)
        yield worker
    finally:
        worker.stop(stop_timeout)


def describe(worker: Worker, **extra: Any) -> str:
    """Context for an assertion message: worker state and the end of its log."""
    state = "running" if worker.alive() else f"exited ({worker.proc.returncode})"
    details = "".join(f"\n{key}: {value}" for key, value in extra.items())
    return f"worker {worker.nodename} {state}{details}\n--- log tail ---\n{worker.log_tail()}"
