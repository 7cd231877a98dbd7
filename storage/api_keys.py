"""Creating, checking and revoking API keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from models.api_key import PREFIX_LEN, SCOPE_ADMIN, SCOPE_TENANT, ApiKey
from schema.event import MAX_TENANT_ID_LEN, check_str

KEY_MARK = "ak"
SECRET_BYTES = 32


class KeyRejected(Exception):
    """The presented key is malformed, unknown or revoked (the message says which)."""


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


def create_key(session: Session, *, name: str, tenant_id: str | None, admin: bool = False) -> tuple[ApiKey, str]:
    """A new key row and the key itself, which is shown once and never stored."""
    if admin == (tenant_id is not None):
        raise ValueError("a key is either for one tenant (give tenant_id) or admin, not both or neither")
    if tenant_id is not None:
        check_str("tenant_id", tenant_id, MAX_TENANT_ID_LEN)
    prefix = secrets.token_hex(PREFIX_LEN // 2)
    key = f"{KEY_MARK}_{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
    row = ApiKey(prefix=prefix, key_hash=_hash(key), scope=SCOPE_ADMIN if admin else SCOPE_TENANT,
                 tenant_id=tenant_id, name=name)  # fmt: skip
    session.add(row)
    session.flush()
    return row, key


def authenticate(session: Session, key: str) -> Principal:
    mark, _, rest = key.partition("_")
    prefix, _, secret = rest.partition("_")
    if mark != KEY_MARK or len(prefix) != PREFIX_LEN or not secret:
        raise KeyRejected("malformed API key")
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if row is None or not hmac.compare_digest(row.key_hash, _hash(key)):
        raise KeyRejected("unknown API key")
    if row.revoked_at is not None:
        raise KeyRejected("revoked API key")
    return Principal(key_id=row.id, scope=row.scope, tenant_id=row.tenant_id)


def revoke(session: Session, prefix: str) -> bool:
    """Revoke by prefix; False if no live key has it."""
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
        .values(revoked_at=datetime.now(timezone.utc))
    )
    return result.rowcount == 1


def list_keys(session: Session, tenant_id: str | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.id)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    return list(session.scalars(query))
