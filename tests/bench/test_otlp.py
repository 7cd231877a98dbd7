"""bench.otlp's pure parts: the workload (batches, expected sums as the server maps the spans), the RESULT line."""

from __future__ import annotations

import json
import random
import time

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bench.companions import parse_result
from bench.harness import Reconciliation
from bench.otlp import BATCH_SPANS, PhaseResult, encoder, make_workload, parse_args, result_line
from schema.otlp import SpanMapping, map_span, span_count, spans

SPANS = 2 * BATCH_SPANS + 7


def test_the_workload_is_batched_and_its_sums_are_what_the_server_maps() -> None:
    workload = make_workload(SPANS, random.Random(3), encoder("protobuf"), time.time_ns())
    requests = [ExportTraceServiceRequest.FromString(body) for body in workload.bodies]
    assert [span_count(r.resource_spans) for r in requests] == [BATCH_SPANS, BATCH_SPANS, 7]
    events = [map_span(span, resource, SpanMapping()) for r in requests for resource, span in spans(r.resource_spans)]
    assert all(event is not None for event in events)
    sums = {
        "input_tokens": sum(e["input_tokens"] for e in events if e),
        "output_tokens": sum(e["output_tokens"] for e in events if e),
        "errors": sum(e["status"] == "error" for e in events if e),
    }
    assert sums == workload.expected and workload.spans == SPANS
    assert len({e["event_id"] for e in events if e}) == SPANS


def test_json_bodies_carry_the_same_spans_with_hex_ids() -> None:
    end = time.time_ns()
    protobuf = make_workload(10, random.Random(5), encoder("protobuf"), end)
    as_json = make_workload(10, random.Random(5), encoder("json"), end)
    assert as_json.expected == protobuf.expected
    span = ExportTraceServiceRequest.FromString(protobuf.bodies[0]).resource_spans[0].scope_spans[0].spans[0]
    document = json.loads(as_json.bodies[0])
    assert document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"] == span.span_id.hex()


def _phase(name: str, seconds: float | None, lost: int = 0, duplicated: int = 0) -> PhaseResult:
    sent = 1000
    rec = Reconciliation(sent=sent, rows=sent - lost + duplicated, distinct_ids=sent - lost, dead_letters=0,
                         input_tokens=1, output_tokens=2, errors=0, expected_input_tokens=1,
                         expected_output_tokens=2, expected_errors=0)  # fmt: skip
    return PhaseResult(name, sent, seconds=seconds, reconciliation=rec)


def test_result_line_rates_and_losses_over_both_phases() -> None:
    line = result_line({"protobuf": _phase("protobuf", 0.1, lost=2), "json": _phase("json", 0.4, duplicated=1)})
    assert parse_result(line) == {"otlp_spans_per_s": 10_000.0, "otlp_json_spans_per_s": 2_500.0, "lost": 2.0,
                                  "duplicated": 1.0}  # fmt: skip
    assert not _phase("protobuf", None).ok and _phase("protobuf", 1.0).ok and not _phase("p", 1.0, lost=1).ok


def test_result_line_of_a_phase_not_run() -> None:
    values = parse_result(result_line({"protobuf": _phase("protobuf", 0.5)}))
    assert values["otlp_spans_per_s"] == 2_000.0
    assert values["otlp_json_spans_per_s"] != values["otlp_json_spans_per_s"]  # nan


def test_arguments() -> None:
    assert parse_args(["--quick"]).spans < parse_args([]).spans
    assert parse_args(["--phases", "json"]).phases == ["json"]
    with pytest.raises(SystemExit):
        parse_args(["--phases", "xml"])
    with pytest.raises(SystemExit):
        parse_args(["--database", "analytics"])
