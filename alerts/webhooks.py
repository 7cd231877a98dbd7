"""A tenant's webhooks: add (URL checked, secret generated), list, delete, and read the delivery log.

The contract: a webhook is stored only if its URL passes alerts.url_safety
(scheme, and every address its host resolves to now; delivery checks again).
The secret is returned once, by ``create_webhook``; nothing here reads it back
(the web role cannot: storage.roles grants it every column but ``secret``).
A tenant has at most WEBHOOK_MAX_PER_TENANT webhooks, counted under a
per-tenant lock so two concurrent creations cannot both pass the count.
Errors name the field at fault (``WebhookError.field``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.orm import Session

from alerts.signing import new_secret
from alerts.url_safety import Resolver, UnsafeUrl, UrlPolicy, parse_webhook_url, resolve_checked, system_resolver
from models.webhook import DELIVERY_STATUSES, FORMATS, Delivery, Webhook
from schema.event import MAX_TENANT_ID_LEN

# pg_advisory_xact_lock(namespace, hashtext(tenant)): serializes one tenant's webhook creations.
CREATE_LOCK_NAMESPACE = 0x5745_4248  # "WEBH"
MAX_LISTED_DELIVERIES = 1000


class WebhookError(ValueError):
    """Refused input; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class TooManyWebhooks(Exception):
    """The tenant already has WEBHOOK_MAX_PER_TENANT webhooks (not bad input: delete one first)."""


@dataclass(frozen=True)
class WebhookInfo:
    tenant_id: str
    id: int
    url: str
    format: str
    enabled: bool
    created_at: datetime


@dataclass(frozen=True)
class CreatedWebhook:
    webhook: WebhookInfo
    secret: str  # shown once


@dataclass(frozen=True)
class DeliveryInfo:
    id: int
    notification_id: uuid.UUID
    webhook_id: int
    attempt: int
    status: str
    http_status: int | None
    error: str | None
    created_at: datetime
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    delivered_at: datetime | None


def check_tenant(tenant_id: object) -> str:
    if not isinstance(tenant_id, str) or not tenant_id:
        raise WebhookError("tenant_id", "tenant_id must be a non-empty string")
    if len(tenant_id) > MAX_TENANT_ID_LEN or "\x00" in tenant_id:
        raise WebhookError("tenant_id", f"tenant_id must be at most {MAX_TENANT_ID_LEN} characters, without NUL")
    return tenant_id


def check_format(fmt: object) -> str:
    if fmt not in FORMATS:
        raise WebhookError("format", f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return str(fmt)


_INFO_COLUMNS = (Webhook.tenant_id, Webhook.id, Webhook.url, Webhook.format, Webhook.enabled, Webhook.created_at)


def _info(row: Any) -> WebhookInfo:
    return WebhookInfo(tenant_id=row.tenant_id, id=row.id, url=row.url, format=row.format, enabled=row.enabled,
                       created_at=row.created_at)  # fmt: skip


def create_webhook(
    session: Session,
    tenant_id: str,
    url: str,
    fmt: str,
    *,
    policy: UrlPolicy,
    max_per_tenant: int,
    resolver: Resolver = system_resolver,
) -> CreatedWebhook:
    """Store a webhook in the caller's transaction; WebhookError for refused input, TooManyWebhooks when the
    tenant has its most."""
    check_tenant(tenant_id)
    fmt = check_format(fmt)
    try:
        resolve_checked(parse_webhook_url(url, policy), policy, resolver)
    except UnsafeUrl as exc:
        raise WebhookError(exc.field, str(exc)) from None
    session.execute(
        text("SELECT pg_advisory_xact_lock(:namespace, hashtext(:tenant))"),
        {"namespace": CREATE_LOCK_NAMESPACE, "tenant": tenant_id},
    )
    count = session.execute(
        select(func.count()).select_from(Webhook).where(Webhook.tenant_id == tenant_id)
    ).scalar_one()
    if count >= max_per_tenant:
        raise TooManyWebhooks(f"tenant {tenant_id!r} already has {count} webhooks, the most allowed"
                              " (WEBHOOK_MAX_PER_TENANT); delete one first")  # fmt: skip
    secret = new_secret()
    row = session.execute(
        insert(Webhook).values(tenant_id=tenant_id, url=url, secret=secret, format=fmt).returning(*_INFO_COLUMNS)
    ).one()
    return CreatedWebhook(webhook=_info(row), secret=secret)


def list_webhooks(session: Session, tenant_id: str) -> list[WebhookInfo]:
    """The tenant's webhooks, oldest first (no secrets)."""
    rows = session.execute(select(*_INFO_COLUMNS).where(Webhook.tenant_id == tenant_id).order_by(Webhook.id))
    return [_info(row) for row in rows]


def delete_webhook(session: Session, tenant_id: str, webhook_id: int) -> bool:
    """Delete one of the tenant's webhooks (its delivery log goes with it); False if it has none by that id."""
    result = session.execute(
        delete(Webhook).where(Webhook.tenant_id == tenant_id, Webhook.id == webhook_id).returning(Webhook.id)
    )
    return result.first() is not None


def list_deliveries(
    session: Session,
    tenant_id: str,
    *,
    webhook_id: int | None = None,
    status: str | None = None,
    limit: int = 100,
) -> list[DeliveryInfo]:
    """The tenant's delivery log, newest first, optionally of one webhook or one status."""
    if status is not None and status not in DELIVERY_STATUSES:
        raise WebhookError("status", f"status must be one of {', '.join(DELIVERY_STATUSES)}, got {status!r}")
    if not 1 <= limit <= MAX_LISTED_DELIVERIES:
        raise WebhookError("limit", f"limit must be between 1 and {MAX_LISTED_DELIVERIES}, got {limit}")
    query = select(Delivery).where(Delivery.tenant_id == tenant_id)
    if webhook_id is not None:
        query = query.where(Delivery.webhook_id == webhook_id)
    if status is not None:
        query = query.where(Delivery.status == status)
    rows = session.execute(query.order_by(Delivery.id.desc()).limit(limit)).scalars()
    return [
        DeliveryInfo(
            id=d.id,
            notification_id=d.notification_id,
            webhook_id=d.webhook_id,
            attempt=d.attempt,
            status=d.status,
            http_status=d.http_status,
            error=d.error,
            created_at=d.created_at,
            next_attempt_at=d.next_attempt_at,
            last_attempt_at=d.last_attempt_at,
            delivered_at=d.delivered_at,
        )
        for d in rows
    ]
