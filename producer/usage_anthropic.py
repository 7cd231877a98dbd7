"""Usage of Anthropic messages, whole or streamed.

Read by attribute, never by importing ``anthropic``. Anthropic's
``input_tokens`` EXCLUDES the tokens read from and written to the prompt
cache; ours includes them, so they are added. ``output_tokens`` includes
the thinking tokens (``output_tokens_details.thinking_tokens``), as ours
includes reasoning.

Streams: ``message_start`` carries the input side (and a first output
count), ``message_delta`` the cumulative output count and, in newer API
versions, cumulative input and cache counts, which then replace the earlier
ones.
"""

from __future__ import annotations

from typing import Any

from producer.usage import ANTHROPIC, Usage, count

MESSAGE_START = "message_start"
MESSAGE_DELTA = "message_delta"
CONTENT_EVENTS = frozenset({"content_block_delta", "text", "thinking", "input_json"})
STREAM_ERROR_EVENT = "error"


class _Counts:
    """Anthropic's own buckets, kept apart until the end (the stream updates them one by one)."""

    def __init__(self) -> None:
        self.uncached_input = 0
        self.cache_read = 0
        self.cache_write = 0
        self.output = 0
        self.thinking = 0

    def take(self, usage: Any) -> None:
        """Every count ``usage`` states replaces the one before (Anthropic's counts are cumulative)."""
        for field, attribute in (
            ("input_tokens", "uncached_input"),
            ("cache_read_input_tokens", "cache_read"),
            ("cache_creation_input_tokens", "cache_write"),
            ("output_tokens", "output"),
        ):
            value = getattr(usage, field, None)
            if value is not None:
                setattr(self, attribute, count(value))
        details = getattr(usage, "output_tokens_details", None)
        if details is not None:
            self.thinking = count(getattr(details, "thinking_tokens", None))

    def usage(self, model: str | None) -> Usage:
        return Usage(
            model=model,
            provider=ANTHROPIC,
            input_tokens=self.uncached_input + self.cache_read + self.cache_write,
            output_tokens=self.output,
            cache_read_tokens=self.cache_read,
            cache_write_tokens=self.cache_write,
            reasoning_tokens=self.thinking,
        )


def from_message(message: Any) -> Usage:
    """A ``Message`` (``client.messages.create`` without streaming, or a stream's final message)."""
    counts = _Counts()
    usage = getattr(message, "usage", None)
    if usage is not None:
        counts.take(usage)
    return counts.usage(getattr(message, "model", None))


class AnthropicStreamMeter:
    """Raw stream events (``stream=True``) or a ``MessageStream``'s events (``client.messages.stream``)."""

    def __init__(self) -> None:
        self._counts = _Counts()
        self._model: str | None = None
        self._error: str | None = None

    def observe(self, event: Any) -> bool:
        kind = getattr(event, "type", None)
        if kind == MESSAGE_START:
            message = getattr(event, "message", None)
            self._model = getattr(message, "model", None) or self._model
            usage = getattr(message, "usage", None)
            if usage is not None:
                self._counts.take(usage)
        elif kind == MESSAGE_DELTA and getattr(event, "usage", None) is not None:
            self._counts.take(event.usage)
        elif kind == STREAM_ERROR_EVENT:
            self._error = getattr(getattr(event, "error", None), "type", None) or STREAM_ERROR_EVENT
        return kind in CONTENT_EVENTS

    def usage(self) -> Usage:
        return self._counts.usage(self._model)

    def error_type(self) -> str | None:
        return self._error
