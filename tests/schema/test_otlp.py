"""schema.otlp: which spans are model calls, and each attribute convention mapped to the event's fields."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from schema.otlp import EVENT_ID_NAMESPACE, InvalidSpan, SpanMapping, attribute_names, event_id, map_span

START_NS = 1_767_225_600_123_456_789  # 2026-01-01T00:00:00.123456789Z
TRACE_ID = bytes(range(16))
SPAN_ID = bytes(range(8))
MAPPING = SpanMapping()


def _value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=value)


def kvs(values: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=key, value=_value(value)) for key, value in values.items()]


def span(attributes: dict[str, Any], *, name: str = "chat gpt-4o", duration_ms: int = 1234,
         status: Status | None = None, span_id: bytes = SPAN_ID, **fields: Any) -> Span:  # fmt: skip
    return Span(trace_id=TRACE_ID, span_id=span_id, name=name, start_time_unix_nano=START_NS,
                end_time_unix_nano=START_NS + duration_ms * 1_000_000, attributes=kvs(attributes),
                status=status, **fields)  # fmt: skip


def mapped(attributes: dict[str, Any], resource: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    event = map_span(span(attributes, **kwargs), resource or {}, MAPPING)
    assert event is not None
    return event


def test_a_span_without_genai_model_or_token_attributes_is_not_a_model_call() -> None:
    plain = span({"http.method": "GET", "gen_ai.operation.name": "chat", "user.id": "u1"})
    assert map_span(plain, {}, MAPPING) is None


def test_current_genai_names_map_to_every_field() -> None:
    event = mapped(
        {"gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
         "gen_ai.provider.name": "openai", "gen_ai.system": "older-name",
         "gen_ai.usage.input_tokens": 1000, "gen_ai.usage.output_tokens": 300,
         "gen_ai.usage.cache_read.input_tokens": 600, "gen_ai.usage.cache_creation.input_tokens": 100,
         "gen_ai.usage.reasoning.output_tokens": 120, "app.feature": "summarization", "user.id": "u-7"},
    )  # fmt: skip
    assert event == {
        "event_id": uuid.uuid5(EVENT_ID_NAMESPACE, (TRACE_ID + SPAN_ID).hex()).hex,
        "feature_name": "summarization",
        "user_id": "u-7",
        "model": "gpt-4o-2024-08-06",  # the response's model before the request's
        "provider": "openai",  # gen_ai.provider.name before gen_ai.system
        "input_tokens": 1000,
        "output_tokens": 300,
        "tokens_used": None,  # track() makes it input + output
        "cache_read_tokens": 600,
        "cache_write_tokens": 100,
        "reasoning_tokens": 120,
        "latency_ms": 1234,
        "time_to_first_token_ms": None,  # not streamed
        "status": "success",
        "error_type": None,
        "timestamp": datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC),
    }


def test_older_genai_names() -> None:
    event = mapped({"gen_ai.request.model": "claude-3-5-haiku", "gen_ai.system": "anthropic",
                    "gen_ai.usage.prompt_tokens": 500, "gen_ai.usage.completion_tokens": 50,
                    "gen_ai.usage.cache_read_input_tokens": 200, "gen_ai.usage.cache_creation_input_tokens": 100,
                    "gen_ai.usage.reasoning_tokens": 10, "gen_ai.usage.total_tokens": 560})  # fmt: skip
    picked = {k: event[k] for k in ("model", "provider", "input_tokens", "output_tokens", "cache_read_tokens",
                                    "cache_write_tokens", "reasoning_tokens", "tokens_used")}  # fmt: skip
    assert picked == {"model": "claude-3-5-haiku", "provider": "anthropic", "input_tokens": 500, "output_tokens": 50,
                      "cache_read_tokens": 200, "cache_write_tokens": 100, "reasoning_tokens": 10,
                      "tokens_used": 560}  # fmt: skip


def test_openinference_names() -> None:
    event = mapped({"llm.model_name": "gemini-1.5-pro", "llm.provider": "google", "llm.system": "vertexai",
                    "llm.token_count.prompt": 800, "llm.token_count.completion": 90, "llm.token_count.total": 890,
                    "llm.token_count.prompt_details.cache_read": 300,
                    "llm.token_count.prompt_details.cache_write": 20,
                    "llm.token_count.completion_details.reasoning": 40})  # fmt: skip
    picked = {k: event[k] for k in ("model", "provider", "input_tokens", "output_tokens", "cache_read_tokens",
                                    "cache_write_tokens", "reasoning_tokens", "tokens_used")}  # fmt: skip
    assert picked == {"model": "gemini-1.5-pro", "provider": "google", "input_tokens": 800, "output_tokens": 90,
                      "cache_read_tokens": 300, "cache_write_tokens": 20, "reasoning_tokens": 40,
                      "tokens_used": 890}  # fmt: skip


def test_llm_system_is_the_provider_when_llm_provider_is_absent() -> None:
    assert mapped({"llm.model_name": "m", "llm.system": "openai"})["provider"] == "openai"


def test_a_token_attribute_alone_marks_a_model_call() -> None:
    event = mapped({"gen_ai.usage.output_tokens": 7})
    assert (event["model"], event["input_tokens"], event["output_tokens"]) == (None, 0, 7)


def test_an_input_count_excluding_the_cache_gets_the_cache_added() -> None:
    """Anthropic's raw usage: input 40 uncached, 1,000 read from the cache, 200 written to it."""
    event = mapped({"gen_ai.request.model": "claude-sonnet-4", "gen_ai.usage.input_tokens": 40,
                    "gen_ai.usage.output_tokens": 10, "gen_ai.usage.cache_read.input_tokens": 1000,
                    "gen_ai.usage.cache_creation.input_tokens": 200})  # fmt: skip
    assert (event["input_tokens"], event["cache_read_tokens"], event["cache_write_tokens"]) == (1240, 1000, 200)


