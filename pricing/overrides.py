"""Price overrides: validated, kept with their history, and applied in one precedence order.

An override sets the rates of the models its pattern matches (an exact name,
or a glob with ``*`` and ``?``), for one tenant or for all (tenant ''), for one
provider or any (''), from a UTC date on. It wins over the catalog from that
date. A correction never updates a price in place: ``set_override`` with
``replace=True`` inserts the new row and marks the one it replaces
``superseded_by`` it, so ``history`` shows both. Every change refreshes the
materialized rates (pricing.rates.refresh) in the caller's transaction, so the
new price is in every figure the moment it commits.

Precedence at a moment t for (tenant, model, provider), among the active
overrides with ``effective_from <= t``: the tenant's own before global ones,
an exact name before a pattern, a longer pattern before a shorter one, a later
``effective_from`` first; then a named provider before any provider and the
newer row first, so that the order is total.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Final

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from config import Settings, get_settings
from models.price import ANY_PROVIDER, GLOBAL, REASON_MAX_LEN, SET_BY_LEN, PriceOverride
from models.tenant_name import MODEL, TenantName
from pricing.catalog import Rates
from pricing.locks import lock_prices
from schema.event import MAX_MODEL_LEN, MAX_PROVIDER_LEN, MAX_TENANT_ID_LEN

WILDCARDS: Final = frozenset("*?")
RATE_FIELDS: Final = (
    "input_per_mtok",
    "cache_read_per_mtok",
    "cache_write_per_mtok",
    "output_per_mtok",
    "reasoning_per_mtok",
)
REQUIRED_RATES: Final = ("input_per_mtok", "output_per_mtok")
OPTIONAL_RATES: Final = ("cache_read_per_mtok", "cache_write_per_mtok", "reasoning_per_mtok")
FEE_FIELD: Final = "call_fee"
FIELDS: Final = (
    "model_pattern",
    *RATE_FIELDS,
    FEE_FIELD,
    "provider",
    "tenant_id",
    "effective_from",
    "reason",
    "set_by",
)
LIKE_SPECIALS: Final = re.compile(r"([\\%_])")


class PriceError(ValueError):
    """Bad override input; ``field`` names the field at fault."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


class OverrideConflict(Exception):
    """An active override has the same tenant, pattern, provider and date; ``replace`` supersedes it."""

    def __init__(self, existing_id: int) -> None:
        super().__init__(
            f"an active override (id {existing_id}) has the same tenant, pattern, provider and effective date; "
            "ask to replace it to record a correction"
        )
        self.existing_id = existing_id


@dataclass(frozen=True)
class OverrideInput:
    """A validated override (``parse_override`` builds it)."""

    model_pattern: str
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    effective_from: date
    reason: str
    cache_read_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    reasoning_per_mtok: Decimal | None = None
    call_fee: Decimal = Decimal(0)
    provider: str = ANY_PROVIDER
    tenant_id: str = GLOBAL
    set_by: str = ""


@dataclass(frozen=True)
class SetResult:
    """What ``set_override`` did: the new row, the row it superseded, warnings for the caller."""

    override_id: int
    superseded_id: int | None
    warnings: list[str] = field(default_factory=list)
    refreshed_rows: int = 0


def is_pattern(pattern: str) -> bool:
    return any(char in WILDCARDS for char in pattern)


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.DOTALL)


def matches(pattern: str, model: str) -> bool:
    """Does the override pattern match the model name (exact, or ``*``/``?`` globbing; case-sensitive)."""
    if not is_pattern(pattern):
        return pattern == model
    return _compiled(pattern).fullmatch(model) is not None


def like_pattern(pattern: str) -> str:
    """The pattern as a SQL LIKE pattern (with ``\\`` escaping) for a bound parameter."""
    escaped = LIKE_SPECIALS.sub(r"\\\1", pattern)
    return escaped.replace("*", "%").replace("?", "_")


def precedence(override: PriceOverride) -> tuple[bool, bool, int, int, bool, int]:
    """Sort key: the first override in this order wins among those in force."""
    return (
        override.tenant_id == GLOBAL,
        is_pattern(override.model_pattern),
        -len(override.model_pattern),
        -override.effective_from.toordinal(),
        override.provider == ANY_PROVIDER,
        -override.id,
    )


def applies(override: PriceOverride, tenant_id: str, model: str, provider: str) -> bool:
    """Does the override price this tenant's (model, provider) (from its date on)."""
    return (
        override.tenant_id in (GLOBAL, tenant_id)
        and override.provider in (ANY_PROVIDER, provider)
        and matches(override.model_pattern, model)
    )


