"""OpenTelemetry spans of model calls as usage events: the pure mapping behind ``POST /v1/traces``.

A span describes a model call when it carries a GenAI model or token
attribute (OpenTelemetry GenAI conventions, their older names, or
OpenInference's); every other span is skipped. ``map_span`` turns one into the
keyword arguments of ``Tracker.track`` (the tenant aside), so spans pass the
same validation and pipeline as ``POST /v1/events``; what it cannot read it
refuses with ``InvalidSpan`` naming the attribute.

Attribute precedence (first present wins): current GenAI name, older GenAI
name, OpenInference name.

Cache tokens: our convention (and the GenAI conventions') is that
``input_tokens`` includes cache reads and cache writes. Some instrumentations
report the provider's raw input count, which excludes them (Anthropic's usage
does). When the cache reads and writes together exceed the input count, the
input cannot include them, so it is read as excluding them and they are added
to it (and to a reported total that is then less than input + output). An
excluding count whose cache is smaller than its input cannot be told apart and
is taken as including.

A streamed call's ``gen_ai.response.time_to_first_chunk`` (seconds) becomes
``time_to_first_token_ms``.

``event_id`` is a UUID (version 5) of the trace id and span id, and the
timestamp is the span's start: an exporter's retry of a batch yields the same
keys, so nothing is stored twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

MODEL: Final = ("gen_ai.response.model", "gen_ai.request.model", "llm.model_name")
PROVIDER: Final = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
INPUT_TOKENS: Final = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt")
OUTPUT_TOKENS: Final = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion")
CACHE_READ_TOKENS: Final = (
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "llm.token_count.prompt_details.cache_read",
)
CACHE_WRITE_TOKENS: Final = (
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
    "llm.token_count.prompt_details.cache_write",
)
REASONING_TOKENS: Final = (
    "gen_ai.usage.reasoning.output_tokens",
    "gen_ai.usage.reasoning_tokens",
    "llm.token_count.completion_details.reasoning",
)
TOTAL_TOKENS: Final = ("gen_ai.usage.total_tokens", "llm.token_count.total")
# Seconds from the request to the first chunk of a streamed answer (GenAI conventions; the second, an older name).
TIME_TO_FIRST_CHUNK: Final = ("gen_ai.response.time_to_first_chunk", "gen_ai.response.time_to_first_token")
MS_PER_S: Final = 1000
TOKEN_ATTRIBUTES: Final = (
    *INPUT_TOKENS, *OUTPUT_TOKENS, *CACHE_READ_TOKENS, *CACHE_WRITE_TOKENS, *REASONING_TOKENS, *TOTAL_TOKENS,
)  # fmt: skip
# A span holding any of these describes a model call.
GENAI_MARKERS: Final = frozenset((*MODEL, *TOKEN_ATTRIBUTES))
ERROR_TYPE: Final = "error.type"
EXCEPTION_EVENT: Final = "exception"
EXCEPTION_TYPE: Final = "exception.type"
DEFAULT_ERROR_TYPE: Final = "error"

# Fixed forever: changing it would give a retried span a new event_id.
EVENT_ID_NAMESPACE: Final = uuid.UUID("5b0e6f52-8d3c-4c43-9a5e-0c7f1e3a6d21")
NS_PER_US: Final = 1000
NS_PER_MS: Final = 1_000_000
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidSpan(ValueError):
    """A span describes a model call but cannot be read as one; the message names the attribute."""


@dataclass(frozen=True)
class SpanMapping:
    """Where feature and user come from (OTLP_FEATURE_ATTRIBUTES, OTLP_USER_ATTRIBUTES, OTLP_DEFAULT_USER)."""

    feature_attributes: tuple[str, ...] = ("app.feature", "gen_ai.agent.name")
    user_attributes: tuple[str, ...] = ("user.id", "enduser.id")
    default_user: str = "unknown"


def attribute_names(setting: str) -> tuple[str, ...]:
    """A comma-separated setting as attribute names, blanks dropped."""
    return tuple(name.strip() for name in setting.split(",") if name.strip())


def event_id(trace_id: bytes, span_id: bytes) -> str:
    """The span's event_id (32 hex digits), the same for every export of the span."""
    return uuid.uuid5(EVENT_ID_NAMESPACE, (trace_id + span_id).hex()).hex


def attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    """Scalar attribute values by key (string, bool, int, double); arrays, maps and bytes are left out."""
    values: dict[str, Any] = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        if kind in ("string_value", "int_value", "double_value", "bool_value"):
            values[pair.key] = getattr(pair.value, kind)
    return values


def spans(resource_spans: Sequence[ResourceSpans]) -> Iterator[tuple[dict[str, Any], Span]]:
    """Every span of a request with its resource's attributes (read once per resource)."""
    for resource in resource_spans:
        resource_attributes = attributes(resource.resource.attributes)
        for scope in resource.scope_spans:
            for span in scope.spans:
                yield resource_attributes, span


def span_count(resource_spans: Sequence[ResourceSpans]) -> int:
    return sum(len(scope.spans) for resource in resource_spans for scope in resource.scope_spans)


