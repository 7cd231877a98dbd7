"""Starting the Procfile's processes for the demo and stopping all of them."""

from __future__ import annotations

import sys
from pathlib import Path

from devtools.processes import REPO_ROOT, ManagedProcess, ProcessError, child_env

ROOT = REPO_ROOT
STOP_GRACE_S = 10.0
READY_TIMEOUT_S = 60.0
READY_POLL_S = 0.25


class Processes:
    """``honcho start <names>`` in its own process group (devtools.processes): stopping it leaves no orphan."""

    def __init__(self, names: list[str], log_path: Path) -> None:
        self.log_path = log_path
        # SIGTERM to the whole group, as a terminal's Ctrl-C would send it; the Procfile's
        # commands live beside this interpreter (the virtualenv).
        self._process = ManagedProcess(
            "the processes", [sys.executable, "-m", "honcho", "start", "-f", str(ROOT / "Procfile"), *names],
            log_path, env=child_env(venv_on_path=True), term_group=True,
        )  # fmt: skip

    def start(self) -> None:
        self._process.start()

    def wait_http(self, url: str) -> None:
        """Until ``url`` answers 200; RuntimeError naming the log if the processes exit or it does not in time."""
        try:
            self._process.wait_for_http(url, READY_TIMEOUT_S, interval=READY_POLL_S)
        except ProcessError:
            if not self._process.alive():
                raise RuntimeError(f"the processes exited early; see {self.log_path}") from None
            raise RuntimeError(f"{url} did not answer within {READY_TIMEOUT_S:.0f}s; see {self.log_path}") from None

    def stop(self) -> None:
        self._process.stop(STOP_GRACE_S)
