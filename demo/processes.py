"""Starting the Procfile's processes for the demo and stopping all of them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
STOP_GRACE_S = 10.0
READY_TIMEOUT_S = 60.0
READY_POLL_S = 0.25


class Processes:
    """``honcho start <names>`` in its own process group: stopping it leaves no orphan."""

    def __init__(self, names: list[str], log_path: Path) -> None:
        self._names = names
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "honcho", "start", "-f", str(ROOT / "Procfile"), *self._names],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                # the Procfile's commands live beside this interpreter (the virtualenv)
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            },
        )

    def wait_http(self, url: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(READY_POLL_S)
        raise RuntimeError(f"{url} did not answer within {READY_TIMEOUT_S:.0f}s; see {self.log_path}")

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"the processes exited early; see {self.log_path}")

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        pgid = os.getpgid(self._proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self._proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(pgid, signal.SIGKILL)  # whatever did not stop in time
        except ProcessLookupError:
            pass
        self._proc.wait()
