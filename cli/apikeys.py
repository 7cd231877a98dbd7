"""``python -m cli api-keys ...``: create, list and revoke API keys."""

from __future__ import annotations

import click

from config import get_settings
from storage.api_keys import create_key, list_keys, revoke
from storage.db import make_engine, make_session_factory


def _sessions():  # noqa: ANN202 - a sessionmaker bound to a fresh engine
    return make_session_factory(make_engine(get_settings()))


@click.group("api-keys")
def api_keys() -> None:
    """API keys for the HTTP API: one tenant each, or admin for operators."""


@api_keys.command("create")
@click.option("--tenant", "tenant_id", help="The tenant this key reads and writes.")
@click.option("--admin", is_flag=True, help="An operator key: any tenant, named per request.")
@click.option("--name", default="", help="What the key is for (shown in listings).")
def create_command(tenant_id: str | None, admin: bool, name: str) -> None:
    """Create a key and print it once: it is stored only hashed."""
    if admin == (tenant_id is not None):
        raise click.UsageError("give either --tenant TENANT or --admin")
    try:
        with _sessions().begin() as session:
            row, key = create_key(session, name=name or (tenant_id or "admin"), tenant_id=tenant_id, admin=admin)
            prefix, scope = row.prefix, row.scope
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"created {scope} key {prefix}" + (f" for tenant {tenant_id}" if tenant_id else ""))
    click.echo(key)


@api_keys.command("list")
@click.option("--tenant", "tenant_id", help="Only this tenant's keys.")
def list_command(tenant_id: str | None) -> None:
    """Prefix, scope, tenant, name, created and revoked times (never the key)."""
    with _sessions()() as session:
        rows = list_keys(session, tenant_id)
    if not rows:
        click.echo("no API keys")
    for row in rows:
        state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
        click.echo(f"{row.prefix}  {row.scope:<6} {row.tenant_id or '-':<20} {row.name:<24}"
                   f" created {row.created_at:%Y-%m-%d %H:%M}  {state}")  # fmt: skip


@api_keys.command("revoke")
@click.argument("prefix")
def revoke_command(prefix: str) -> None:
    """Revoke the key with this prefix; requests with it get 401 from then on."""
    with _sessions().begin() as session:
        revoked = revoke(session, prefix)
    if not revoked:
        raise click.ClickException(f"no active key with prefix {prefix!r} (see: api-keys list)")
    click.echo(f"revoked {prefix}")
