"""producer.instrument apart from either client: exactly one event per call, analytics never breaking the
app, and no client library imported unless the app uses it."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devtools.processes import REPO_ROOT
from devtools.provider_replay import recorded_json
from devtools.queued import assert_event
from producer import Tracker, track_ai_call, tracked

pytestmark = pytest.mark.brokers("rabbitmq")

RECORDINGS = Path(__file__).parent / "recordings"
WHO = {"tenant_id": "tenant-acme", "feature_name": "forecasting", "user_id": "user-1"}
CLIENT_LIBRARIES = ("openai", "anthropic", "httpx2")


def test_importing_the_producer_and_its_helpers_imports_no_client_library() -> None:
    code = (
        "import json, sys\n"
        "import producer, producer.instrument, producer.usage, producer.usage_openai, producer.usage_anthropic\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:]))))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code, *CLIENT_LIBRARIES], cwd=REPO_ROOT, capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    assert json.loads(loaded) == []
    # The check sees a library once something imports it.
    loaded = subprocess.run([sys.executable, "-c", "import openai\n" + code, *CLIENT_LIBRARIES], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "openai" in json.loads(loaded)


def completion(**usage_changes: Any) -> Any:
    import openai.types.chat

    body = recorded_json(RECORDINGS / "openai_chat_completion.json")
    body["usage"].update(usage_changes)
    return openai.types.chat.ChatCompletion.model_validate(body)


def test_an_exception_in_the_block_before_a_response_is_an_error_event_and_goes_on(
    tracker: Tracker, published: Any
) -> None:
    with pytest.raises(TimeoutError), track_ai_call(**WHO, model="o4-mini", provider="openai", tracker=tracker):
        raise TimeoutError("the app's own deadline")
    [event] = published()
    assert_event(event, **WHO, status="error", error_type="TimeoutError", model="o4-mini", provider="openai",
                 input_tokens=0, output_tokens=0)  # fmt: skip


def test_an_exception_after_the_response_was_recorded_records_nothing_more(tracker: Tracker, published: Any) -> None:
    response = completion()
    with pytest.raises(KeyError), track_ai_call(**WHO, tracker=tracker) as call:
        call.record(response)
        raise KeyError("the app's own bug after the call")
    [event] = published()
    assert_event(event, status="success", input_tokens=response.usage.prompt_tokens)


def test_a_block_that_records_no_response_is_tracked_without_usage_and_says_so(
    tracker: Tracker, published: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="producer.instrument"), track_ai_call(**WHO, tracker=tracker):
        pass
    [event] = published()
    assert_event(event, status="success", input_tokens=0, output_tokens=0, model=None)
    assert "without a response recorded" in caplog.text


def test_an_event_track_refuses_is_logged_and_the_app_gets_its_response(
    tracker: Tracker, published: Any, caplog: pytest.LogCaptureFixture
) -> None:
    bad = completion(prompt_tokens_details={"cached_tokens": 10**6})  # more cached than input: not a valid event

    @tracked(**WHO, tracker=tracker)
    def call() -> Any:
        return bad

    with caplog.at_level(logging.ERROR, logger="producer.instrument"):
        assert call() is bad
    assert published() == []
    assert "not tracked" in caplog.text and "cache_read_tokens" in caplog.text


def test_the_decorator_takes_who_from_the_arguments_and_keeps_the_function_name(
    tracker: Tracker, published: Any
) -> None:
    @tracked(feature_name="forecasting", tenant_id=lambda account, **_: account, user_id=lambda _, *, user: user,
             tracker=tracker)  # fmt: skip
    def forecast(account: str, *, user: str) -> Any:
        return completion()

    forecast("tenant-x", user="user-y")
    assert forecast.__name__ == "forecast"
    [event] = published()
    assert_event(event, tenant_id="tenant-x", user_id="user-y", feature_name="forecasting", status="success")
