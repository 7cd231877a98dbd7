"""Delivering notifications to webhooks: dispatch (work list), one attempt (signed POST), the retry schedule.

The ``deliveries`` table is the single source of truth; the Celery messages
(tasks.deliveries) only say "try this row now", so a lost or repeated message
costs a delay or nothing, never a lost or doubled delivery:

* ``dispatch`` adds a row for every notification of the last
  WEBHOOK_RETRY_FOR_S x each enabled webhook of its tenant created before it
  (a unique key makes a second dispatcher add nothing), then *claims* the due
  rows (pending or failed, ``next_attempt_at`` passed) by moving their
  ``next_attempt_at`` one ``QUEUED_LEASE_S`` ahead, and returns them to be
  enqueued. A message that never runs leaves its row due again after the lease.
* ``attempt`` locks the row (``FOR UPDATE SKIP LOCKED``: one sender per row;
  a busy row is left to its holder), sends nothing unless the row is still
  pending or failed, and records the answer in the same transaction. So a
  receiver that answered 2xx is never sent the notification again, except when
  the process dies between the answer and the commit: then the row is sent
  again, with the same ``X-Analytics-Notification-Id``, by which receivers
  deduplicate. The lock is held for the request (bounded by the timeout).
* A failed attempt is retried after ``retry_policy.Backoff(WEBHOOK_RETRY_BASE_S,
  WEBHOOK_RETRY_MAX_S)`` (exponential, full jitter), the last one at
  WEBHOOK_RETRY_FOR_S after the row was made; failing then, the row is gave_up.

Every connection goes to an address alerts.url_safety checked after resolving
the host (never a second lookup), with WEBHOOK_TIMEOUT_S on each network step,
no redirect followed (a 3xx is a failure), and at most
WEBHOOK_MAX_RESPONSE_BYTES of the answer read.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, text

from alerts.signing import NOTIFICATION_ID_HEADER, SIGNATURE_HEADER, signature_header
from alerts.url_safety import (
    IPAddress,
    Resolver,
    UnsafeUrl,
    UrlPolicy,
    WebhookUrl,
    parse_webhook_url,
    resolve_checked,
    system_resolver,
)
from config import Settings
from models.webhook import DELIVERED, FORMAT_SLACK, MAX_ERROR_LEN
from retry_policy import Backoff

QUEUED_LEASE_S = 60  # a claimed row is due again after this if its message never ran
DISPATCH_BATCH = 1000  # rows claimed per statement
DISPATCH_MAX_BATCHES = 20  # per dispatcher run; the next run takes the rest
BODY_READ_CHUNK = 8192
ERROR_BODY_CHARS = 200  # of a non-2xx answer, kept in the log's error
USER_AGENT = "ai-usage-analytics-webhooks/1"
SUCCESS = range(200, 300)

DISPATCH_NEW = text(
    "INSERT INTO deliveries (tenant_id, notification_id, webhook_id)"
    " SELECT n.tenant_id, n.id, w.id FROM notifications n"
    " JOIN webhooks w ON w.tenant_id = n.tenant_id AND w.enabled AND w.created_at <= n.created_at"
    " WHERE n.created_at >= now() - make_interval(secs => :window_s)"
    " AND NOT EXISTS (SELECT 1 FROM deliveries d"
    "   WHERE d.tenant_id = n.tenant_id AND d.notification_id = n.id AND d.webhook_id = w.id)"
    " ON CONFLICT (tenant_id, notification_id, webhook_id) DO NOTHING"
)
CLAIM_DUE = text(
    "UPDATE deliveries d SET next_attempt_at = clock_timestamp() + make_interval(secs => :lease_s)"
    " FROM (SELECT tenant_id, id FROM deliveries"
    "   WHERE status IN ('pending', 'failed') AND next_attempt_at <= clock_timestamp()"
    "   ORDER BY next_attempt_at LIMIT :batch FOR UPDATE SKIP LOCKED) due"
    " WHERE d.tenant_id = due.tenant_id AND d.id = due.id"
    " RETURNING d.tenant_id, d.id"
)
LOCK_ONE = text(
    "SELECT d.status, d.attempt, w.url, w.secret, w.format, w.enabled,"
    " n.id AS notification_id, n.rule_id, n.kind, n.state, n.payload"
    " FROM deliveries d"
    " JOIN webhooks w ON w.tenant_id = d.tenant_id AND w.id = d.webhook_id"
    " JOIN notifications n ON n.tenant_id = d.tenant_id AND n.id = d.notification_id"
    " WHERE d.tenant_id = :tenant_id AND d.id = :id"
    " FOR UPDATE OF d SKIP LOCKED"
)
RECORD_DELIVERED = text(
    "UPDATE deliveries SET attempt = attempt + 1, status = 'delivered', http_status = :http_status, error = NULL,"
    " last_attempt_at = clock_timestamp(), delivered_at = clock_timestamp()"
    " WHERE tenant_id = :tenant_id AND id = :id"
    " RETURNING status, attempt, next_attempt_at"
)
RECORD_FAILED = text(
    "UPDATE deliveries SET attempt = attempt + 1, http_status = :http_status, error = :error,"
    " last_attempt_at = clock_timestamp(),"
    " status = CASE WHEN clock_timestamp() >= created_at + make_interval(secs => :retry_for_s)"
    "   THEN 'gave_up' ELSE 'failed' END,"
    " next_attempt_at = LEAST(clock_timestamp() + make_interval(secs => :delay_s),"
    "   created_at + make_interval(secs => :retry_for_s))"
    " WHERE tenant_id = :tenant_id AND id = :id"
    " RETURNING status, attempt, next_attempt_at"
)


@dataclass(frozen=True)
class DeliveryKey:
    tenant_id: str
    id: int


@dataclass(frozen=True)
class Dispatched:
    created: int  # delivery rows added
    due: list[DeliveryKey]  # claimed: to be enqueued now


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes  # at most the cap
    truncated: bool  # the receiver sent more than the cap (the rest was not read)


@dataclass(frozen=True)
class Outcome:
    """What one attempt did: ``sent`` False when the row was busy, gone, or no longer open."""

    sent: bool
    status: str | None  # the row's status afterwards (None: no such row, or locked by another attempt)
    http_status: int | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None


Sender = Callable[[WebhookUrl, IPAddress, bytes, Mapping[str, str], float, int], Answer]


# --- the HTTP request, pinned to a checked address ------------------------------------------------


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to ``address``; the Host header still names the URL's host."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """Connects to ``address``; TLS still sends the URL's host (SNI) and verifies the certificate against it."""

    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


