"""Overrides and the materialized rate table against the real database (pricing.overrides, pricing.rates).

Every test works in a transaction it rolls back, so overrides and registered
pairs never leak into another test; tenants are unique per test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import genai_prices
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from pricing.catalog import catalog_schedule
from pricing.overrides import OverrideConflict, PriceError, history, parse_override, set_override
from pricing.rates import KNOWN, ensure_priced, refresh
from schema.bands import input_band

LEAD_JOIN = text(
    """
    SELECT p.input_per_mtok, p.cache_read_per_mtok, p.cache_write_per_mtok, p.output_per_mtok,
           p.reasoning_per_mtok, p.call_fee, p.source, p.override_id, count(*) OVER () AS matches
    FROM (SELECT CAST(:tenant AS text) AS tenant_id, CAST(:model AS text) AS model,
                 CAST(:provider AS text) AS provider, CAST(:band AS int) AS input_band,
                 CAST(:bucket AS timestamptz) AS bucket) r
    LEFT JOIN cost_rate_scopes s ON s.tenant_id = r.tenant_id AND s.model = r.model AND s.provider = r.provider
    LEFT JOIN cost_rates p ON p.tenant_id = COALESCE(s.tenant_id, '') AND p.model = r.model
     AND p.provider = r.provider AND p.input_band IN (-1, r.input_band)
     AND p.hour_of_day IN (-1, CAST(extract(hour FROM r.bucket AT TIME ZONE 'UTC') AS int))
     AND r.bucket >= p.valid_from AND r.bucket < p.valid_to
    """
)
GAPS_OR_OVERLAPS = text(
    """
    SELECT count(*) FROM (
      SELECT valid_from, lag(valid_to) OVER w AS previous_end
      FROM cost_rates WHERE model = :model WINDOW w AS (
        PARTITION BY tenant_id, model, provider, input_band, hour_of_day ORDER BY valid_from)
    ) x WHERE previous_end IS NOT NULL AND previous_end <> valid_from
    """
)


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        session.begin()
        yield session
        session.rollback()
    KNOWN.clear()  # the pairs this test registered were rolled back


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def rate_at(session: Session, tenant_id: str, model: str, provider: str, at: datetime, band: int = 0) -> Any:
    rows = session.execute(
        LEAD_JOIN, {"tenant": tenant_id, "model": model, "provider": provider, "band": band, "bucket": at}
    ).all()
    assert len(rows) == 1, "a cell matches at most one rate row"
    return rows[0]


def override(**fields: Any) -> dict[str, Any]:
    return {
        "input_per_mtok": "1",
        "output_per_mtok": "2",
        "effective_from": "2025-01-01",
        "reason": "contract",
        **fields,
    }


def test_ensure_priced_materializes_the_catalog_and_the_join_reproduces_calc_price(session: Session) -> None:
    ensure_priced(session, [("claude-sonnet-4-5", "anthropic")])
    usage = {"input_tokens": 250_000, "cache_read_tokens": 10_000, "cache_write_tokens": 5_000, "output_tokens": 900}
    at = datetime(2025, 6, 1, 12, tzinfo=UTC)
    row = rate_at(session, tenant(), "claude-sonnet-4-5", "anthropic", at, input_band(usage["input_tokens"]))
    assert row.source == "catalog"
    cost = (
        (usage["input_tokens"] - usage["cache_read_tokens"] - usage["cache_write_tokens"]) * row.input_per_mtok
        + usage["cache_read_tokens"] * row.cache_read_per_mtok
        + usage["cache_write_tokens"] * row.cache_write_per_mtok
        + usage["output_tokens"] * row.output_per_mtok
    ) / 1_000_000 + row.call_fee
    expected = genai_prices.calc_price(
        genai_prices.Usage(**usage), "claude-sonnet-4-5", provider_id="anthropic", genai_request_timestamp=at
    ).total_price
    assert cost == expected
    rows = session.execute(text("SELECT count(*) FROM cost_rates WHERE model = 'claude-sonnet-4-5'")).scalar_one()
    assert rows == len(catalog_schedule("claude-sonnet-4-5", "anthropic"))


def test_unknown_pair_is_registered_but_unpriced(session: Session) -> None:
    ensure_priced(session, [("model-nobody-sells", "")])
    assert session.execute(text("SELECT count(*) FROM priced_models WHERE model = 'model-nobody-sells'")).scalar_one()
    row = rate_at(session, tenant(), "model-nobody-sells", "", datetime(2025, 1, 1, tzinfo=UTC))
    assert row.input_per_mtok is None  # unpriced, never $0


def test_override_wins_from_its_date_and_tenant_before_global(session: Session) -> None:
    acme, other = tenant(), tenant()
    ensure_priced(session, [("gpt-4o", "")])
    set_override(session, parse_override(override(model_pattern="gpt-4o", effective_from="2025-03-01")))
    set_override(
        session,
        parse_override(
            override(model_pattern="gpt-4*", tenant_id=acme, input_per_mtok="0.5", effective_from="2025-04-01")
        ),
    )
    before = datetime(2025, 2, 28, 23, tzinfo=UTC)
    assert rate_at(session, other, "gpt-4o", "", before).source == "catalog"
    assert rate_at(session, other, "gpt-4o", "", datetime(2025, 3, 1, tzinfo=UTC)).input_per_mtok == Decimal(1)
    # The tenant's own (a pattern) wins over the global exact name from its date; before it, the global.
    assert rate_at(session, acme, "gpt-4o", "", datetime(2025, 3, 15, tzinfo=UTC)).input_per_mtok == Decimal(1)
    assert rate_at(session, acme, "gpt-4o", "", datetime(2025, 4, 1, tzinfo=UTC)).input_per_mtok == Decimal("0.5")
    assert rate_at(session, acme, "gpt-4o", "", before).source == "catalog"
    assert rate_at(session, other, "gpt-4o", "", datetime(2026, 1, 1, tzinfo=UTC)).input_per_mtok == Decimal(1)
    scopes = session.execute(text("SELECT tenant_id FROM cost_rate_scopes WHERE model = 'gpt-4o'")).scalars().all()
    assert scopes == [acme]
    assert session.execute(GAPS_OR_OVERLAPS, {"model": "gpt-4o"}).scalar_one() == 0


def test_exact_name_before_pattern_longer_pattern_before_shorter_later_date_first(session: Session) -> None:
    ensure_priced(session, [("gpt-4o-mini", "openai")])
    at = datetime(2025, 6, 1, tzinfo=UTC)
    set_override(session, parse_override(override(model_pattern="gpt-*", input_per_mtok="3")))
    assert rate_at(session, tenant(), "gpt-4o-mini", "openai", at).input_per_mtok == Decimal(3)
    set_override(session, parse_override(override(model_pattern="gpt-4o-*", input_per_mtok="4")))
    assert rate_at(session, tenant(), "gpt-4o-mini", "openai", at).input_per_mtok == Decimal(4)
    set_override(session, parse_override(override(model_pattern="gpt-4o-mini", input_per_mtok="5")))
    assert rate_at(session, tenant(), "gpt-4o-mini", "openai", at).input_per_mtok == Decimal(5)
    set_override(
        session, parse_override(override(model_pattern="gpt-4o-mini", input_per_mtok="6", effective_from="2025-05-01"))
    )
    assert rate_at(session, tenant(), "gpt-4o-mini", "openai", at).input_per_mtok == Decimal(6)
    assert rate_at(
        session, tenant(), "gpt-4o-mini", "openai", datetime(2025, 4, 1, tzinfo=UTC)
    ).input_per_mtok == Decimal(5)
    # Missing cache and reasoning rates fall to input and output.
    row = rate_at(session, tenant(), "gpt-4o-mini", "openai", at)
    assert (row.cache_read_per_mtok, row.cache_write_per_mtok, row.reasoning_per_mtok) == (
        Decimal(6),
        Decimal(6),
        Decimal(2),
    )
    assert session.execute(GAPS_OR_OVERLAPS, {"model": "gpt-4o-mini"}).scalar_one() == 0


def test_a_correction_supersedes_and_keeps_history(session: Session) -> None:
    ensure_priced(session, [("o3", "openai")])
    first = set_override(session, parse_override(override(model_pattern="o3", input_per_mtok="7")))
    with pytest.raises(OverrideConflict) as conflict:
        set_override(session, parse_override(override(model_pattern="o3", input_per_mtok="8")))
    assert conflict.value.existing_id == first.override_id
    second = set_override(session, parse_override(override(model_pattern="o3", input_per_mtok="8")), replace=True)
    assert second.superseded_id == first.override_id
    rows = history(session, model="o3")
    assert [(r.id, r.superseded_by) for r in rows] == [
        (second.override_id, None),
        (first.override_id, second.override_id),
    ]
    assert rate_at(session, tenant(), "o3", "openai", datetime(2025, 2, 1, tzinfo=UTC)).input_per_mtok == Decimal(8)


def test_pattern_matching_no_seen_model_is_accepted_with_a_warning(session: Session) -> None:
    result = set_override(session, parse_override(override(model_pattern=f"never-seen-{uuid.uuid4().hex}*")))
    assert result.warnings and "matches no model" in result.warnings[0]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"input_per_mtok": "-1"}, "input_per_mtok"),
        ({"output_per_mtok": "abc"}, "output_per_mtok"),
        ({"cache_read_per_mtok": "NaN"}, "cache_read_per_mtok"),
        ({"reasoning_per_mtok": float("inf")}, "reasoning_per_mtok"),
        ({"input_per_mtok": "1000.01"}, "input_per_mtok"),
        ({"call_fee": "10.5"}, "call_fee"),
        ({"reason": "  "}, "reason"),
        ({"effective_from": "2025-13-01"}, "effective_from"),
        ({"model_pattern": ""}, "model_pattern"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_input_names_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(PriceError) as error:
        parse_override(override(**{"model_pattern": "gpt-4o", **fields}))
    assert error.value.field == field


def test_refresh_all_is_idempotent_and_leaves_no_gap(session: Session) -> None:
    ensure_priced(session, [("deepseek-chat", ""), ("claude-opus-4-6", "")])
    before = session.execute(text("SELECT count(*) FROM cost_rates")).scalar_one()
    result = refresh(session)
    assert session.execute(text("SELECT count(*) FROM cost_rates")).scalar_one() == before == result.rows
    for model in ("deepseek-chat", "claude-opus-4-6"):
        assert session.execute(GAPS_OR_OVERLAPS, {"model": model}).scalar_one() == 0
    for hour in range(24):
        at = datetime(2026, 5, 5, hour, tzinfo=UTC)
        assert rate_at(session, tenant(), "deepseek-chat", "", at).input_per_mtok is not None


def test_refresh_of_one_override_with_1000_tenants(session: Session, capsys: pytest.CaptureFixture[str]) -> None:
    models = [f"bench-model-{i}" for i in range(19)] + ["gpt-4o"]
    ensure_priced(session, [(m, "") for m in models])
    tenants = [tenant() for _ in range(1000)]
    session.execute(
        text(
            "INSERT INTO tenant_names (tenant_id, kind, name) SELECT t, 'model', m FROM unnest(CAST(:t AS text[])) t, unnest(CAST(:m AS text[])) m"
        ),
        {"t": tenants, "m": models},
    )
    started = datetime.now(UTC)
    result = set_override(session, parse_override(override(model_pattern="gpt-4o", input_per_mtok="2.5")))
    elapsed = (datetime.now(UTC) - started).total_seconds()
    with capsys.disabled():
        print(
            f"\nrefresh for one global override, 1,000 tenants, 20 models: {elapsed:.3f}s ({result.refreshed_rows} rows)"
        )
    assert result.warnings == []
    assert rate_at(session, tenants[-1], "gpt-4o", "", datetime(2025, 2, 1, tzinfo=UTC)).input_per_mtok == Decimal(
        "2.5"
    )
