"""The suite's outputs: the summary table, BENCHMARKS.md, the plot and the RESULT line.

Figures are shown beside their targets and baselines (measured on this
machine kind before the project existed), with the machine, the date,
the versions, and a warning when other processes took CPU during a phase:
on a 2-core machine that runs producer, broker, worker and database at once,
anything else running shows in every figure.
"""

from __future__ import annotations

import itertools
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, text

from bench import companions, harness
from bench.harness import PROCFILE_POOL

if TYPE_CHECKING:
    from bench.suite import SuiteResult

PLOT_PATH = Path("bench/results/pipeline.png")
PROFILE_NOTES = Path("bench/results/profile.md")  # hand-written from py-spy runs, embedded as is
SMALL_PRODUCER_NOTES = Path("bench/results/small_producers.md")  # hand-written from four runs, embedded as is

TARGET_COPY_EPS = 25_000
TARGET_COPY_SHARE_OF_CEILING = 0.60
TARGET_BULK_EPS = 10_000
TARGET_FRESH_P99_MS = 2_000
TARGET_WORKER_RSS_MB = 250
TARGET_TRACK_US = 15.0
BASELINE_BULK_EPS = 12_000  # bulk_insert_mappings on this machine kind, measured before the project
BASELINE_COPY_EPS = 42_000  # psycopg2 COPY on this machine kind, measured before the project
BASELINE_NAIVE = "~900"
BASELINE_PER_EVENT = "700-2,600"
NOISY_CORES = 0.25  # flag a phase during which other processes took this much CPU
BYTES_PER_GB = 1024**3
PLOT_DPI = 110
PLOT_SIZE_IN = (11.0, 8.0)


# --- facts ---------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _rabbitmq_version(broker_url: str) -> str:
    if broker_url.startswith(("redis://", "rediss://")):
        return "not used (Redis broker)"
    from kombu import Connection

    try:
        with Connection(broker_url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
            version = conn.connection.server_properties.get("version", "unknown")
            return version.decode() if isinstance(version, bytes) else str(version)
    except Exception as exc:  # noqa: BLE001 - informational only
        return f"unknown ({type(exc).__name__})"


def collect_facts(env: harness.BenchEnv, engine: Engine) -> dict[str, str]:
    """Machine and versions, as the report lists them."""
    import celery
    import kombu
    import psutil
    import psycopg2
    import sqlalchemy

    with engine.connect() as conn:
        postgres = conn.execute(text("SHOW server_version")).scalar_one()
    return {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count()),
        "RAM": f"{psutil.virtual_memory().total / BYTES_PER_GB:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "PostgreSQL": postgres,
        "RabbitMQ": _rabbitmq_version(env.broker_url),
        "Celery": celery.__version__,
        "kombu": kombu.__version__,
        "SQLAlchemy": sqlalchemy.__version__,
        "psycopg2": psycopg2.__version__.split()[0],
    }


# --- targets -------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    name: str
    value: float | None
    shown: str
    target: str
    met: bool | None  # None: a baseline, or not measured


def _eps(suite: SuiteResult, phase: str) -> float | None:
    result = suite.phases.get(phase)
    return result.eps if result else None


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, spec)


def figures(suite: SuiteResult) -> dict[str, float | None]:
    """The RESULT line's figures."""
    fresh = suite.freshness
    backlog = suite.backlog
    copy = suite.phases.get("copy")
    return {
        "copy_eps": _eps(suite, "copy"),
        "bulk_eps": _eps(suite, "bulk"),
        "ceiling_eps": _eps(suite, "ceiling"),
        "naive_eps": _eps(suite, "naive"),
        "fresh_p99_ms": fresh.percentile_ms(0.99) if fresh and fresh.delays_ms else None,
        "worker_rss_mb": backlog.peak_rss_mb if backlog else None,
        "track_us": copy.call_us_median if copy else None,
    }


