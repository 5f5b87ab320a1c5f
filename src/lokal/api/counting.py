"""Counting a chat task's prompt tokens without running it (Responses' input_tokens,
Anthropic's count_tokens): the prompt lokal would send (templates, tool
instructions and all), counted by the model's own template and tokenizer when the
engine can (llama.cpp can), else estimated at four characters a token."""

from __future__ import annotations

import json

from fastapi import Request

from lokal.models.prompting import plan_chat
from lokal.tasks import ChatTask


async def count_prompt_tokens(request: Request, task: ChatTask) -> tuple[int, bool]:
    """The task's prompt tokens, and whether the count is exact (not an estimate)."""
    async with request.app.state.registry.lease(task.model, task.task) as lease:
        call = plan_chat(lease.entry, task)
        count = await lease.run(lease.engine.count_tokens, call.body)
    if count is not None:
        return count, True
    text = call.body.get("prompt") or json.dumps(call.body.get("messages"), ensure_ascii=False)
    return max(1, len(str(text)) // 4), False
