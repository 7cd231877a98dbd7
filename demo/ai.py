"""The demo's AI features and models, and how the fake provider (demo.provider) answers: latency, tokens, failures.

Used by the demo SaaS app (demo.saas), the fake provider, and the demo load (demo.load).
"""

from __future__ import annotations

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
# The stand-in SaaS app (demo.saas) calls the fake provider through the openai client with these models.
CHAT_MODEL = "gpt-4o-mini"
STREAMED_FEATURES = frozenset({"content_generation", "smart_search"})  # read as a stream (time to first token)
OTLP_FEATURE = "anomaly_detection"  # recorded as an OpenTelemetry span exported to POST /v1/traces


def model_for(feature: str) -> str:
    return REASONING_MODEL if feature in REASONING_FEATURES else CHAT_MODEL