def targets(suite: SuiteResult) -> list[Figure]:
    f = figures(suite)
    copy, bulk, ceiling = f["copy_eps"], f["bulk_eps"], f["ceiling_eps"]
    share = copy / ceiling if copy and ceiling else None
    fresh = suite.freshness
    per_event = suite.phases.get("per_event")
    backlog_pss = suite.backlog.peak_pss_mb if suite.backlog else None

    def check(value: float | None, ok: bool) -> bool | None:
        return None if value is None else ok

    return [
        Figure(
            "copy_eps",
            copy,
            _fmt(copy),
            f">= {TARGET_COPY_EPS:,} (before the project: ~{BASELINE_COPY_EPS:,})",
            check(copy, (copy or 0) >= TARGET_COPY_EPS),
        ),
        Figure(
            "copy / ceiling",
            share,
            _fmt(share and 100 * share, ".0f") + "%",
            f">= {TARGET_COPY_SHARE_OF_CEILING:.0%}",
            check(share, (share or 0) >= TARGET_COPY_SHARE_OF_CEILING),
        ),
        Figure(
            "bulk_eps",
            bulk,
            _fmt(bulk),
            f">= {TARGET_BULK_EPS:,} (before the project: ~{BASELINE_BULK_EPS:,})",
            check(bulk, (bulk or 0) >= TARGET_BULK_EPS),
        ),
        Figure("ceiling_eps", ceiling, _fmt(ceiling), "raw COPY + commit, the ceiling", None),
        Figure(
            "naive_eps", f["naive_eps"], _fmt(f["naive_eps"]), f"baseline (before the project: {BASELINE_NAIVE})", None
        ),
        Figure(
            "per_event_celery_eps",
            per_event.eps if per_event else None,
            _fmt(per_event.eps if per_event else None),
            f"baseline (before the project: {BASELINE_PER_EVENT})",
            None,
        ),
        Figure(
            "fresh_p50_ms",
            fresh.percentile_ms(0.5) if fresh and fresh.delays_ms else None,
            _fmt(fresh.percentile_ms(0.5) if fresh and fresh.delays_ms else None),
            f"at {fresh.rate_target:,.0f} events/s" if fresh else "-",
            None,
        ),
        Figure(
            "fresh_p99_ms",
            f["fresh_p99_ms"],
            _fmt(f["fresh_p99_ms"]),
            f"<= {TARGET_FRESH_P99_MS:,}",
            check(f["fresh_p99_ms"], (f["fresh_p99_ms"] or 0) <= TARGET_FRESH_P99_MS),
        ),
        Figure(
            "worker_rss_mb",
            f["worker_rss_mb"],
            _fmt(f["worker_rss_mb"], ".1f"),
            f"<= {TARGET_WORKER_RSS_MB}",
            check(f["worker_rss_mb"], (f["worker_rss_mb"] or 0) <= TARGET_WORKER_RSS_MB),
        ),
        Figure(
            "worker_pss_mb",
            backlog_pss,
            _fmt(backlog_pss, ".1f"),
            "same tree, shared pages split (PSS): what it costs the machine",
            None,
        ),
        Figure(
            "track_us (median)",
            f["track_us"],
            _fmt(f["track_us"], ".2f"),
            f"<= {TARGET_TRACK_US:g}",
            check(f["track_us"], (f["track_us"] or 0) <= TARGET_TRACK_US),
        ),
    ]


def all_targets(suite: SuiteResult) -> list[Figure]:
    """The ingest figures and those of the other benchmarks that ran (what ``--strict`` checks)."""
    return targets(suite) + [fig for result in suite.companions.values() for fig in companions.figures(result)]


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "-"}[met]


def result_line(suite: SuiteResult) -> str:
    specs = {"fresh_p99_ms": ".0f", "worker_rss_mb": ".1f", "track_us": ".2f"}
    parts = []
    for name, value in figures(suite).items():
        parts.append(f"{name}={'nan' if value is None else format(value, specs.get(name, '.0f'))}")
    return "RESULT " + " ".join(parts)


# --- reconciliation and noise --------------------------------------------------------------


def _reconciliation_rows(suite: SuiteResult) -> list[tuple[str, Any, float | None, int]]:
    """(phase, Reconciliation or None, seconds, refused) of every phase that ran."""
    rows: list[tuple[str, Any, float | None, int]] = [
        (phase.name, phase.reconciliation, phase.seconds, phase.refused) for phase in suite.phases.values()
    ]
    if suite.freshness is not None:
        rows.append(("freshness", suite.freshness.reconciliation, suite.freshness.tracking_seconds, 0))
    if suite.backlog is not None:
        rows.append(("backlog", suite.backlog.reconciliation, suite.backlog.drain_seconds, suite.backlog.refused))
    return rows


def _noisy(suite: SuiteResult) -> list[tuple[str, float]]:
    noisy = [(p.name, p.foreign_cores) for p in suite.phases.values() if p.foreign_cores >= NOISY_CORES]
    for name, extra in (("freshness", suite.freshness), ("backlog", suite.backlog)):
        if extra is not None and extra.foreign_cores >= NOISY_CORES:
            noisy.append((name, extra.foreign_cores))
    return noisy


