"""Alembic environment: URL from config.Settings, metadata from models."""

from __future__ import annotations

import re
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.schema import SchemaItem

from config import get_settings
from models import Base

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def database_url() -> str:
    """The URL a caller passed (storage.migrate), else the one from the environment."""
    return config.attributes.get("database_url") or get_settings().database_url


# Monthly partitions are managed by storage.partitions, not by migrations.
PARTITION_NAME = re.compile(r"^analytics_events_\d{4}_\d{2}$")


def include_object(
    obj: SchemaItem, name: str | None, type_: str, reflected: bool, compare_to: SchemaItem | None
) -> bool:
    """Leave the monthly partitions (and their indexes) out of autogenerate and ``alembic check``."""
    if type_ == "table" and name and PARTITION_NAME.match(name):
        return False
    if type_ == "index" and reflected and getattr(obj, "table", None) is not None:
        return not PARTITION_NAME.match(obj.table.name)
    return True


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            include_object=include_object,
            compare_server_default=True,  # `alembic check` also compares server defaults
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
