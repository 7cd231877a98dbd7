"""devtools.processes, the one runner of the subprocesses tests, benchmarks and the demo start.

Real subprocesses, no mocks: a stop leaves nothing of the group behind even when
every process ignores SIGTERM, readiness fails with the log's tail when the
process dies first, and an HTTP server is ready once it answers.
"""

from __future__ import annotations

import signal
import sys
import textwrap
from pathlib import Path

import pytest

from devtools.processes import ManagedProcess, ProcessError, group_members, spare_port

READY_TIMEOUT_S = 30.0

# A leader that starts a child; both ignore SIGTERM, the child logs its pid.
STUBBORN = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('child', flush=True); time.sleep(300)"])
    print(f"ready child={child.pid}", flush=True)
    time.sleep(300)
    """
)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_stop_kills_the_whole_group_even_when_every_process_ignores_sigterm(tmp_path: Path) -> None:
    process = ManagedProcess("stubborn", [sys.executable, "-c", STUBBORN], tmp_path / "stubborn.log").start()
    try:
        process.wait_for_log("child\n", READY_TIMEOUT_S)
        child = int(process.log().split("child=")[1].split()[0])
        assert {process.pid, child} <= set(process.group_pids())
        assert process.stop(timeout=0.5) is None, "SIGTERM is ignored: only the SIGKILL ends it"
        assert process.proc.returncode == -signal.SIGKILL
        assert group_members(process.pid) == []
        assert not _alive(child), "the child was in the group: it went with it"
    finally:
        process.stop(timeout=0.1)


def test_a_graceful_stop_returns_the_exit_status_of_the_sigterm(tmp_path: Path) -> None:
    # sh does not forward SIGTERM to the command it waits for: term_group sends it to both.
    cmd = ["sh", "-c", f"{sys.executable} -c 'import time; print(\"up\", flush=True); time.sleep(300)'; true"]
    with ManagedProcess("shell", cmd, tmp_path / "shell.log", term_group=True) as process:
        process.wait_for_log("up", READY_TIMEOUT_S)
        assert len(process.group_pids()) == 2
        assert process.stop(timeout=READY_TIMEOUT_S) == -signal.SIGTERM
    assert group_members(process.pid) == []


def test_a_process_that_exits_before_it_is_ready_fails_with_its_log_tail(tmp_path: Path) -> None:
    script = "import sys; print('cannot reach the broker', flush=True); sys.exit(3)"
    process = ManagedProcess("doomed", [sys.executable, "-c", script], tmp_path / "doomed.log").start()
    with pytest.raises(ProcessError) as raised:
        process.wait_for_log("ready", READY_TIMEOUT_S)
    assert "doomed exited with 3 before it was ready" in str(raised.value)
    assert "cannot reach the broker" in str(raised.value)
    process.stop()


def test_readiness_times_out_with_the_log_tail(tmp_path: Path) -> None:
    script = "import time; print('still starting', flush=True); time.sleep(300)"
    with ManagedProcess("slow", [sys.executable, "-c", script], tmp_path / "slow.log") as process:
        process.wait_for_log("still starting", READY_TIMEOUT_S)
        with pytest.raises(ProcessError, match=r"slow not ready \(no 'ready!' in its log\) after 0s:\nstill starting"):
            process.wait_for_log("ready!", 0.3)


def test_an_http_server_is_ready_once_it_answers(tmp_path: Path) -> None:
    port = spare_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    with ManagedProcess("http.server", cmd, tmp_path / "http.log") as process:
        process.wait_for_http(f"http://127.0.0.1:{port}/", READY_TIMEOUT_S)
        assert process.alive()
    assert not process.alive() and group_members(process.pid) == []
