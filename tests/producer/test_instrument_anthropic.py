"""producer.instrument with the real ``anthropic`` client answering recorded responses: what each call
published through a real Tracker, event by event (read off a real RabbitMQ queue).

Anthropic's ``input_tokens`` excludes cache reads and writes; the events' input includes them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from devtools.provider_replay import recorded_json, replay, sse_payloads
from devtools.queued import assert_event as check_event
from devtools.queued import assert_first_token_after
from producer import Tracker, track_ai_call, tracked

pytestmark = pytest.mark.brokers("rabbitmq")

RECORDINGS = Path(__file__).parent / "recordings"
PAUSE_S = 0.15  # before the first content chunk, and again before the stream's end
WHO = {"tenant_id": "tenant-acme", "feature_name": "entity_extraction", "user_id": "user-3"}

MESSAGES: list[Any] = [{"role": "user", "content": "What changed between the two versions?"}]
MAX_TOKENS = 2048
STREAM = "anthropic_stream.sse"
FIRST_DELTA = 3  # message_start, content_block_start, ping, then the first content_block_delta
MESSAGE_DELTA = 7


def recorded_usage(name: str) -> dict[str, Any]:
    usage: dict[str, Any] = recorded_json(RECORDINGS / name)["usage"]
    return usage


def last_sse_json(name: str, kind: str) -> dict[str, Any]:
    last: dict[str, Any] = sse_payloads(RECORDINGS / name, kind)[-1]
    return last


def check_first_token(event: dict[str, Any]) -> None:
    assert_first_token_after(event, PAUSE_S)


def sync_client(transport: httpx2.MockTransport) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="sk-ant-test", http_client=httpx2.Client(transport=transport), max_retries=0)


def async_client(transport: httpx2.MockTransport) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key="sk-ant-test", http_client=httpx2.AsyncClient(transport=transport), max_retries=0
    )


def expected(usage: dict[str, Any], output_tokens: int, thinking_tokens: int = 0) -> dict[str, Any]:
    cache_read = usage.get("cache_read_input_tokens") or 0
    cache_write = usage.get("cache_creation_input_tokens") or 0
    return {
        "input_tokens": usage["input_tokens"] + cache_read + cache_write,
        "output_tokens": output_tokens,
        "cache_read_tokens": cache_read,
        "cache_write_tokens": cache_write,
        "reasoning_tokens": thinking_tokens,
        "provider": "anthropic",
    }


def stream_expected() -> dict[str, Any]:
    start = last_sse_json(STREAM, "message_start")["message"]["usage"]
    delta = last_sse_json(STREAM, "message_delta")["usage"]
    return expected(start, output_tokens=delta["output_tokens"])


def test_a_message_is_recorded_with_cache_reads_added_to_input_and_thinking_as_reasoning(
    tracker: Tracker, published: Any
) -> None:
    requests: list[httpx2.Request] = []
    client = sync_client(replay(RECORDINGS / "anthropic_message.json", requests=requests))
    with track_ai_call(**WHO, tracker=tracker) as call:
        message = call.record(
            client.messages.create(model="claude-sonnet-4-5", max_tokens=MAX_TOKENS, messages=MESSAGES)
        )
    assert message.content[-1].type == "text"
    assert requests[0].url.path == "/v1/messages"
    [event] = published()
    usage = recorded_usage("anthropic_message.json")
    assert usage["cache_read_input_tokens"] > usage["input_tokens"]  # the case Anthropic's own count misleads
    check_event(event, **WHO, model="claude-sonnet-4-5-20250929", status="success", error_type=None,
                **expected(usage, usage["output_tokens"], usage["output_tokens_details"]["thinking_tokens"]))  # fmt: skip


def test_an_async_message_is_recorded_by_the_decorator(tracker: Tracker, published: Any) -> None:
    client = async_client(replay(RECORDINGS / "anthropic_message.json"))

    @tracked(**WHO, tracker=tracker)
    async def compare() -> Any:
        return await client.messages.create(model="claude-sonnet-4-5", max_tokens=MAX_TOKENS, messages=MESSAGES)

    asyncio.run(compare())
    [event] = published()
    usage = recorded_usage("anthropic_message.json")
    check_event(event, model="claude-sonnet-4-5-20250929", status="success",
                **expected(usage, usage["output_tokens"], usage["output_tokens_details"]["thinking_tokens"]))  # fmt: skip


def test_a_raw_stream_is_recorded_from_message_start_and_message_delta(tracker: Tracker, published: Any) -> None:
    client = sync_client(replay(RECORDINGS / STREAM, pauses_s={FIRST_DELTA: PAUSE_S, MESSAGE_DELTA: PAUSE_S}))
    text = ""
    with track_ai_call(**WHO, tracker=tracker) as call:
        stream = client.messages.create(model="claude-haiku-4-5", max_tokens=MAX_TOKENS, messages=MESSAGES, stream=True)
        for event in call.stream(stream):
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
    assert text.startswith("Entities: Acme GmbH")
    [event] = published()
    check_event(event, **WHO, model="claude-haiku-4-5-20251001", status="success", **stream_expected())
    check_first_token(event)


def test_an_async_message_stream_helper_is_recorded(tracker: Tracker, published: Any) -> None:
    """``client.messages.stream(...)``: the SDK's MessageStream, with its derived text events."""
    client = async_client(replay(RECORDINGS / STREAM, pauses_s={FIRST_DELTA: PAUSE_S, MESSAGE_DELTA: PAUSE_S}))

    async def main() -> str:
        async with (
            track_ai_call(**WHO, tracker=tracker) as call,
            client.messages.stream(model="claude-haiku-4-5", max_tokens=MAX_TOKENS, messages=MESSAGES) as stream,
        ):
            async for _ in call.stream(stream):
                pass
            final = await stream.get_final_message()  # the wrapped stream's own methods stay reachable
            return final.content[0].text if final.content[0].type == "text" else ""

    assert asyncio.run(main()).endswith("14 March 2026 (date).")
    [event] = published()
    check_event(event, model="claude-haiku-4-5-20251001", status="success", **stream_expected())
    check_first_token(event)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_500_is_raised_to_the_app_and_recorded_as_an_error_of_its_type(
    tracker: Tracker, published: Any, mode: str
) -> None:
    transport = replay(RECORDINGS / "anthropic_error_500.json", status=500)
    with pytest.raises(anthropic.InternalServerError):
        if mode == "sync":

            @tracked(**WHO, model="claude-haiku-4-5", tracker=tracker)
            def call() -> Any:
                return sync_client(transport).messages.create(
                    model="claude-haiku-4-5", max_tokens=MAX_TOKENS, messages=MESSAGES
                )

            call()
        else:

            async def main() -> None:
                async with track_ai_call(**WHO, model="claude-haiku-4-5", tracker=tracker):
                    await async_client(transport).messages.create(
                        model="claude-haiku-4-5", max_tokens=MAX_TOKENS, messages=MESSAGES
                    )

            asyncio.run(main())
    [event] = published()
    check_event(event, **WHO, status="error", error_type="InternalServerError", model="claude-haiku-4-5",
                provider="anthropic", input_tokens=0, output_tokens=0)  # fmt: skip


def test_an_error_event_mid_stream_is_recorded_as_an_error_with_the_input_it_reported(
    tracker: Tracker, published: Any
) -> None:
    recording = "anthropic_stream_overloaded.sse"
    client = sync_client(replay(RECORDINGS / recording))
    chunks = 0
    with pytest.raises(anthropic.APIStatusError) as raised, track_ai_call(**WHO, tracker=tracker) as call:
        stream = client.messages.create(model="claude-haiku-4-5", max_tokens=MAX_TOKENS, messages=MESSAGES,
                                        stream=True)  # fmt: skip
        for _ in call.stream(stream):
            chunks += 1
    assert chunks == 3 and "overloaded" in str(raised.value).lower()
    [event] = published()
    start = last_sse_json(recording, "message_start")["message"]["usage"]
    check_event(event, **WHO, status="error", error_type=type(raised.value).__name__,
                model="claude-haiku-4-5-20251001", **expected(start, output_tokens=start["output_tokens"]))  # fmt: skip
