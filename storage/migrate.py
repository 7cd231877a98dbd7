"""Bringing a database to the current schema: create it if missing, then Alembic to head."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

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


def migrate(url: str) -> bool:
    """Create the database if needed and upgrade it to head; True if it was created."""
    created = ensure_database(url)
    config = Config(str(ALEMBIC_INI))
    config.attributes["database_url"] = url
    command.upgrade(config, "head")
    return created
