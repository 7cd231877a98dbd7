"""The per-tenant catalog of feature and model names (bounded per tenant, storage.tenant_names).

One row per distinct name a tenant's stored events use; ``storage.tenant_names``
counts them to cap TENANT_MAX_FEATURES and TENANT_MAX_MODELS. The primary key
leads with ``tenant_id``: the cap counts one tenant's names, and the design
wants ``tenant_id`` in every unique key (distributable by tenant with Citus).
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from sqlalchemy import CheckConstraint, DateTime, PrimaryKeyConstraint, String, func
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, TenantId
from schema.event import MAX_FEATURE_NAME_LEN, MAX_MODEL_LEN

FEATURE: Final = "feature"
MODEL: Final = "model"
KIND_LEN: Final = 16
NAME_LEN: Final = max(MAX_FEATURE_NAME_LEN, MAX_MODEL_LEN)


class TenantName(Base):
    __tablename__ = "tenant_names"

    tenant_id: Mapped[TenantId]
    kind: Mapped[str] = mapped_column(String(KIND_LEN))  # FEATURE or MODEL
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "kind", "name"),
        CheckConstraint(f"kind IN ('{FEATURE}', '{MODEL}')", name="kind_known"),
    )
