"""Deltas into OpenAI's chunks and answers: chat completions and text completions.

`OpenAIRenderer` is the family's `api.respond.Renderer`: a stream is one chunk per
delta that says something (a chat choice's role chunk first), a closing usage
chunk when asked, and `[DONE]`; a whole answer is the same deltas assembled
(`api.assembly` for a chat message's content, reasoning and tool calls).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi.responses import JSONResponse

from lokal.api.assembly import Assembler
from lokal.api.errors import openai_envelope
from lokal.api.respond import SSE_COMMENT, sse
from lokal.errors import LokalError
from lokal.tasks import Delta, Usage


class Shaper:
    """Rewrites deltas into the OpenAI chunks of one response.

    `kind` is what the client asked for ("chat" or "completion"); with `legacy`
    (OpenAI's `functions`), a tool call is answered as `function_call`.

    Completions only: `echo` holds the prompt text of each prompt, sent before its
    choices' text (choice i belongs to prompt i // n); logprobs come in the legacy
    completions shape (`tokens`, `token_logprobs`, `top_logprobs` as {token: logprob}
    maps of at most `top_logprobs` entries, `text_offset` into the choice's text,
    echoed prompt included).
    """

    def __init__(self, kind: str, model: str, *, legacy: bool = False, echo: list[str] | None = None,
                 n: int = 1, top_logprobs: int | None = None) -> None:
        self.kind = kind
        self.model = model
        self.legacy = legacy
        self.echo = echo
        self.n = max(1, n)
        self.top_logprobs = top_logprobs
        self._offsets: dict[int, int] = {}  # completions: characters of text sent per choice
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.object = "chat.completion.chunk" if kind == "chat" else "text_completion"
        self._started: set[int] = set()

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {"id": self.id, "object": self.object, "created": self.created,
                                 "model": self.model, "choices": choices}
        if usage is not None:
            chunk["usage"] = usage
        return chunk

    def _completion_choice(self, delta: Delta) -> dict[str, Any] | None:
        index, text = delta.index, delta.text
        if self.echo is not None and index not in self._started:
            self._started.add(index)
            text = self.echo[min(index // self.n, len(self.echo) - 1)] + text
        if not text and delta.finish_reason is None and not delta.logprobs:
            return None
        start = self._offsets.get(index, 0)
        # The echoed prompt comes before the tokens this delta's logprobs describe.
        logprobs = (self._legacy_logprobs(delta.logprobs, start + len(text) - len(delta.text))
                    if delta.logprobs else None)
        self._offsets[index] = start + len(text)
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": delta.finish_reason}

    def _legacy_logprobs(self, entries: list[dict[str, Any]], offset: int) -> dict[str, Any]:
        """Engine logprob entries (chat shape) as the legacy completions object."""
        out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                                     "text_offset": []}
        limit = self.top_logprobs
        for entry in entries:
            token = str(entry.get("token", ""))
            out["tokens"].append(token)
            out["token_logprobs"].append(_logprob(entry))
            top: dict[str, float] = {}
            for alt in entry.get("top_logprobs") or []:
                if limit is not None and len(top) >= limit:
                    break
                top.setdefault(str(alt.get("token", "")), _logprob(alt))
            out["top_logprobs"].append(top)
            out["text_offset"].append(offset)
            offset += len(token)
        return out

    def shape(self, deltas: list[Delta]) -> list[dict[str, Any]]:
        """The chunks for a batch of deltas: one per delta that says something, and
        first, for each chat choice, OpenAI's role chunk."""
        out = []
        for delta in deltas:
            if self.kind == "completion":
                choice = self._completion_choice(delta)
            else:
                if delta.index not in self._started:
                    self._started.add(delta.index)
                    out.append(self.chunk([{"index": delta.index,
                                            "delta": {"role": "assistant", "content": ""},
                                            "logprobs": None, "finish_reason": None}]))
                choice = self._chat_choice(delta)
            if choice is not None:
                out.append(self.chunk([choice]))
        return out

    def _chat_choice(self, delta: Delta) -> dict[str, Any] | None:
        message: dict[str, Any] = {}
        if delta.text:
            message["content"] = delta.text
        if delta.reasoning:
            message["reasoning_content"] = delta.reasoning
        if delta.tool_calls:
            if self.legacy:
                call = delta.tool_calls[0]
                function: dict[str, Any] = {"arguments": call.arguments}
                if call.name is not None:
                    function["name"] = call.name
                message["function_call"] = function
            else:
                message["tool_calls"] = [_tool_call(c) for c in delta.tool_calls]
        finish = delta.finish_reason
        if not message and finish is None and not delta.logprobs:
            return None
        if finish == "tool_calls" and self.legacy:
            finish = "function_call"  # type: ignore[assignment]
        return {"index": delta.index, "delta": message,
                "logprobs": {"content": delta.logprobs} if delta.logprobs else None,
                "finish_reason": finish}

    def usage(self, usage: Usage) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt_tokens": usage.prompt_tokens,
                               "completion_tokens": usage.completion_tokens,
                               "total_tokens": usage.total_tokens}
        if usage.cached_tokens is not None:
            out["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
        return out

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        """The closing chunk of a stream that asked for usage."""
        return self.chunk([], self.usage(usage))


def _logprob(entry: dict[str, Any]) -> float:
    return float(entry.get("logprob") or 0.0)


def _tool_call(call: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"index": call.position}
    if call.id is not None:
        out["id"] = call.id
        out["type"] = "function"
    function: dict[str, Any] = {"arguments": call.arguments}
    if call.name is not None:
        function["name"] = call.name
    out["function"] = function
    return out


class OpenAIRenderer:
    """One OpenAI answer (see the module's docstring). `progress`: the client asked for
    llama-server's `return_progress`, prompt progress chunks while the prompt runs."""

    media_type = "text/event-stream"

    def __init__(self, shaper: Shaper, *, include_usage: bool = False, progress: bool = False) -> None:
        self.shaper = shaper
        self.include_usage = include_usage
        self.progress = progress

    def start(self) -> bytes:
        return b""

    def feed(self, deltas: list[Delta]) -> bytes:
        data = b"".join(sse(chunk) for chunk in self.shaper.shape(deltas))
        if self.progress:
            for delta in deltas:
                if delta.progress is not None:
                    p = delta.progress
                    chunk = self.shaper.chunk([])
                    chunk["prompt_progress"] = {"total": p.total, "cache": p.cache,
                                                "processed": p.processed, "time_ms": p.time_ms}
                    data += sse(chunk)
        return data

    def keepalive(self) -> bytes:
        return SSE_COMMENT

    def end(self, usage: Usage) -> bytes:
        closing = sse(self.shaper.usage_chunk(usage)) if self.include_usage else b""
        return closing + sse("[DONE]")

    def fail(self, err: LokalError) -> bytes:
        return sse(openai_envelope(err)) + sse("[DONE]")

    def whole(self, deltas: list[Delta], usage: Usage) -> JSONResponse:
        shaper = self.shaper
        if shaper.kind == "chat":
            choices = _chat_choices(shaper, deltas)
        else:
            aggregator = _CompletionAggregator()
            for chunk in shaper.shape(deltas):
                aggregator.add(chunk)
            choices = aggregator.choices()
        return JSONResponse({
            "id": shaper.id,
            "object": "chat.completion" if shaper.kind == "chat" else "text_completion",
            "created": shaper.created,
            "model": shaper.model,
            "choices": choices,
            "usage": shaper.usage(usage),
        })


def _chat_choices(shaper: Shaper, deltas: list[Delta]) -> list[dict[str, Any]]:
    """The whole answer's choices: each choice's parts assembled into one message."""
    assemblers: dict[int, Assembler] = {}
    logprobs: dict[int, list[dict[str, Any]]] = {}
    for delta in deltas:
        assemblers.setdefault(delta.index, Assembler(delta.index)).feed([delta])
        if delta.logprobs:
            logprobs.setdefault(delta.index, []).extend(delta.logprobs)
    choices = []
    for index in sorted(assemblers):
        assembler = assemblers[index]
        assembler.close()
        message: dict[str, Any] = {"role": "assistant", "content": assembler.text or None}
        if assembler.reasoning:
            message["reasoning_content"] = assembler.reasoning
        calls = assembler.calls
        finish: str | None = assembler.finish
        if calls and shaper.legacy:
            message["function_call"] = {"name": calls[0].name, "arguments": calls[0].arguments}
            finish = "function_call" if finish == "tool_calls" else finish
        elif calls:
            message["tool_calls"] = [{"id": c.call_id, "type": "function",
                                      "function": {"name": c.name, "arguments": c.arguments}} for c in calls]
        if message["content"] is None and not calls:
            message["content"] = ""
        choices.append({"index": index, "message": message,
                        "logprobs": {"content": logprobs[index]} if index in logprobs else None,
                        "finish_reason": finish})
    return choices


class _CompletionAggregator:
    """A whole text completion from its shaped chunks (text, legacy logprobs)."""

    def __init__(self) -> None:
        self._choices: dict[int, dict[str, Any]] = {}

    def add(self, chunk: dict[str, Any]) -> None:
        for choice in chunk["choices"]:
            index = choice["index"]
            slot = self._choices.setdefault(index, {"index": index, "text": "", "logprobs": None,
                                                    "finish_reason": None})
            slot["text"] += choice.get("text") or ""
            _merge_legacy_logprobs(slot, choice.get("logprobs"))
            if choice.get("finish_reason"):
                slot["finish_reason"] = choice["finish_reason"]

    def choices(self) -> list[dict[str, Any]]:
        return [self._choices[i] for i in sorted(self._choices)]


def _merge_legacy_logprobs(slot: dict[str, Any], logprobs: Any) -> None:
    if not logprobs:
        return
    if slot["logprobs"] is None:
        slot["logprobs"] = {key: [] for key in logprobs}
    for key, values in logprobs.items():
        slot["logprobs"][key].extend(values)
