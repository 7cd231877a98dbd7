"""The stack ``bench.abuse`` attacks: the web process as the Procfile runs it, its memory, raw HTTP.

The web process is the Procfile's ``web:`` line run by ``sh`` (as honcho runs
it) on a spare port, in a process group of its own that ``stop`` kills whole.
Its RSS is read from ``/proc`` for the processes that serve requests: the
uvicorn workers (children of the supervisor), or the supervisor itself when it
serves alone. Over-limit bodies are sent on a raw socket, because the point is
what the server does *before* the body is complete: an HTTP client would
insist on sending it all, or stop reading at the first reset.
"""

from __future__ import annotations

import os
import re
import select
import socket
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from bench import harness
from bench.abuse_roles import RunRoles
from devtools.processes import REPO_ROOT, ManagedProcess, child_env, children, http_ok, spare_port

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
READY_POLL_S = 0.2
RSS_POLL_S = 0.05
MB = 1024 * 1024
SOCKET_TIMEOUT_S = 5.0
RESPONSE_HEAD_MAX = 65_536
WORKER_CONCURRENCY = 3  # the Procfile's WORKER_CONCURRENCY default


def procfile_command(process: str) -> str:
    """The command of one Procfile line (``web``, ``worker``), as honcho would run it."""
    for line in (REPO_ROOT / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() == process:
            return command.strip()
    raise SystemExit(f"the Procfile has no {process!r} process")


def celery_app_of(command: str, default: str = "tasks.app") -> str:
    """The ``-A`` app of a Procfile celery command (the ingest worker may get an app of its own)."""
    found = re.search(r"(?:-A|--app)[ =](\S+)", command)
    return found.group(1) if found else default


class ProcfileProcess(ManagedProcess):
    """One Procfile line run by ``sh`` in a process group of its own, logging to ``<workdir>/<name>.log``.

    SIGTERM goes to the whole group: ``sh`` does not forward it to the command it runs.
    """

    def __init__(self, name: str, workdir: Path, env: dict[str, str]) -> None:
        # The virtualenv's bin first, as when honcho runs the Procfile from an activated environment.
        super().__init__(name, ["sh", "-c", procfile_command(name)], workdir / f"{name}.log",
                         env=child_env(env, venv_on_path=True), term_group=True)  # fmt: skip

    def start_ready(self, ready: Callable[[], bool]) -> None:
        """Start it and wait until ``ready()`` (or raise ProcessError with the log's tail)."""
        self.start()
        self.wait_ready(ready, START_TIMEOUT_S, "ready", READY_POLL_S)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Stop it (see ManagedProcess.stop); it may be started again."""
        returncode = super().stop(timeout)
        self._proc = None
        return returncode

    def log_tail(self, lines: int = 30) -> str:
        return super().log_tail(lines) or "(no log)"


def start_worker(env: harness.BenchEnv, mode: str, roles: RunRoles | None = None) -> harness.Worker | ProcfileProcess:
    """The ingest worker as the Procfile runs it: the Celery worker (harness.Worker, with the Procfile's app,
    pool and concurrency), or with INGEST_MODE=aggregate the Procfile's worker line itself; as the worker
    role if ``roles`` are given."""
    if mode == "task":
        worker = harness.Worker(env, celery_app_of(procfile_command("worker")), env.ingest_queue,
                                WORKER_CONCURRENCY, "ingest")  # fmt: skip
        with roles.worker_database_url() if roles else nullcontext():
            worker.start()
        return worker
    from tasks.aggregator import READY_LOG

    aggregator = ProcfileProcess("worker", env.workdir, {"INGEST_MODE": "aggregate",
                                 "PROMETHEUS_MULTIPROC_DIR": str(env.workdir / "metrics"),
                                 **(roles.worker_env() if roles else {})})  # fmt: skip
    aggregator.start_ready(lambda: READY_LOG in aggregator.log())
    return aggregator


class WebProcess(ProcfileProcess):
    """The Procfile's web process on a spare port; ``serving_pids`` are the ones answering requests."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.port = spare_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__("web", workdir, {**env, "WEB_PORT": str(self.port)})

    def start_ready(self, ready: Callable[[], bool] | None = None) -> None:
        """Start it; ready once ``ready()``, by default once it gives any HTTP answer (it serves)."""
        super().start_ready(ready or (lambda: http_ok(self.url + "/health", any_status=True)))

    def alive(self) -> bool:
        return super().alive() and bool(self.serving_pids())

    def serving_pids(self) -> list[int]:
        if not self.started:
            return []
        workers = [pid for pid in children(self.pid) if "resource_tracker" not in _cmdline(pid)]
        return workers or [self.pid]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_mb(pid: int) -> float | None:
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / MB


class RssSampler(threading.Thread):
    """Samples the serving processes' RSS; growth is over each process's baseline (taken at ``start``)."""

    def __init__(self, web: WebProcess) -> None:
        super().__init__(name="abuse-rss", daemon=True)
        self.web = web
        self.baseline: dict[int, float] = {}
        self.peak: dict[int, float] = {}
        self.restarted: set[int] = set()  # serving processes that appeared after the baseline
        self._stop_event = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> None:
        for pid in self.web.serving_pids():
            if (mb := rss_mb(pid)) is not None:
                self.baseline[pid] = self.peak[pid] = mb
        super().start()

    def run(self) -> None:
        while not self._stop_event.wait(RSS_POLL_S):
            self.sample()

    def sample(self) -> None:
        with self._lock:
            for pid in self.web.serving_pids():
                if (mb := rss_mb(pid)) is None:
                    continue
                if pid not in self.baseline:  # a worker the supervisor started again
                    self.restarted.add(pid)
                    self.baseline[pid] = mb
                self.peak[pid] = max(self.peak.get(pid, mb), mb)

    def growth_mb(self) -> float:
        """The largest growth of one serving process over its baseline so far."""
        self.sample()
        with self._lock:
            return max((self.peak[pid] - self.baseline[pid] for pid in self.peak), default=0.0)

    def stop(self) -> None:
        self._stop_event.set()


@dataclass(frozen=True)
class RawResponse:
    """What a raw-socket request got: the status (None if none could be read) and how it went."""

    status: int | None
    headers: dict[str, str]
    seconds: float
    bytes_sent: int
    complete: bool  # the whole body (as declared) was sent before the answer
    error: str = ""


def _read_head(sock: socket.socket, deadline: float) -> tuple[int | None, dict[str, str], str]:
    data = b""
    while b"\r\n\r\n" not in data and len(data) < RESPONSE_HEAD_MAX:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(4096)
        except (TimeoutError, OSError) as exc:
            return None, {}, f"no answer ({type(exc).__name__})"
        if not chunk:
            break
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    match = re.match(r"HTTP/1\.[01] (\d{3})", head[0]) if head and head[0] else None
    if match is None:
        return None, {}, "connection closed without an answer"
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(match.group(1)), headers, ""


def raw_post(
    url: str, path: str, headers: dict[str, str], body_size: int, *, chunked: bool,
    declared_length: int | None = None, chunk: int = 65_536, timeout_s: float = 30.0,
) -> RawResponse:  # fmt: skip
    """POST ``body_size`` bytes (a JSON batch padded with whitespace), stopping as soon as the server answers.

    ``chunked`` sends ``Transfer-Encoding: chunked`` (no length known in advance);
    otherwise ``Content-Length`` is ``declared_length`` (default: the real size).
    """
    host, port = url.removeprefix("http://").split(":")
    start = time.monotonic()
    deadline = start + timeout_s
    prefix, suffix = b'{"events": [', b"]}"
    padding = b" " * chunk
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {declared_length or body_size}")
    sent, error = 0, ""
    with socket.create_connection((host, int(port)), timeout=SOCKET_TIMEOUT_S) as sock:
        try:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            while sent < body_size and time.monotonic() < deadline:
                if select.select([sock], [], [], 0)[0]:
                    break  # the server answered (or closed): stop sending
                piece = prefix if sent == 0 else padding[: max(0, min(chunk, body_size - sent - len(suffix)))] or suffix
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
                sent += len(piece)
            if chunked and sent >= body_size:
                sock.sendall(b"0\r\n\r\n")
        except (TimeoutError, OSError) as exc:
            error = f"sending stopped ({type(exc).__name__})"
        status, answer_headers, read_error = _read_head(sock, deadline)
    complete = sent >= (declared_length or body_size)  # a withheld body (declared, not sent) is never complete
    return RawResponse(status, answer_headers, time.monotonic() - start, sent, complete,
                       "; ".join(e for e in (error, read_error) if e))  # fmt: skip
