"""Per-tenant caps on distinct feature and model names (TENANT_MAX_FEATURES, TENANT_MAX_MODELS).

Every name a tenant's stored events use is a row of ``tenant_names``
(models.tenant_name), written in the batch's own transaction, so the catalog
and the events commit together. Beyond the cap, an event naming a new feature
(or model) is dead-lettered with the reason; names already known keep working.
Without the cap one tenant could make every dashboard query, rollup and the
page's feature list of its own grow without bound.

The hot path does no SQL: a per-process set (storage.committed_cache) holds
the names known to be committed, and a batch whose names are all in it costs a
few set comprehensions over its distinct names and one set difference. Only a
name not in the set is looked up; a name that
is new to the catalog is added under a transaction-scoped advisory lock of its
tenant, after counting the tenant's names, so two workers cannot both take the
last free place. The set learns a name only once the transaction that found
or added it has committed (a Session ``after_commit`` of the root transaction);
any rollback, a savepoint's included, forgets what the session had learnt, so
a rolled-back name never counts as committed (at worst a name is looked up
again).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Final

from sqlalchemy import func, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from config import DEFAULTS, Settings
from models.tenant_name import FEATURE, MODEL, TenantName
from schema.message import plain_payload
from storage.committed_cache import CommittedCache
from storage.dead_letters import Rejected

# First key of pg_advisory_xact_lock(int4, int4) ("NAME"); the second is hashtext(tenant_id).
NAMES_LOCK_CLASS: Final = 0x4E41_4D45
# Entries of the per-process set before it is emptied (refilled by lookups): bounds
# the worker's memory whatever the number of tenants (about 200 bytes an entry).
KNOWN_NAMES_MAX: Final = 200_000
PENDING_KEY: Final = "storage.tenant_names.pending"

Name = tuple[str, str, str]  # (kind, tenant_id, name)
Row = tuple[dict[str, Any], Any]  # storage.events.Row

_mapping_of = itemgetter(0)
_names_of = itemgetter("tenant_id", "feature_name", "model")
SETTING: Final = {FEATURE: "TENANT_MAX_FEATURES", MODEL: "TENANT_MAX_MODELS"}
FIELD: Final = {FEATURE: "feature_name", MODEL: "model"}


@dataclass(frozen=True)
class NameCaps:
    """Most distinct names per tenant; the defaults are Settings' own (config.DEFAULTS)."""

    max_features: int = DEFAULTS.tenant_max_features
    max_models: int = DEFAULTS.tenant_max_models

    @classmethod
    def from_settings(cls, settings: Settings) -> NameCaps:
        return cls(max_features=settings.tenant_max_features, max_models=settings.tenant_max_models)

    def of(self, kind: str) -> int:
        return self.max_features if kind == FEATURE else self.max_models


class KnownNames:
    """The names this process knows to be committed (storage.committed_cache), asked as (tenant, name) pairs per kind."""

    def __init__(self) -> None:
        self._names = CommittedCache[Name](PENDING_KEY, KNOWN_NAMES_MAX)

    def unknown(
        self, features: set[tuple[str, str]], models: set[tuple[str, str]]
    ) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        new = self._names.unknown({(FEATURE, t, n) for t, n in features} | {(MODEL, t, n) for t, n in models})
        return {(t, n) for kind, t, n in new if kind == FEATURE}, {(t, n) for kind, t, n in new if kind == MODEL}

    def pending(self, session: Session) -> set[Name]:
        """The names ``session`` learns once its root transaction commits."""
        return self._names.pending(session)

    def add(self, names: Iterable[Name]) -> None:
        self._names.add(names)

    def clear(self) -> None:
        self._names.clear()


KNOWN = KnownNames()


def _reason(kind: str, tenant: str, name: str, cap: int) -> str:
    return (
        f"{FIELD[kind]} {name!r} is new and tenant {tenant!r} is at its limit of {cap} distinct"
        f" {kind} names ({SETTING[kind]}); events naming known ones are stored"
    )


def admit_names(session: Session, rows: list[Row], caps: NameCaps, rejected: list[Rejected]) -> list[Row]:
    """The rows whose feature and model names the tenants' caps admit; the others go to ``rejected``.

    Runs in the batch's transaction (not in a savepoint): the names it adds
    commit or roll back with the events.
    """
    # One pass over the rows; the rest works on the few distinct combinations.
    names = set(map(_names_of, map(_mapping_of, rows)))
    features = {(tenant, feature) for tenant, feature, _ in names}
    models = {(tenant, model) for tenant, _, model in names if model is not None}  # None: no model
    new_features, new_models = KNOWN.unknown(features, models)
    if not new_features and not new_models:
        return rows
    refused = _register(session, new_features, new_models, caps)
    if not refused:
        return rows
    kept = []
    for row in rows:
        mapping = row[0]
        tenant = mapping["tenant_id"]
        for kind, name in ((FEATURE, mapping["feature_name"]), (MODEL, mapping["model"])):
            if (kind, tenant, name) in refused:
                reason = _reason(kind, tenant, name, caps.of(kind))
                rejected.append(Rejected(payload=plain_payload(row[1]), reason=reason))
                break
        else:
            kept.append(row)
    return kept


def _register(
    session: Session, features: set[tuple[str, str]], models: set[tuple[str, str]], caps: NameCaps
) -> set[Name]:
    """Look up and add the names the process does not know yet; returns those refused by the caps."""
    wanted = {(FEATURE, t, n) for t, n in features} | {(MODEL, t, n) for t, n in models}
    found = _existing(session, wanted)
    pending = KNOWN.pending(session)
    pending |= found
    refused: set[Name] = set()
    missing = wanted - found
    # Tenants in a fixed order: two workers locking several tenants cannot deadlock.
    for tenant in sorted({t for _, t, _ in missing}):
        mine = sorted(name for name in missing if name[1] == tenant)
        session.execute(
            text("SELECT pg_advisory_xact_lock(:cls, hashtext(:tenant))"),
            {"cls": NAMES_LOCK_CLASS, "tenant": tenant},
        )
        # Under the lock: what others committed meanwhile, and the tenant's counts.
        mine = [name for name in mine if name not in _existing(session, set(mine))]
        counts: dict[str, int] = dict(
            session.execute(
                select(TenantName.kind, func.count()).where(TenantName.tenant_id == tenant).group_by(TenantName.kind)
            ).all()
        )
        added: list[Name] = []
        for kind in (FEATURE, MODEL):
            of_kind = [name for name in mine if name[0] == kind]
            room = max(0, caps.of(kind) - counts.get(kind, 0))
            added += of_kind[:room]
            refused.update(of_kind[room:])
        if added:
            session.execute(
                insert(TenantName)
                .values([{"tenant_id": t, "kind": k, "name": n} for k, t, n in added])
                .on_conflict_do_nothing()
            )
        pending.update(name for name in missing if name[1] == tenant and name not in refused)
    return refused


def _existing(session: Session, names: set[Name]) -> set[Name]:
    """Which of ``names`` the catalog holds (committed, or added by this transaction)."""
    if not names:
        return set()
    keys = [(tenant, kind, name) for kind, tenant, name in names]
    found = session.execute(
        select(TenantName.tenant_id, TenantName.kind, TenantName.name).where(
            tuple_(TenantName.tenant_id, TenantName.kind, TenantName.name).in_(keys)
        )
    )
    return {(kind, tenant, name) for tenant, kind, name in found}
