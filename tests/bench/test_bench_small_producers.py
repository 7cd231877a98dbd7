"""bench.small_producers' verdict and RESULT line, and the suite's reading of them (bench.companions)."""

from __future__ import annotations

from bench.companions import COMPANIONS, CompanionResult, figures, parse_result
from bench.harness import Reconciliation
from bench.small_producers import WIN_EPS_RATIO, WIN_XACT_RATIO, ModeResult, result_line, verdict

SENT = 10_000


def mode(name: str, seconds: float, commits: int, lost: int = 0, duplicated: int = 0) -> ModeResult:
    stored = SENT - lost
    reconciliation = Reconciliation(
        sent=SENT, rows=stored + duplicated, distinct_ids=stored, dead_letters=0, input_tokens=5, output_tokens=7,
        errors=1, expected_input_tokens=5, expected_output_tokens=7, expected_errors=1,
    )  # fmt: skip
    return ModeResult(name, sent=SENT, seconds=seconds, xact_commits=commits, reconciliation=reconciliation)


def test_result_line_has_both_modes_and_sums_losses_over_them() -> None:
    results = {"task": mode("task", 4.0, 2_000, lost=2), "aggregate": mode("aggregate", 2.0, 10, duplicated=3)}
    values = parse_result(result_line(results))
    assert values == {
        "task_eps": 2_500.0, "aggregate_eps": 5_000.0, "task_xact_per_s": 500.0, "aggregate_xact_per_s": 5.0,
        "lost": 2.0, "duplicated": 3.0,
    }  # fmt: skip


def test_result_line_of_one_mode_still_counts_its_losses() -> None:
    values = parse_result(result_line({"aggregate": mode("aggregate", 2.0, 10, lost=1)}))
    assert values["lost"] == 1.0 and values["duplicated"] == 0.0
    assert values["task_eps"] != values["task_eps"]  # nan: the mode did not run


def test_verdict_by_events_per_second_or_by_transactions_at_the_same_rate() -> None:
    task = mode("task", 3.0, 2_000)
    assert verdict({"task": task, "aggregate": mode("aggregate", 3.0 / WIN_EPS_RATIO, 10)}).startswith("aggregate wins")
    same_rate_fewer = mode("aggregate", 3.0, int(2_000 / WIN_XACT_RATIO) - 1)
    assert verdict({"task": task, "aggregate": same_rate_fewer}).startswith("same rate")
    assert verdict({"task": task, "aggregate": mode("aggregate", 2.5, 1_000)}).startswith("no clear win")
    assert verdict({"task": task}).startswith("no verdict")


def test_suite_reads_the_win_and_the_losses() -> None:
    def companion(line: str) -> dict[str, bool | None]:
        result = CompanionResult("small_producers", ["python", "-m", COMPANIONS["small_producers"].module],
                                 returncode=0, figures=parse_result(line), result_line=line)  # fmt: skip
        return {fig.name: fig.met for fig in figures(result)}

    won = companion(result_line({"task": mode("task", 4.0, 2_000), "aggregate": mode("aggregate", 2.0, 10)}))
    assert won["aggregate_eps"] is True and won["lost / duplicated"] is True
    lost = companion(result_line({"task": mode("task", 4.0, 2_000, lost=1), "aggregate": mode("aggregate", 3.5, 10)}))
    assert lost["aggregate_eps"] is False and lost["lost / duplicated"] is False