def test_writes_alone_over_input_also_mean_an_excluding_count() -> None:
    event = mapped({"gen_ai.usage.input_tokens": 40, "gen_ai.usage.cache_read.input_tokens": 30,
                    "gen_ai.usage.cache_creation.input_tokens": 500})  # fmt: skip
    assert event["input_tokens"] == 570


def test_a_total_that_excluded_the_cache_gets_it_too() -> None:
    event = mapped({"gen_ai.usage.input_tokens": 40, "gen_ai.usage.output_tokens": 10,
                    "gen_ai.usage.cache_read.input_tokens": 1000, "gen_ai.usage.total_tokens": 50})  # fmt: skip
    assert (event["input_tokens"], event["tokens_used"]) == (1040, 1050)


def test_an_input_count_including_the_cache_is_kept() -> None:
    event = mapped({"gen_ai.usage.input_tokens": 1000, "gen_ai.usage.cache_read.input_tokens": 1000,
                    "gen_ai.usage.total_tokens": 1000})  # fmt: skip
    assert (event["input_tokens"], event["cache_read_tokens"], event["tokens_used"]) == (1000, 1000, 1000)


def test_a_negative_count_is_left_for_validation() -> None:
    event = mapped({"gen_ai.usage.input_tokens": -5, "gen_ai.usage.cache_read.input_tokens": 10})
    assert (event["input_tokens"], event["cache_read_tokens"]) == (-5, 10)


@pytest.mark.parametrize("value", ["12", True, 1.5])
def test_a_token_count_that_is_not_an_integer_is_refused_by_its_attribute_name(value: Any) -> None:
    with pytest.raises(InvalidSpan, match=re.escape("gen_ai.usage.input_tokens must be an integer")):
        map_span(span({"gen_ai.usage.input_tokens": value}), {}, MAPPING)


def test_an_integral_double_count_is_read_as_an_integer() -> None:
    assert mapped({"gen_ai.usage.input_tokens": 12.0})["input_tokens"] == 12


def test_a_model_that_is_not_a_string_is_refused_by_name() -> None:
    with pytest.raises(InvalidSpan, match=re.escape("gen_ai.response.model must be a string")):
        map_span(span({"gen_ai.response.model": 4}), {}, MAPPING)


