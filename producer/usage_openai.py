"""Usage of OpenAI calls: chat completions and the Responses API, whole or streamed.

Read by attribute, never by importing ``openai``. OpenAI's buckets already
match ours: ``prompt_tokens`` / ``input_tokens`` include the cached tokens,
``completion_tokens`` / ``output_tokens`` include the reasoning tokens.
OpenAI reports no cache writes.

Streams: a chat completion stream carries usage only in its last chunk, and
only when asked with ``stream_options={"include_usage": True}``; a Responses
API stream carries it in its ``response.completed`` (or ``.incomplete`` /
``.failed``) event.
"""

from __future__ import annotations

from typing import Any

from producer.usage import OPENAI, Usage, count

CHAT_CHUNK = "chat.completion.chunk"
RESPONSE_END_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
RESPONSE_FAILED = "response.failed"
STREAM_ERROR_EVENT = "error"
DELTA_SUFFIX = ".delta"  # response.output_text.delta, response.function_call_arguments.delta, ...


def _details(usage: Any, name: str, field: str) -> int:
    return count(getattr(getattr(usage, name, None), field, None))


def usage_from(usage: Any, model: str | None) -> Usage:
    """Either API's usage object: chat's ``prompt_tokens``/``completion_tokens`` or the Responses API's
    ``input_tokens``/``output_tokens``."""
    if hasattr(usage, "prompt_tokens"):
        return Usage(
            model=model,
            provider=OPENAI,
            input_tokens=count(usage.prompt_tokens),
            output_tokens=count(getattr(usage, "completion_tokens", 0)),
            cache_read_tokens=_details(usage, "prompt_tokens_details", "cached_tokens"),
            reasoning_tokens=_details(usage, "completion_tokens_details", "reasoning_tokens"),
        )
    return Usage(
        model=model,
        provider=OPENAI,
        input_tokens=count(getattr(usage, "input_tokens", 0)),
        output_tokens=count(getattr(usage, "output_tokens", 0)),
        cache_read_tokens=_details(usage, "input_tokens_details", "cached_tokens"),
        reasoning_tokens=_details(usage, "output_tokens_details", "reasoning_tokens"),
    )


def from_response(response: Any) -> Usage:
    """A ``ChatCompletion`` or a Responses API ``Response``."""
    model = getattr(response, "model", None)
    usage = getattr(response, "usage", None)
    return Usage(model=model, provider=OPENAI) if usage is None else usage_from(usage, model)


class OpenAIStreamMeter:
    """Chat completion chunks or Responses API stream events."""

    def __init__(self) -> None:
        self._usage = Usage(provider=OPENAI)
        self._error: str | None = None

    def observe(self, chunk: Any) -> bool:
        if getattr(chunk, "object", None) == CHAT_CHUNK:
            return self._chat_chunk(chunk)
        kind = getattr(chunk, "type", None)
        if not isinstance(kind, str):
            return False
        response = getattr(chunk, "response", None)
        if response is not None and getattr(response, "model", None):
            self._usage.model = response.model
        if kind in RESPONSE_END_EVENTS and response is not None:
            self._usage = from_response(response)
            if kind == RESPONSE_FAILED:
                self._error = getattr(getattr(response, "error", None), "code", None) or RESPONSE_FAILED
        elif kind == STREAM_ERROR_EVENT:
            self._error = getattr(chunk, "code", None) or STREAM_ERROR_EVENT
        return kind.endswith(DELTA_SUFFIX)

    def _chat_chunk(self, chunk: Any) -> bool:
        if getattr(chunk, "model", None):
            self._usage.model = chunk.model
        if getattr(chunk, "usage", None) is not None:
            self._usage = usage_from(chunk.usage, self._usage.model)
        for choice in getattr(chunk, "choices", None) or ():
            delta = getattr(choice, "delta", None)
            if getattr(delta, "content", None) or getattr(delta, "tool_calls", None) or getattr(delta, "refusal", None):
                return True
        return False

    def usage(self) -> Usage:
        return self._usage

    def error_type(self) -> str | None:
        return self._error
