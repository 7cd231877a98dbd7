"""``bench.abuse --roles``: the web process and the worker connect as their least-privilege roles.

The roles are made for this run only (``abuse_<run>_owner``, ``_worker``,
``_web``: roles are cluster-wide) by ``storage.migrate.migrate_with_roles``,
the code behind ``python -m cli migrate --create-roles``, and dropped at the
end. The processes take them the way the Procfile says (WEB_DATABASE_URL,
WORKER_DATABASE_URL); the URLs log in as the bench's user and take the role at
connection start (``storage.roles.as_role``), so no password is needed and
every statement runs with the role's privileges only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine

from storage.migrate import migrate_with_roles
from storage.roles import RoleNames, as_role, drop_roles

NO_PASSWORDS: dict[str, str | None] = {"owner": None, "worker": None, "web": None}


class RunRoles:
    def __init__(self, run_id: str, database_url: str) -> None:
        self.names = RoleNames.from_prefix(f"abuse_{run_id}")
        self._url = database_url

    def create(self) -> None:
        migrate_with_roles(self._url, self.names, NO_PASSWORDS)

    def web_env(self) -> dict[str, str]:
        return {"WEB_DATABASE_URL": as_role(self._url, self.names.web)}

    def worker_env(self) -> dict[str, str]:
        return {"WORKER_DATABASE_URL": as_role(self._url, self.names.worker)}

    @contextmanager
    def worker_database_url(self) -> Iterator[None]:
        """DATABASE_URL as the worker role while a harness.Worker starts (it inherits this environment)."""
        before = os.environ["DATABASE_URL"]
        os.environ["DATABASE_URL"] = as_role(self._url, self.names.worker)
        try:
            yield
        finally:
            os.environ["DATABASE_URL"] = before

    def drop(self, engine: Engine) -> None:
        with engine.begin() as conn:
            drop_roles(conn, self.names)
