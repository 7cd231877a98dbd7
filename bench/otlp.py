"""OTLP ingest benchmark: ``python -m bench.otlp [--quick] [--spans N] [--broker-url URL]``.

Spans per second that ONE web process (``uvicorn web.app:app``, one process)
takes on ``POST /v1/traces`` and the pipeline behind it stores: batches of
``BATCH_SPANS`` GenAI spans (what the SDK's BatchSpanProcessor exports at
most), sent by ``SENDERS`` concurrent clients in this process, first as
protobuf, then as OTLP/JSON; a Celery worker (the Procfile's) stores them.
Each phase is timed from its first request until its last row is committed
(``count(*)`` polled), and reconciled: every span's event stored once, token
and error sums as sent. The request bodies are encoded before the clock
starts, so the figure is the server's and the pipeline's, not the client's
encoder's. Everything is co-located on this machine: the clients, the web
process, the broker, the worker and PostgreSQL.

Ends with ``RESULT otlp_spans_per_s=<n> otlp_json_spans_per_s=<n> lost=<n>
duplicated=<n>`` (lost and duplicated summed over both phases). Exit status: 0
if both phases reconcile (the target is enforced only with ``--strict``: exit
2 when missed), 1 otherwise, 130 on Ctrl-C. The bench database
(``analytics_bench_otlp``) is dropped, created and migrated at start, and left
for inspection.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from bench import harness
from bench.harness import BenchEnv, Reconciliation, RowMonitor, Worker
from demo.ai import FEATURES, PROVIDERS
from devtools.otlp import otlp_json

BATCH_SPANS = 512  # the OpenTelemetry SDK's default OTEL_BSP_MAX_EXPORT_BATCH_SIZE
SENDERS = 4  # concurrent exporters (one per service instance, say)
TARGET_SPANS_PER_S = 5_000
FULL_SPANS = 100_000
QUICK_SPANS = 10_240
DEFAULT_CONCURRENCY = 3  # the Procfile's WORKER_CONCURRENCY
USERS = 500
ERROR_RATE = 0.03
CACHED_RATE = 0.3  # share of calls that read a cached prompt prefix
REQUEST_TIMEOUT_S = 60.0
MAX_RETRIES = 20  # per batch, on 429/503 (as an exporter retries)
DEFAULT_RETRY_AFTER_S = 0.2
NS_PER_MS = 1_000_000
SPAN_AGE_NS = 60 * 1_000_000_000  # the spans end a minute before the run: inside any accepted window
MODELS = tuple(PROVIDERS)
PHASES = ("protobuf", "json")
PROTOBUF = "application/x-protobuf"
JSON = "application/json"


# --- workload (pure) ------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """Encoded request bodies of one phase and the sums their stored events must add up to."""

    bodies: list[bytes]
    spans: int
    expected: dict[str, int]


def _kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def make_span(rng: random.Random, end_ns: int) -> tuple[Span, dict[str, int]]:
    """One GenAI span with current attribute names, and what it adds to the expected sums."""
    model = rng.choice(MODELS)
    provider = PROVIDERS[model]
    failed = rng.random() < ERROR_RATE
    input_tokens = rng.randint(20, 4_000)
    output_tokens = 0 if failed else rng.randint(10, 1_500)
    cache_read = rng.randint(0, input_tokens) if rng.random() < CACHED_RATE else 0
    latency_ms = rng.randint(40, 8_000)
    attributes = [
        _kv("gen_ai.operation.name", "chat"), _kv("gen_ai.request.model", model),
        _kv("gen_ai.usage.input_tokens", input_tokens), _kv("gen_ai.usage.output_tokens", output_tokens),
        _kv("gen_ai.usage.cache_read.input_tokens", cache_read),
        _kv("app.feature", rng.choice(FEATURES)), _kv("user.id", f"user-{rng.randrange(USERS):04d}"),
    ]  # fmt: skip
    if provider is not None:
        attributes.append(_kv("gen_ai.provider.name", provider))
    status = Status(code=Status.STATUS_CODE_ERROR, message="TimeoutError: no answer") if failed else None
    span = Span(trace_id=rng.randbytes(16), span_id=rng.randbytes(8), name=f"chat {model}",
                kind=Span.SPAN_KIND_CLIENT, start_time_unix_nano=end_ns - latency_ms * NS_PER_MS,
                end_time_unix_nano=end_ns, attributes=attributes, status=status)  # fmt: skip
    return span, {"input_tokens": input_tokens, "output_tokens": output_tokens, "errors": int(failed)}


def make_request(spans: list[Span]) -> ExportTraceServiceRequest:
    resource = Resource(attributes=[_kv("service.name", "bench-otlp")])
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=spans)])]
    )


def make_workload(n: int, rng: random.Random, encode: Callable[[ExportTraceServiceRequest], bytes],
                  end_ns: int) -> Workload:  # fmt: skip
    """``n`` spans in requests of BATCH_SPANS (the last one may be smaller), encoded by ``encode``."""
    expected = {"input_tokens": 0, "output_tokens": 0, "errors": 0}
    bodies = []
    for first in range(0, n, BATCH_SPANS):
        spans = []
        for _ in range(min(BATCH_SPANS, n - first)):
            span, adds = make_span(rng, end_ns)
            spans.append(span)
            for name, value in adds.items():
                expected[name] += value
        bodies.append(encode(make_request(spans)))
    return Workload(bodies, n, expected)


def encoder(phase: str) -> Callable[[ExportTraceServiceRequest], bytes]:
    return (lambda request: request.SerializeToString()) if phase == "protobuf" else otlp_json


# --- results (pure) ----------------------------------------------------------------------


@dataclass
class PhaseResult:
    name: str
    spans: int
    seconds: float | None = None  # first request .. last row committed (None: never completed)
    answered_s: float | None = None  # first request .. last answer
    retries: int = 0
    rejected: int = 0  # spans the server counted as rejected (partial success): must be 0
    reconciliation: Reconciliation | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def spans_per_s(self) -> float | None:
        return self.spans / self.seconds if self.seconds else None

    @property
    def ok(self) -> bool:
        rec = self.reconciliation
        return rec is not None and rec.ok and self.seconds is not None and self.rejected == 0


def result_line(results: dict[str, PhaseResult]) -> str:
    def rate(name: str) -> str:
        phase = results.get(name)
        value = phase.spans_per_s if phase else None
        return "nan" if value is None else str(round(value))

    recs = [p.reconciliation for p in results.values() if p.reconciliation is not None]
    lost = str(sum(r.lost for r in recs)) if recs else "nan"
    duplicated = str(sum(r.duplicated for r in recs)) if recs else "nan"
    return (f"RESULT otlp_spans_per_s={rate('protobuf')} otlp_json_spans_per_s={rate('json')}"
            f" lost={lost} duplicated={duplicated}")  # fmt: skip


# --- sending ------------------------------------------------------------------------------


class Sender:
    """Posts bodies as an OTLP exporter does: retries on 429/503 after Retry-After; counts rejections."""

    def __init__(self, url: str, key: str, media_type: str) -> None:
        self._url = url
        self._headers = {"Authorization": f"Bearer {key}", "Content-Type": media_type}
        self._media_type = media_type
        self._local = threading.local()
        self._lock = threading.Lock()
        self.retries = 0
        self.rejected = 0

    def _client(self) -> Any:
        import httpx

        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(timeout=REQUEST_TIMEOUT_S)
        return client

    def send(self, body: bytes) -> None:
        for _ in range(MAX_RETRIES + 1):
            response = self._client().post(self._url, content=body, headers=self._headers)
            if response.status_code in (429, 503):
                with self._lock:
                    self.retries += 1
                time.sleep(float(response.headers.get("retry-after", DEFAULT_RETRY_AFTER_S)))
                continue
            if response.status_code != 200:
                raise RuntimeError(f"POST /v1/traces answered {response.status_code}: {response.text[:300]}")
            rejected = self._rejected(response.content)
            with self._lock:
                self.rejected += rejected
            return
        raise RuntimeError(f"POST /v1/traces still refused after {MAX_RETRIES} retries")

    def _rejected(self, content: bytes) -> int:
        import json

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

        if self._media_type == PROTOBUF:
            return int(ExportTraceServiceResponse.FromString(content).partial_success.rejected_spans)
        return int(json.loads(content).get("partialSuccess", {}).get("rejectedSpans", 0))


def run_phase(env: BenchEnv, engine: Any, server_url: str, server_pgid: int, worker: Worker,
              phase: str, n: int, rng: random.Random) -> PhaseResult:  # fmt: skip
    print(f"\n== {phase}: {n:,} spans in batches of {BATCH_SPANS} by {SENDERS} senders -> one web process", flush=True)
    workload = make_workload(n, rng, encoder(phase), time.time_ns() - SPAN_AGE_NS)
    size = sum(map(len, workload.bodies)) / len(workload.bodies)
    harness.truncate_events(engine)  # every table, the API keys too: a key of this phase's own
    key = _tenant_key(engine)
    result = PhaseResult(phase, n)
    sender = Sender(f"{server_url}/v1/traces", key, PROTOBUF if phase == "protobuf" else JSON)
    cpu_start = harness.cpu_snapshot()
    t0 = time.perf_counter()
    monitor = RowMonitor(engine, phase, n, t0)
    monitor.start()
    try:
        with ThreadPoolExecutor(SENDERS) as pool:
            list(pool.map(sender.send, workload.bodies))
        result.answered_s = time.perf_counter() - t0
        monitor.join()
        if monitor.error:
            raise monitor.error
        end = harness.cpu_snapshot()
    finally:
        monitor.stop()
    groups = {"bench process": {os.getpid()}, "web process": harness.process_group(end, server_pgid)}
    if worker.pgid is not None:
        groups["worker"] = harness.process_group(end, worker.pgid)
    groups["postgres (bench db)"] = harness.bench_backend_pids(engine)
    _busy, cores = harness.cpu_breakdown(cpu_start, end, groups)
    if monitor.done_at is not None:
        result.seconds = monitor.done_at - t0
    else:
        result.notes.append(f"only {monitor.last_count:,} of {n:,} rows arrived")
    result.retries, result.rejected = sender.retries, sender.rejected
    result.reconciliation = harness.reconcile(engine, n, workload.expected)
    result.notes.append(f"{len(workload.bodies)} requests of {size / 1000:,.0f} kB on average;"
                        f" all answered after {result.answered_s:.2f}s"
                        f" ({n / result.answered_s:,.0f} spans/s accepted); retries on 429/503: {result.retries};"
                        f" spans rejected: {result.rejected}")  # fmt: skip
    result.notes.append(harness.format_breakdown(cores))
    if result.spans_per_s is not None:
        print(f"  [{phase}] done: {n:,} spans stored in {result.seconds:.2f}s = {result.spans_per_s:,.0f} spans/s")
    for note in result.notes:
        print(f"  [{phase}] {note}", flush=True)
    return result


def report(results: dict[str, PhaseResult]) -> tuple[bool, bool]:
    """Print the table; (every phase reconciled, target met)."""
    print("\n== results (one web process; spans/s from the first request until the last row is committed)")
    print(f"  {'phase':10}  {'spans':>9}  {'spans/s':>9}  {'lost':>5}  {'dup':>5}  {'dead':>5}  {'sums':>5}  verdict")
    correct = True
    for phase in results.values():
        rec = phase.reconciliation
        rate = phase.spans_per_s
        correct &= phase.ok
        if phase.name != "protobuf":  # the target is protobuf's, what SDK exporters send by default
            verdict = "-"
        else:
            verdict = "n/a" if rate is None else ("PASS" if rate >= TARGET_SPANS_PER_S else "LOW")
            verdict += f" (target >= {TARGET_SPANS_PER_S:,})"
        print(f"  {phase.name:10}  {phase.spans:>9,}  {'n/a' if rate is None else f'{rate:,.0f}':>9}"
              f"  {rec.lost if rec else 'n/a':>5}  {rec.duplicated if rec else 'n/a':>5}"
              f"  {rec.dead_letters if rec else 'n/a':>5}  {('ok' if rec and rec.content_ok else 'DIFF'):>5}"
              f"  {verdict}")  # fmt: skip
    protobuf = results.get("protobuf")
    target_met = protobuf is not None and (protobuf.spans_per_s or 0) >= TARGET_SPANS_PER_S
    return correct, target_met


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.otlp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker-url", default=None, help="broker (default: CELERY_BROKER_URL, else RabbitMQ)")
    parser.add_argument("--spans", type=int, default=None,
                        help=f"spans per phase (default {FULL_SPANS:,}; --quick: {QUICK_SPANS:,})")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="worker pool size")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    parser.add_argument("--database", default="analytics_bench_otlp", help="bench database, dropped and recreated")
    parser.add_argument("--seed", type=int, default=42, help="random seed of the workload")
    parser.add_argument("--strict", action="store_true", help="exit 2 if the target is missed")
    args = parser.parse_args(argv)
    args.spans = args.spans or (QUICK_SPANS if args.quick else FULL_SPANS)
    if args.spans < 1:
        parser.error("--spans must be at least 1")
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if unknown := set(args.phases) - set(PHASES):
        parser.error(f"unknown phases: {sorted(unknown)}")
    if args.database in ("analytics", "analytics_test", "postgres"):
        parser.error(f"--database {args.database} is not a bench database")
    return args


def _tenant_key(engine: Any) -> str:
    from sqlalchemy.orm import Session

    from storage.api_keys import create_key

    with Session(engine) as session, session.begin():
        _, key = create_key(session, name="bench.otlp", tenant_id="bench-otlp")
    return key


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.install_signal_handlers()
    env = harness.configure_environment(args.broker_url, args.database)
    from devtools.web import uvicorn_server

    rng = random.Random(args.seed)
    started = time.perf_counter()
    print(f"bench.otlp run {env.run_id}: database {env.database_name}, queue {env.ingest_queue},"
          f" logs in {env.workdir}; {os.cpu_count()} CPUs, load average"
          f" {' / '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)  # fmt: skip
    results: dict[str, PhaseResult] = {}
    engine = None
    try:
        harness.recreate_database(env)
        engine = harness.make_bench_engine(env)
        with Worker(env, "tasks.app", env.ingest_queue, args.concurrency, "ingest") as worker, \
                uvicorn_server(env.workdir) as server:  # fmt: skip
            for phase in args.phases:
                results[phase] = run_phase(env, engine, server.url, server.pid, worker, phase, args.spans, rng)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the worker and deleting the queue", file=sys.stderr, flush=True)
        return 130
    except Exception:  # noqa: BLE001 - printed with the logs' tails, then a failing exit code
        traceback.print_exc()
        for log in sorted(env.workdir.glob("*.log")):
            print(f"--- {log.name} (tail)", file=sys.stderr)
            print("\n".join(log.read_text(errors="replace").splitlines()[-20:]), file=sys.stderr)
        return 1
    finally:
        harness.stop_all_workers()
        harness.delete_queues(env.broker_url, [env.ingest_queue])
        if engine is not None:
            engine.dispose()
    correct, target_met = report(results)
    if correct:
        shutil.rmtree(env.workdir, ignore_errors=True)
    print(f"\nruntime {time.perf_counter() - started:.1f}s; bench database {env.database_name} left for inspection"
          + ("" if correct else f"; logs in {env.workdir}"))  # fmt: skip
    print(result_line(results), flush=True)
    if not correct:
        return 1
    return 2 if args.strict and not target_met else 0


if __name__ == "__main__":
    sys.exit(main())
