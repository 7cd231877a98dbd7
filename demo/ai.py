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
    input_tokens: int
    output_tokens: int


async def call_feature(feature: str, prompt: str, error_rate: float) -> AIResult:
    await asyncio.sleep(random.uniform(*LATENCY_MS_RANGE) / 1000)
    if random.random() < error_rate:
        raise AICallFailed(random.choice(ERROR_TYPES))
    input_tokens = max(1, int(len(prompt) * TOKENS_PER_CHAR))
    output_tokens = random.randint(*OUTPUT_TOKENS_RANGE)
    return AIResult(
        text=f"[{feature}] stand-in answer",
        model=random.choice(MODELS),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )
