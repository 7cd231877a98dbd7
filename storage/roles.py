"""Database roles for least privilege: the owner, the workers and the web process.

``python -m cli migrate --create-roles`` makes three login roles, named from
DATABASE_ROLE_PREFIX (``<prefix>_owner``, ``<prefix>_worker``, ``<prefix>_web``):

* **owner** owns every table, partition, sequence and function, runs the
  migrations and partition retention (DETACH .. CONCURRENTLY and DROP need the
  owner and cannot run inside a function). DATABASE_OWNER_URL names it.
* **worker** (ingest worker, aggregator, rollups worker, beat's partition task)
  inserts events, logs and rolls up batches, upserts rollups and dead letters,
  and creates a missing month only through the owner's SECURITY DEFINER
  function ``analytics_events_create_month(date)`` (migration 0005). It cannot
  read ``api_keys`` nor ALTER or DROP anything.
* **web** reads the rollups, the pending tail of raw events the queries add,
  the dead-letter count (/metrics, the ``id`` column only) and API keys, and
  may update only ``api_keys.last_used_at``. It cannot write events.

Privileges on the partitioned parent govern every access through it, so the
partitions the function creates later (owned by the owner) need no grants.
``TABLE_GRANTS`` is the whole list; ``grant`` revokes what the two roles had
and grants it again, so running it twice converges. A table of the schema that
the list does not name stays owner-only and is reported (a test keeps the list
complete).

Roles are cluster-wide; passwords come from the environment (DATABASE_*_PASSWORD)
and are sent as a SCRAM verifier computed by libpq, so the server's statement
log never holds the password itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

from psycopg2.extensions import connection, encrypt_password
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from storage.partitions import PARTITION_NAME

ROLE_PREFIX = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")
OWNER, WORKER, WEB = "owner", "worker", "web"
KINDS = (OWNER, WORKER, WEB)
CREATE_MONTH_FUNCTION = "analytics_events_create_month(date)"

ROLLUP_TABLES = ("rollup_hourly", "rollup_daily", "rollup_daily_users")
PRICE_TABLES = ("cost_rates", "cost_rate_scopes")  # materialized rate schedules (pricing.rates)
# What each role may do, table by table. The statements behind each line:
TABLE_GRANTS: dict[str, dict[str, tuple[str, ...]]] = {
    WORKER: {
        # storage.writers (INSERT, COPY FROM), storage.events._already_stored and the rollup fill (SELECT)
        "analytics_events": ("SELECT", "INSERT"),
        # storage.rollups: open_batch (INSERT .. RETURNING), discard_batch and DROP_PENDING (DELETE),
        # TAKE_PENDING (SELECT .. FOR UPDATE SKIP LOCKED, which needs UPDATE on some column)
        "rollup_pending_batches": ("SELECT", "INSERT", "DELETE", "UPDATE (created_at)"),
        # storage.rollups: upserts (INSERT .. ON CONFLICT DO UPDATE), rebuild_day (DELETE)
        **{table: ("SELECT", "INSERT", "UPDATE", "DELETE") for table in ROLLUP_TABLES},
        # storage.dead_letters.record (INSERT .. ON CONFLICT DO UPDATE)
        "dead_letters": ("SELECT", "INSERT", "UPDATE"),
        # storage.tenant_names: a tenant's names counted against the caps, new ones added
        "tenant_names": ("SELECT", "INSERT"),
        # pricing.rates: ensure_priced (rollup runs) and refresh (prices.refresh) rewrite the rate schedules
        "price_overrides": ("SELECT",),
        **{table: ("SELECT", "INSERT", "DELETE") for table in PRICE_TABLES},
        "priced_models": ("SELECT", "INSERT"),
        # alerts.evaluate: the enabled rules, their states (locked FOR UPDATE, written back), and per state
        # change a history row and its notification (the outbox webhook delivery reads)
        "alert_rules": ("SELECT",),
        "alert_states": ("SELECT", "INSERT", "UPDATE"),
        "alert_history": ("SELECT", "INSERT"),
        "notifications": ("SELECT", "INSERT"),
        # alerts.delivery: webhooks with their secrets (signing), the delivery rows it adds, claims and logs
        "webhooks": ("SELECT",),
        "deliveries": ("SELECT", "INSERT", "UPDATE"),
    },
    WEB: {
        # queries.rollups: rollups plus the raw rows of pending batches
        **{table: ("SELECT",) for table in ROLLUP_TABLES},
        "rollup_pending_batches": ("SELECT",),
        "analytics_events": ("SELECT",),
        # web.metrics: count(*) only; the payloads stay unreadable
        "dead_letters": ("SELECT (id)",),
        # storage.api_keys.authenticate: the lookup, and the last-use bookkeeping
        "api_keys": ("SELECT", "UPDATE (last_used_at)"),
        # pricing.overrides via the admin price API: a correction marks the old row superseded, and the
        # schedules it affects are rewritten in the same transaction; queries.cost reads the schedules
        "price_overrides": ("SELECT", "INSERT", "UPDATE (superseded_by, superseded_at)"),
        **{table: ("SELECT", "INSERT", "DELETE") for table in PRICE_TABLES},
        "priced_models": ("SELECT",),
        # pricing.listing and the warning for a pattern matching no model seen
        "tenant_names": ("SELECT",),
        # web.alerts: a tenant's rules (listed, added, deleted; their states go with them), states and history
        "alert_rules": ("SELECT", "INSERT", "DELETE"),
        "alert_states": ("SELECT", "DELETE"),
        "alert_history": ("SELECT",),
        # alerts.webhooks via web.webhooks: add (RETURNING every column but the secret), list, delete, the log;
        # the secret is never read back by the web role
        "webhooks": ("SELECT (tenant_id, id, url, format, enabled, created_at)", "INSERT", "DELETE"),
        "deliveries": ("SELECT",),
    },
}
FUNCTION_GRANTS: dict[str, tuple[str, ...]] = {WORKER: (CREATE_MONTH_FUNCTION,)}
OWNER_ONLY_TABLES = frozenset({"alembic_version"})
DATABASE_GRANTS: dict[str, str] = {OWNER: "CONNECT", WORKER: "CONNECT, TEMPORARY", WEB: "CONNECT"}
# rollup_scratch is a TEMP table of the rollup transaction: hence TEMPORARY for the worker.


@dataclass(frozen=True)
class RoleNames:
    owner: str
    worker: str
    web: str

    @classmethod
    def from_prefix(cls, prefix: str) -> RoleNames:
        if not ROLE_PREFIX.match(prefix):
            raise ValueError(f"role prefix must match {ROLE_PREFIX.pattern}, got {prefix!r}")
        return cls(owner=f"{prefix}_owner", worker=f"{prefix}_worker", web=f"{prefix}_web")

    def of(self, kind: str) -> str:
        return {OWNER: self.owner, WORKER: self.worker, WEB: self.web}[kind]

    def all(self) -> tuple[str, str, str]:
        return self.owner, self.worker, self.web


def _q(conn: Connection, identifier: str) -> str:
    return conn.dialect.identifier_preparer.quote(identifier)


def as_role(url: str, role: str) -> str:
    """``url`` whose sessions take ``role`` at connection start (libpq ``options=-c role=..``).

    The login (a superuser running the migrations) must be a member of ``role``;
    everything the session creates is then owned by ``role``.
    """
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", role):
        raise ValueError(f"not a role name: {role!r}")
    target = make_url(url)
    options = target.query.get("options")
    extra = f"-c role={role}"
    merged = f"{options} {extra}" if isinstance(options, str) and options else extra
    return target.update_query_dict({"options": merged}).render_as_string(hide_password=False)


def create_roles(conn: Connection, names: RoleNames, passwords: Mapping[str, str | None]) -> list[str]:
    """Create the missing roles (LOGIN, no other attribute) and set the passwords given.

    ``passwords`` maps a kind (OWNER, WORKER, WEB) to its password, or None to
    leave the role's password as it is. Returns the roles created.
    """
    created = []
    for kind in KINDS:
        role = names.of(kind)
        exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).scalar()
        if not exists:
            conn.execute(text(f"CREATE ROLE {_q(conn, role)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"))
            created.append(role)
        password = passwords.get(kind)
        if password:
            dbapi = cast(connection, conn.connection.dbapi_connection)  # psycopg2's, as the URL says
            verifier = encrypt_password(password, role, dbapi)  # the server's password_encryption
            conn.execute(text(f"ALTER ROLE {_q(conn, role)} PASSWORD :verifier"), {"verifier": verifier})
    superuser = conn.execute(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar()
    if not superuser:
        # A CREATEROLE login must be a member of the owner to migrate as it and hand it objects.
        conn.execute(text(f"GRANT {_q(conn, names.owner)} TO CURRENT_USER"))
    return created


def transfer_ownership(conn: Connection, owner: str) -> list[str]:
    """Give ``owner`` the schema's tables, partitions, sequences and functions it does not own yet.

    For a database migrated before the roles existed. Sequences linked to a
    table follow it; extension members are left alone. Returns what changed hands.
    """
    q_owner = _q(conn, owner)
    not_extension = "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = {oid} AND d.deptype = 'e')"
    relations = (
        conn.execute(
            text(
                "SELECT c.oid::regclass::text FROM pg_class c"
                " WHERE c.relnamespace = current_schema()::regnamespace"
                " AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
                " AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = :owner)"
                f" AND {not_extension.format(oid='c.oid')}"
                " ORDER BY c.relispartition, c.relname"
            ),
            {"owner": owner},
        )
        .scalars()
        .all()
    )
    for name in relations:  # names come from the catalog, already quoted by regclass
        conn.execute(text(f"ALTER TABLE {name} OWNER TO {q_owner}"))
    sequences = (
        conn.execute(
            text(
                "SELECT c.oid::regclass::text FROM pg_class c"
                " WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'S'"
                " AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = :owner)"
                " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i', 'e'))"
            ),
            {"owner": owner},
        )
        .scalars()
        .all()
    )
    for name in sequences:
        conn.execute(text(f"ALTER SEQUENCE {name} OWNER TO {q_owner}"))
    functions = (
        conn.execute(
            text(
                "SELECT p.oid::regprocedure::text FROM pg_proc p"
                " WHERE p.pronamespace = current_schema()::regnamespace"
                " AND p.proowner <> (SELECT oid FROM pg_roles WHERE rolname = :owner)"
                f" AND {not_extension.format(oid='p.oid')}"
            ),
            {"owner": owner},
        )
        .scalars()
        .all()
    )
    for signature in functions:
        conn.execute(text(f"ALTER ROUTINE {signature} OWNER TO {q_owner}"))
    return [*relations, *sequences, *functions]


def grant_database(conn: Connection, names: RoleNames) -> None:
    """CONNECT (and TEMPORARY for the worker) on the database; schema USAGE, and CREATE for the owner only."""
    database = _q(conn, conn.execute(text("SELECT current_database()")).scalar_one())
    schema = _q(conn, conn.execute(text("SELECT current_schema()")).scalar_one())
    for kind, privileges in DATABASE_GRANTS.items():
        conn.execute(text(f"GRANT {privileges} ON DATABASE {database} TO {_q(conn, names.of(kind))}"))
    conn.execute(text(f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {_q(conn, names.owner)}"))
    # PostgreSQL before 15 lets every role create in public: not the worker nor the web.
    conn.execute(text(f"REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC"))
    conn.execute(text(f"GRANT USAGE ON SCHEMA {schema} TO {_q(conn, names.worker)}, {_q(conn, names.web)}"))


def schema_tables(conn: Connection) -> list[str]:
    """The schema's tables other than monthly partitions (attached or detached)."""
    names = (
        conn.execute(
            text(
                "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace"
                " AND relkind IN ('r', 'p') AND NOT relispartition ORDER BY relname"
            )
        )
        .scalars()
        .all()
    )
    return [name for name in names if not PARTITION_NAME.match(name)]


