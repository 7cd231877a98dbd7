"""Create the database named by DATABASE_URL if it is missing, then migrate to head."""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from config import get_settings

ALEMBIC_INI = Path(__file__).resolve().parent.parent / "alembic.ini"


def ensure_database(url: str) -> None:
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": target.database}
        ).scalar()
        if not exists:
            quoted = conn.dialect.identifier_preparer.quote(target.database or "")
            conn.execute(text(f"CREATE DATABASE {quoted}"))
            print(f"migrate: created database {target.database}")
    admin.dispose()


def main() -> int:
    url = get_settings().database_url
    try:
        ensure_database(url)
    except OperationalError as exc:
        safe = make_url(url).render_as_string(hide_password=True)
        print(f"migrate: cannot reach PostgreSQL at {safe}: {exc.orig}".strip(), file=sys.stderr)
        print("migrate: start PostgreSQL or set DATABASE_URL", file=sys.stderr)
        return 1
    command.upgrade(Config(str(ALEMBIC_INI)), "head")
    return 0


if __name__ == "__main__":
    sys.exit(main())
