"""Track AI calls made with the OpenAI or Anthropic client: one event per call, usage read from the response.

A context manager for a call written inline::

    with track_ai_call(tenant_id=t, feature_name="summarization", user_id=u) as call:
        response = call.record(client.chat.completions.create(model=..., messages=...))

and a decorator for a function that returns the client's response or stream::

    @tracked(feature_name="summarization", tenant_id=lambda doc, **_: doc.tenant, user_id=lambda doc, **_: doc.owner)
    def summarize(doc): return client.messages.create(...)

Both time the call, take model, provider and the token buckets from the
response (producer.usage), and record ``status="error"`` with the exception's
type as ``error_type`` when the call raises (the exception goes on). Both
work with sync and async code (``async with``, ``async def``).

A streamed call is wrapped (``call.stream(s)``, or returned by a ``@tracked``
function): the app gets every chunk unchanged, and the event is recorded
when the stream ends - exhausted, closed, or raised - with the time to the
first content chunk as ``time_to_first_token_ms``. A stream read inside a
``with`` block ends at the latest with the block; one that outlives it is
returned from a ``@tracked`` function instead.

Analytics never breaks the app: an event ``track()`` refuses is logged, not
raised. The client libraries are never imported here (producer.usage).
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

from producer.client import Tracker
from producer.ids import uuid7_hex_batch
from producer.usage import StreamMeter, Usage, library_of, meter_for, usage_of
from schema.event import MAX_ERROR_TYPE_LEN

logger = logging.getLogger(__name__)

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
MS_PER_S = 1000
Who = str | Callable[..., str]  # a value, or a function of the decorated function's arguments


class AICall:
    """One AI call being timed; records exactly one event (``record``, a stream's end, or the block's end)."""

    def __init__(
        self,
        *,
        tenant_id: str,
        feature_name: str,
        user_id: str,
        model: str | None = None,
        provider: str | None = None,
        tracker: Tracker | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self.feature_name = feature_name
        self.user_id = user_id
        self.model = model  # used when the response names none (a call that failed before answering)
        self.provider = provider  # overrides the client's library name (e.g. a gateway speaking OpenAI's API)
        self.event_id: uuid.UUID | None = None  # set once the event is recorded
        self._tracker = tracker
        self._started = time.perf_counter()
        self._first_token_ms: float | None = None
        self._meter: StreamMeter | None = None
        self._streaming = False
        self.finished = False

    # --- what the app calls ------------------------------------------------------------

    def record(self, response: T) -> T:
        """Record the call as answered by ``response`` (returned unchanged, to write it inline)."""
        self._finish("success", None, usage_of(response))
        return response

    def fail(self, error_type: str) -> None:
        """Record the call as failed without an exception (e.g. a refusal the app treats as an error)."""
        self._finish("error", error_type, None)

    @overload
    def stream(self, stream: AsyncIterator[T]) -> AsyncTrackedStream[T]: ...
    @overload
    def stream(self, stream: Iterator[T]) -> TrackedStream[T]: ...
    def stream(self, stream: Any) -> Any:
        """Wrap a streamed response; the event is recorded when it ends."""
        self._streaming = True
        return AsyncTrackedStream(stream, self) if hasattr(stream, "__anext__") else TrackedStream(stream, self)

    # --- context manager ----------------------------------------------------------------

    def __enter__(self) -> AICall:
        self._started = time.perf_counter()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._end_block(exc)

    async def __aenter__(self) -> AICall:
        return self.__enter__()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._end_block(exc)

    def _end_block(self, exc: BaseException | None) -> None:
        if self.finished:
            return
        if exc is not None:
            self.failed(exc)
        elif self._streaming:
            self.stream_ended(None)
        else:
            logger.warning(
                "analytics: AI call of feature %r ended without a response recorded; tracked without usage",
                self.feature_name,
            )
            self._finish("success", None, None)

    # --- stream and decorator side --------------------------------------------------------

    def failed(self, exc: BaseException) -> None:
        if self.provider is None and library_of(exc) is not None:
            self.provider = library_of(exc)
        self._finish("error", type(exc).__name__, self._meter.usage() if self._meter else None)

    def observe(self, chunk: object) -> None:
        if self._meter is None:
            self._meter = meter_for(chunk)
            if self._meter is None:
                return
        if self._meter.observe(chunk) and self._first_token_ms is None:
            self._first_token_ms = self._elapsed_ms()

    def stream_ended(self, exc: BaseException | None) -> None:
        if self.finished:
            return
        if exc is not None:
            self.failed(exc)
            return
        usage = self._meter.usage() if self._meter else None
        reported = self._meter.error_type() if self._meter else None
        self._finish("error" if reported else "success", reported, usage)

    # --- the event ----------------------------------------------------------------------

    def _elapsed_ms(self) -> float:
        return (time.perf_counter() - self._started) * MS_PER_S

    def _finish(self, status: str, error_type: str | None, usage: Usage | None) -> None:
        if self.finished:
            return
        self.finished = True
        latency_ms = self._elapsed_ms()
        usage = usage or Usage()
        fields = usage.as_track_kwargs()
        fields["model"] = usage.model or self.model
        fields["provider"] = self.provider or usage.provider
        if self._first_token_ms is not None:
            fields["time_to_first_token_ms"] = min(self._first_token_ms, latency_ms)
        self.event_id = uuid.UUID(uuid7_hex_batch([time.time_ns() // 1000])[0])
        tracker = self._tracker
        if tracker is None:
            from producer import get_tracker

            tracker = get_tracker()
        try:
            tracker.track(
                event_id=self.event_id,
                tenant_id=self.tenant_id,
                feature_name=self.feature_name,
                user_id=self.user_id,
                latency_ms=latency_ms,
                status=status,
                error_type=None if error_type is None else error_type[:MAX_ERROR_TYPE_LEN],
                **fields,
            )
        except (ValueError, TypeError) as refused:
            self.event_id = None
            logger.error("analytics: AI call event of feature %r not tracked: %s", self.feature_name, refused)


def track_ai_call(
    *,
    tenant_id: str,
    feature_name: str,
    user_id: str,
    model: str | None = None,
    provider: str | None = None,
    tracker: Tracker | None = None,
) -> AICall:
    """A context manager (``with`` or ``async with``) timing one AI call; see the module's docstring."""
    return AICall(
        tenant_id=tenant_id, feature_name=feature_name, user_id=user_id, model=model, provider=provider, tracker=tracker
    )