def post(
    url: WebhookUrl, address: IPAddress, body: bytes, headers: Mapping[str, str], timeout_s: float, max_bytes: int
) -> Answer:
    """POST ``body`` to ``url`` at ``address``; reads at most ``max_bytes`` of the answer, within about
    three timeouts in all. Network errors raise OSError (http.client's errors included)."""
    conn: http.client.HTTPConnection
    if url.scheme == "https":
        conn = _PinnedHTTPSConnection(url.host, url.port, str(address), timeout_s, ssl.create_default_context())
    else:
        conn = _PinnedHTTPConnection(url.host, url.port, str(address), timeout_s)
    deadline = time.monotonic() + 3 * timeout_s
    try:
        conn.request("POST", url.target, body=body, headers={"User-Agent": USER_AGENT, **headers})
        response = conn.getresponse()
        received = bytearray()
        while len(received) <= max_bytes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the answer took longer than {3 * timeout_s:g} s to read")
            chunk = response.read(min(BODY_READ_CHUNK, max_bytes + 1 - len(received)))
            if not chunk:
                break
            received += chunk
        return Answer(response.status, bytes(received[:max_bytes]), len(received) > max_bytes)
    except http.client.HTTPException as exc:
        raise OSError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()


# --- payloads ---------------------------------------------------------------------------------------