def print_summary(suite: SuiteResult) -> None:
    print("\n== figures")
    widths = (22, 12, 44, 8)
    print(
        "  "
        + "  ".join(
            h.ljust(w) for h, w in zip(("figure", "measured", "target / baseline", "verdict"), widths, strict=False)
        )
    )
    for fig in targets(suite):
        print(
            f"  {fig.name.ljust(widths[0])}  {fig.shown.rjust(widths[1])}  {fig.target.ljust(widths[2])}"
            f"  {_verdict(fig.met)}"
        )
    print("\n== reconciliation")
    for name, rec, seconds, refused in _reconciliation_rows(suite):
        if rec is None:
            print(f"  {name:<16} not reconciled")
            continue
        print(
            f"  {name:<16} sent {rec.sent:>9,}  stored {rec.rows:>9,}  lost {rec.lost}  duplicated {rec.duplicated}"
            f"  dead letters {rec.dead_letters}  sums {'ok' if rec.content_ok else 'DIFF'}  refused {refused}"
            f"  {_fmt(seconds, '.1f')} s"
        )
    for name, cores in _noisy(suite):
        print(f"  WARNING: other processes used {cores:.2f} cores on average during {name}")
    for result in suite.companions.values():
        print(f"\n== {result.name} ({result.seconds / 60:.1f} min)")
        if not result.ok:
            print(f"  FAILED: exit status {result.returncode}; its last lines are above")
        for fig in companions.figures(result):
            print(
                f"  {fig.name.ljust(widths[0])}  {fig.shown.rjust(widths[1])}  {fig.target.ljust(widths[2])}"
                f"  {_verdict(fig.met)}"
            )
    print(f"\nruntime {suite.runtime_s / 60:.1f} min")


# --- BENCHMARKS.md ---------------------------------------------------------------------------