def test_error_status_and_error_type_sources() -> None:
    failed = Status(code=Status.STATUS_CODE_ERROR, message="RateLimitError: too many requests")
    base = {"gen_ai.request.model": "gpt-4o"}
    assert mapped({**base, "error.type": "timeout"}, status=failed)["error_type"] == "timeout"
    exception = Span.Event(name="exception", attributes=kvs({"exception.type": "openai.APIConnectionError"}))
    assert mapped(base, status=failed, events=[exception])["error_type"] == "openai.APIConnectionError"
    event = mapped(base, status=failed)
    assert (event["status"], event["error_type"]) == ("error", "RateLimitError:")
    assert mapped(base, status=Status(code=Status.STATUS_CODE_ERROR))["error_type"] == "error"
    ok = mapped({**base, "error.type": "ignored"}, status=Status(code=Status.STATUS_CODE_OK))
    assert (ok["status"], ok["error_type"]) == ("success", None)


def test_feature_and_user_from_the_span_then_the_resource_then_the_fallbacks() -> None:
    model = {"gen_ai.request.model": "m"}
    resource = {"app.feature": "search", "enduser.id": "r-user", "service.name": "svc"}
    assert (mapped(model, resource)["feature_name"], mapped(model, resource)["user_id"]) == ("search", "r-user")
    on_span = mapped({**model, "gen_ai.agent.name": "planner", "user.id": 42}, resource)
    assert (on_span["feature_name"], on_span["user_id"]) == ("planner", "42")  # the span's own first
    bare = mapped(model, name="chat m")
    assert (bare["feature_name"], bare["user_id"]) == ("chat m", "unknown")


def test_configured_attributes_and_no_default_user() -> None:
    mapping = SpanMapping(feature_attributes=("my.feature",), user_attributes=("my.user",), default_user="")
    event = map_span(span({"gen_ai.request.model": "m", "my.feature": "f", "my.user": "u"}), {}, mapping)
    assert event is not None and (event["feature_name"], event["user_id"]) == ("f", "u")
    with pytest.raises(InvalidSpan, match=re.escape("no user attribute (my.user)")):
        map_span(span({"gen_ai.request.model": "m", "user.id": "u"}), {}, mapping)


def test_times_are_checked() -> None:
    with pytest.raises(InvalidSpan, match="no start time"):
        unstarted = span({"gen_ai.request.model": "m"})
        unstarted.start_time_unix_nano = 0
        map_span(unstarted, {}, MAPPING)
    with pytest.raises(InvalidSpan, match=r"ends .* before it starts"):
        map_span(span({"gen_ai.request.model": "m"}, duration_ms=-1), {}, MAPPING)


def test_event_ids_are_deterministic_and_differ_per_span() -> None:
    first = mapped({"gen_ai.request.model": "m"})["event_id"]
    assert first == mapped({"gen_ai.request.model": "other"})["event_id"] == event_id(TRACE_ID, SPAN_ID)
    assert event_id(TRACE_ID, b"\x01" * 8) != first != event_id(b"\x02" * 16, SPAN_ID)
    assert uuid.UUID(hex=first).version == 5


def test_attribute_names_setting() -> None:
    assert attribute_names(" app.feature, ,gen_ai.agent.name ,") == ("app.feature", "gen_ai.agent.name")


def test_time_to_first_chunk_in_seconds_becomes_time_to_first_token_ms() -> None:
    assert mapped({"gen_ai.request.model": "m", "gen_ai.response.time_to_first_chunk": 0.25})[
        "time_to_first_token_ms"
    ] == pytest.approx(250)
    assert (
        mapped({"gen_ai.request.model": "m", "gen_ai.response.time_to_first_token": 2})["time_to_first_token_ms"]
        == 2000
    )
    with pytest.raises(InvalidSpan, match=re.escape("gen_ai.response.time_to_first_chunk must be a number of seconds")):
        map_span(span({"gen_ai.request.model": "m", "gen_ai.response.time_to_first_chunk": "fast"}), {}, MAPPING)
