"""The state file of a run's embedded services: how ``python -m cli`` finds what ``./run`` started.

While ``./run`` (demo.services) runs embedded services, ``STATE_FILE`` names
them: per environment variable the URL that reaches them, and the pid of the
process that owns them. ``python -m cli`` reads it when those variables are
unset (``running_services``). It is removed when the services stop; a file
left by a killed run names a dead pid and is ignored. Embedded URLs carry no
password (a unix socket, the local ``postgres`` user), and the file holds
nothing else. Kept apart from demo.services so that the CLI reads it without
importing what starts the servers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "var" / "embedded"  # of this checkout
STATE_FILE = DATA_DIR / "services.json"
STATE_FILE_MODE = 0o600
DATABASE_VARIABLE = "DATABASE_URL"
BROKER_VARIABLE = "CELERY_BROKER_URL"


class StateFileError(Exception):
    """The state file exists but is not one ``write_state`` wrote; the message says which file."""


@dataclass(frozen=True)
class RunningServices:
    """What a live run's state file says: its pid and, per environment variable, the embedded URL."""

    pid: int
    urls: dict[str, str]


def write_state(path: Path, running: RunningServices) -> None:
    """Write the state file whole or not at all (a reader never sees half of it), owner-readable only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, STATE_FILE_MODE)
    with os.fdopen(fd, "w") as out:
        json.dump({"pid": running.pid, "urls": running.urls}, out)
    os.replace(partial, path)


def running_services(path: Path = STATE_FILE) -> RunningServices | None:
    """The embedded services named by ``path`` if its owning process is alive; None if no run owns them.

    Raises StateFileError when the file is not one write_state wrote.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        state = json.loads(text)
        pid, urls = state["pid"], state["urls"]
        valid = (
            isinstance(pid, int)
            and isinstance(urls, dict)
            and all(name in (DATABASE_VARIABLE, BROKER_VARIABLE) and isinstance(url, str) for name, url in urls.items())
        )
    except (ValueError, TypeError, KeyError):
        valid = False
    if not valid:
        raise StateFileError(f"{path} is not a state file of ./run")
    return RunningServices(pid, dict(urls)) if _alive(pid) else None


def _alive(pid: int) -> bool:
    if pid <= 0:  # kill(0 or -n) would signal a process group
        return False
    try:
        os.kill(pid, 0)  # signal 0: existence and permission check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True
