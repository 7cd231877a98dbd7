"""Webhook API: a tenant's webhooks and their delivery log (tenant keys their own tenant, admin keys any).

``POST /api/tenants/{tenant_id}/webhooks`` ``{"url": ..., "format": "json" | "slack"}``
answers 201 with the webhook and its signing ``secret``, shown this once. The
URL is checked as delivery checks it (alerts.url_safety: https, public
addresses after resolution); a refused one is a 422 naming ``url``. ``GET``
lists the webhooks (no secrets), ``DELETE .../{webhook_id}`` removes one and
its log, ``GET .../webhooks/deliveries`` reads the log, newest first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session, sessionmaker

from alerts.url_safety import MAX_URL_LEN, UrlPolicy
from alerts.webhooks import (
    MAX_LISTED_DELIVERIES,
    CreatedWebhook,
    DeliveryInfo,
    TooManyWebhooks,
    WebhookError,
    WebhookInfo,
    create_webhook,
    delete_webhook,
    list_deliveries,
    list_webhooks,
)
from config import get_settings
from web.auth import AUTH_RESPONSES, BODY_UNREADABLE, ErrorDetail, readable_tenant
from web.body_limit import read_json
from web.dashboard import path_tenant
from web.db import sessions
from web.errors import invalid

DEFAULT_LISTED_DELIVERIES = 100
DeliveryStatus = Literal["pending", "delivered", "failed", "gave_up"]  # models.webhook.DELIVERY_STATUSES
router = APIRouter(prefix="/api/tenants/{tenant_id}/webhooks", tags=["webhooks"],
                   dependencies=[Depends(readable_tenant)], responses=AUTH_RESPONSES)  # fmt: skip


class WebhookBody(BaseModel):
    """A webhook to add."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=MAX_URL_LEN, description="https URL on a public address.")
    format: Literal["json", "slack"] = Field("json", description="json: the signed notification; slack: {text}.")


class WebhookOut(BaseModel):
    id: int
    tenant_id: str
    url: str
    format: str
    enabled: bool
    created_at: datetime


class CreatedOut(WebhookOut):
    secret: str = Field(description="Signs every delivery (X-Analytics-Signature); shown only in this answer.")


class DeliveryOut(BaseModel):
    id: int
    notification_id: UUID
    webhook_id: int
    attempt: int = Field(description="Attempts made so far.")
    status: str = Field(description="pending, delivered, failed (retried at next_attempt_at) or gave_up.")
    http_status: int | None
    error: str | None
    created_at: datetime
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    delivered_at: datetime | None


def _out(info: WebhookInfo) -> WebhookOut:
    return WebhookOut(id=info.id, tenant_id=info.tenant_id, url=info.url, format=info.format, enabled=info.enabled,
                      created_at=info.created_at)  # fmt: skip


def _delivery(d: DeliveryInfo) -> DeliveryOut:
    return DeliveryOut(id=d.id, notification_id=d.notification_id, webhook_id=d.webhook_id, attempt=d.attempt,
                       status=d.status, http_status=d.http_status, error=d.error, created_at=d.created_at,
                       next_attempt_at=d.next_attempt_at, last_attempt_at=d.last_attempt_at,
                       delivered_at=d.delivered_at)  # fmt: skip


@router.get("", response_model=list[WebhookOut])
def get_webhooks(tenant_id: str, factory: sessionmaker[Session] = Depends(sessions)) -> list[WebhookOut]:
    """The tenant's webhooks (never their secrets)."""
    with factory() as session:
        return [_out(w) for w in list_webhooks(session, path_tenant(tenant_id))]


WEBHOOK_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": WebhookBody.model_json_schema()}}}
}


CREATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **BODY_UNREADABLE,
    409: {"model": ErrorDetail, "description": "The tenant has WEBHOOK_MAX_PER_TENANT webhooks already"},
}


@router.post("", status_code=201, response_model=CreatedOut, openapi_extra=WEBHOOK_BODY, responses=CREATE_RESPONSES)
async def add_webhook(
    tenant_id: str, request: Request, factory: sessionmaker[Session] = Depends(sessions)
) -> CreatedOut:
    """Add a webhook; the answer holds its secret, which no later answer shows."""
    body = await read_json(request, WebhookBody)
    return await run_in_threadpool(_create, path_tenant(tenant_id), body, factory)


def _create(tenant_id: str, body: WebhookBody, factory: sessionmaker[Session]) -> CreatedOut:
    settings = get_settings()
    try:
        with factory.begin() as session:
            created: CreatedWebhook = create_webhook(session, tenant_id, body.url, body.format,
                                                     policy=UrlPolicy.from_settings(settings),
                                                     max_per_tenant=settings.webhook_max_per_tenant)  # fmt: skip
    except WebhookError as exc:
        raise invalid("body", exc.field, exc.message, getattr(body, exc.field, None)) from None
    except TooManyWebhooks as exc:
        raise HTTPException(409, str(exc)) from None
    return CreatedOut(**_out(created.webhook).model_dump(), secret=created.secret)


OTHER_METHODS = ["DELETE", "OPTIONS", "PATCH", "PUT", "TRACE"]
WEBHOOKS_METHODS = "GET, HEAD, POST"


# Starlette answers a method a path lacks with the Allow header of the path's first route only (GET here):
# this hidden route answers every other method with both.
@router.api_route("", methods=OTHER_METHODS, include_in_schema=False)
def webhooks_method_not_allowed() -> Response:
    raise HTTPException(405, "Method Not Allowed", headers={"Allow": WEBHOOKS_METHODS})


@router.get("/deliveries", response_model=list[DeliveryOut])
def get_deliveries(
    tenant_id: str,
    factory: sessionmaker[Session] = Depends(sessions),
    webhook_id: int | None = Query(None, ge=1, description="Only this webhook's deliveries."),
    status: DeliveryStatus | None = Query(None, description="Only this status."),
    limit: int = Query(DEFAULT_LISTED_DELIVERIES, ge=1, le=MAX_LISTED_DELIVERIES),
) -> list[DeliveryOut]:
    """The delivery log, newest first."""
    try:
        with factory() as session:
            found = list_deliveries(session, path_tenant(tenant_id), webhook_id=webhook_id, status=status, limit=limit)
    except WebhookError as exc:
        raise invalid("query", exc.field, exc.message, status) from None
    return [_delivery(d) for d in found]


@router.delete("/{webhook_id:int}", status_code=204, responses={404: {"model": ErrorDetail}})
def remove_webhook(tenant_id: str, webhook_id: int, factory: sessionmaker[Session] = Depends(sessions)) -> Response:
    """Delete a webhook and its delivery log; deliveries not made yet are dropped."""
    with factory.begin() as session:
        deleted = delete_webhook(session, path_tenant(tenant_id), webhook_id)
    if not deleted:
        raise HTTPException(404, f"tenant {tenant_id!r} has no webhook {webhook_id}")
    return Response(status_code=204)
