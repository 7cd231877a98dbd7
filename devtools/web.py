"""The web app (uvicorn) and Flower as subprocesses, for the tests that talk HTTP.

Each runs on a spare port in a process group of its own (devtools.processes),
inherits this process's environment (DATABASE_URL, the private INGEST_QUEUE,
...) plus what the caller adds, logs to a file under ``log_dir``, is ready once
an HTTP probe answers 200, and is stopped (SIGTERM, then SIGKILL of the group)
on exit.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devtools.processes import ManagedProcess, child_env, spare_port

START_TIMEOUT_S = 30.0
READY_POLL_S = 0.2


class Server(ManagedProcess):
    """A started HTTP server subprocess and the URL where it listens."""

    def __init__(self, name: str, cmd: list[str], port: int, log_path: Path, env: dict[str, str]) -> None:
        super().__init__(name, cmd, log_path, env=env)
        self.url = f"http://127.0.0.1:{port}"


@contextmanager
def serve(
    name: str, cmd: list[str], port: int, probe_path: str, log_dir: Path, env: dict[str, str] | None,
    auth: tuple[str, str] | None = None,
) -> Iterator[Server]:  # fmt: skip
    """Run ``cmd`` (which listens on ``port``) until the context exits; ready once ``probe_path`` answers 200."""
    server = Server(name, cmd, port, Path(log_dir) / f"{name}-{port}.log", child_env(env)).start()
    try:
        server.wait_for_http(server.url + probe_path, START_TIMEOUT_S, auth=auth, interval=READY_POLL_S)
        yield server
    finally:
        server.stop()


@contextmanager
def uvicorn_server(log_dir: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    """``uvicorn web.app:app`` on a spare port, ready once ``/health`` answers."""
    port = spare_port()
    cmd = [sys.executable, "-m", "uvicorn", "web.app:app", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning"]  # fmt: skip
    with serve("uvicorn", cmd, port, "/health", log_dir, env) as server:
        yield server


@contextmanager
def flower_server(
    log_dir: Path, basic_auth: tuple[str, str], broker_url: str, broker_api: str, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """``celery flower`` on a spare port with basic auth, ready once its API answers an authorized request."""
    port = spare_port()
    cmd = [sys.executable, "-m", "celery", "-A", "tasks.app", "flower", "--address=127.0.0.1", f"--port={port}",
           f"--basic-auth={basic_auth[0]}:{basic_auth[1]}", f"--broker_api={broker_api}"]  # fmt: skip
    with serve("flower", cmd, port, "/api/workers", log_dir, {"CELERY_BROKER_URL": broker_url, **(env or {})},
               auth=basic_auth) as server:  # fmt: skip
        yield server
