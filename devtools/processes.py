"""One runner for the subprocesses that tests, benchmarks and the demo start.

A ``ManagedProcess`` runs in a session (and so a process group) of its own,
writes stdout and stderr to a log file, is ready when a predicate says so (a
log line, an HTTP answer), and stops gracefully (SIGTERM) for a bounded time,
then by SIGKILL of its whole group; ``stop`` returns only once no process of
the group is left, so neither the leader nor a child it started (a Celery pool
child, a uvicorn worker, a Procfile command) outlives its owner.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
LOG_TAIL_LINES = 40
READY_POLL_S = 0.1
HTTP_PROBE_TIMEOUT_S = 2.0
STOP_TIMEOUT_S = 10.0
# After SIGKILL: how long the group may take to disappear (the kernel reaps at once
# unless a process is in uninterruptible sleep).
KILL_TIMEOUT_S = 10.0

T = TypeVar("T")


class ProcessError(RuntimeError):
    """A managed process exited before it was ready, or was not ready in time; the message holds its log tail."""


def wait_for(predicate: Callable[[], T], timeout: float, message: str | Callable[[], str], interval: float = 0.1) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:.0f}s: {text}")
        time.sleep(interval)


def spare_port() -> int:
    """A TCP port nothing listens on now (the kernel's choice) on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


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


def group_members(pgid: int) -> list[tuple[int, int]]:
    """(pid, ppid) of the live (non-zombie) processes of a process group (Linux /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            state, ppid, group = stat
            if group == pgid and state != "Z":
                members.append((int(entry), ppid))
    return members


def children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None and stat[1] == pid and stat[0] != "Z":
            found.append(int(entry))
    return found


def child_env(extra: Mapping[str, str] | None = None, *, venv_on_path: bool = False) -> dict[str, str]:
    """This process's environment, unbuffered Python output, plus ``extra``.

    ``venv_on_path`` puts this interpreter's directory (the virtualenv's bin) first
    on PATH, as when honcho runs the Procfile from an activated environment.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if venv_on_path:
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env.update(extra or {})
    return env


def read_log(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def file_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ("" if there is none yet)."""
    return "\n".join(read_log(path).splitlines()[-lines:])


def http_ok(url: str, auth: tuple[str, str] | None = None, *, any_status: bool = False) -> bool:
    """True if ``url`` answers 200 (or anything, with ``any_status``) within the probe timeout."""
    try:
        response = httpx.get(url, timeout=HTTP_PROBE_TIMEOUT_S, auth=auth)
    except httpx.HTTPError:
        return False
    return any_status or response.status_code == httpx.codes.OK


class ManagedProcess:
    """A subprocess in a session of its own, logging to ``log_path``.

    ``term_group`` chooses who gets the graceful SIGTERM: the whole group (a
    shell or honcho that does not forward signals, a Procfile line) or only the
    leader (a Celery worker, which then stops its pool itself). Use it as a
    context manager, or ``start`` and ``stop`` (idempotent) in a ``finally``.
    """

    def __init__(
        self, name: str, cmd: list[str], log_path: Path, *, env: Mapping[str, str] | None = None,
        cwd: Path = REPO_ROOT, append_log: bool = False, term_group: bool = False,
    ) -> None:  # fmt: skip
        self.name = name
        self.cmd = cmd
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else child_env()
        self.cwd = cwd
        self.append_log = append_log
        self.term_group = term_group
        self._proc: subprocess.Popen[bytes] | None = None

    # --- lifecycle -------------------------------------------------------------

    def start(self) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab" if self.append_log else "wb") as log:
            self._proc = subprocess.Popen(
                self.cmd, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,  # own group: killpg reaches every child
            )  # fmt: skip
        return self

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise ProcessError(f"{self.name} was not started")
        return self._proc

    @property
    def started(self) -> bool:
        return self._proc is not None

    @property
    def pid(self) -> int:
        """The leader's pid, which is also the process group's id."""
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def group_pids(self) -> list[int]:
        return [pid for pid, _ in group_members(self.pid)] if self._proc is not None else []

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to every process of the group at once; after SIGKILL, also wait until
        the leader is reaped and none of the group is left."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)
        if sig == signal.SIGKILL:
            self._proc.wait(KILL_TIMEOUT_S)
            # Children are not ours to reap, but they are in our group.
            wait_for(lambda: not group_members(self.pid), KILL_TIMEOUT_S,
                     f"processes of {self.name} still running after SIGKILL")  # fmt: skip

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (leader or group) for up to ``timeout`` s, then SIGKILL of the group; waits
        until the group is gone. Returns the leader's exit status if it exited before the SIGKILL."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            if self.term_group:
                self.kill_group(signal.SIGTERM)
            else:
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        returncode = proc.poll()
        self.kill_group(signal.SIGKILL)
        return returncode

    def __enter__(self) -> Self:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- readiness -------------------------------------------------------------

    def wait_ready(self, ready: Callable[[], bool], timeout: float, what: str = "ready",
                   interval: float = READY_POLL_S) -> None:  # fmt: skip
        """Wait until ``ready()``; ProcessError with the log's tail if the process exits first
        or ``timeout`` s pass."""
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.alive():
                raise ProcessError(f"{self.name} exited with {self.returncode} before it was {what}:\n"
                                   f"{self.log_tail()}")  # fmt: skip
            if time.monotonic() >= deadline:
                raise ProcessError(f"{self.name} not {what} after {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(interval)

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float) -> None:
        """Ready once the log holds ``pattern`` (a plain string, or a compiled regex)."""
        if isinstance(pattern, str):
            self.wait_ready(lambda: pattern in self.log(), timeout, f"ready (no {pattern!r} in its log)")
        else:
            self.wait_ready(lambda: bool(pattern.search(self.log())), timeout,
                            f"ready (no {pattern.pattern!r} in its log)")  # fmt: skip

    def wait_for_http(self, url: str, timeout: float, *, auth: tuple[str, str] | None = None,
                      any_status: bool = False, interval: float = READY_POLL_S) -> None:  # fmt: skip
        """Ready once ``url`` answers 200 (or any HTTP answer, with ``any_status``)."""
        self.wait_ready(lambda: http_ok(url, auth, any_status=any_status), timeout, f"answering on {url}", interval)

    # --- log -------------------------------------------------------------------

    def log(self) -> str:
        return read_log(self.log_path)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return file_tail(self.log_path, lines)

    def describe(self, **extra: object) -> str:
        """Context for an assertion message: state, ``extra`` values and the end of the log."""
        state = "running" if self.alive() else f"exited ({self.returncode})"
        details = "".join(f"\n{key}: {value}" for key, value in extra.items())
        return f"{self.name} {state}{details}\n--- log tail ---\n{self.log_tail()}"
