"""The usage of one AI call, read from what a provider's client returned.

Token buckets follow the OpenTelemetry GenAI conventions that ``track()``
takes: ``input_tokens`` includes cache reads and cache writes,
``output_tokens`` includes reasoning. The provider's client library is never
imported here: an object is recognized by the package its type comes from
(``openai.types...``, ``anthropic.types...``), so an app that uses one client
does not load the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

OPENAI = "openai"
ANTHROPIC = "anthropic"


@dataclass
class Usage:
    """What ``track()`` takes of a call besides who made it and how long it took."""

    model: str | None = None
    provider: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    def as_track_kwargs(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "provider": self.provider,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }


class StreamMeter(Protocol):
    """Reads a stream's chunks as they pass: usage, model, and whether a chunk carries content."""

    def observe(self, chunk: object) -> bool:
        """Take what ``chunk`` says; True when it carries generated content (the first token's moment)."""

    def usage(self) -> Usage: ...

    def error_type(self) -> str | None:
        """The error a stream reported in its own events (a failed response), else None."""


def library_of(obj: object) -> str | None:
    """The client library ("openai" or "anthropic") when ``obj``'s type (or exception class) comes from that client library."""
    root = type(obj).__module__.partition(".")[0]
    return root if root in (OPENAI, ANTHROPIC) else None


def usage_of(response: object) -> Usage | None:
    """The usage of a non-streamed response (a chat completion, a Responses API response, an Anthropic
    message); None for an object of neither client."""
    library = library_of(response)
    if library == OPENAI:
        from producer import usage_openai

        return usage_openai.from_response(response)
    if library == ANTHROPIC:
        from producer import usage_anthropic

        return usage_anthropic.from_message(response)
    return None


def meter_for(chunk: object) -> StreamMeter | None:
    """A meter for the stream whose first chunk is ``chunk``; None for chunks of neither client."""
    library = library_of(chunk)
    if library == OPENAI:
        from producer.usage_openai import OpenAIStreamMeter

        return OpenAIStreamMeter()
    if library == ANTHROPIC:
        from producer.usage_anthropic import AnthropicStreamMeter

        return AnthropicStreamMeter()
    return None


def count(value: object) -> int:
    """A token count from an optional field of a provider's usage object (absent or None is 0)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
