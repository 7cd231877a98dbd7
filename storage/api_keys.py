"""Creating, checking and revoking API keys.

Authenticating a key also records when it was last used, at most once per
``LAST_USED_RESOLUTION`` per key: a conditional UPDATE in the caller's
transaction when the stored time is older than that, nothing otherwise, so a
busy key costs one write a minute, not one per request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import Session

from models.api_key import PREFIX_LEN, SCOPE_ADMIN, SCOPE_TENANT, ApiKey
from schema.event import MAX_TENANT_ID_LEN, check_str

KEY_MARK = "ak"
SECRET_BYTES = 32
LAST_USED_RESOLUTION = timedelta(minutes=1)


class KeyRejected(Exception):
    """The presented key is malformed, unknown, revoked or expired (the message says which)."""


@dataclass(frozen=True)
class Principal:
    """Who a request is: one tenant, or an operator (admin, tenant_id None)."""

    key_id: int
    scope: str
    tenant_id: str | None

    @property
    def is_admin(self) -> bool:
        return self.scope == SCOPE_ADMIN


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(
    session: Session,
    *,
    name: str,
    tenant_id: str | None,
    admin: bool = False,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """A new key row and the key itself, which is shown once and never stored.

    ``expires_at`` (timezone-aware, in the future) or None for a key that does not expire.
    """
    if admin == (tenant_id is not None):
        raise ValueError("a key is either for one tenant (give tenant_id) or admin, not both or neither")
    if tenant_id is not None:
        check_str("tenant_id", tenant_id, MAX_TENANT_ID_LEN)
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")
        if expires_at <= datetime.now(UTC):
            raise ValueError(f"expires_at {expires_at.isoformat()} is not in the future")
    prefix = secrets.token_hex(PREFIX_LEN // 2)
    key = f"{KEY_MARK}_{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
    row = ApiKey(prefix=prefix, key_hash=_hash(key), scope=SCOPE_ADMIN if admin else SCOPE_TENANT,
                 tenant_id=tenant_id, name=name, expires_at=expires_at)  # fmt: skip
    session.add(row)
    session.flush()
    return row, key


def authenticate(session: Session, key: str) -> Principal:
    """Who ``key`` is, or KeyRejected saying why not.

    Records the use (see the module docstring) in the session's transaction:
    the caller commits it. A caller that does not commit loses only the
    bookkeeping, never the answer.
    """
    mark, _, rest = key.partition("_")
    prefix, _, secret = rest.partition("_")
    if mark != KEY_MARK or len(prefix) != PREFIX_LEN or not secret:
        raise KeyRejected("malformed API key")
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if row is None or not hmac.compare_digest(row.key_hash, _hash(key)):
        raise KeyRejected("unknown API key")
    if row.revoked_at is not None:
        raise KeyRejected("revoked API key")
    now = datetime.now(UTC)
    if row.expires_at is not None and row.expires_at <= now:
        raise KeyRejected("expired API key")
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        # The condition again in SQL: of concurrent requests in the same minute, one writes.
        session.execute(
            update(ApiKey)
            .where(
                ApiKey.id == row.id,
                or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= now - LAST_USED_RESOLUTION),
            )
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )
    return Principal(key_id=row.id, scope=row.scope, tenant_id=row.tenant_id)


def revoke(session: Session, prefix: str) -> bool:
    """Revoke by prefix; False if no live key has it."""
    result = cast(
        CursorResult[Any],
        session.execute(  # an UPDATE's result has rowcount
            update(ApiKey)
            .where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        ),
    )
    return result.rowcount == 1


def revoke_named(session: Session, *, tenant_id: str, name: str) -> int:
    """Revoke every live key of ``tenant_id`` called ``name``; returns how many."""
    result = cast(
        CursorResult[Any],
        session.execute(  # an UPDATE's result has rowcount
            update(ApiKey)
            .where(ApiKey.tenant_id == tenant_id, ApiKey.name == name, ApiKey.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        ),
    )
    return result.rowcount


def list_keys(session: Session, tenant_id: str | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.id)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    return list(session.scalars(query))