def override_rates(override: PriceOverride) -> Rates:
    """The five rates and the fee; missing cache rates are priced as input, missing reasoning as output."""
    return Rates(
        input_per_mtok=override.input_per_mtok,
        cache_read_per_mtok=_or(override.cache_read_per_mtok, override.input_per_mtok),
        cache_write_per_mtok=_or(override.cache_write_per_mtok, override.input_per_mtok),
        output_per_mtok=override.output_per_mtok,
        reasoning_per_mtok=_or(override.reasoning_per_mtok, override.output_per_mtok),
        call_fee=override.call_fee,
    )


def _or(value: Decimal | None, default: Decimal) -> Decimal:
    return default if value is None else value


# --- validation ---------------------------------------------------------------------


def parse_amount(field_name: str, raw: Any, maximum: Decimal) -> Decimal:
    """A non-negative finite decimal no greater than ``maximum``; floats are read by their shortest repr."""
    if isinstance(raw, bool) or raw is None:
        raise PriceError(field_name, "a decimal number is required")
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise PriceError(field_name, "must be a finite number")
        raw = repr(raw)
    if isinstance(raw, int | Decimal):
        value = Decimal(raw)
    elif isinstance(raw, str):
        try:
            value = Decimal(raw.strip())
        except InvalidOperation:
            raise PriceError(field_name, f"not a decimal number: {raw[:40]!r}") from None
    else:
        raise PriceError(field_name, "a decimal number is required")
    if not value.is_finite():
        raise PriceError(field_name, "must be a finite number")
    if value < 0:
        raise PriceError(field_name, "must not be negative")
    if value > maximum:
        raise PriceError(field_name, f"{value} is above the largest accepted value {maximum}")
    return value


def _text(raw: Mapping[str, Any], name: str, max_len: int, *, required: bool, default: str = "") -> str:
    value = raw.get(name)
    if value is None:
        if required:
            raise PriceError(name, "is required")
        return default
    if not isinstance(value, str):
        raise PriceError(name, "must be a string")
    value = value.strip()
    if required and not value:
        raise PriceError(name, "must not be empty")
    if len(value) > max_len:
        raise PriceError(name, f"longer than {max_len} characters")
    if "\x00" in value:
        raise PriceError(name, "must not contain NUL")
    return value


def _date(raw: Mapping[str, Any], name: str) -> date:
    value = raw.get(name)
    if isinstance(value, datetime):
        raise PriceError(name, "a date (YYYY-MM-DD, UTC) is required, not a time")
    if isinstance(value, date):
        return value
    if not isinstance(value, str) or not value.strip():
        raise PriceError(name, "a date YYYY-MM-DD (UTC) is required")
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise PriceError(name, f"not a date YYYY-MM-DD: {value[:40]!r}") from None


def parse_override(raw: Mapping[str, Any], settings: Settings | None = None) -> OverrideInput:
    """Validate one override given as field -> value (strings, numbers or dates); errors name the field."""
    settings = settings or get_settings()
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise PriceError(unknown[0], f"unknown field (known: {', '.join(FIELDS)})")
    per_mtok = settings.price_max_usd_per_mtok
    rates: dict[str, Decimal | None] = {}
    for name in REQUIRED_RATES:
        rates[name] = parse_amount(name, raw.get(name), per_mtok)
    for name in OPTIONAL_RATES:
        value = raw.get(name)
        rates[name] = None if value is None or value == "" else parse_amount(name, value, per_mtok)
    fee_raw = raw.get(FEE_FIELD)
    fee = (
        Decimal(0)
        if fee_raw is None or fee_raw == ""
        else parse_amount(FEE_FIELD, fee_raw, settings.price_max_usd_per_call)
    )
    return OverrideInput(
        model_pattern=_text(raw, "model_pattern", MAX_MODEL_LEN, required=True),
        input_per_mtok=_required(rates["input_per_mtok"]),
        output_per_mtok=_required(rates["output_per_mtok"]),
        cache_read_per_mtok=rates["cache_read_per_mtok"],
        cache_write_per_mtok=rates["cache_write_per_mtok"],
        reasoning_per_mtok=rates["reasoning_per_mtok"],
        call_fee=fee,
        provider=_text(raw, "provider", MAX_PROVIDER_LEN, required=False),
        tenant_id=_text(raw, "tenant_id", MAX_TENANT_ID_LEN, required=False),
        effective_from=_date(raw, "effective_from"),
        reason=_text(raw, "reason", REASON_MAX_LEN, required=True),
        set_by=_text(raw, "set_by", SET_BY_LEN, required=False),
    )


