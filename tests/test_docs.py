"""The Python examples in the README and docs run as written (against the test Redis)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import scheduled_prompts as sp
from scheduled_prompts.settings import Settings, render_configuration_doc

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def blocks(name: str) -> list[str]:
    return BLOCK.findall((ROOT / name).read_text())


def run_examples(name: str) -> dict[str, Any]:
    code = blocks(name)
    assert code, f"{name} has no python examples"
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    for block in code:
        exec(compile(block, name, "exec"), namespace)
    return namespace


def test_readme_example_schedules_once_and_cron(redis_url: str) -> None:
    ns = run_examples("README.md")
    digest = sp.get_prompt(ns["digest"].id)
    assert digest is not None and digest.cron_expression == "0 9 * * 1-5"
    assert digest.timezone == "Europe/Berlin"
    assert sp.get_prompt(ns["reminder"].id).status is sp.Status.CANCELLED  # type: ignore[union-attr]


def test_agents_tool_loop_examples_schedule_for_the_context_user(redis_url: str) -> None:
    try:
        ns = run_examples("docs/agents.md")
    finally:
        sp.set_bot_runner(None, platform="telegram")
    answer = ns["answer"]
    assert answer["success"] is True
    stored = sp.get_prompt(answer["prompt_id"])
    assert stored is not None and (stored.user_id, stored.platform) == ("u42", "telegram")
    assert "5 fields" in json.loads(ns["bad"])["error"]
    anthropic = json.loads(ns["results"][0]["content"])
    assert anthropic["success"] is True and ns["results"][0]["is_error"] is False
    cron = sp.get_prompt(anthropic["prompt_id"])
    assert cron is not None and (cron.user_id, cron.platform) == ("u42", "slack")


def test_agents_runner_example_injects_prompt_marked_as_scheduled_run(redis_url: str) -> None:
    namespace = run_examples("docs/agents.md")
    try:
        runner = namespace["BotRunner"](namespace["bot"])
        payload = {
            "idempotency_key": "p1:1",
            "user_id": "u42",
            "platform": "telegram",
            "channel_id": "chat-9",
            "prompt": "Remind me to call Ana",
            "in_scheduled_run": True,
        }
        asyncio.run(runner.handle_webhook(payload))
        asyncio.run(runner.handle_webhook(payload))  # a repeat is ignored
        turns = namespace["bot"].turns
        assert len(turns) == 1
        text, context = turns[0]
        assert text == "Remind me to call Ana" and context.in_scheduled_run
        assert namespace["receive"](b"{}", {}) == 401
    finally:
        sp.set_bot_runner(None, platform="telegram")


def test_configuration_doc_lists_every_setting_as_the_settings_object_says() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert render_configuration_doc(text) == text, "run `make docs`"
    for f in dataclasses.fields(Settings):
        assert f"`SCHEDULED_PROMPTS_{f.name.upper()}`" in text
