"""A fake AI provider speaking enough of OpenAI's chat completions API for the demo (``uvicorn demo.provider:app``).

The Procfile's ``provider`` process (on PROVIDER_PORT); the stand-in SaaS
app (demo.saas) calls it through the real ``openai`` client, as a product
calls its provider. Answers take a random latency, report usage the way
OpenAI does (cached prompt tokens, reasoning tokens of reasoning models,
usage in a stream's last chunk when ``stream_options.include_usage`` asks),
and a share of calls (DEMO_ERROR_RATE) fails with OpenAI's 429 and 500
error bodies.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from config import get_settings
from demo.ai import (
    CACHED_PREFIX_RANGE,
    CACHED_SHARE,
    LATENCY_MS_RANGE,
    OUTPUT_TOKENS_RANGE,
    REASONING_SHARE_RANGE,
    TOKENS_PER_CHAR,
)

REASONING_MODEL_PREFIX = "o"  # o3, o4-mini: models that spend output tokens reasoning
CHUNK_PAUSE_S = 0.002  # between streamed chunks
FAILURES = (
    (429, "rate_limit_exceeded", "tokens", "Rate limit reached for requests per min (RPM). Please try again in 1s."),
    (500, "server_error", "server_error", "The server had an error while processing your request."),
)
ANSWER_WORDS = ("Here", "is", "the", "stand-in", "answer", "of", "the", "demo", "provider.")


class ChatRequest(BaseModel):
    model: str
    messages: list[dict[str, Any]]
    stream: bool = False
    stream_options: dict[str, Any] | None = None


app = FastAPI(title="Fake AI provider (OpenAI chat completions, for the demo)")


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


def _usage(request: ChatRequest) -> dict[str, Any]:
    prompt_chars = sum(len(str(message.get("content", ""))) for message in request.messages)
    prompt = max(1, int(prompt_chars * TOKENS_PER_CHAR))
    completion = random.randint(*OUTPUT_TOKENS_RANGE)
    cached = int(prompt * random.uniform(*CACHED_PREFIX_RANGE)) if random.random() < CACHED_SHARE else 0
    reasoning = (
        int(completion * random.uniform(*REASONING_SHARE_RANGE))
        if request.model.startswith(REASONING_MODEL_PREFIX)
        else 0
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0},
    }


@app.post("/v1/chat/completions", response_model=None)
async def chat_completions(request: ChatRequest) -> JSONResponse | StreamingResponse:
    await asyncio.sleep(random.uniform(*LATENCY_MS_RANGE) / 1000)
    if random.random() < get_settings().demo_error_rate:
        status, code, kind, message = random.choice(FAILURES)
        return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status)
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    if request.stream:
        include_usage = bool((request.stream_options or {}).get("include_usage"))
        return StreamingResponse(
            _chunks(completion_id, created, request, include_usage), media_type="text/event-stream"
        )
    return JSONResponse({
        "id": completion_id, "object": "chat.completion", "created": created, "model": request.model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": " ".join(ANSWER_WORDS), "refusal": None}}],
        "usage": _usage(request),
    })  # fmt: skip


async def _chunks(completion_id: str, created: int, request: ChatRequest, include_usage: bool) -> AsyncIterator[str]:
    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": request.model,
                "choices": choices, "usage": usage}  # fmt: skip
        return f"data: {json.dumps(body)}\n\n"

    yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    for i, word in enumerate(ANSWER_WORDS):
        await asyncio.sleep(CHUNK_PAUSE_S)
        yield chunk([{"index": 0, "delta": {"content": word if i == 0 else f" {word}"}, "finish_reason": None}])
    yield chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    if include_usage:
        yield chunk([], _usage(request))
    yield "data: [DONE]\n\n"
