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
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import harness
from bench.abuse_roles import RunRoles
from bench.harness import REPO_ROOT
from tests.servers import spare_port

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
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


class ProcfileProcess:
    """One Procfile line run by ``sh`` in a process group of its own, logging to ``<workdir>/<name>.log``."""

    def __init__(self, name: str, workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        # The virtualenv's bin first, as when honcho runs the Procfile from an activated environment.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        self._env = {**os.environ, **env, "PYTHONUNBUFFERED": "1", "PATH": path}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready: Callable[[], bool]) -> None:
        """Start it and wait until ``ready()`` (or raise with the log's tail)."""
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["sh", "-c", procfile_command(self.name)], cwd=REPO_ROOT, env=self._env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} process exited at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} process not ready after {START_TIMEOUT_S:.0f}s:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(STOP_TIMEOUT_S)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(STOP_TIMEOUT_S)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:]) or "(no log)"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


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
    aggregator.start(lambda: READY_LOG in aggregator.log())
    return aggregator


class WebProcess(ProcfileProcess):
    """The Procfile's web process on a spare port; ``serving_pids`` are the ones answering requests."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.port = spare_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__("web", workdir, {**env, "WEB_PORT": str(self.port)})

    def start(self, ready: Callable[[], bool] | None = None) -> None:
        super().start(ready or self._answers)

    def _answers(self) -> bool:
        try:
            httpx.get(self.url + "/health", timeout=2.0)
            return True  # any HTTP answer: it serves
        except httpx.HTTPError:
            return False

    def alive(self) -> bool:
        return super().alive() and bool(self.serving_pids())

    def serving_pids(self) -> list[int]:
        if self.proc is None:
            return []
        children = [pid for pid in _children(self.proc.pid) if "resource_tracker" not in _cmdline(pid)]
        return children or [self.proc.pid]


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                raw = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            if int(raw[raw.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


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