def json_payload(tenant_id: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """The json format's body: the evaluator's payload, its identity (id, tenant, kind, state) taken from the
    outbox row so that it always matches the X-Analytics-Notification-Id header."""
    payload: Mapping[str, Any] = row["payload"] if isinstance(row["payload"], Mapping) else {}
    return {**payload, "id": str(row["notification_id"]), "tenant_id": tenant_id, "kind": row["kind"],
            "state": row["state"]}  # fmt: skip


def slack_text(tenant_id: str, row: Mapping[str, Any]) -> str:
    """The text of a Slack-compatible incoming webhook: the payload's ``message`` (the evaluator writes one
    line saying state, rule, value and threshold), else one made of the state, the rule and the plain values."""
    payload: Mapping[str, Any] = row["payload"] if isinstance(row["payload"], Mapping) else {}
    message = payload.get("message")
    if isinstance(message, str) and message:
        return message
    reminder = " (reminder)" if row["kind"] == "reminder" else ""
    details = ", ".join(
        f"{key}: {value}"
        for key, value in sorted(payload.items())
        if isinstance(value, str | int | float) and not isinstance(value, bool)
    )
    return f"[{str(row['state']).upper()}]{reminder} rule {row['rule_id']} (tenant {tenant_id})" + (
        f": {details}" if details else ""
    )


def render(tenant_id: str, row: Mapping[str, Any], fmt: str) -> bytes:
    body = {"text": slack_text(tenant_id, row)} if fmt == FORMAT_SLACK else json_payload(tenant_id, row)
    return json.dumps(body, separators=(",", ":"), sort_keys=True, default=str).encode()


# --- dispatch and attempt ---------------------------------------------------------------------------


def dispatch(engine: Engine, settings: Settings) -> Dispatched:
    """Add the rows of new notifications x webhooks and claim the due rows (one transaction per batch)."""
    with engine.begin() as conn:
        created = conn.execute(DISPATCH_NEW, {"window_s": settings.webhook_retry_for_s}).rowcount
    due: list[DeliveryKey] = []
    for _ in range(DISPATCH_MAX_BATCHES):
        with engine.begin() as conn:
            rows = conn.execute(CLAIM_DUE, {"lease_s": QUEUED_LEASE_S, "batch": DISPATCH_BATCH}).all()
        due.extend(DeliveryKey(row.tenant_id, row.id) for row in rows)
        if len(rows) < DISPATCH_BATCH:
            break
    return Dispatched(created=created, due=due)


def _error_text(message: str) -> str:
    return message.replace("\x00", "")[:MAX_ERROR_LEN]


def _send(row: Mapping[str, Any], key: DeliveryKey, settings: Settings, resolver: Resolver,
          sender: Sender) -> tuple[int | None, str | None]:  # fmt: skip
    """Sign and send; (http status, None) on 2xx, else (status or None, what went wrong)."""
    policy = UrlPolicy.from_settings(settings)
    try:
        url = parse_webhook_url(row["url"], policy)
        address = resolve_checked(url, policy, resolver)[0]
    except UnsafeUrl as exc:
        return None, f"refused: {exc}"
    body = render(key.tenant_id, row, row["format"])
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: signature_header(row["secret"], body),
        NOTIFICATION_ID_HEADER: str(row["notification_id"]),
    }
    try:
        answer = sender(url, address, body, headers, settings.webhook_timeout_s, settings.webhook_max_response_bytes)
    except Exception as exc:  # noqa: BLE001 - every failed request is a logged attempt (refused, timeout, TLS, ...)
        # Raised on, it would roll the attempt back: never counted, the row would be retried past its deadline.
        return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if answer.status in SUCCESS:
        return answer.status, None
    excerpt = answer.body[:ERROR_BODY_CHARS].decode("utf-8", "replace")
    return answer.status, f"HTTP {answer.status}" + (f": {excerpt}" if excerpt else "")


def attempt(
    engine: Engine,
    key: DeliveryKey,
    settings: Settings,
    *,
    resolver: Resolver = system_resolver,
    sender: Sender = post,
) -> Outcome:
    """Try one delivery row now (see the module's contract); records the attempt unless nothing was sent."""
    with engine.begin() as conn:
        found = conn.execute(LOCK_ONE, {"tenant_id": key.tenant_id, "id": key.id}).mappings().first()
        if found is None:
            return Outcome(sent=False, status=None)
        row: dict[str, Any] = dict(found)
        http_status: int | None
        error: str | None
        if row["status"] not in ("pending", "failed"):
            return Outcome(sent=False, status=row["status"])
        if not row["enabled"]:
            http_status, error = None, "the webhook is disabled"
        else:
            http_status, error = _send(row, key, settings, resolver, sender)
        return _record(conn, key, settings, row["attempt"], http_status, error)


def _record(conn: Connection, key: DeliveryKey, settings: Settings, made: int, http_status: int | None,
            error: str | None) -> Outcome:  # fmt: skip
    """Log the attempt; a failure's pause is retry number ``made`` (the attempts before this one) of the backoff."""
    params: dict[str, Any] = {"tenant_id": key.tenant_id, "id": key.id, "http_status": http_status}
    if error is None:
        conn.execute(RECORD_DELIVERED, params)
        return Outcome(sent=True, status=DELIVERED, http_status=http_status)
    delay = Backoff(settings.webhook_retry_base_s, settings.webhook_retry_max_s).delay(made)
    done = conn.execute(RECORD_FAILED, {**params, "error": _error_text(error), "delay_s": delay,
                                        "retry_for_s": settings.webhook_retry_for_s}).one()  # fmt: skip
    return Outcome(sent=True, status=done.status, http_status=http_status, error=error,
                   next_attempt_at=done.next_attempt_at)  # fmt: skip
