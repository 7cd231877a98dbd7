"""OTLP request bodies for the tests and the benchmark of ``POST /v1/traces``.

``otlp_json`` writes an ``ExportTraceServiceRequest`` (e.g. the one the
OpenTelemetry SDK's exporter encodes from its spans) in OTLP's JSON mapping,
which differs from protobuf's own JSON mapping in the trace and span ids:
hex, not base64.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

HEX_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def _ids_to_hex(item: dict[str, Any]) -> None:
    for field in HEX_ID_FIELDS:
        if field in item:
            item[field] = base64.b64decode(item[field]).hex()


def otlp_json_document(request: ExportTraceServiceRequest) -> dict[str, Any]:
    document: dict[str, Any] = json_format.MessageToDict(request)
    for resource in document.get("resourceSpans", []):
        for scope in resource.get("scopeSpans", []):
            for span in scope.get("spans", []):
                _ids_to_hex(span)
                for link in span.get("links", []):
                    _ids_to_hex(link)
    return document


def otlp_json(request: ExportTraceServiceRequest) -> bytes:
    return json.dumps(otlp_json_document(request)).encode()
