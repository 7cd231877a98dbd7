"""API keys: stored hashed, each scoped to one tenant, or ``admin`` for operators.

A key reads ``ak_<prefix>_<secret>``. The prefix is public (it names the key
in listings and finds its row); only the SHA-256 of the whole key is stored.
Keys are 256-bit random strings, so a fast hash is enough: there is nothing
to brute-force the way there is with a password.

A key may expire (``expires_at``); ``last_used_at`` tells an operator which
keys are still in use before revoking one.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, String, func
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from schema.event import MAX_TENANT_ID_LEN

SCOPE_TENANT = "tenant"
SCOPE_ADMIN = "admin"
PREFIX_LEN = 12
HASH_LEN = 64
MAX_KEY_NAME_LEN = 128


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    prefix: Mapped[str] = mapped_column(String(PREFIX_LEN), unique=True)
    key_hash: Mapped[str] = mapped_column(String(HASH_LEN))
    scope: Mapped[str] = mapped_column(String(16))
    tenant_id: Mapped[str | None] = mapped_column(String(MAX_TENANT_ID_LEN))
    name: Mapped[str] = mapped_column(String(MAX_KEY_NAME_LEN))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Written at most once per storage.api_keys.LAST_USED_RESOLUTION per key, not per request.
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # None: never

    __table_args__ = (
        CheckConstraint(
            "(scope = 'tenant' AND tenant_id IS NOT NULL) OR (scope = 'admin' AND tenant_id IS NULL)",
            name="scope_matches_tenant",
        ),
    )
