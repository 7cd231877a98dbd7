"""``python -m cli migrate``: create the database if needed and apply the migrations."""

from __future__ import annotations

import click
from sqlalchemy.engine import make_url

from config import get_settings
from storage.migrate import DatabaseUnreachable, migrate


@click.command("migrate")
def migrate_command() -> None:
    """Create the database named by DATABASE_URL if missing, then migrate it to head."""
    url = get_settings().database_url
    try:
        created = migrate(url)
    except DatabaseUnreachable as exc:
        raise click.ClickException(str(exc)) from None
    name = make_url(url).database
    click.echo(f"database {name}: {'created and ' if created else ''}migrated to head")
