"""A web process's worth of steady load: ``python -m devtools.faults.load``.

Tracks events at ``--rate`` per second for ``--duration`` seconds through a
real ``producer.Tracker`` (its own broker connection, spool and thread), then
flushes and writes a JSON report with the number of events ``track()``
accepted. Every event is recognisable afterwards: tenant ``--tenant`` and
user ``<producer id>-<sequence number>``, so reconciliation can name the
events that are missing or stored twice.

While it runs it rewrites ``<control>/status.json`` every half second. When
``<control>/freeze`` appears it stops tracking, waits until every accepted
event is published or fsynced to the spool (nothing only in memory), writes
the report, creates ``<control>/frozen`` and sleeps until it is killed: the
moment to SIGKILL a producer without touching the loss window that a hard
crash is documented to have (the events of the last flush interval).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

FEATURES = ("summarization", "smart_search", "recommendation", "sentiment", "forecasting")
MODELS = ("gpt-4o-mini", "claude-haiku", None)
TICK_S = 0.01
STATUS_EVERY_S = 0.5


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)  # readers never see half a file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--broker", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--spool", required=True)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--producer-id", default="p0")
    parser.add_argument("--rate", type=float, default=1500)
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument("--control", required=True, type=Path)
    parser.add_argument("--flush-timeout", type=float, default=180)
    parser.add_argument("--visibility-timeout", type=int, default=10)
    args = parser.parse_args(argv)

    from config import Settings
    from producer import Tracker

    tracker = Tracker(
        Settings(
            celery_broker_url=args.broker,
            ingest_queue=args.queue,
            producer_spool_dir=args.spool,
            redis_visibility_timeout_s=args.visibility_timeout,
        )
    )
    tracker.start()  # replays what a killed predecessor left in the spool
    control: Path = args.control
    control.mkdir(parents=True, exist_ok=True)
    freeze, frozen = control / "freeze", control / "frozen"
    sent = refused = 0
    started = time.monotonic()
    next_status = started
    while (elapsed := time.monotonic() - started) < args.duration and not freeze.exists():
        due = min(int(args.rate * elapsed), int(args.rate * args.duration))
        while sent + refused < due:
            n = sent + refused
            accepted = tracker.track(
                tenant_id=args.tenant,
                feature_name=FEATURES[n % len(FEATURES)],
                user_id=f"{args.producer_id}-{sent}",
                model=MODELS[n % len(MODELS)],
                input_tokens=n % 2000,
                output_tokens=n % 500,
                latency_ms=(n % 3000) + 0.25,
                status="error" if n % 50 == 0 else "success",
                error_type="timeout" if n % 50 == 0 else None,
            )
            if accepted:
                sent += 1
            else:
                refused += 1  # the buffer was full: counted, never silent
        if time.monotonic() >= next_status:
            write_json(control / "status.json", {"sent": sent, "refused": refused, **vars(tracker.stats())})
            next_status += STATUS_EVERY_S
        time.sleep(TICK_S)

    if freeze.exists():
        # Nothing of what was accepted may be only in memory when we are killed.
        def settled() -> bool:
            s = tracker.stats()
            return s.buffered == 0 and s.in_flight == 0 and s.published + s.spooled == sent

        while not (settled() and (time.sleep(0.1) is None) and settled()):
            time.sleep(0.02)
        write_json(control / "report.json", {"sent": sent, "refused": refused, "frozen": True, **vars(tracker.stats())})
        frozen.touch()
        time.sleep(3600)  # the test kills us
        return 1

    flushed = tracker.flush(args.flush_timeout)
    report = {"sent": sent, "refused": refused, "flushed": flushed, **vars(tracker.stats())}
    write_json(control / "report.json", report)
    tracker.close(timeout=0)
    return 0 if flushed else 1


if __name__ == "__main__":
    sys.exit(main())
