"""Bringing a database to the current schema: create it if missing, then Alembic to head.

With roles (storage.roles), the login given must be a superuser or a
CREATEROLE role: the roles are created, what the schema holds is handed to the
owner role, the migrations run as the owner (so what they create is the
owner's), and the worker and web roles get their grants.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from storage.roles import RoleNames, as_role, create_roles, grant, grant_database, transfer_ownership

ALEMBIC_INI = Path(__file__).resolve().parent.parent / "alembic.ini"


class DatabaseUnreachable(Exception):
    """PostgreSQL cannot be reached at the URL; the message says what to do."""


def ensure_database(url: str) -> bool:
    """Create the URL's database if it does not exist; True if it was created."""
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": target.database}
            ).scalar()
            if exists:
                return False
            quoted = conn.dialect.identifier_preparer.quote(target.database or "")
            conn.execute(text(f"CREATE DATABASE {quoted}"))
            return True
    except OperationalError as exc:
        safe = target.render_as_string(hide_password=True)
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseUnreachable(
            f"cannot reach PostgreSQL at {safe} ({reason}); start it or set DATABASE_URL"
        ) from None
    finally:
        admin.dispose()


@dataclass(frozen=True)
class MigrateReport:
    created_database: bool
    created_roles: list[str] = field(default_factory=list)
    transferred: list[str] = field(default_factory=list)  # objects handed to the owner role
    ungranted_tables: list[str] = field(default_factory=list)  # tables no role list names


def upgrade(url: str) -> None:
    config = Config(str(ALEMBIC_INI))
    config.attributes["database_url"] = url
    command.upgrade(config, "head")


def migrate(url: str) -> bool:
    """Create the database if needed and upgrade it to head; True if it was created."""
    created = ensure_database(url)
    upgrade(url)
    return created


def migrate_with_roles(url: str, roles: RoleNames, passwords: Mapping[str, str | None]) -> MigrateReport:
    """``migrate`` as the owner role, creating the roles first and granting after (module docstring).

    ``passwords`` maps storage.roles' kinds to the passwords to set (see create_roles).
    """
    report = MigrateReport(created_database=ensure_database(url))
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            report.created_roles.extend(create_roles(conn, roles, passwords))
            grant_database(conn, roles)
            report.transferred.extend(transfer_ownership(conn, roles.owner))
        upgrade(as_role(url, roles.owner))
        with engine.begin() as conn:
            report.ungranted_tables.extend(grant(conn, roles))
    finally:
        engine.dispose()
    return report
