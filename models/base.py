"""Declarative base and the column types shared by the models."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from sqlalchemy import DateTime, MetaData, String
from sqlalchemy.orm import DeclarativeBase, mapped_column

from schema.event import MAX_FEATURE_NAME_LEN, MAX_TENANT_ID_LEN, MAX_USER_ID_LEN

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}

TenantId = Annotated[str, mapped_column(String(MAX_TENANT_ID_LEN))]
FeatureName = Annotated[str, mapped_column(String(MAX_FEATURE_NAME_LEN))]
UserId = Annotated[str, mapped_column(String(MAX_USER_ID_LEN))]
UtcTimestamp = Annotated[datetime, mapped_column(DateTime(timezone=True))]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