def _markdown(suite: SuiteResult, plot_rel: Path) -> str:
    lines: list[str] = []
    add = lines.append
    sizes = suite.sizes
    add("# Benchmarks")
    add("")
    add(
        "Generated by `python -m bench` (bench/suite.py); do not edit by hand: run it again."
        " Producer, broker (RabbitMQ), Celery worker and PostgreSQL all run on the one machine below."
    )
    add("")
    kind = "quick smoke run (`--quick`): small sizes, figures not comparable" if suite.quick else "full run"
    add(
        f"- run: {kind}, {suite.started:%Y-%m-%d %H:%M} UTC, {suite.runtime_s / 60:.1f} min;"
        f" ingest worker `-P {PROCFILE_POOL} -c {suite.concurrency}` as in the Procfile"
        " (the per-event baseline: Celery's default prefork pool)"
    )
    facts = suite.facts
    add(
        f"- machine: {facts.get('CPU', '?')}, {facts.get('cores', '?')} cores, {facts.get('RAM', '?')} RAM,"
        f" {facts.get('kernel', '?')}"
    )
    add(
        "- versions: "
        + ", ".join(
            f"{name} {facts[name]}"
            for name in ("Python", "PostgreSQL", "RabbitMQ", "Celery", "kombu", "SQLAlchemy", "psycopg2")
            if name in facts
        )
    )
    add(
        f"- load average: {' / '.join(f'{v:.2f}' for v in suite.load_before)} before,"
        f" {' / '.join(f'{v:.2f}' for v in suite.load_after)} after (1 / 5 / 15 min)"
    )
    noisy = _noisy(suite)
    if noisy:
        add(
            "- **the machine was busy**: processes outside the run used "
            + ", ".join(f"{cores:.2f} cores during {name}" for name, cores in noisy)
            + " (on average, of 2): those figures understate what it does running only this system."
        )
    else:
        add(f"- the machine was otherwise quiet (no phase saw more than {NOISY_CORES} cores used by other processes)")
    add("")
    add("## Figures")
    add("")
    add("| figure | measured | target / baseline | verdict |")
    add("| --- | ---: | --- | --- |")
    for fig in targets(suite):
        add(f"| {fig.name} | {fig.shown} | {fig.target} | {_verdict(fig.met)} |")
    add("")
    add(f"`{result_line(suite)}`")
    add("")
    add("## What each figure is")
    add("")
    add(f"- **naive_eps**: {sizes.naive:,} events, ORM `session.add` + `commit` per event, in the bench process.")
    add(
        f"- **per_event_celery_eps**: {sizes.per_event:,} events, one `apply_async` per event (publisher"
        " confirms), a worker inserting each row with ORM add + commit; first publish to last row committed."
    )
    add(
        f"- **bulk_eps / copy_eps**: the pipeline on the same {sizes.pipeline:,} generated events:"
        " `Tracker.track()` in the bench process as fast as it accepts them (the loop pauses while more than"
        " 20,000 wait in the buffer, so none is refused), micro-batches of 1,000 published by the producer"
        " thread, `celery -A tasks.app worker` writing with `INGEST_WRITER=bulk` (bulk_insert_mappings) or"
        " `copy` (COPY FROM STDIN); from the first `track()` to the last row committed (`count(*)` polled)."
    )
    add(
        "- **ceiling_eps**: the same rows (UUIDv7 ids, current timestamps) as one pre-built COPY buffer,"
        " `copy_expert` + commit timed alone: what PostgreSQL takes when nothing else of the pipeline runs."
    )
    fresh = suite.freshness
    if fresh is not None:
        add(
            f"- **fresh_p50_ms / fresh_p99_ms**: `track()` paced at {fresh.rate_target:,.0f} events/s for"
            f" {fresh.events / fresh.rate_target:.0f} s ({fresh.events:,} events, writer `{fresh.writer}`);"
            " per row, PostgreSQL's commit timestamp (`pg_xact_commit_timestamp(xmin)`, private PostgreSQL"
            f" {fresh.server} with `track_commit_timestamp=on`, otherwise configured like the shared one)"
            " minus the event's timestamp, which `track()` sets at call time. Includes the producer's"
            " buffering (flush every 200 ms or 1,000 events), publishing, the broker, the worker and the commit."
        )
    backlog = suite.backlog
    if backlog is not None:
        add(
            f"- **worker_rss_mb**: {backlog.events:,} events published with no consumer, then the worker started"
            f" (writer `{backlog.writer}`); peak of the RSS summed over its process tree (main process and pool"
            " children if any, shared pages counted in each), sampled every 0.1 s with psutil until every row was stored."
        )
    add(
        "- **track_us**: median of `perf_counter_ns` around each `track()` call of the copy pipeline run"
        " (so under contention with the publishing thread)."
    )
    add("")
    add("## Details")
    add("")
    add("| phase | events | seconds | events/s | notes |")
    add("| --- | ---: | ---: | ---: | --- |")
    for phase in suite.phases.values():
        notes = "; ".join(note for note in phase.notes if not note.startswith("CPU"))
        add(f"| {phase.name} | {phase.events:,} | {_fmt(phase.seconds, '.2f')} | {_fmt(phase.eps)} | {notes} |")
    if fresh is not None:
        add(
            f"| freshness | {fresh.events:,} | {fresh.tracking_seconds:.2f} | {fresh.achieved_rate:,.0f} (paced) |"
            f" {fresh.notes[0] if fresh.notes else ''} |"
        )
    if backlog is not None:
        add(
            f"| backlog drain | {backlog.events:,} | {_fmt(backlog.drain_seconds, '.2f')} | {_fmt(backlog.drain_eps)} |"
            f" published in {_fmt(backlog.publish_seconds, '.1f')} s, queue depth then {backlog.queue_depth_before}"
            f" messages; {backlog.notes[0] if backlog.notes else ''} |"
        )
    add("")
    add("Where the CPU went (cores of 2, from /proc; 'other' is processes outside the run):")
    add("")
    for phase in suite.phases.values():
        for note in phase.notes:
            if note.startswith("CPU"):
                add(f"- {phase.name}: {note}")
    for name, extra in (("freshness", fresh), ("backlog", backlog)):
        if extra is not None:
            for note in extra.notes:
                if note.startswith("CPU"):
                    add(f"- {name}: {note}")
    add("")
    add("Reconciliation (every phase; the suite fails if one lost, duplicated, dead-lettered or altered an event):")
    add("")
    add("| phase | sent | stored | lost | duplicated | dead letters | sums |")
    add("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, rec, _seconds, _refused in _reconciliation_rows(suite):
        if rec is not None:
            add(
                f"| {name} | {rec.sent:,} | {rec.rows:,} | {rec.lost} | {rec.duplicated} | {rec.dead_letters} |"
                f" {'ok' if rec.content_ok else 'DIFF'} |"
            )
    add("")
    if suite.companions:
        add("## The other benchmarks")
        add("")
        add(
            "Run by the suite after the ingest phases, each as its own command (`python -m <module>`, a"
            " database or private servers of its own); the figures are those of its `RESULT` line."
        )
        add("")
        for result in suite.companions.values():
            companion = companions.COMPANIONS[result.name]
            add(f"### {result.name}: `python -m {companion.module}`")
            add("")
            add(f"{companion.what[0].upper()}{companion.what[1:]}; {result.seconds / 60:.1f} min.")
            add("")
            if not result.ok:
                add(f"**Failed** (exit status {result.returncode}); the end of its output:")
                add("")
                add("```")
                lines.extend(result.tail)
                add("```")
                add("")
                continue
            add("| figure | measured | target / baseline | verdict |")
            add("| --- | ---: | --- | --- |")
            for fig in companions.figures(result):
                add(f"| {fig.name} | {fig.shown} | {fig.target} | {_verdict(fig.met)} |")
            add("")
            add(f"`{result.result_line}`")
            add("")
    add("## Over time")
    add("")
    add(f"![events/s and freshness over time]({plot_rel.as_posix()})")
    add("")
    add(
        "Top left: rows committed per second in the two full-speed pipeline runs. Top right and bottom left:"
        " the freshness run, events committed per second and the commit delay (p50, p99) of the events"
        " committed in each second. Bottom right: the worker's RSS (process tree) while it drains the backlog."
    )
    add("")
    for notes in (PROFILE_NOTES, SMALL_PRODUCER_NOTES):
        path = harness.REPO_ROOT / notes
        if path.exists():
            add(path.read_text().rstrip())
            add("")
    return "\n".join(lines)


def _rates(samples: list[tuple[float, int]], t0: float) -> tuple[list[float], list[float]]:
    """Rows per second between successive ``count(*)`` polls, at each interval's midpoint."""
    xs, ys = [], []
    for (t_a, c_a), (t_b, c_b) in itertools.pairwise(samples):
        if t_b - t_a <= 0:
            continue
        xs.append((t_a + t_b) / 2 - t0)
        ys.append((c_b - c_a) / (t_b - t_a))
    return xs, ys


def plot(suite: SuiteResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=PLOT_SIZE_IN)
    ax = axes[0][0]
    for name in ("bulk", "copy"):
        phase = suite.phases.get(name)
        if phase is not None and phase.t0 is not None:
            xs, ys = _rates(phase.samples, phase.t0)
            ax.step(xs, ys, where="mid", label=f"pipeline, {name} ({_fmt(phase.eps)} events/s overall)")
    ceiling = suite.phases.get("ceiling")
    if ceiling is not None and ceiling.eps:
        ax.axhline(ceiling.eps, color="grey", linestyle=":", label=f"raw COPY ceiling ({ceiling.eps:,.0f})")
    ax.set(title="Full-speed pipeline: rows committed/s", xlabel="seconds since first track()", ylabel="rows/s")
    ax.legend(fontsize="small")
    fresh = suite.freshness
    if fresh is not None and fresh.per_second:
        seconds = [s.second for s in fresh.per_second]
        axes[0][1].bar(seconds, [s.committed for s in fresh.per_second], width=0.9, color="tab:green")
        axes[0][1].axhline(fresh.rate_target, color="grey", linestyle=":", label="target rate")
        axes[0][1].set(
            title=f"Freshness run: events committed/s (paced at {fresh.rate_target:,.0f}/s)",
            xlabel="second since first track()",
            ylabel="events/s",
        )
        axes[0][1].legend(fontsize="small")
        ax = axes[1][0]
        ax.plot(seconds, [s.p50_ms for s in fresh.per_second], marker=".", label="p50")
        ax.plot(seconds, [s.p99_ms for s in fresh.per_second], marker=".", label="p99")
        ax.axhline(TARGET_FRESH_P99_MS, color="red", linestyle=":", label=f"p99 target {TARGET_FRESH_P99_MS} ms")
        ax.set(title="Freshness run: track() to commit", xlabel="second (by commit time)", ylabel="ms")
        ax.set_yscale("log")
        ax.legend(fontsize="small")
    backlog = suite.backlog
    if backlog is not None and backlog.rss_series:
        ax = axes[1][1]
        ax.plot([t for t, _ in backlog.rss_series], [mb for _, mb in backlog.rss_series], color="tab:purple")
        ax.axhline(TARGET_WORKER_RSS_MB, color="red", linestyle=":", label=f"target {TARGET_WORKER_RSS_MB} MB")
        ax.set(
            title=f"Backlog of {backlog.events:,}: worker RSS (process tree)",
            xlabel="seconds since worker start",
            ylabel="MB",
        )
        ax.set_ylim(bottom=0)
        ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)


def write_report(suite: SuiteResult, markdown_path: Path, plot_path: Path) -> list[Path]:
    """Write the plot and BENCHMARKS.md; returns the paths written."""
    plot(suite, plot_path)
    plot_rel = Path(os.path.relpath(plot_path, markdown_path.parent))
    markdown_path.write_text(_markdown(suite, plot_rel) + "\n")
    return [markdown_path, plot_path]