def _first(values: dict[str, Any], names: Sequence[str]) -> tuple[str, Any] | None:
    for name in names:
        if name in values:
            return name, values[name]
    return None


def _count(values: dict[str, Any], names: Sequence[str]) -> int | None:
    """A token count: an integer, or a double with an integral value (JavaScript SDKs may send one)."""
    found = _first(values, names)
    if found is None:
        return None
    name, value = found
    if type(value) is float and value.is_integer():
        return int(value)
    if type(value) is not int:
        raise InvalidSpan(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    return value


def _milliseconds(values: dict[str, Any], names: Sequence[str]) -> float | None:
    """An attribute in seconds as milliseconds (unrounded: track() rounds it as it rounds the latency)."""
    found = _first(values, names)
    if found is None:
        return None
    name, value = found
    if type(value) is not int and type(value) is not float:
        raise InvalidSpan(f"{name} must be a number of seconds, got {type(value).__name__} {value!r}")
    return value * MS_PER_S


def _text(values: dict[str, Any], names: Sequence[str]) -> str | None:
    found = _first(values, names)
    if found is None:
        return None
    name, value = found
    if type(value) is not str:
        raise InvalidSpan(f"{name} must be a string, got {type(value).__name__} {value!r}")
    return value


def _identity(span_values: dict[str, Any], resource_values: dict[str, Any], names: Sequence[str]) -> str | None:
    """The first of ``names`` on the span, then on its resource; integers (numeric user ids) as text."""
    for values in (span_values, resource_values):
        found = _first(values, names)
        if found is not None:
            name, value = found
            if type(value) is int:
                return str(value)
            if type(value) is not str:
                raise InvalidSpan(f"{name} must be a string, got {type(value).__name__} {value!r}")
            return value
    return None


def _error_type(span: Span, values: dict[str, Any]) -> str:
    """error.type, else the type of an ``exception`` event, else the status message's first word, else 'error'."""
    declared = values.get(ERROR_TYPE)
    if isinstance(declared, str) and declared:
        return declared
    for event in span.events:
        if event.name == EXCEPTION_EVENT:
            raised = attributes(event.attributes).get(EXCEPTION_TYPE)
            if isinstance(raised, str) and raised:
                return raised
    words = span.status.message.split()
    return words[0] if words else DEFAULT_ERROR_TYPE


def _timestamp(nanos: int) -> datetime:
    return EPOCH + timedelta(microseconds=nanos // NS_PER_US)


def describes_model_call(values: dict[str, Any]) -> bool:
    return not GENAI_MARKERS.isdisjoint(values)


def map_span(span: Span, resource_values: dict[str, Any], mapping: SpanMapping) -> dict[str, Any] | None:
    """``track()`` keyword arguments (no tenant) of a model-call span; None for any other span.

    Raises InvalidSpan naming the attribute; the values' ranges (negative
    counts, cache over input, lengths, timestamps) are checked by ``track()``.
    """
    values = attributes(span.attributes)
    if not describes_model_call(values):
        return None
    input_tokens = _count(values, INPUT_TOKENS) or 0
    output_tokens = _count(values, OUTPUT_TOKENS) or 0
    cache_read = _count(values, CACHE_READ_TOKENS) or 0
    cache_write = _count(values, CACHE_WRITE_TOKENS) or 0
    total = _count(values, TOTAL_TOKENS)
    cached = cache_read + cache_write
    if cache_read >= 0 and cache_write >= 0 and input_tokens >= 0 and cached > input_tokens:
        input_tokens += cached  # an input count excluding the cache (see the module's docstring)
        if total is not None and total < input_tokens + output_tokens:
            total += cached
    if not span.start_time_unix_nano:
        raise InvalidSpan("the span has no start time (startTimeUnixNano)")
    if span.end_time_unix_nano < span.start_time_unix_nano:
        raise InvalidSpan("the span ends (endTimeUnixNano) before it starts (startTimeUnixNano)")
    error = span.status.code == Status.STATUS_CODE_ERROR
    feature = _identity(values, resource_values, mapping.feature_attributes) or span.name
    user = _identity(values, resource_values, mapping.user_attributes) or mapping.default_user
    if not user:
        raise InvalidSpan(f"no user attribute ({', '.join(mapping.user_attributes)}) on the span or its resource")
    return {
        "event_id": event_id(span.trace_id, span.span_id),
        "feature_name": feature,
        "user_id": user,
        "model": _text(values, MODEL),
        "provider": _text(values, PROVIDER),
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "tokens_used": total,
        "cache_read_tokens": cache_read,
        "cache_write_tokens": cache_write,
        "reasoning_tokens": _count(values, REASONING_TOKENS) or 0,
        "latency_ms": round((span.end_time_unix_nano - span.start_time_unix_nano) / NS_PER_MS),
        "time_to_first_token_ms": _milliseconds(values, TIME_TO_FIRST_CHUNK),
        "status": "error" if error else "success",
        "error_type": _error_type(span, values) if error else None,
        "timestamp": _timestamp(span.start_time_unix_nano),
    }
