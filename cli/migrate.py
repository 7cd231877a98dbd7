"""``python -m cli migrate``: create the database if needed and apply the migrations.

``--create-roles`` also makes the least-privilege roles (storage.roles) and runs
the migrations as their owner; it connects with DATABASE_URL, which must name
a superuser or a CREATEROLE login. Passwords come from the environment only
(DATABASE_OWNER_PASSWORD, DATABASE_WORKER_PASSWORD, DATABASE_WEB_PASSWORD),
never from the command line.
"""

from __future__ import annotations

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from config import get_settings
from monitoring.escape import escape
from storage.db import owner_url
from storage.migrate import DatabaseUnreachable, migrate, migrate_with_roles
from storage.roles import OWNER, WEB, WORKER, RoleNames


@click.command("migrate")
@click.option("--create-roles", is_flag=True,
              help="Also create the owner, worker and web roles, migrate as the owner and grant the others"
                   " what they need (needs a superuser or CREATEROLE login in DATABASE_URL).")  # fmt: skip
@click.option("--role-prefix", default=None,
              help="Roles are <prefix>_owner, <prefix>_worker, <prefix>_web [default: DATABASE_ROLE_PREFIX].")  # fmt: skip
def migrate_command(create_roles: bool, role_prefix: str | None) -> None:
    """Create the database if missing, then migrate it to head.

    Without --create-roles it connects as DATABASE_OWNER_URL when set, else DATABASE_URL.
    """
    settings = get_settings()
    if not create_roles:
        if role_prefix is not None:
            raise click.UsageError("--role-prefix goes with --create-roles")
        url = owner_url(settings)
        try:
            created = migrate(url)
        except DatabaseUnreachable as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"database {make_url(url).database}: {'created and ' if created else ''}migrated to head")
        return
    try:
        names = RoleNames.from_prefix(role_prefix or settings.database_role_prefix)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--role-prefix") from None
    secrets = {OWNER: settings.database_owner_password, WORKER: settings.database_worker_password,
               WEB: settings.database_web_password}  # fmt: skip
    passwords = {kind: None if secret is None else secret.get_secret_value() for kind, secret in secrets.items()}
    url = settings.database_url
    try:
        report = migrate_with_roles(url, names, passwords)
    except DatabaseUnreachable as exc:
        raise click.ClickException(str(exc)) from None
    except ProgrammingError as exc:  # e.g. permission denied to create role
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise click.ClickException(f"cannot create or grant the roles: {escape(reason)}") from None
    name = make_url(url).database
    click.echo(f"database {name}: {'created and ' if report.created_database else ''}migrated to head"
               f" as {names.owner}")  # fmt: skip
    for kind, role in ((OWNER, names.owner), (WORKER, names.worker), (WEB, names.web)):
        created = role in report.created_roles
        state = "created" if created else "exists"
        password = "password set" if passwords[kind] else ("no password" if created else "password unchanged")
        click.echo(f"role {role}: {state}, {password}")
    if report.transferred:
        click.echo(f"handed {len(report.transferred)} objects to {names.owner}")
    for table in report.ungranted_tables:
        click.echo(f"warning: table {escape(table)} is in no role's grants: only {names.owner} can use it",
                   err=True)  # fmt: skip
