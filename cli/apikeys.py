"""``python -m cli api-keys ...``: create, list and revoke API keys.

Keys may expire (``--expires-in-days N`` or ``--expires YYYY-MM-DD``); an
expired key is answered 401 "expired API key". Names and tenants are printed
with their control characters escaped.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click

from cli import engines
from monitoring.escape import escape
from storage.api_keys import create_key, list_keys, revoke

TIME_FORMAT = "%Y-%m-%d %H:%M"


def _when(moment: datetime | None, missing: str = "-") -> str:
    return missing if moment is None else moment.astimezone(UTC).strftime(TIME_FORMAT)


@click.group("api-keys")
def api_keys() -> None:
    """API keys for the HTTP API: one tenant each, or admin for operators."""


@api_keys.command("create")
@click.option("--tenant", "tenant_id", help="The tenant this key reads and writes.")
@click.option("--admin", is_flag=True, help="An operator key: any tenant, named per request.")
@click.option("--name", default="", help="What the key is for (shown in listings).")
@click.option("--expires-in-days", type=click.IntRange(min=1), default=None,
              help="The key stops working this many days from now.")  # fmt: skip
@click.option("--expires", "expires_on", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="The key stops working at 00:00 UTC of this day (YYYY-MM-DD).")  # fmt: skip
def create_command(
    tenant_id: str | None, admin: bool, name: str, expires_in_days: int | None, expires_on: datetime | None
) -> None:
    """Create a key and print it once: it is stored only hashed. Without --expires* it never expires."""
    if admin == (tenant_id is not None):
        raise click.UsageError("give either --tenant TENANT or --admin")
    if expires_in_days is not None and expires_on is not None:
        raise click.UsageError("give --expires-in-days or --expires, not both")
    expires_at = None
    if expires_in_days is not None:
        expires_at = datetime.now(UTC) + timedelta(days=expires_in_days)
    elif expires_on is not None:
        expires_at = expires_on.replace(tzinfo=UTC)
        if expires_at <= datetime.now(UTC):
            raise click.BadParameter(f"{expires_on:%Y-%m-%d} is not in the future", param_hint="--expires")
    try:
        with engines.sessions().begin() as session:
            row, key = create_key(session, name=name or (tenant_id or "admin"), tenant_id=tenant_id, admin=admin,
                                  expires_at=expires_at)  # fmt: skip
            prefix, scope = row.prefix, row.scope
    except ValueError as exc:
        raise click.UsageError(escape(exc)) from None
    click.echo(f"created {scope} key {prefix}" + (f" for tenant {escape(tenant_id)}" if tenant_id else "")
               + (f", expires {expires_at.strftime(TIME_FORMAT)} UTC" if expires_at else ""))  # fmt: skip
    click.echo(key)


@api_keys.command("list")
@click.option("--tenant", "tenant_id", help="Only this tenant's keys.")
def list_command(tenant_id: str | None) -> None:
    """Prefix, scope, tenant, name, created, last used, expiry and state (never the key).

    Times are UTC; last use is recorded at most once a minute.
    """
    with engines.sessions()() as session:
        rows = list_keys(session, tenant_id)
    if not rows:
        click.echo("no API keys")
        return
    now = datetime.now(UTC)
    click.echo(f"{'prefix':<13}{'scope':<7}{'tenant':<21}{'name':<25}{'created':<17}  {'last used':<17}"
               f"  {'expires':<17}  state")  # fmt: skip
    for row in rows:
        if row.revoked_at:
            state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}"
        elif row.expires_at is not None and row.expires_at <= now:
            state = "expired"
        else:
            state = "active"
        click.echo(f"{row.prefix:<13}{row.scope:<7}{escape(row.tenant_id or '-'):<21}{escape(row.name):<25}"
                   f"{_when(row.created_at):<17}  {_when(row.last_used_at, 'never'):<17}"
                   f"  {_when(row.expires_at, 'never'):<17}  {state}")  # fmt: skip


@api_keys.command("revoke")
@click.argument("prefix")
def revoke_command(prefix: str) -> None:
    """Revoke the key with this prefix; requests with it get 401 from then on."""
    with engines.sessions().begin() as session:
        revoked = revoke(session, prefix)
    if not revoked:
        raise click.ClickException(f"no active key with prefix {escape(repr(prefix))} (see: api-keys list)")
    click.echo(f"revoked {prefix}")
