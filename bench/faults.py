"""Fault injection report: ``python -m bench.faults [--only NAME ...] [--rate N] [--duration S]``.

Runs the scenarios of the fault suite (devtools/faults/scenarios.py, the same
code as ``pytest -m faults``), each with its own private PostgreSQL and broker
on spare ports, a steady load from a real producer process and real Celery
worker processes, and reconciles the events ``track()`` accepted against the
rows stored and the dead letters. Prints one line per scenario as it ends, a
table, and a final line::

    RESULT scenarios=<n> passed=<n> events_sent=<n> lost=<n> duplicated=<n> dead_lettered=<n>

Scenarios: worker_sigkill, postgres_down, rabbitmq_down, redis_down,
producer_killed_spool, two_hosts_partition (network namespaces; needs root and
iproute2, else two processes with one frozen), bad_input. Needs PostgreSQL 15
binaries (PG_BIN), rabbitmq-server (RABBITMQ_SBIN) and redis-server; the
machine's own services are never touched. Exit status 0 only if every scenario
passed. Logs of servers, workers and producers are kept with ``--keep``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from config import DEFAULTS
from devtools.faults.scenarios import DEFAULT_DURATION_S, DEFAULT_RATE, SCENARIOS, Options, Outcome, run_scenario


def table(outcomes: list[Outcome]) -> str:
    header = ("scenario", "broker", "sent", "stored", "dead_lettered", "lost", "duplicated", "seconds", "result")
    rows = [
        (o.scenario, o.broker, o.counts.sent, o.counts.stored, o.counts.dead_lettered, o.counts.lost,
         o.counts.duplicated, f"{o.seconds:.0f}", "pass" if o.passed else "FAIL")
        for o in outcomes
    ]  # fmt: skip
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=False)) for line in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def result_line(outcomes: list[Outcome]) -> str:
    return (
        f"RESULT scenarios={len(outcomes)} passed={sum(o.passed for o in outcomes)}"
        f" events_sent={sum(o.counts.sent for o in outcomes)} lost={sum(o.counts.lost for o in outcomes)}"
        f" duplicated={sum(o.counts.duplicated for o in outcomes)}"
        f" dead_lettered={sum(o.counts.dead_lettered for o in outcomes)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), help="run these scenarios only")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="events per second (default %(default)s)")
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION_S,
                        help="seconds of load per scenario (default %(default)s)")  # fmt: skip
    parser.add_argument("--seed", type=int, help="seed of the random kill moments")
    parser.add_argument("--keep", action="store_true", help="keep the logs (printed path)")
    args = parser.parse_args(argv)

    # devtools.workers derives a worker's DATABASE_URL from ours before the scenario
    # replaces it with its private server's: any value will do.
    os.environ.setdefault("DATABASE_URL", DEFAULTS.database_url)
    workdir = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    names = args.only or list(SCENARIOS)
    outcomes: list[Outcome] = []
    started = time.monotonic()
    try:
        for name in names:
            print(f"{name}: {SCENARIOS[name].description} ...", flush=True)
            options = Options(workdir=workdir / name, rate=args.rate, duration=args.duration,
                              log=lambda line: print(line, flush=True))  # fmt: skip
            if args.seed is not None:
                options.seed = args.seed
            outcome = run_scenario(name, options)
            outcomes.append(outcome)
            print(("  pass  " if outcome.passed else "  FAIL  ") + outcome.explain().replace("\n", "\n  "), flush=True)
    finally:
        if args.keep:
            print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(table(outcomes))
    print(f"total {time.monotonic() - started:.0f}s")
    print(result_line(outcomes))
    return 0 if outcomes and all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
