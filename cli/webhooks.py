"""``python -m cli webhooks ...``: a tenant's webhooks (list, add, delete) and their delivery log.

``add`` checks the URL as delivery does (alerts.url_safety) and prints the
signing secret once. URLs, tenants and errors are printed with their control
characters escaped.
"""

from __future__ import annotations

from datetime import UTC, datetime

import click

from alerts.url_safety import UrlPolicy
from alerts.webhooks import (
    MAX_LISTED_DELIVERIES,
    TooManyWebhooks,
    WebhookError,
    check_tenant,
    create_webhook,
    delete_webhook,
    list_deliveries,
    list_webhooks,
)
from cli import engines
from config import get_settings
from models.webhook import DELIVERY_STATUSES, FORMATS
from monitoring.escape import escape

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
ERROR_COLUMN_CHARS = 60


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime(TIME_FORMAT)


def _tenant(tenant_id: str) -> str:
    try:
        return check_tenant(tenant_id)
    except WebhookError as exc:
        raise click.BadParameter(exc.message, param_hint="--tenant") from None


@click.group("webhooks")
def webhooks() -> None:
    """Where a tenant's alert notifications are delivered (signed HTTP POSTs)."""


@webhooks.command("list")
@click.option("--tenant", "tenant_id", required=True, help="The tenant whose webhooks to list.")
def list_command(tenant_id: str) -> None:
    """Id, format, state, creation time (UTC) and URL of each webhook (never the secret)."""
    with engines.sessions()() as session:
        rows = list_webhooks(session, _tenant(tenant_id))
    if not rows:
        click.echo(f"no webhooks for tenant {escape(tenant_id)}")
        return
    click.echo(f"{'id':<8}{'format':<8}{'enabled':<9}{'created':<21}url")
    for row in rows:
        click.echo(f"{row.id:<8}{row.format:<8}{'yes' if row.enabled else 'no':<9}{_when(row.created_at):<21}"
                   f"{escape(row.url)}")  # fmt: skip


@webhooks.command("add")
@click.option("--tenant", "tenant_id", required=True, help="The tenant whose notifications it receives.")
@click.option("--url", required=True, help="https URL on a public address (WEBHOOK_ALLOW_* settings widen this).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=FORMATS[0], show_default=True,
              help="json: the signed notification; slack: a Slack-compatible {text} body.")  # fmt: skip
def add_command(tenant_id: str, url: str, fmt: str) -> None:
    """Add a webhook and print its signing secret once (receivers verify X-Analytics-Signature with it)."""
    settings = get_settings()
    try:
        with engines.sessions().begin() as session:
            created = create_webhook(session, _tenant(tenant_id), url, fmt, policy=UrlPolicy.from_settings(settings),
                                     max_per_tenant=settings.webhook_max_per_tenant)  # fmt: skip
    except WebhookError as exc:
        raise click.BadParameter(escape(exc.message), param_hint=f"--{exc.field}") from None
    except TooManyWebhooks as exc:
        raise click.ClickException(escape(str(exc))) from None
    click.echo(f"added webhook {created.webhook.id} for tenant {escape(tenant_id)}: {escape(url)} ({fmt})")
    click.echo(f"signing secret (shown once): {created.secret}")


@webhooks.command("delete")
@click.option("--tenant", "tenant_id", required=True, help="The webhook's tenant.")
@click.argument("webhook_id", type=click.IntRange(min=1))
def delete_command(tenant_id: str, webhook_id: int) -> None:
    """Delete a webhook and its delivery log; deliveries not made yet are dropped."""
    with engines.sessions().begin() as session:
        deleted = delete_webhook(session, _tenant(tenant_id), webhook_id)
    if not deleted:
        raise click.ClickException(f"tenant {escape(tenant_id)} has no webhook {webhook_id} (see: webhooks list)")
    click.echo(f"deleted webhook {webhook_id}")


@webhooks.command("deliveries")
@click.option("--tenant", "tenant_id", required=True, help="The tenant whose delivery log to show.")
@click.option("--webhook", "webhook_id", type=click.IntRange(min=1), default=None, help="Only this webhook.")
@click.option("--status", type=click.Choice(DELIVERY_STATUSES), default=None, help="Only this status.")
@click.option("--limit", type=click.IntRange(1, MAX_LISTED_DELIVERIES), default=50, show_default=True)
def deliveries_command(tenant_id: str, webhook_id: int | None, status: str | None, limit: int) -> None:
    """The delivery log, newest first: notification, webhook, status, attempts, last answer, next attempt (UTC)."""
    with engines.sessions()() as session:
        rows = list_deliveries(session, _tenant(tenant_id), webhook_id=webhook_id, status=status, limit=limit)
    if not rows:
        click.echo("no deliveries")
        return
    click.echo(f"{'notification':<38}{'webhook':<9}{'status':<11}{'attempts':<10}{'http':<6}"
               f"{'last attempt':<21}{'next attempt':<21}error")  # fmt: skip
    for row in rows:
        waiting = row.status in ("pending", "failed")
        click.echo(f"{row.notification_id!s:<38}{row.webhook_id:<9}{row.status:<11}{row.attempt:<10}"
                   f"{row.http_status or '-'!s:<6}{_when(row.last_attempt_at):<21}"
                   f"{_when(row.next_attempt_at) if waiting else '-':<21}"
                   f"{escape((row.error or '')[:ERROR_COLUMN_CHARS])}")  # fmt: skip
