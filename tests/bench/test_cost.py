"""bench.cost's pure parts: verdicts, its RESULT line as the suite reads it, the check's own pricing."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from bench.companions import COMPANIONS, CompanionResult, figures, parse_result
from bench.cost import (
    TARGET_REPRICE_S,
    TARGET_SUMMARY_MS,
    TARGET_TENANTS_MS,
    figure_rows,
    last_whole_month,
    override_fields,
    result_line,
)
from bench.cost_check import EventTotals, ModelTotals, compare, mismatch_usd, override_in_force
from bench.cost_data import BENCH_MODELS, UNPRICED_MODEL, PlannedOverride, load_params, planned_overrides, tenant_name
from pricing.overrides import parse_override
from queries.cost import CostFigures

TOKENS = {"input_tokens": 3_000_000, "cache_read_tokens": 1_000_000, "cache_write_tokens": 500_000,
          "output_tokens": 2_000_000, "reasoning_tokens": 400_000}  # fmt: skip


def api_row(key: str, cost: str | None, unpriced_calls: int = 0, approximate: bool = False) -> CostFigures:
    return CostFigures(key=key, calls=10, tokens_used=100, cost_usd=None if cost is None else Decimal(cost),
                       priced_calls=10 - unpriced_calls, priced_tokens=90, unpriced_calls=unpriced_calls,
                       unpriced_tokens=10 if unpriced_calls else 0, unpriced_models=[], approximate=approximate)  # fmt: skip


def test_result_line_round_trips_through_the_suite_and_keeps_the_mismatch_exact() -> None:
    line = result_line(12.345, 88.0, 0.0456, Decimal("0.000000120"))
    assert line == (
        "RESULT cost_summary_ms=12.3 tenants_cost_ms=88.0 reprice_visible_s=0.046 cost_mismatch_usd=0.000000120"
    )
    assert parse_result(line) == {
        "cost_summary_ms": 12.3, "tenants_cost_ms": 88.0, "reprice_visible_s": 0.046, "cost_mismatch_usd": 1.2e-7,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("summary", "tenants", "reprice", "mismatch", "met"),
    [
        (TARGET_SUMMARY_MS, TARGET_TENANTS_MS, TARGET_REPRICE_S, "0", [True, True, True, True]),
        (TARGET_SUMMARY_MS + 0.1, TARGET_TENANTS_MS * 20, TARGET_REPRICE_S * 2, "0.000000001",
         [False, False, False, False]),
    ],
)  # fmt: skip
def test_each_figure_against_its_target_in_the_bench_and_in_the_suite(
    summary: float, tenants: float, reprice: float, mismatch: str, met: list[bool]
) -> None:
    line = result_line(summary, tenants, reprice, Decimal(mismatch))
    assert [fig.ok for fig in figure_rows(parse_result(line))] == met
    result = CompanionResult("cost", ["python", "-m", COMPANIONS["cost"].module], returncode=0,
                             figures=parse_result(line), result_line=line)  # fmt: skip
    assert [fig.met for fig in figures(result)] == met
    assert [fig.name for fig in figures(result)] == [
        "cost_summary_ms", "tenants_cost_ms", "reprice_visible_s", "cost_mismatch_usd",
    ]  # fmt: skip


def test_the_hour_grain_mismatch_is_a_reference_beside_the_four_targets() -> None:
    line = result_line(1.0, 1.0, 0.1, Decimal("0.002"), Decimal(0))
    assert parse_result(line)["cost_mismatch_hour_grain_usd"] == 0.0
    rows = {fig.name: fig.ok for fig in figure_rows(parse_result(line))}
    assert rows == {"cost_summary_ms": True, "tenants_cost_ms": True, "reprice_visible_s": True,
                    "cost_mismatch_usd": False, "cost_mismatch_hour_grain_usd": None}  # fmt: skip


def test_the_checked_month_is_the_whole_calendar_month_before_now() -> None:
    assert last_whole_month(datetime(2026, 12, 2, 15, 4, tzinfo=UTC)) == (
        datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC),
    )  # fmt: skip
    assert last_whole_month(datetime(2027, 1, 1, tzinfo=UTC)) == (
        datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC),
    )  # fmt: skip


def test_an_override_prices_missing_cache_rates_as_input_and_reasoning_as_output() -> None:
    bare = PlannedOverride("m", "p", "", date(2026, 1, 1), Decimal("2"), Decimal("10"))
    # 3M input of which 1.5M cached, all at 2; 2M output of which 0.4M reasoning, all at 10.
    assert bare.cost(**TOKENS) == Decimal("26")
    full = PlannedOverride("m", "p", "", date(2026, 1, 1), Decimal("2"), Decimal("10"),
                           cache_read_per_mtok=Decimal("0.5"), cache_write_per_mtok=Decimal("4"),
                           reasoning_per_mtok=Decimal("20"), call_fee=Decimal("0.01"))  # fmt: skip
    # 1.5M uncached * 2 + 1M * 0.5 + 0.5M * 4 + 1.6M * 10 + 0.4M * 20, plus the fee
    assert full.cost(**TOKENS) == Decimal("3") + Decimal("0.5") + Decimal("2") + Decimal("16") + Decimal("8") + Decimal(
        "0.01"
    )


def test_override_in_force_prefers_the_tenants_own_then_the_latest() -> None:
    rates = (Decimal(1), Decimal(2))
    early = PlannedOverride("m", "", "", date(2026, 10, 1), *rates)
    late = PlannedOverride("m", "p", "", date(2026, 11, 1), *rates)
    own = PlannedOverride("m", "p", "t1", date(2026, 10, 15), *rates)
    other = PlannedOverride("other", "p", "", date(2026, 9, 1), *rates)
    plan = [early, late, own, other]
    assert override_in_force(plan, "t2", "m", "p", date(2026, 9, 30)) is None
    assert override_in_force(plan, "t2", "m", "p", date(2026, 10, 20)) is early
    assert override_in_force(plan, "t2", "m", "p", date(2026, 11, 1)) is late
    assert override_in_force(plan, "t2", "m", "q", date(2026, 11, 1)) is early  # late names another provider
    assert override_in_force(plan, "t1", "m", "p", date(2026, 11, 20)) is own
    assert override_in_force(plan, "t1", "m", "p", date(2026, 10, 14)) is early


def test_the_planned_overrides_pass_the_validation_the_api_and_cli_use() -> None:
    plan = planned_overrides(date(2026, 11, 1), date(2026, 10, 4), tenant_name(1000))
    assert len(plan) >= 3 and any(o.tenant for o in plan) and any(not o.tenant for o in plan)
    assert len({o.model for o in plan}) == len(plan)  # no two compete: precedence cannot matter to the check
    for planned in plan:
        parsed = parse_override(override_fields(planned))
        assert (parsed.model_pattern, parsed.provider, parsed.tenant_id, parsed.effective_from) == (
            planned.model, planned.provider, planned.tenant, planned.effective_from,
        )  # fmt: skip
        assert (parsed.input_per_mtok, parsed.cache_read_per_mtok, parsed.reasoning_per_mtok, parsed.call_fee) == (
            planned.input_per_mtok, planned.cache_read_per_mtok, planned.reasoning_per_mtok, planned.call_fee,
        )  # fmt: skip


def test_compare_names_the_model_of_a_difference_and_counts_unpriced_calls() -> None:
    events = EventTotals({"a": ModelTotals(5, Decimal("1.5")), "b": ModelTotals(3, Decimal("0.25")),
                          "acme": ModelTotals(2, Decimal(0), unpriced_calls=2)})  # fmt: skip
    api = [api_row("a", "1.5"), api_row("b", "0.3", approximate=True), api_row("acme", None, unpriced_calls=2)]
    lines = {line.model: line for line in compare(api, events)}
    assert lines["a"].mismatch_usd == 0
    assert lines["b"].mismatch_usd == Decimal("0.05") and lines["b"].approximate
    assert lines["acme"].mismatch_usd == 0 and lines["acme"].api_unpriced_calls == lines["acme"].events_unpriced_calls
    assert mismatch_usd(api_row("total", "1.8"), events) == Decimal("0.05")
    assert mismatch_usd(None, EventTotals()) == 0
    assert events.calls == 10 and events.unpriced_calls == 2


def test_the_workload_has_twenty_priced_models_and_one_nothing_prices() -> None:
    params = load_params()
    assert len(BENCH_MODELS) - 1 >= 20 and UNPRICED_MODEL in BENCH_MODELS
    assert len(set(zip(params["models"], params["providers"], strict=True))) == params["n_models"]
    assert any(params["long_inputs"]) and any(params["reasoning"])
