"""Settings factory.

Every tunable lives here, read from environment variables (upper-case field
names, e.g. ``DATABASE_URL``, ``PRODUCER_BATCH_SIZE``). Defaults work on a
developer machine with PostgreSQL and RabbitMQ on localhost. Nothing here opens
a connection: building Settings is pure.
"""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from typing import Final, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    # --- services -----------------------------------------------------------
    database_url: str = Field(
        "postgresql+psycopg2://postgres@127.0.0.1:5432/analytics",
        description="SQLAlchemy URL of the PostgreSQL database.",
    )
    database_owner_url: str = Field(
        "",
        description="URL of the role that owns the tables (python -m cli migrate --create-roles), "
        "used only by migrations and partition retention (DETACH/DROP need the owner); "
        "empty: DATABASE_URL.",
    )
    database_role_prefix: str = Field(
        "analytics",
        pattern=r"^[a-z_][a-z0-9_]{0,40}$",
        description="Names of the roles python -m cli migrate --create-roles creates: "
        "<prefix>_owner, <prefix>_worker, <prefix>_web.",
    )
    database_owner_password: SecretStr | None = Field(
        None, description="Password set on <prefix>_owner by --create-roles; unset: none set."
    )
    database_worker_password: SecretStr | None = Field(
        None, description="Password set on <prefix>_worker by --create-roles; unset: none set."
    )
    database_web_password: SecretStr | None = Field(
        None, description="Password set on <prefix>_web by --create-roles; unset: none set."
    )
    celery_broker_url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672//",
        description="amqp://... for RabbitMQ, redis://... for Redis.",
    )
    redis_visibility_timeout_s: int = Field(
        300,
        description="Redis broker only: seconds before an unacknowledged message "
        "is redelivered. Writes are idempotent, so a short value costs only "
        "repeated work; a long one delays recovery after a worker dies.",
    )

    # --- producer (track) ---------------------------------------------------
    producer_batch_size: int = Field(1000, ge=1, description="Events per broker message.")
    producer_flush_interval_ms: int = Field(200, ge=1, description="Longest time an event waits in the buffer.")
    producer_buffer_max_events: int = Field(
        200_000,
        ge=1,
        description="Bound of the in-process buffer; events beyond it are "
        "refused (counted in stats().dropped_buffer_full).",
    )
    producer_retry_max_s: float = Field(5.0, gt=0, description="Cap of the publish retry backoff.")
    producer_spool_dir: str = Field(
        "var/producer-spool",
        description="Directory of the on-disk spool used while the broker is "
        "unreachable; empty disables it (then only the memory buffer holds events).",
    )
    producer_spool_max_bytes: int = Field(
        1_073_741_824,
        ge=0,
        description="Cap of the on-disk spool (bytes, per queue); once reached, events that "
        "cannot be published stay in the memory buffer (bounded by PRODUCER_BUFFER_MAX_EVENTS), "
        "a metric and a log line say so. 0 means no cap.",
    )
    producer_exit_flush_timeout_s: float = Field(
        5.0, ge=0, description="How long interpreter exit waits for the buffer to publish."
    )
    producer_redis_resend_window_s: float = Field(
        10.0,
        ge=0,
        description="Redis broker only: after a failed publish, the producer publishes again "
        "what it published in the last this-many seconds (kombu's Redis transport can lose a "
        "message a worker took just as Redis went down; writes are idempotent). 0 disables.",
    )

    # --- worker -------------------------------------------------------------
    ingest_queue: str = Field("ingest", description="Queue of the ingest task.")
    ingest_writer: Literal["bulk", "copy"] = Field(
        "bulk",
        description="How the worker writes a batch: bulk (Session.bulk_insert_mappings) "
        "or copy (COPY FROM STDIN, less database CPU per row).",
    )
    ingest_retry_max_s: int = Field(60, ge=1, description="Cap of the worker's retry backoff on database errors.")
    worker_prefetch_multiplier: int = Field(2, ge=1, description="Messages each worker process reserves ahead.")
    ingest_mode: Literal["task", "aggregate"] = Field(
        "task",
        description="What the Procfile's worker runs: task (the Celery task, one transaction "
        "per broker message) or aggregate (python -m tasks.aggregator: many messages per "
        "transaction, for producers that send many small messages).",
    )
    ingest_aggregate_max_events: int = Field(
        5000,
        ge=1,
        description="Aggregator: events per transaction; a flush starts when this many are held.",
    )
    ingest_aggregate_max_wait_ms: int = Field(
        200,
        ge=1,
        description="Aggregator: longest a message waits for more before its flush starts.",
    )
    ingest_aggregate_max_messages: int = Field(
        1000,
        ge=1,
        description="Aggregator: cap of the prefetch window (unacknowledged messages held); "
        "the window itself is about two flushes of events.",
    )

    ingest_max_rows_per_message: int = Field(
        10_000,
        ge=1,
        description="Most rows one ingest message may carry at the worker; a larger message "
        "is dead-lettered whole, unparsed.",
    )
    ingest_max_message_bytes: int = Field(
        16_000_000,
        ge=1,
        description="Largest ingest message body the worker accepts; a larger one is dead-lettered whole, unparsed.",
    )
    ingest_max_partitions_per_batch: int = Field(
        4,
        ge=1,
        description="Most partitions one batch may create; rows of further missing months "
        "are dead-lettered with the reason (a batch spanning many months is an attack or a bug).",
    )
    tenant_max_features: int = Field(
        1000,
        ge=1,
        description="Most distinct feature names per tenant; events naming a new one beyond "
        "it are dead-lettered with the reason.",
    )
    tenant_max_models: int = Field(
        1000,
        ge=1,
        description="Most distinct model names per tenant; events naming a new one beyond "
        "it are dead-lettered with the reason.",
    )

    # --- partitions (storage.partitions) -------------------------------------
    partition_months_ahead: int = Field(3, ge=1, description="Months after the current one kept created ahead.")
    partition_retention_months: int = Field(
        0,
        ge=0,
        description="Full months kept before the current one; older partitions are "
        "detached by retention and events older than that are dead-lettered. "
        "0 keeps every month (no retention, no lower bound on timestamps).",
    )
    partition_keep_detached: bool = Field(
        False,
        description="Retention leaves expired partitions as detached tables "
        "(to archive them) instead of dropping them.",
    )
    partition_lock_timeout_ms: int = Field(
        2000,
        gt=0,
        description="lock_timeout of partition DDL; a statement that cannot lock the "
        "table in time backs off and retries instead of queueing in front of ingest.",
    )
    partition_lock_retries: int = Field(5, ge=0, description="Retries of partition DDL after a lock timeout.")
    event_max_future_skew_s: int = Field(
        86_400,
        ge=0,
        description="How far ahead of the clock an event's timestamp may be; later "
        "ones are refused by track() and dead-lettered by the worker.",
    )

    event_max_past_age_days: int = Field(
        730,
        ge=1,
        description="How far back an event's timestamp may be (days), for backfills; older "
        "ones are refused by track() and the HTTP API and dead-lettered by the worker. "
        "Retention (PARTITION_RETENTION_MONTHS), when set, bounds it further.",
    )

    # --- alerts (alerts.evaluate) --------------------------------------------
    alerts_queue: str = Field("alerts", description="Queue of the alert evaluation task.")
    alert_evaluate_interval_s: int = Field(
        60, ge=1, description="Beat evaluates every enabled alert rule this often (one evaluator at a time)."
    )
    alert_hysteresis_ratio: Decimal = Field(
        Decimal("0.1"),
        ge=0,
        lt=1,
        description="An alert leaves a state only once its value falls below threshold x (1 - this) "
        "(above threshold x (1 + this) for a partition horizon), so a value hovering at a threshold does not flap.",
    )
    alert_reminder_hours: float = Field(
        4.0, gt=0, description="While a rule stays warning or critical, a reminder notification at most this often."
    )

    # --- rollups (storage.rollups) -------------------------------------------
    rollup_queue: str = Field(
        "rollups", description="Queue of the rollup tasks, apart from ingest so that neither starves the other."
    )
    rollup_interval_s: int = Field(
        10, ge=1, description="Beat starts an incremental rollup run this often; queries add the tail anyway."
    )
    rollup_chunk_batches: int = Field(
        1000, ge=1, description="Pending batches one rollup transaction takes (about 1,000 events each)."
    )

    # --- prices (pricing/) ---------------------------------------------------
    price_max_usd_per_mtok: Decimal = Field(
        Decimal(1000),
        gt=0,
        description="Largest per-million-token rate a price override may set (USD); larger ones are refused as absurd.",
    )
    price_max_usd_per_call: Decimal = Field(
        Decimal(10),
        gt=0,
        description="Largest per-call fee a price override may set (USD); larger ones are refused as absurd.",
    )
    prices_refresh_interval_s: int = Field(
        3600,
        ge=1,
        description="Beat recomputes the materialized rate table (cost_rates) this often, so that an upgraded "
        "price catalog (genai-prices, after a restart) reaches every figure.",
    )

    # --- webhooks (alerts.delivery) -------------------------------------------
    webhook_allow_http: bool = Field(
        False, description="Allow http:// webhook URLs (https only otherwise); for tests and closed networks."
    )
    webhook_allow_private_addresses: bool = Field(
        False,
        description="Allow webhooks to loopback, private, link-local, CGNAT and other non-public addresses "
        "(cloud metadata addresses stay refused); for tests and closed networks.",
    )
    webhook_timeout_s: float = Field(
        5.0, gt=0, description="Timeout of each network step of a delivery (connect, send, each read)."
    )
    webhook_max_response_bytes: int = Field(
        65_536, ge=0, description="Most bytes of a receiver's answer read (the rest is never read)."
    )
    webhook_retry_base_s: float = Field(
        10.0, gt=0, description="Pause before a failed delivery's first retry; it doubles each retry (full jitter)."
    )
    webhook_retry_max_s: float = Field(3600.0, gt=0, description="Cap of the pause between delivery attempts.")
    webhook_retry_for_s: int = Field(
        86_400, ge=0, description="A delivery still failing this long after its notification is given up (gave_up)."
    )
    webhook_dispatch_interval_s: float = Field(
        5.0, gt=0, description="Beat runs the webhook dispatcher (new notifications and due retries) this often."
    )
    webhook_max_per_tenant: int = Field(10, ge=1, description="Most webhooks one tenant may register.")

    # --- web ----------------------------------------------------------------
    http_max_batch_events: int = Field(1000, ge=1, description="Most events one POST /v1/events may carry.")
    http_max_body_bytes: int = Field(5_000_000, ge=1, description="Largest request body POST /v1/events reads.")
    otlp_max_spans: int = Field(
        10_000,
        ge=1,
        description="Most spans one POST /v1/traces may carry; a larger request is answered 413 before any is mapped.",
    )
    otlp_feature_attributes: str = Field(
        "app.feature,gen_ai.agent.name",
        description="Span attributes naming the feature of a span sent to POST /v1/traces, comma-separated, "
        "looked up on the span, then on its resource; none present: the span's name.",
    )
    otlp_user_attributes: str = Field(
        "user.id,enduser.id",
        description="Span attributes naming the user of a span sent to POST /v1/traces, comma-separated, "
        "looked up on the span, then on its resource; none present: OTLP_DEFAULT_USER.",
    )
    otlp_default_user: str = Field(
        "unknown",
        description="user_id of a span with none of OTLP_USER_ATTRIBUTES; empty: such spans are rejected.",
    )
    api_statement_timeout_ms: int = Field(
        5000,
        ge=1,
        description="statement_timeout of the API's and dashboard's reads; a read that takes longer is answered 503.",
    )
    api_max_points: int = Field(
        5_000,
        ge=1,
        description="Most points (rows x series) one read response may hold; a larger "
        "request is answered 422 naming the limit. 5,000 allows an hourly series of about "
        "200 days and refuses one over the longest range (400 days, 9,600 hours).",
    )
    rate_limit_ingest: str = Field(
        "100/second",
        description="Requests per API key on ingest routes, in the limits library's "
        "notation (e.g. '100/second;3000/minute'); more are answered 429 with Retry-After.",
    )
    rate_limit_read: str = Field(
        "50/second",
        description="Requests per API key on read routes (same notation as RATE_LIMIT_INGEST).",
    )
    rate_limit_storage_url: str = Field(
        "memory://",
        description="Where the rate limiter keeps its counters: memory:// (per web process) "
        "or redis://host:port/db (shared by every web process).",
    )
    api_docs_enabled: bool = Field(
        False,
        description="Serve /docs (Swagger UI, assets served locally) and /openapi.json.",
    )
    dashboard_vendor_dir: str = Field(
        "web/node_modules/chart.js/dist",
        description="Chart.js build (installed by npm at setup) served at /static/vendor/chart.js; "
        "relative to the repository. Missing: the dashboard page shows its table without charts.",
    )
    demo_error_rate: float = Field(0.03, ge=0, le=1, description="Share of stand-in AI calls that fail.")

    @property
    def broker_is_redis(self) -> bool:
        return self.celery_broker_url.startswith(("redis://", "rediss://"))


# Settings' own defaults, the environment not read: for a default that code needs
# outside the process's configuration (a dataclass field, a parameter's default).
DEFAULTS: Final = Settings.model_construct()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings()
