"""Rollup tables: the pending-batch log and the hourly/daily aggregates built from it.

See storage.rollups for how they are kept exact. Dimension columns mirror
``analytics_events``; a NULL model or provider is stored as ``''`` (NO_MODEL,
NO_PROVIDER) so that it can be part of the primary key. ``input_band`` is the
band of each event's input size (schema.bands): tiered prices charge a request
by its own input size, so sums are kept per band for pricing to be exact.

The latency histogram is sparse: two parallel arrays, the indexes of the
non-empty log-spaced buckets in ascending order and their counts (see
storage.histogram for the bucket scheme and its relative error). The time to
first token of streamed calls has one of its own, in the same buckets; a cell
without streamed calls has empty arrays and no TTFT min/max.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Integer, PrimaryKeyConstraint, SmallInteger, String, func
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, FeatureName, TenantId, UserId, UtcTimestamp
from schema.event import MAX_MODEL_LEN, MAX_PROVIDER_LEN

NO_MODEL = ""  # stands for a NULL model in the rollups' primary keys
NO_PROVIDER = ""  # stands for a NULL provider in the rollups' primary keys


class RollupPendingBatch(Base):
    """One stored batch of events not yet added to the rollups.

    Inserted in the batch's own transaction (storage.events), so it becomes
    visible exactly when the batch's rows do; deleted by the rollup run that
    adds those rows, in that run's transaction.
    """

    __tablename__ = "rollup_pending_batches"

    batch_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    min_ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    max_ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class _Figures:
    """Columns shared by the hourly and the daily rollup."""

    calls: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    tokens_used: Mapped[int] = mapped_column(BigInteger)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    latency_sum: Mapped[int] = mapped_column(BigInteger)
    latency_min: Mapped[int] = mapped_column(Integer)
    latency_max: Mapped[int] = mapped_column(Integer)
    latency_hist_buckets: Mapped[list[int]] = mapped_column(ARRAY(SmallInteger))
    latency_hist_counts: Mapped[list[int]] = mapped_column(ARRAY(Integer))
    # Time to first token of the streamed calls (events with one): their count, sum, min/max
    # (NULL while there is none) and histogram, kept like latency's.
    streamed_calls: Mapped[int] = mapped_column(BigInteger, server_default="0")
    ttft_sum: Mapped[int] = mapped_column(BigInteger, server_default="0")
    ttft_min: Mapped[int | None] = mapped_column(Integer)
    ttft_max: Mapped[int | None] = mapped_column(Integer)
    ttft_hist_buckets: Mapped[list[int]] = mapped_column(ARRAY(SmallInteger), server_default="{}")
    ttft_hist_counts: Mapped[list[int]] = mapped_column(ARRAY(Integer), server_default="{}")


# Key order (tenant, time, ...): every read is one tenant over a time range.
ROLLUP_KEY = ("tenant_id", "bucket", "feature_name", "model", "provider", "input_band")
USER_ROLLUP_KEY = ("tenant_id", "day", "feature_name", "user_id", "model", "provider", "input_band")


class RollupHourly(_Figures, Base):
    __tablename__ = "rollup_hourly"

    tenant_id: Mapped[TenantId]
    bucket: Mapped[UtcTimestamp] = mapped_column(doc="Start of the UTC hour.")
    feature_name: Mapped[FeatureName]
    model: Mapped[str] = mapped_column(String(MAX_MODEL_LEN))
    provider: Mapped[str] = mapped_column(String(MAX_PROVIDER_LEN), server_default=NO_PROVIDER)
    input_band: Mapped[int] = mapped_column(Integer, server_default="0", doc="schema.bands.input_band")

    __table_args__ = (PrimaryKeyConstraint(*ROLLUP_KEY),)


class RollupDaily(_Figures, Base):
    __tablename__ = "rollup_daily"

    tenant_id: Mapped[TenantId]
    bucket: Mapped[UtcTimestamp] = mapped_column(doc="Start of the UTC day.")
    feature_name: Mapped[FeatureName]
    model: Mapped[str] = mapped_column(String(MAX_MODEL_LEN))
    provider: Mapped[str] = mapped_column(String(MAX_PROVIDER_LEN), server_default=NO_PROVIDER)
    input_band: Mapped[int] = mapped_column(Integer, server_default="0", doc="schema.bands.input_band")

    __table_args__ = (PrimaryKeyConstraint(*ROLLUP_KEY),)


class RollupDailyUser(Base):
    """Per user active on a feature on a day, one row per model, provider and input band.

    Exact DAU is a count of distinct users. The rows also carry the user's
    calls, errors and token sums that day, which is what "top users" ranks by
    (summed over the user's rows) and what prices a user's cost per model.
    """

    __tablename__ = "rollup_daily_users"

    tenant_id: Mapped[TenantId]
    day: Mapped[UtcTimestamp] = mapped_column(doc="Start of the UTC day.")
    feature_name: Mapped[FeatureName]
    user_id: Mapped[UserId]
    model: Mapped[str] = mapped_column(String(MAX_MODEL_LEN), server_default=NO_MODEL)
    provider: Mapped[str] = mapped_column(String(MAX_PROVIDER_LEN), server_default=NO_PROVIDER)
    input_band: Mapped[int] = mapped_column(Integer, server_default="0", doc="schema.bands.input_band")
    calls: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    tokens_used: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    output_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")

    __table_args__ = (PrimaryKeyConstraint(*USER_ROLLUP_KEY),)
