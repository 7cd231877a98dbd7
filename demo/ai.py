"""A stand-in for the product's AI calls: random latency, tokens and failures.

Used by the demo SaaS app (demo.saas) and the demo load (demo.load).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

FEATURES = (
    "summarization",
    "smart_search",
    "recommendation",
    "workflow_automation",
    "sentiment_analysis",
    "entity_extraction",
    "content_generation",
    "anomaly_detection",
    "forecasting",
)
MODELS = ("gpt-4o-mini", "claude-haiku", "llama-3-8b")
# Agentic features run on a reasoning model (outside MODELS: the benchmarks' model mix stays as it was).
REASONING_MODEL = "o4-mini"
REASONING_FEATURES = frozenset({"workflow_automation"})
# OpenTelemetry's gen_ai.provider.name of each model; a self-hosted model has none.
PROVIDERS: dict[str, str | None] = {
    "gpt-4o-mini": "openai",
    "claude-haiku": "anthropic",
    "llama-3-8b": None,
    REASONING_MODEL: "openai",
}
CACHED_SHARE = 0.4  # calls whose prompt prefix (system prompt, documents) is a cache hit
CACHED_PREFIX_RANGE = (0.5, 0.9)  # the share of such a call's input read from the cache
REASONING_SHARE_RANGE = (0.3, 0.8)  # the share of a reasoning model's output spent reasoning
ERROR_TYPES = ("timeout", "rate_limited", "provider_error")
LATENCY_MS_RANGE = (5, 60)  # kept short so that a demo load is not bound by sleeping
TOKENS_PER_CHAR = 0.25
OUTPUT_TOKENS_RANGE = (20, 400)


class AICallFailed(Exception):
    def __init__(self, error_type: str) -> None:
        super().__init__(error_type)
        self.error_type = error_type


@dataclass(frozen=True)
class AIResult:
    text: str
    model: str
    input_tokens: int  # cache reads included (OpenTelemetry GenAI)
    output_tokens: int  # reasoning included
    cache_read_tokens: int = 0
    reasoning_tokens: int = 0
    provider: str | None = None


async def call_feature(feature: str, prompt: str, error_rate: float) -> AIResult:
    await asyncio.sleep(random.uniform(*LATENCY_MS_RANGE) / 1000)
    if random.random() < error_rate:
        raise AICallFailed(random.choice(ERROR_TYPES))
    input_tokens = max(1, int(len(prompt) * TOKENS_PER_CHAR))
    output_tokens = random.randint(*OUTPUT_TOKENS_RANGE)
    model = REASONING_MODEL if feature in REASONING_FEATURES else random.choice(MODELS)
    cached = random.random() < CACHED_SHARE
    cache_read_tokens = int(input_tokens * random.uniform(*CACHED_PREFIX_RANGE)) if cached else 0
    reasoning = int(output_tokens * random.uniform(*REASONING_SHARE_RANGE)) if model == REASONING_MODEL else 0
    return AIResult(
        text=f"[{feature}] stand-in answer",
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read_tokens,
        reasoning_tokens=reasoning,
        provider=PROVIDERS[model],
    )