def _owned_sequences(conn: Connection, table: str) -> list[str]:
    return list(
        conn.execute(
            text(
                "SELECT s.oid::regclass::text FROM pg_depend d JOIN pg_class s ON s.oid = d.objid"
                " WHERE s.relkind = 'S' AND d.refobjid = to_regclass(:table) AND d.deptype IN ('a', 'i')"
            ),
            {"table": table},
        ).scalars()
    )


def grant(conn: Connection, names: RoleNames) -> list[str]:
    """Revoke what worker and web hold on the schema's objects, then grant ``TABLE_GRANTS``.

    Returns the schema's tables that no list names (left to the owner alone).
    """
    schema = _q(conn, conn.execute(text("SELECT current_schema()")).scalar_one())
    others = f"{_q(conn, names.worker)}, {_q(conn, names.web)}"
    for kind in ("TABLES", "SEQUENCES", "FUNCTIONS"):
        conn.execute(text(f"REVOKE ALL ON ALL {kind} IN SCHEMA {schema} FROM {others}"))
    for kind, tables in TABLE_GRANTS.items():
        role = _q(conn, names.of(kind))
        for table, privileges in tables.items():
            conn.execute(text(f"GRANT {', '.join(privileges)} ON {_q(conn, table)} TO {role}"))
            if "INSERT" in privileges:
                for sequence in _owned_sequences(conn, table):
                    conn.execute(text(f"GRANT USAGE ON SEQUENCE {sequence} TO {role}"))
    for kind, functions in FUNCTION_GRANTS.items():
        for signature in functions:
            conn.execute(text(f"GRANT EXECUTE ON FUNCTION {signature} TO {_q(conn, names.of(kind))}"))
    named = {table for tables in TABLE_GRANTS.values() for table in tables} | OWNER_ONLY_TABLES
    return [table for table in schema_tables(conn) if table not in named]


def drop_roles(conn: Connection, names: RoleNames) -> None:
    """Undo ``create_roles`` in this database: the owner's objects go to the current user, then the roles go.

    Grants in other databases must be dropped there first (``DROP OWNED BY``).
    """
    roles = [name for name in names.all()
             if conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": name}).scalar()]  # fmt: skip
    if not roles:
        return
    quoted = ", ".join(_q(conn, role) for role in roles)
    conn.execute(text(f"REASSIGN OWNED BY {quoted} TO CURRENT_USER"))
    conn.execute(text(f"DROP OWNED BY {quoted}"))
    for role in roles:
        conn.execute(text(f"DROP ROLE {_q(conn, role)}"))
