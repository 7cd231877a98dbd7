"""Real server subprocesses for the tests that talk HTTP: uvicorn (the web app) and Flower.

Each runs on a spare port in a process group of its own, inherits the test
session's environment (DATABASE_URL, the private INGEST_QUEUE, ...) plus
what the test adds, logs to a file under the test's directory, and is stopped
(SIGTERM, then SIGKILL of the group) on exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.servers import spare_port
from tests.workers import REPO_ROOT, wait_for

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 2.0


class Server:
    """A started subprocess, where it listens and where its output goes."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        self.proc = proc
        self.url = url
        self.log_path = log_path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(STOP_TIMEOUT_S)


def _responds(url: str, server: Server, auth: tuple[str, str] | None) -> bool:
    if server.proc.poll() is not None:
        raise AssertionError(f"{server.proc.args} exited with {server.proc.returncode}:\n{server.log_tail()}")
    try:
        return httpx.get(url, timeout=PROBE_TIMEOUT_S, auth=auth).status_code == httpx.codes.OK
    except httpx.HTTPError:
        return False


@contextmanager
def _serve(
    name: str, cmd: list[str], port: int, probe_path: str, log_dir: Path, env: dict[str, str] | None,
    auth: tuple[str, str] | None = None,
) -> Iterator[Server]:
    log_path = Path(log_dir) / f"{name}-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = Server(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_for(lambda: _responds(server.url + probe_path, server, auth), START_TIMEOUT_S,
                 lambda: f"{name} did not answer on port {port}:\n{server.log_tail()}", 0.2)  # fmt: skip
        yield server
    finally:
        server.stop()


@contextmanager
def uvicorn_server(log_dir: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    """``uvicorn web.app:app`` on a spare port, ready once ``/health`` answers."""
    port = spare_port()
    cmd = [sys.executable, "-m", "uvicorn", "web.app:app", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning"]  # fmt: skip
    with _serve("uvicorn", cmd, port, "/health", log_dir, env) as server:
        yield server


@contextmanager
def flower_server(
    log_dir: Path, basic_auth: tuple[str, str], broker_url: str, broker_api: str, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """``celery flower`` on a spare port with basic auth, ready once its API answers an authorized request."""
    port = spare_port()
    cmd = [sys.executable, "-m", "celery", "-A", "tasks.app", "flower", "--address=127.0.0.1", f"--port={port}",
           f"--basic-auth={basic_auth[0]}:{basic_auth[1]}", f"--broker_api={broker_api}"]  # fmt: skip
    with _serve("flower", cmd, port, "/api/workers", log_dir, {"CELERY_BROKER_URL": broker_url, **(env or {})},
                auth=basic_auth) as server:  # fmt: skip
        yield server
