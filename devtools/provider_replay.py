"""Recorded provider answers replayed through the clients' own transport hook (``MockTransport``).

The real ``openai`` / ``anthropic`` client parses them as it parses the
provider's answers: ``OpenAI(http_client=httpx2.Client(transport=replay(...)))``.
Both clients run on ``httpx2`` (httpx's API under another name; anthropic
refuses httpx objects, openai still takes them: ``replay(..., http=httpx)``).
A streamed answer can be paced (pauses before chosen events) or cut off
mid-body, as a dropped connection does.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx2

SSE_SEPARATOR = b"\n\n"
BROKEN_BODY = "peer closed connection without sending complete message body (incomplete chunked read)"


class PacedBody:
    """An SSE body sent event by event: a pause before the events named, and optionally a broken connection
    after ``break_after`` events (the ``http`` module's RemoteProtocolError)."""

    def __init__(self, http: ModuleType, body: bytes, pauses_s: dict[int, float], break_after: int | None) -> None:
        self._events = [event + SSE_SEPARATOR for event in body.split(SSE_SEPARATOR) if event.strip()]
        self._pauses_s = pauses_s
        self._break_after = break_after
        self._broken: type[Exception] = http.RemoteProtocolError

    def __iter__(self) -> Iterator[bytes]:
        for index, event in enumerate(self._events):
            if index == self._break_after:
                raise self._broken(BROKEN_BODY)
            time.sleep(self._pauses_s.get(index, 0.0))
            yield event

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for index, event in enumerate(self._events):
            if index == self._break_after:
                raise self._broken(BROKEN_BODY)
            await asyncio.sleep(self._pauses_s.get(index, 0.0))
            yield event


def replay(
    recording: Path,
    status: int = 200,
    *,
    pauses_s: dict[int, float] | None = None,
    break_after: int | None = None,
    requests: list[Any] | None = None,
    http: ModuleType = httpx2,
) -> Any:
    """A ``http.MockTransport`` answering every request with ``recording`` (``.sse``: an event stream, else JSON)."""
    body = recording.read_bytes()
    streamed = recording.suffix == ".sse"
    headers = {"content-type": "text/event-stream" if streamed else "application/json"}

    stream_type = type("PacedStream", (PacedBody, http.SyncByteStream, http.AsyncByteStream), {})

    def handler(request: Any) -> Any:
        if requests is not None:
            requests.append(request)
        if streamed:
            return http.Response(status, headers=headers, stream=stream_type(http, body, pauses_s or {}, break_after))
        return http.Response(status, headers=headers, content=body)

    return http.MockTransport(handler)


def recorded_json(recording: Path) -> Any:
    return json.loads(recording.read_text())


def sse_payloads(recording: Path, event: str | None = None) -> list[Any]:
    """The data payloads of a recorded stream, in order (only those of ``event`` if given); ``[DONE]`` left out."""
    payloads = []
    for block in recording.read_text().split(SSE_SEPARATOR.decode()):
        fields = dict(line.split(": ", 1) for line in block.strip().splitlines() if ": " in line)
        if "data" in fields and fields["data"] != "[DONE]" and (event is None or fields.get("event") == event):
            payloads.append(json.loads(fields["data"]))
    return payloads
