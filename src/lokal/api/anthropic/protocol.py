"""Anthropic's Messages API request, and its translation into a chat task.

Blocks become lokal's messages: text joined, `tool_use` blocks the assistant's
tool calls (input as JSON text), `tool_result` blocks tool messages. Thinking
blocks from earlier turns are not part of the prompt. `image` blocks (in user
messages and in tool results) go through lokal's one image path (`api/images.py`):
a `base64` source is decoded, a `url` source loaded (`data:` always, `http(s)` only
when the server allows remote images); `file` sources and documents are refused,
since this server stores no files. Claude Code's per-request billing line at
the top of the system prompt is dropped unless the server keeps it, so that the
rest of the prompt is the same from turn to turn and served from the cache.

`role: "system"` messages inside `messages` (Anthropic's mid-conversation system
messages; Claude Code sends its agent list so whenever it offers its Agent tool) are
folded into the system prompt, after `system`, in their order. They are not kept in
place: every chat template takes a system message at the start, but many refuse
one anywhere else (Gemma's and Mistral's templates raise an error), and Claude
Code's keep the same text and position from turn to turn, so the folded prompt is
the same prefix every turn and stays in the prompt cache.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import Field, field_validator

from lokal import tasks
from lokal.api.images import ImageLoader
from lokal.api.openai.protocol import MAX_STOP_LENGTH, MAX_STOPS, _Request
from lokal.errors import BadRequest

#: Claude Code's billing line: "x-anthropic-billing-header: cc_version=2.1.177.01c;
#: cc_entrypoint=cli; cch=36ee5;" (cch changes on every request).
BILLING_LINE = re.compile(r"^x-anthropic-billing-header:[^\n]*(\n|$)", re.IGNORECASE)


class TextBlock(_Request):
    type: Literal["text"]
    text: str


class ToolUseBlock(_Request):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any] = Field(default_factory=dict)


class ImageSource(_Request):
    type: str
    media_type: str | None = None
    data: str | None = None
    url: str | None = None
    file_id: str | None = None


class ImageBlock(_Request):
    type: Literal["image"]
    source: ImageSource

    def check(self, where: str) -> None:
        """The source's fields, checked before anything is loaded (a 400 naming the block)."""
        source = self.source
        if source.type == "base64":
            if not source.data:
                raise BadRequest(f"{where}: an image with a base64 source needs its data.", param=where)
        elif source.type == "url":
            if not source.url:
                raise BadRequest(f"{where}: an image with a url source needs its url.", param=where)
        elif source.type == "file":
            raise BadRequest(f"{where}: image sources of type 'file' are not supported: this server "
                             "stores no files. Send the image as a base64 source.", param=where)
        else:
            raise BadRequest(f"{where}: image sources of type {source.type!r} are not supported; "
                             "send a base64 source (media_type and data) or a url.", param=where)

    async def load(self, loader: ImageLoader, where: str) -> tasks.ImagePart:
        if self.source.type == "base64":
            return loader.decode(self.source.data or "", self.source.media_type, where=where, param=where)
        return await loader.load(self.source.url or "", where=where, param=where)


class ToolResultBlock(_Request):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[TextBlock | ImageBlock | OtherBlock] | None = None
    is_error: bool | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        for block in self.content:
            if not isinstance(block, (TextBlock, ImageBlock)):
                raise BadRequest(f"tool_result content blocks of type {block.type!r} are not supported "
                                 "by this server's models; send text or images.", param="messages")
        return "\n".join(b.text for b in self.content if isinstance(b, TextBlock))

    def images(self) -> list[tuple[int, ImageBlock]]:
        if not isinstance(self.content, list):
            return []
        return [(k, b) for k, b in enumerate(self.content) if isinstance(b, ImageBlock)]


class ThinkingBlock(_Request):
    type: Literal["thinking", "redacted_thinking"]


class OtherBlock(_Request):
    type: str


Block = TextBlock | ToolUseBlock | ToolResultBlock | ImageBlock | ThinkingBlock | OtherBlock

#: An image block still to load: the task message it belongs to, the block, where it is.
Pending = tuple[tasks.Message, ImageBlock, str]
ToolResultBlock.model_rebuild()


class InputMessage(_Request):
    role: Literal["user", "assistant", "system"]
    content: str | list[Block]

    def system_text(self, where: str) -> str:
        """A system message's text (its text blocks; other blocks are a 400 naming it)."""
        if isinstance(self.content, str):
            return self.content
        texts = []
        for j, block in enumerate(self.content):
            if not isinstance(block, TextBlock):
                raise BadRequest(f"{where}.content.{j}: a system message takes text blocks only, not "
                                 f"{block.type!r}.", param=f"{where}.content.{j}")
            texts.append(block.text)
        return "\n\n".join(t for t in texts if t)


class SystemBlock(_Request):
    type: Literal["text"]
    text: str


class Tool(_Request):
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None


