"""Property: every cost figure equals the events priced one by one, whatever the events and whenever prices change.

Hypothesis draws events over many models - catalog-priced (flat, with a dated
price change, tiered at 200K input tokens, priced by time of day, provider left
to the catalog), priced only by an override, and unknown - with cache and
reasoning tokens under the convention (input counts cache reads and writes,
output counts reasoning), some late. They are stored in batches while rollup
runs take them; between runs a global override and a tenant override are set
and the global one is corrected, and some batches stay pending (the tail).
Afterwards every group of queries.cost - total, feature, model, day, hour, user,
and the tenants' ranking - equals, exactly, the sum over the raw events of
``genai_prices.calc_price`` at each event's own timestamp, or of the override in
force then (computed here from the override's fields); unpriced calls equal the
unknown models' events and are never in the cost.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from genai_prices import Usage, calc_price
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from pricing.overrides import parse_override, set_override
from pricing.rates import KNOWN
from queries.cost import CostFigures, cost_by, tenants_by_cost
from queries.rollups import snapshot
from storage.events import Row
from storage.rollups import run_until_idle
from tests.rollup_checks import ensure_months_for, event, ingest

pytestmark = pytest.mark.usefixtures("clean_tables")

NOW = datetime.now(UTC).replace(microsecond=0)
EARLIEST = datetime(2026, 8, 15, tzinfo=UTC)  # before gpt-5.6-sol's catalog price change of 2026-08-21
SPAN_S = int((NOW - EARLIEST).total_seconds())
TENANTS = ("t1", "t2")
# (model, provider) as events carry them; provider "" lets the catalog choose.
CATALOG = [
    ("gpt-4o", "openai"),
    ("o3", "openai"),
    ("gpt-5.6-sol", "openai"),
    ("gemini-2.5-pro", "google"),
    ("claude-sonnet-4-5", "anthropic"),
    ("deepseek-flash", "deepseek"),
    ("gpt-4o-mini", ""),
]
OVERRIDE_ONLY = ("acme-tuned", "")
UNKNOWN = ("acme-internal-llm", "")
PAIRS = [*CATALOG, OVERRIDE_ONLY, UNKNOWN]
GLOBAL_FROM = EARLIEST.date() + timedelta(days=20)
TENANT_FROM = EARLIEST.date() + timedelta(days=40)
GLOBAL_RATES = {"input_per_mtok": "0.5", "output_per_mtok": "1.5", "cache_read_per_mtok": "0.05", "call_fee": "0.0001"}
CORRECTED_RATES = {"input_per_mtok": "0.55", "output_per_mtok": "1.25", "reasoning_per_mtok": "3", "call_fee": "0"}
TENANT_RATES = {"input_per_mtok": "2", "output_per_mtok": "8", "cache_write_per_mtok": "2.5"}
EXAMPLES = 8
MTOK = Decimal(1_000_000)

inputs = st.one_of(st.integers(0, 4_000), st.integers(190_000, 300_000))
event_specs = st.fixed_dictionaries(
    {
        "tenant": st.sampled_from(TENANTS),
        "feature": st.sampled_from(["chat", "search"]),
        "pair": st.sampled_from(PAIRS),
        "user": st.sampled_from(["u1", "u2", "u3"]),
        "input_tokens": inputs,
        "output_tokens": st.integers(0, 3_000),
        "cache_share": st.tuples(st.integers(0, 100), st.integers(0, 100)),
        "reasoning_share": st.integers(0, 100),
        "offset_s": st.integers(0, SPAN_S - 1),
    }
)
scenarios = st.fixed_dictionaries(
    {
        "specs": st.lists(event_specs, min_size=1, max_size=60),
        "batch": st.integers(1, 8),
        "pending_tail": st.booleans(),
    }
)


def _row(spec: dict[str, Any]) -> Row:
    model, provider = spec["pair"]
    inp, out = spec["input_tokens"], spec["output_tokens"]
    cache_read = inp * spec["cache_share"][0] // 100
    cache_write = (inp - cache_read) * spec["cache_share"][1] // 200
    return event(
        NOW - timedelta(seconds=spec["offset_s"]), tenant=spec["tenant"], feature=spec["feature"], model=model,
        provider=provider or None, user=spec["user"], input_tokens=inp, output_tokens=out,
        cache_read_tokens=cache_read, cache_write_tokens=cache_write,
        reasoning_tokens=out * spec["reasoning_share"] // 100, event_id=uuid.uuid4(),
    )  # fmt: skip


def _override(session: Session, pattern: str, rates: dict[str, str], start: date, *, tenant: str = "",
              replace: bool = False) -> None:  # fmt: skip
    raw = {"model_pattern": pattern, "effective_from": start.isoformat(), "reason": "negotiated", **rates}
    if tenant:
        raw["tenant_id"] = tenant
    set_override(session, parse_override(raw), replace=replace)


def _by_override(rates: dict[str, str], m: dict[str, Any]) -> Decimal:
    """The override's price of one event, from its fields (missing cache prices are the input's, reasoning the output's)."""
    rate = {name: Decimal(value) for name, value in rates.items()}
    inp, out = rate["input_per_mtok"], rate["output_per_mtok"]
    uncached = m["input_tokens"] - m["cache_read_tokens"] - m["cache_write_tokens"]
    tokens = (
        uncached * inp
        + m["cache_read_tokens"] * rate.get("cache_read_per_mtok", inp)
        + m["cache_write_tokens"] * rate.get("cache_write_per_mtok", inp)
        + (m["output_tokens"] - m["reasoning_tokens"]) * out
        + m["reasoning_tokens"] * rate.get("reasoning_per_mtok", out)
    )
    return tokens / MTOK + rate.get("call_fee", Decimal(0))


