"""producer.instrument with the real ``openai`` client answering recorded responses: what each call
published through a real Tracker, event by event (read off a real RabbitMQ queue).

The client runs on ``httpx2`` (it also takes httpx clients); its transport hook replays the recordings.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from devtools.provider_replay import recorded_json, replay, sse_payloads
from devtools.queued import assert_event as check_event
from devtools.queued import assert_first_token_after
from producer import Tracker, track_ai_call, tracked

pytestmark = pytest.mark.brokers("rabbitmq")

RECORDINGS = Path(__file__).parent / "recordings"
PAUSE_S = 0.15  # before the first content chunk, and again before the stream's end
WHO = {"tenant_id": "tenant-acme", "feature_name": "summarization", "user_id": "user-7"}


def recorded_usage(name: str) -> dict[str, Any]:
    usage: dict[str, Any] = recorded_json(RECORDINGS / name)["usage"]
    return usage


def last_sse_json(name: str, kind: str | None = None) -> dict[str, Any]:
    last: dict[str, Any] = sse_payloads(RECORDINGS / name, kind)[-1]
    return last


def sync_client(transport: httpx2.MockTransport) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-test", http_client=httpx2.Client(transport=transport), max_retries=0)


def async_client(transport: httpx2.MockTransport) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="sk-test", http_client=httpx2.AsyncClient(transport=transport), max_retries=0)


def chat_usage_expected(usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "input_tokens": usage["prompt_tokens"],  # OpenAI's prompt tokens include the cached ones, as ours do
        "output_tokens": usage["completion_tokens"],
        "cache_read_tokens": usage["prompt_tokens_details"]["cached_tokens"],
        "cache_write_tokens": 0,
        "reasoning_tokens": usage["completion_tokens_details"]["reasoning_tokens"],
    }


def responses_usage_expected(usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "input_tokens": usage["input_tokens"],
        "output_tokens": usage["output_tokens"],
        "cache_read_tokens": usage["input_tokens_details"]["cached_tokens"],
        "cache_write_tokens": 0,
        "reasoning_tokens": usage["output_tokens_details"]["reasoning_tokens"],
    }


MESSAGES: list[Any] = [{"role": "user", "content": "Summarize the contract."}]


# --- whole responses --------------------------------------------------------------------------------


def test_a_chat_completion_is_recorded_with_its_cache_and_reasoning_tokens(tracker: Tracker, published: Any) -> None:
    requests: list[httpx2.Request] = []
    client = sync_client(replay(RECORDINGS / "openai_chat_completion.json", requests=requests))
    with track_ai_call(**WHO, tracker=tracker) as call:
        response = call.record(client.chat.completions.create(model="o4-mini", messages=MESSAGES))
    assert response.choices[0].message.content  # the app gets the client's own response
    assert requests[0].url.path == "/v1/chat/completions"
    [event] = published()
    usage = recorded_usage("openai_chat_completion.json")
    assert (
        usage["prompt_tokens_details"]["cached_tokens"] > 0 and usage["completion_tokens_details"]["reasoning_tokens"]
    )
    check_event(event, **WHO, model="o4-mini-2025-04-16", provider="openai", status="success", error_type=None,
                event_id=call.event_id.hex if call.event_id else None, **chat_usage_expected(usage))  # fmt: skip
    assert event.get("time_to_first_token_ms") is None  # not streamed


def test_an_async_chat_completion_is_recorded(tracker: Tracker, published: Any) -> None:
    async def main() -> None:
        client = async_client(replay(RECORDINGS / "openai_chat_completion.json"))
        async with track_ai_call(**WHO, tracker=tracker) as call:
            call.record(await client.chat.completions.create(model="o4-mini", messages=MESSAGES))

    asyncio.run(main())
    [event] = published()
    check_event(event, model="o4-mini-2025-04-16", provider="openai", status="success",
                **chat_usage_expected(recorded_usage("openai_chat_completion.json")))  # fmt: skip


def test_a_responses_api_call_is_recorded_by_the_decorator_with_who_from_the_arguments(
    tracker: Tracker, published: Any
) -> None:
    client = sync_client(replay(RECORDINGS / "openai_response.json"))

    @tracked(feature_name="workflow_automation", tenant_id=lambda ticket, **_: ticket["tenant"],
             user_id=lambda ticket, **_: ticket["user"], tracker=tracker)  # fmt: skip
    def route(ticket: dict[str, str], *, effort: str) -> Any:
        return client.responses.create(model="o4-mini", input=ticket["text"], reasoning={"effort": effort})  # type: ignore[call-overload]

    response = route({"tenant": "tenant-b", "user": "user-9", "text": "Invoice EUR 18,400"}, effort="medium")
    assert response.output_text.startswith("Route the invoice")
    [event] = published()
    check_event(event, tenant_id="tenant-b", user_id="user-9", feature_name="workflow_automation",
                model="o4-mini-2025-04-16", provider="openai", status="success",
                **responses_usage_expected(recorded_usage("openai_response.json")))  # fmt: skip


# --- streams ------------------------------------------------------------------------------------------


CHAT_STREAM = "openai_chat_stream.sse"
CHAT_FIRST_CONTENT = 1  # event 0 is the role chunk with empty content
CHAT_USAGE = 6  # the last chunk before [DONE]: no choices, the usage


def check_first_token(event: dict[str, Any]) -> None:
    assert_first_token_after(event, PAUSE_S)


def test_a_chat_stream_passes_every_chunk_and_is_recorded_at_its_end_with_its_time_to_first_token(
    tracker: Tracker, published: Any
) -> None:
    transport = replay(
        http=httpx2, recording=RECORDINGS / CHAT_STREAM, pauses_s={CHAT_FIRST_CONTENT: PAUSE_S, CHAT_USAGE: PAUSE_S}
    )
    client = sync_client(transport)
    reference = list(sync_client(replay(RECORDINGS / CHAT_STREAM)).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}))  # fmt: skip
    with track_ai_call(**WHO, tracker=tracker) as call:
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(call.stream(stream))
        assert call.finished, "recorded when the stream is exhausted, not at the block's end"
    assert [c.model_dump() for c in chunks] == [c.model_dump() for c in reference]  # unchanged, none missing
    [event] = published()
    usage = last_sse_json(CHAT_STREAM)["usage"]
    check_event(event, **WHO, model="gpt-4o-mini-2024-07-18", provider="openai", status="success",
                **chat_usage_expected(usage))  # fmt: skip
    check_first_token(event)


def test_an_async_chat_stream_returned_by_a_decorated_function_is_recorded_at_its_end(
    tracker: Tracker, published: Any
) -> None:
    client = async_client(
        replay(
            http=httpx2, recording=RECORDINGS / CHAT_STREAM, pauses_s={CHAT_FIRST_CONTENT: PAUSE_S, CHAT_USAGE: PAUSE_S}
        )
    )

    @tracked(**WHO, tracker=tracker)
    async def answer(question: str) -> Any:
        return await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": question}], stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip

    async def main() -> str:
        text = ""
        async for chunk in await answer("Which tickets mention the export?"):
            text += "".join(choice.delta.content or "" for choice in chunk.choices)
        return text

    assert asyncio.run(main()) == "Three tickets mention the export timeout."
    [event] = published()
    check_event(event, model="gpt-4o-mini-2024-07-18", provider="openai", status="success",
                **chat_usage_expected(last_sse_json(CHAT_STREAM)["usage"]))  # fmt: skip
    check_first_token(event)


RESPONSE_STREAM = "openai_response_stream.sse"
RESPONSE_FIRST_DELTA = 4  # created, in_progress, output_item.added, content_part.added, then the first delta
RESPONSE_COMPLETED = 14


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_responses_stream_is_recorded_from_its_completed_event(tracker: Tracker, published: Any, mode: str) -> None:
    transport = replay(RECORDINGS / RESPONSE_STREAM, pauses_s={RESPONSE_FIRST_DELTA: PAUSE_S,
                                                               RESPONSE_COMPLETED: PAUSE_S})  # fmt: skip
    kinds: list[str] = []
    if mode == "sync":
        with track_ai_call(**WHO, tracker=tracker) as call:
            for event in call.stream(
                sync_client(transport).responses.create(model="gpt-4.1-mini", input="x", stream=True)
            ):
                kinds.append(event.type)
    else:

        async def main() -> None:
            async with track_ai_call(**WHO, tracker=tracker) as call:
                stream = await async_client(transport).responses.create(model="gpt-4.1-mini", input="x", stream=True)
                async for event in call.stream(stream):
                    kinds.append(event.type)

        asyncio.run(main())
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed" and len(kinds) == RESPONSE_COMPLETED + 1
    [event] = published()
    usage = last_sse_json(RESPONSE_STREAM, "response.completed")["response"]["usage"]
    check_event(event, **WHO, model="gpt-4.1-mini-2025-04-14", provider="openai", status="success",
                **responses_usage_expected(usage))  # fmt: skip
    check_first_token(event)


# --- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_429_is_raised_to_the_app_and_recorded_as_an_error_of_its_type(
    tracker: Tracker, published: Any, mode: str
) -> None:
    transport = replay(RECORDINGS / "openai_error_429.json", status=429)
    with pytest.raises(openai.RateLimitError):
        if mode == "sync":
            with track_ai_call(**WHO, model="o4-mini", tracker=tracker):
                sync_client(transport).chat.completions.create(model="o4-mini", messages=MESSAGES)
        else:

            @tracked(**WHO, model="o4-mini", tracker=tracker)
            async def call() -> Any:
                return await async_client(transport).chat.completions.create(model="o4-mini", messages=MESSAGES)

            asyncio.run(call())
    [event] = published()
    check_event(event, **WHO, status="error", error_type="RateLimitError", model="o4-mini", provider="openai",
                input_tokens=0, output_tokens=0)  # fmt: skip


def test_a_stream_broken_mid_way_is_recorded_once_as_an_error_with_what_it_saw(
    tracker: Tracker, published: Any
) -> None:
    client = sync_client(replay(RECORDINGS / CHAT_STREAM, pauses_s={CHAT_FIRST_CONTENT: PAUSE_S}, break_after=3))
    seen = []
    with pytest.raises(openai.APIConnectionError), track_ai_call(**WHO, tracker=tracker) as call:
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        for chunk in call.stream(stream):
            seen.append(chunk)
    assert len(seen) == 3
    [event] = published()  # the stream recorded it; the block's end did not record it again
    check_event(event, **WHO, status="error", error_type="APIConnectionError", provider="openai",
                model="gpt-4o-mini-2024-07-18", input_tokens=0, output_tokens=0)  # fmt: skip
    assert event["time_to_first_token_ms"] >= PAUSE_S * 1000  # it streamed content before it broke


def test_a_stream_the_app_closes_early_is_recorded_once_when_closed(tracker: Tracker, published: Any) -> None:
    client = sync_client(replay(RECORDINGS / CHAT_STREAM))

    @tracked(**WHO, tracker=tracker)
    def answer() -> Any:
        return client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )

    with answer() as stream:
        for chunk in stream:
            if any(choice.delta.content for choice in chunk.choices):
                break  # the app stops reading: the usage chunk never comes
    [event] = published()
    check_event(event, **WHO, status="success", error_type=None, model="gpt-4o-mini-2024-07-18", output_tokens=0)