class ToolChoice(_Request):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class MessagesRequest(_Request):
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int = Field(ge=1)
    messages: list[InputMessage]
    system: str | list[SystemBlock] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    stream: bool = False
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: ToolChoice | None = None
    metadata: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    service_tier: str | None = None
    # lokal: end this request after so many seconds (overrides REQUEST_TIMEOUT)
    timeout: float | None = Field(None, gt=0, le=86_400)
    ignore_eos: bool | None = None  # as on chat completions (benchmarks, tests)

    @field_validator("stop_sequences")
    @classmethod
    def _stops(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if len(value) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences are allowed")
        if any(not s or len(s) > MAX_STOP_LENGTH for s in value):
            raise ValueError(f"stop sequences must be 1 to {MAX_STOP_LENGTH} characters")
        return value

    def system_text(self, keep_billing_line: bool) -> str:
        if self.system is None:
            return ""
        texts = [self.system] if isinstance(self.system, str) else [b.text for b in self.system]
        if not keep_billing_line:
            texts = [BILLING_LINE.sub("", t, count=1) for t in texts]
        return "\n\n".join(t for t in texts if t)

    def to_task(self, *, keep_billing_line: bool = False, count_only: bool = False) -> tasks.ChatTask:
        """The task of a request without images (see `to_task_with_images`)."""
        task, pending = self._translate(keep_billing_line, count_only)
        if pending:
            raise RuntimeError("a request with images is translated with to_task_with_images")
        return task

    async def to_task_with_images(self, loader: ImageLoader, *, keep_billing_line: bool = False,
                                  count_only: bool = False) -> tasks.ChatTask:
        """The task with every image block loaded and checked (ImageError: a 400 naming it)."""
        task, pending = self._translate(keep_billing_line, count_only)
        for message, block, where in pending:
            message.images.append(await block.load(loader, where))
        return task

    def _translate(self, keep_billing_line: bool, count_only: bool) -> tuple[tasks.ChatTask, list[Pending]]:
        messages: list[tasks.Message] = []
        pending: list[Pending] = []
        system = [self.system_text(keep_billing_line)]
        names: dict[str, str] = {}
        for i, message in enumerate(self.messages):
            if message.role == "system":  # folded into the system prompt (see the module's docstring)
                system.append(message.system_text(f"messages.{i}"))
            else:
                _add_message(messages, message, names, pending, f"messages.{i}")
        folded = "\n\n".join(text for text in system if text)
        if folded:
            messages.insert(0, tasks.Message("system", folded))
        if not count_only and not any(m.role != "system" for m in messages):
            raise BadRequest("messages: at least one message is required.", param="messages")
        tools = []
        for tool in self.tools or []:
            if tool.type not in (None, "custom"):
                raise BadRequest(f"tools of type {tool.type!r} (Anthropic's server tools) are not "
                                 "supported by this server; send tools with name and input_schema.",
                                 param="tools")
            tools.append(tasks.Tool(tool.name, tool.description or "", tool.input_schema))
        choice = "auto"
        if self.tool_choice is not None:
            kind = self.tool_choice.type
            if kind == "tool":
                if not self.tool_choice.name:
                    raise BadRequest("tool_choice of type tool needs a name.", param="tool_choice")
                choice = self.tool_choice.name
            else:
                choice = {"any": "required"}.get(kind, kind)
        sampling = tasks.Sampling(max_tokens=self.max_tokens, temperature=self.temperature,
                                  top_p=self.top_p, top_k=self.top_k, ignore_eos=self.ignore_eos,
                                  stop=list(self.stop_sequences or []))
        options = tasks.GenerationOptions(sampling=sampling, stream=self.stream, timeout=self.timeout)
        parallel = None
        if self.tool_choice is not None and self.tool_choice.disable_parallel_tool_use:
            parallel = False
        return tasks.ChatTask(self.model, messages, options, tools=tools, tool_choice=choice,
                              parallel_tool_calls=parallel), pending


def _add_message(messages: list[tasks.Message], message: InputMessage, names: dict[str, str],
                 pending: list[Pending], where: str) -> None:
    if isinstance(message.content, str):
        messages.append(tasks.Message(message.role, message.content))
        return
    texts: list[str] = []
    calls: list[tasks.ToolCall] = []
    results: list[tasks.Message] = []
    images: list[tuple[ImageBlock, str]] = []
    for j, block in enumerate(message.content):
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            if message.role != "assistant":
                raise BadRequest("tool_use blocks belong in assistant messages.", param="messages")
            names[block.id] = block.name
            calls.append(tasks.ToolCall(block.id, block.name, json.dumps(block.input, ensure_ascii=False)))
        elif isinstance(block, ToolResultBlock):
            if message.role != "user":
                raise BadRequest("tool_result blocks belong in user messages.", param="messages")
            text = block.text()
            if block.is_error:
                text = f"Error: {text}"
            result = tasks.Message("tool", text, tool_call_id=block.tool_use_id,
                                   name=names.get(block.tool_use_id))
            for k, image in block.images():
                at = f"{where}.content.{j}.content.{k}"
                image.check(at)
                pending.append((result, image, at))
            results.append(result)
        elif isinstance(block, ImageBlock):
            at = f"{where}.content.{j}"
            if message.role != "user":
                raise BadRequest(f"{at}: image blocks belong in user messages.", param=at)
            block.check(at)
            images.append((block, at))
        elif isinstance(block, ThinkingBlock):
            continue
        elif block.type in ("text", "tool_use", "tool_result", "image"):
            raise BadRequest(f"{where}.content.{j}: the {block.type} block is missing fields or has "
                             "invalid ones.", param=f"{where}.content.{j}")
        else:
            raise BadRequest(f"{block.type} blocks are not supported by this server's models; "
                             "send text and images.", param="messages")
    messages.extend(results)  # a turn's tool results come first, then what the user adds
    text = "".join(texts) if message.role == "assistant" else "\n\n".join(texts)
    if text or calls or images or not results:
        turn = tasks.Message(message.role, text, tool_calls=calls)
        pending.extend((turn, block, at) for block, at in images)
        messages.append(turn)