def expected_price(m: dict[str, Any]) -> Decimal | None:
    """One event's price at its own timestamp: the override in force, else the catalog; None = unpriced."""
    day = m["timestamp"].date()
    if m["tenant_id"] == "t2" and m["model"] == "gpt-4o" and day >= TENANT_FROM:
        return _by_override(TENANT_RATES, m)
    if m["model"] == OVERRIDE_ONLY[0]:
        return _by_override(CORRECTED_RATES, m) if day >= GLOBAL_FROM else None
    if m["model"] == UNKNOWN[0]:
        return None
    usage = Usage(
        input_tokens=m["input_tokens"], cache_read_tokens=m["cache_read_tokens"],
        cache_write_tokens=m["cache_write_tokens"], output_tokens=m["output_tokens"],
        output_reasoning_tokens=m["reasoning_tokens"],
    )  # fmt: skip
    price = calc_price(usage, m["model"], provider_id=m["provider"], genai_request_timestamp=m["timestamp"])
    return price.total_price


class Expected:
    """Cost, priced calls and unpriced calls per group key, summed from the events."""

    def __init__(self) -> None:
        self.cost: dict[Any, Decimal] = defaultdict(Decimal)
        self.priced: dict[Any, int] = defaultdict(int)
        self.unpriced: dict[Any, int] = defaultdict(int)
        self.unpriced_models: dict[Any, set[str]] = defaultdict(set)

    def add(self, key: Any, price: Decimal | None, model: str) -> None:
        if price is None:
            self.unpriced[key] += 1
            self.unpriced_models[key].add(model)
        else:
            self.cost[key] += price
            self.priced[key] += 1

    def keys(self) -> set[Any]:
        return set(self.priced) | set(self.unpriced)


def _keys(m: dict[str, Any]) -> dict[str, Any]:
    ts = m["timestamp"]
    return {
        "total": "total", "feature": m["feature_name"], "model": m["model"], "user": m["user_id"],
        "hour": ts.replace(minute=0, second=0, microsecond=0),
        "day": ts.replace(hour=0, minute=0, second=0, microsecond=0),
    }  # fmt: skip


def _assert_group(rows: list[CostFigures], expected: Expected, what: Any) -> None:
    assert {row.key for row in rows} == expected.keys(), what
    for row in rows:
        assert row.priced_calls == expected.priced[row.key], (what, row.key)
        assert row.unpriced_calls == expected.unpriced[row.key], (what, row.key)
        assert row.cost_usd == (expected.cost[row.key] if expected.priced[row.key] else None), (what, row.key)
        assert row.unpriced_models == sorted(expected.unpriced_models[row.key]), (what, row.key)


def _reset_prices(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE analytics_events, rollup_pending_batches, rollup_hourly, rollup_daily, rollup_daily_users,"
                " price_overrides, cost_rates, cost_rate_scopes, priced_models"
            )
        )
    KNOWN.clear()


