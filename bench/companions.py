"""The project's other benchmarks, run by the suite as child processes.

``bench.rollups``, ``bench.partitions``, ``bench.faults``,
``bench.small_producers`` and ``bench.cost`` each build their own database (or private servers)
and print their own report. The suite runs
each in turn after the ingest phases, echoes its output, and takes the figures
of its ``RESULT`` line into BENCHMARKS.md beside their targets, so that one
command runs every benchmark of the project. A child process keeps their
memory and their databases apart from the ingest phases' and lets each stay a
command of its own.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench import harness

if TYPE_CHECKING:
    from bench.report import Figure

RESULT_PREFIX = "RESULT "
OUTPUT_TAIL_LINES = 30  # what a failed companion's report keeps of its output
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Companion:
    name: str
    module: str
    quick_args: tuple[str, ...]  # a smoke run (figures not comparable)
    what: str  # one line for BENCHMARKS.md


COMPANIONS: dict[str, Companion] = {
    "rollups": Companion(
        "rollups",
        "bench.rollups",
        ("--quick",),
        "incremental rollup of 1M new events on a 20M-event table and again at 40M, and the per-feature"
        " summary of one tenant over 30 days from the rollups and from raw",
    ),
    "partitions": Companion(
        "partitions",
        "bench.partitions",
        ("--rows", "1000000", "--runs", "11"),
        "the dashboard query over two months of 10M events in twelve monthly partitions against the same rows"
        " in one unpartitioned table",
    ),
    "faults": Companion(
        "faults",
        "bench.faults",
        ("--duration", "10"),
        "seven fault scenarios under load on private servers (worker, database and broker killed or cut off,"
        " malformed messages), each reconciled event by event",
    ),
    "small_producers": Companion(
        "small_producers",
        "bench.small_producers",
        ("--quick",),
        "200 producers (real Trackers, 4 processes of 50) each flushing 10 events every 200 ms for 20 s, stored"
        " by the Celery worker (INGEST_MODE=task) and by the aggregator (INGEST_MODE=aggregate), each reconciled;"
        " events/s from the first track() to the last commit, transactions/s from pg_stat_database",
    ),
    "cost": Companion(
        "cost",
        "bench.cost",
        ("--quick",),
        "cost in USD priced at query time over 20M events of 1,000 tenants and 24 models (dated, tiered,"
        " time-of-day and unpriced) with three dated overrides: one tenant's 30-day cost per feature, the ranking"
        " of the tenants by cost, the time from a new override to the API's new figure, and one tenant-month"
        " against its events priced one by one with genai-prices",
    ),
    "otlp": Companion(
        "otlp",
        "bench.otlp",
        ("--quick",),
        "OpenTelemetry spans accepted by one web process at POST /v1/traces in batches of 512 from 4 concurrent"
        " clients, protobuf then JSON, stored by the Procfile's worker and reconciled span by span",
    ),
}


@dataclass
class CompanionResult:
    name: str
    command: list[str]
    returncode: int | None = None
    seconds: float = 0.0
    figures: dict[str, float] = field(default_factory=dict)
    result_line: str = ""
    tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """It ran to the end and its answers checked out (each exits 1 when they did not)."""
        return self.returncode == 0 and bool(self.figures)


def parse_result(line: str) -> dict[str, float]:
    """``RESULT a=1 b=2.5`` -> ``{"a": 1.0, "b": 2.5}``."""
    pairs = (item.split("=", 1) for item in line[len(RESULT_PREFIX) :].split())
    return {key: float(value) for key, value in pairs}


def run_companion(companion: Companion, quick: bool, environ: Mapping[str, str]) -> CompanionResult:
    """Run one companion to its end; ``environ`` is the environment from before the suite set its own
    (its queue, writer and database must not leak into a benchmark that sets up its own)."""
    command = [sys.executable, "-m", companion.module, *(companion.quick_args if quick else ())]
    result = CompanionResult(companion.name, command)
    print(f"\n== {companion.name}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    # Same process group: Ctrl-C reaches the child too, and its own cleanup runs.
    child = subprocess.Popen(
        command,
        cwd=harness.REPO_ROOT,
        env=dict(environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert child.stdout is not None
        for line in child.stdout:
            line = line.rstrip("\n")
            print(f"  [{companion.name}] {line}", flush=True)
            result.tail = [*result.tail[-(OUTPUT_TAIL_LINES - 1) :], line]
            if line.startswith(RESULT_PREFIX):
                result.figures, result.result_line = parse_result(line), line
        result.returncode = child.wait()
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    result.seconds = time.perf_counter() - started
    return result


# --- targets: the companions' own, imported so that they cannot drift -----------------


def _rollup_figures(values: dict[str, float]) -> list[Figure]:
    from bench.report import Figure
    from bench.rollups import TARGET_ROLLUP_1M_S, TARGET_SAME_WITHIN, TARGET_SUMMARY_MS

    small, large = values["rollup_1m_s"], values["rollup_1m_s_larger_table"]
    ratio = large / small if small else float("inf")
    summary = values["summary_rollup_ms"]
    return [
        Figure("rollup_1m_s", small, f"{small:.2f} s", f"<= {TARGET_ROLLUP_1M_S:g} s", small <= TARGET_ROLLUP_1M_S),
        Figure("rollup_1m_s_larger_table", large, f"{large:.2f} s (x{ratio:.2f})",
               f"within {TARGET_SAME_WITHIN:.0%} of the first", abs(ratio - 1) <= TARGET_SAME_WITHIN),
        Figure("summary_rollup_ms", summary, f"{summary:.1f}", f"<= {TARGET_SUMMARY_MS:g}", summary <= TARGET_SUMMARY_MS),
        Figure("summary_raw_ms", values["summary_raw_ms"], f"{values['summary_raw_ms']:,.0f}", "reference (raw events)",
               None),
    ]  # fmt: skip


def _partition_figures(values: dict[str, float]) -> list[Figure]:
    from bench.partitions import QUERIED_MONTHS, TARGET_MS
    from bench.report import Figure

    scanned, part, flat = values["partitions_scanned"], values["partitioned_ms"], values["unpartitioned_ms"]
    return [
        Figure("partitions_scanned", scanned, f"{scanned:.0f}", f"= {QUERIED_MONTHS} (the months queried)",
               scanned == QUERIED_MONTHS),
        Figure("partitioned_ms", part, f"{part:.1f}", f"<= {TARGET_MS:g} and below unpartitioned",
               part <= TARGET_MS and part < flat),
        Figure("unpartitioned_ms", flat, f"{flat:.1f}", "reference (one table)", None),
    ]  # fmt: skip


def _fault_figures(values: dict[str, float]) -> list[Figure]:
    from bench.report import Figure

    scenarios, passed = values["scenarios"], values["passed"]
    return [
        Figure("fault scenarios passed", passed, f"{passed:.0f} of {scenarios:.0f}", "all", passed == scenarios),
        Figure("events sent under faults", values["events_sent"], f"{values['events_sent']:,.0f}", "-", None),
        Figure("lost / duplicated", values["lost"] + values["duplicated"],
               f"{values['lost']:.0f} / {values['duplicated']:.0f}", "0 / 0",
               values["lost"] == 0 and values["duplicated"] == 0),
        Figure("dead_lettered", values["dead_lettered"], f"{values['dead_lettered']:,.0f}",
               "the malformed events sent, no others", None),
    ]  # fmt: skip


def _small_producer_figures(values: dict[str, float]) -> list[Figure]:
    from bench.report import Figure
    from bench.small_producers import WIN_EPS_RATIO

    task, aggregate = values["task_eps"], values["aggregate_eps"]
    ratio = aggregate / task if task else float("inf")
    task_xact, aggregate_xact = values["task_xact_per_s"], values["aggregate_xact_per_s"]
    lost, duplicated = values["lost"], values["duplicated"]
    return [
        Figure("task_eps", task, f"{task:,.0f}", "INGEST_MODE=task (reference)", None),
        Figure("aggregate_eps", aggregate, f"{aggregate:,.0f} (x{ratio:.2f})",
               f">= {WIN_EPS_RATIO:g}x task mode (the aggregator earns its place)", ratio >= WIN_EPS_RATIO),
        Figure("task_xact_per_s", task_xact, f"{task_xact:,.1f}", "reference", None),
        Figure("aggregate_xact_per_s", aggregate_xact, f"{aggregate_xact:,.1f}", "reference", None),
        Figure("lost / duplicated", lost + duplicated, f"{lost:.0f} / {duplicated:.0f}", "0 / 0",
               lost == 0 and duplicated == 0),
    ]  # fmt: skip


def _cost_figures(values: dict[str, float]) -> list[Figure]:
    from bench.cost import figure_rows
    from bench.report import Figure

    return [Figure(fig.name, fig.value, fig.shown, fig.target, fig.ok) for fig in figure_rows(values)]


def _otlp_figures(values: dict[str, float]) -> list[Figure]:
    from bench.otlp import TARGET_SPANS_PER_S
    from bench.report import Figure

    proto, json_ = values["otlp_spans_per_s"], values["otlp_json_spans_per_s"]
    lost, duplicated = values["lost"], values["duplicated"]
    return [
        Figure("otlp_spans_per_s", proto, f"{proto:,.0f}", f">= {TARGET_SPANS_PER_S:,} (protobuf)",
               proto >= TARGET_SPANS_PER_S),
        Figure("otlp_json_spans_per_s", json_, f"{json_:,.0f}", "reference (OTLP/JSON)", None),
        Figure("lost / duplicated", lost + duplicated, f"{lost:.0f} / {duplicated:.0f}", "0 / 0",
               lost == 0 and duplicated == 0),
    ]  # fmt: skip


FIGURES: dict[str, Callable[[dict[str, float]], list[Figure]]] = {
    "rollups": _rollup_figures,
    "partitions": _partition_figures,
    "faults": _fault_figures,
    "small_producers": _small_producer_figures,
    "cost": _cost_figures,
    "otlp": _otlp_figures,
}


def figures(result: CompanionResult) -> list[Figure]:
    """The companion's figures beside their targets; none when it did not finish."""
    return FIGURES[result.name](result.figures) if result.ok else []