def _required(value: Decimal | None) -> Decimal:
    assert value is not None  # REQUIRED_RATES are parsed without a None path
    return value


# --- writes and reads ----------------------------------------------------------------


def unmatched_warning(session: Session, value: OverrideInput) -> str | None:
    """A warning when the pattern matches no model name seen (the tenant's own, for a tenant override)."""
    query = select(TenantName.name).where(TenantName.kind == MODEL)
    if value.tenant_id != GLOBAL:
        query = query.where(TenantName.tenant_id == value.tenant_id)
    if is_pattern(value.model_pattern):
        query = query.where(TenantName.name.like(like_pattern(value.model_pattern), escape="\\"))
    else:
        query = query.where(TenantName.name == value.model_pattern)
    if session.execute(query.limit(1)).first() is not None:
        return None
    scope = f"tenant {value.tenant_id!r}" if value.tenant_id != GLOBAL else "any tenant"
    return (
        f"model_pattern {value.model_pattern!r} matches no model seen for {scope} yet; the override applies once one is"
    )


def set_override(session: Session, value: OverrideInput, *, replace: bool = False) -> SetResult:
    """Store the override and refresh the rates it affects, in the caller's transaction.

    Raises OverrideConflict when an active override has the same tenant,
    pattern, provider and date and ``replace`` is False; with ``replace`` the
    old row stays, marked superseded by the new one.
    """
    from pricing.rates import refresh  # rates reads overrides: imported here to keep the modules acyclic

    lock_prices(session)
    existing = session.execute(
        select(PriceOverride.id).where(
            PriceOverride.tenant_id == value.tenant_id,
            PriceOverride.model_pattern == value.model_pattern,
            PriceOverride.provider == value.provider,
            PriceOverride.effective_from == value.effective_from,
            PriceOverride.superseded_by.is_(None),
        )
    ).scalar_one_or_none()
    if existing is not None and not replace:
        raise OverrideConflict(existing)
    new_id = session.execute(text("SELECT nextval(pg_get_serial_sequence('price_overrides', 'id'))")).scalar_one()
    if existing is not None:
        # The foreign key is deferred: the old row names the new one before it is inserted,
        # so the partial unique index never sees two active rows.
        session.execute(
            update(PriceOverride)
            .where(PriceOverride.id == existing)
            .values(superseded_by=new_id, superseded_at=func.now())
        )
    session.add(
        PriceOverride(
            id=new_id,
            tenant_id=value.tenant_id,
            model_pattern=value.model_pattern,
            provider=value.provider,
            effective_from=value.effective_from,
            input_per_mtok=value.input_per_mtok,
            cache_read_per_mtok=value.cache_read_per_mtok,
            cache_write_per_mtok=value.cache_write_per_mtok,
            output_per_mtok=value.output_per_mtok,
            reasoning_per_mtok=value.reasoning_per_mtok,
            call_fee=value.call_fee,
            set_by=value.set_by,
            reason=value.reason,
        )
    )
    session.flush()
    warning = unmatched_warning(session, value)
    # A global override changes every tenant's schedule of the pairs it matches; a tenant's only its own.
    tenants = None if value.tenant_id == GLOBAL else [value.tenant_id]
    result = refresh(session, models=[value.model_pattern], tenants=tenants)
    return SetResult(
        override_id=int(new_id),
        superseded_id=existing,
        warnings=[warning] if warning else [],
        refreshed_rows=result.rows,
    )


def active_overrides(session: Session) -> list[PriceOverride]:
    """Every override not superseded (the table is small: one row per price an operator set)."""
    return list(session.execute(select(PriceOverride).where(PriceOverride.superseded_by.is_(None))).scalars())


def history(session: Session, *, tenant_id: str | None = None, model: str | None = None) -> list[PriceOverride]:
    """Every override ever set, superseded ones included, newest first.

    ``tenant_id``: that tenant's and the global ones; ``model``: the overrides
    whose pattern matches that model name, or that are that pattern.
    """
    query = select(PriceOverride).order_by(PriceOverride.created_at.desc(), PriceOverride.id.desc())
    if tenant_id is not None:
        query = query.where(PriceOverride.tenant_id.in_([GLOBAL, tenant_id]))
    rows = list(session.execute(query).scalars())
    if model is not None:
        rows = [row for row in rows if row.model_pattern == model or matches(row.model_pattern, model)]
    return rows