def _spec(pair: tuple[str, str], tenant: str, input_tokens: int, offset_s: int) -> dict[str, Any]:
    return {"tenant": tenant, "feature": "chat", "pair": pair, "user": "u1", "input_tokens": input_tokens,
            "output_tokens": 1_000, "cache_share": (20, 40), "reasoning_share": 30, "offset_s": offset_s}  # fmt: skip


# Always tried, whatever hypothesis draws: every kind of model, tiered ones over their 200K tier, on
# both sides of the overrides' dates and of gpt-5.6-sol's catalog price change.
EVERY_KIND = {
    "specs": [
        _spec(pair, tenant, size, offset)
        for pair in PAIRS
        for tenant in TENANTS
        for size in (3_000, 250_000)
        for offset in (3_600, SPAN_S - 3_600)
    ],
    "batch": 5,
    "pending_tail": True,
}


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(scenario=scenarios)
@example(scenario=EVERY_KIND)
def test_cost_figures_equal_events_priced_one_by_one(engine: Engine, scenario: dict[str, Any]) -> None:
    ensure_months_for(engine, EARLIEST - timedelta(days=1), NOW + timedelta(days=1))
    _reset_prices(engine)
    rows = [_row(spec) for spec in scenario["specs"]]
    size = scenario["batch"]
    batches = [rows[i : i + size] for i in range(0, len(rows), size)]
    third = max(1, len(batches) // 3)
    for batch in batches[:third]:
        ingest(engine, batch)
    run_until_idle(engine, 2)
    with Session(engine) as session, session.begin():
        _override(session, OVERRIDE_ONLY[0], GLOBAL_RATES, GLOBAL_FROM)
        _override(session, "gpt-4*", TENANT_RATES, TENANT_FROM, tenant="t2")  # a pattern, tenant-scoped
    for batch in batches[third : 2 * third]:
        ingest(engine, batch)
    run_until_idle(engine, 1)
    with Session(engine) as session, session.begin():
        _override(session, OVERRIDE_ONLY[0], CORRECTED_RATES, GLOBAL_FROM, replace=True)  # a correction
    for batch in batches[2 * third :]:
        ingest(engine, batch)
    if not scenario["pending_tail"]:
        run_until_idle(engine, 3)

    events = [mapping for mapping, _ in rows]
    expected: dict[tuple[str, str], Expected] = defaultdict(Expected)
    by_tenant = Expected()
    for m in events:
        price = _price_with_patterns(m)
        by_tenant.add(m["tenant_id"], price, m["model"])
        for group, key in _keys(m).items():
            expected[(m["tenant_id"], group)].add(key, price, m["model"])
    start, end = EARLIEST - timedelta(days=1), NOW + timedelta(hours=2)
    with snapshot(engine) as conn:
        for tenant in TENANTS:
            for group in ("total", "feature", "model", "day", "hour", "user"):
                answer = cost_by(conn, tenant, start, end, group, limit=100)
                if group == "user":  # daily cells: time-of-day prices are approximate there, and flagged
                    _assert_users(answer, expected[(tenant, group)], events, tenant)
                else:
                    assert not any(row.approximate for row in answer), (tenant, group)
                    _assert_group(answer, expected[(tenant, group)], (tenant, group))
        _assert_group(tenants_by_cost(conn, start, end, 10), by_tenant, "tenants")


def _price_with_patterns(m: dict[str, Any]) -> Decimal | None:
    """expected_price, with the tenant override's pattern ``gpt-4*`` covering every gpt-4 model of t2."""
    if m["tenant_id"] == "t2" and m["model"].startswith("gpt-4") and m["timestamp"].date() >= TENANT_FROM:
        return _by_override(TENANT_RATES, m)
    return expected_price(m)


def _assert_users(rows: list[CostFigures], expected: Expected, events: list[dict[str, Any]], tenant: str) -> None:
    time_of_day_users = {m["user_id"] for m in events if m["tenant_id"] == tenant and m["model"] == "deepseek-flash"}
    assert {row.key for row in rows} == expected.keys()
    for row in rows:
        assert row.approximate == (row.key in time_of_day_users), row.key
        assert row.unpriced_calls == expected.unpriced[row.key]
        if not row.approximate:
            assert row.cost_usd == (expected.cost[row.key] if expected.priced[row.key] else None), row.key
