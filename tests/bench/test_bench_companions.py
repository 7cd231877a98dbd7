"""The suite's reading of the other benchmarks' RESULT lines and their verdicts (bench.companions)."""

from __future__ import annotations

import pytest

from bench.companions import COMPANIONS, CompanionResult, figures, parse_result
from bench.partitions import TARGET_MS
from bench.rollups import TARGET_ROLLUP_1M_S, TARGET_SUMMARY_MS


def finished(name: str, line: str, returncode: int = 0) -> CompanionResult:
    return CompanionResult(name, ["python", "-m", COMPANIONS[name].module], returncode=returncode,
                           figures=parse_result(line), result_line=line)  # fmt: skip


def verdicts(result: CompanionResult) -> dict[str, bool | None]:
    return {fig.name: fig.met for fig in figures(result)}


def test_parse_result_reads_every_pair() -> None:
    assert parse_result("RESULT rollup_1m_s=3.18 summary_raw_ms=1412 lost=0") == {
        "rollup_1m_s": 3.18, "summary_raw_ms": 1412.0, "lost": 0.0,
    }  # fmt: skip


def test_rollup_targets_follow_the_rollup_benchmark() -> None:
    fast = TARGET_ROLLUP_1M_S * 0.5
    met = finished("rollups", f"RESULT rollup_1m_s={fast} rollup_1m_s_larger_table={fast * 1.1}"
                              f" summary_rollup_ms={TARGET_SUMMARY_MS - 1} summary_raw_ms=900")  # fmt: skip
    assert verdicts(met) == {
        "rollup_1m_s": True, "rollup_1m_s_larger_table": True, "summary_rollup_ms": True, "summary_raw_ms": None,
    }  # fmt: skip
    missed = finished("rollups", f"RESULT rollup_1m_s={TARGET_ROLLUP_1M_S + 1} rollup_1m_s_larger_table={fast}"
                                 f" summary_rollup_ms={TARGET_SUMMARY_MS + 1} summary_raw_ms=900")  # fmt: skip
    assert verdicts(missed) == {
        "rollup_1m_s": False, "rollup_1m_s_larger_table": False, "summary_rollup_ms": False, "summary_raw_ms": None,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("line", "met"),
    [
        (f"RESULT partitions_scanned=2 partitioned_ms={TARGET_MS / 4} unpartitioned_ms={TARGET_MS / 2}", True),
        (f"RESULT partitions_scanned=2 partitioned_ms={TARGET_MS / 2} unpartitioned_ms={TARGET_MS / 4}", False),
        (f"RESULT partitions_scanned=2 partitioned_ms={TARGET_MS + 1} unpartitioned_ms={TARGET_MS * 2}", False),
    ],
)
def test_partitioned_query_must_beat_the_target_and_the_flat_table(line: str, met: bool) -> None:
    assert verdicts(finished("partitions", line))["partitioned_ms"] is met


def test_a_fault_scenario_failed_or_an_event_lost_is_a_missed_target() -> None:
    clean = finished("faults", "RESULT scenarios=7 passed=7 events_sent=1000 lost=0 duplicated=0 dead_lettered=5")
    assert verdicts(clean)["fault scenarios passed"] and verdicts(clean)["lost / duplicated"]
    broken = finished("faults", "RESULT scenarios=7 passed=6 events_sent=1000 lost=0 duplicated=1 dead_lettered=5")
    assert not verdicts(broken)["fault scenarios passed"] and not verdicts(broken)["lost / duplicated"]


def test_a_companion_that_failed_has_no_figures_and_fails_the_suite() -> None:
    crashed = finished("partitions", "RESULT partitions_scanned=2 partitioned_ms=1 unpartitioned_ms=2", returncode=1)
    assert not crashed.ok
    assert figures(crashed) == []
    assert not CompanionResult("rollups", ["python"], returncode=0).ok  # no RESULT line