class TrackedStream(Generic[T]):
    """A sync stream passed through chunk by chunk; everything else is the wrapped stream's."""

    def __init__(self, stream: Iterator[T], call: AICall) -> None:
        self._stream = stream
        self._iterator = iter(stream)
        self._call = call

    def __iter__(self) -> TrackedStream[T]:
        return self

    def __next__(self) -> T:
        try:
            chunk = next(self._iterator)
        except StopIteration:
            self._call.stream_ended(None)
            raise
        except BaseException as exc:
            self._call.stream_ended(exc)
            raise
        self._call.observe(chunk)
        return chunk

    def close(self) -> None:
        try:
            close = getattr(self._stream, "close", None)
            if close is not None:
                close()
        finally:
            self._call.stream_ended(None)

    def __enter__(self) -> TrackedStream[T]:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __del__(self) -> None:
        if not self._call.finished:  # dropped unfinished: record what it saw
            self._call.stream_ended(None)


class AsyncTrackedStream(Generic[T]):
    """An async stream passed through chunk by chunk; everything else is the wrapped stream's."""

    def __init__(self, stream: AsyncIterator[T], call: AICall) -> None:
        self._stream = stream
        self._iterator = stream.__aiter__()
        self._call = call

    def __aiter__(self) -> AsyncTrackedStream[T]:
        return self

    async def __anext__(self) -> T:
        try:
            chunk = await self._iterator.__anext__()
        except StopAsyncIteration:
            self._call.stream_ended(None)
            raise
        except BaseException as exc:
            self._call.stream_ended(exc)
            raise
        self._call.observe(chunk)
        return chunk

    async def close(self) -> None:
        try:
            close = getattr(self._stream, "close", None) or getattr(self._stream, "aclose", None)
            if close is not None:
                result = close()
                if inspect.isawaitable(result):
                    await result
        finally:
            self._call.stream_ended(None)

    aclose = close

    async def __aenter__(self) -> AsyncTrackedStream[T]:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __del__(self) -> None:
        if not self._call.finished:
            self._call.stream_ended(None)


def _is_stream(result: object) -> bool:
    """A streamed response (openai/anthropic Stream, AsyncStream, MessageStream): an iterator, unlike a
    response model (pydantic models are iterable, never iterators)."""
    return hasattr(result, "__next__") or hasattr(result, "__anext__")


def tracked(
    *,
    feature_name: Who,
    tenant_id: Who,
    user_id: Who,
    model: str | None = None,
    provider: str | None = None,
    tracker: Tracker | None = None,
) -> Callable[[F], F]:
    """Track every call of a function returning the client's response or stream (sync or ``async def``).

    ``feature_name``, ``tenant_id`` and ``user_id`` are strings or functions of
    the decorated function's arguments.
    """

    def begin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> AICall:
        def value(who: Who) -> str:
            return who(*args, **kwargs) if callable(who) else who

        return AICall(
            tenant_id=value(tenant_id), feature_name=value(feature_name), user_id=value(user_id),
            model=model, provider=provider, tracker=tracker,
        )  # fmt: skip

    def settle(call: AICall, result: Any) -> Any:
        return call.stream(result) if _is_stream(result) else call.record(result)

    def decorate(function: F) -> F:
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                call = begin(args, kwargs)
                try:
                    result = await function(*args, **kwargs)
                except BaseException as exc:
                    call.failed(exc)
                    raise
                return settle(call, result)

            return run_async  # type: ignore[return-value]  # same signature as ``function``

        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            call = begin(args, kwargs)
            try:
                result = function(*args, **kwargs)
            except BaseException as exc:
                call.failed(exc)
                raise
            return settle(call, result)

        return run  # type: ignore[return-value]  # same signature as ``function``

    return decorate
