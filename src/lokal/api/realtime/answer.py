"""One response of a realtime session: the chat model's answer, spoken sentence by sentence.

The conversation (user transcripts awaited) becomes the same `ChatTask` every family
makes, started by `api.generation.begin`. Text deltas are the audio transcript's (or the
text's) deltas at once; each finished sentence goes to the voice model
(`models.synthesis.speak`) while the model writes the next, and its audio, resampled to
pcm16 at 24 kHz, leaves as `response.audio.delta` events: the first audio leaves as soon as
the first sentence is written and spoken. Tool calls become function_call items whose
arguments stream. `cancel` (response.cancel, or the user barging in) stops the engine
within a token and the voice within its current chunk, and ends the response `cancelled`;
an answer whose audio has all been sent is done (the client truncates what it did not play).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

from lokal.api.generation import begin
import lokal.api.realtime.protocol as p
import lokal.api.realtime.render as render
from lokal.api.realtime.items import Item
from lokal.api.realtime.roles import ResponseSettings
from lokal.formats.audio import AudioEncoder
from lokal.models.synthesis import speak
from lokal.tasks import ChatTask, GenerationOptions, Message, Sampling, SpeakTask, ToolCall, Usage

#: Where a sentence ends: its mark and the space after it, or a line break.
SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n+")
_SAYABLE = re.compile(r"\w")
#: Characters without a sentence end after which the text so far is spoken at a comma or space.
LONG_CLAUSE = 100


def conversation(items: list[Item], instructions: str) -> list[Message]:
    """The session's items as chat messages (transcripts already in)."""
    messages = [Message("system", instructions)] if instructions else []
    for item in items:
        wire = item.wire
        if wire["type"] == "function_call_output":
            messages.append(Message("tool", wire["output"], tool_call_id=wire["call_id"]))
            continue
        if wire["type"] == "function_call":
            call = ToolCall(wire["call_id"], wire["name"], wire["arguments"])
            if messages and messages[-1].role == "assistant" and not messages[-1].text:
                messages[-1].tool_calls.append(call)
            else:
                messages.append(Message("assistant", "", tool_calls=[call]))
            continue
        text = " ".join(filter(None, (part.get("text") or part.get("transcript") or "" for part in wire["content"])))
        messages.append(Message(wire["role"], text))
    return messages


class Answer:
    def __init__(self, session: Any, settings: ResponseSettings, *, into_conversation: bool) -> None:
        self.session = session
        self.settings = settings
        self.into_conversation = into_conversation
        self.id = render.new_id("resp")
        self.task: asyncio.Task[Any] | None = None
        self.finished = False
        self.output: list[dict[str, Any]] = []
        self.usage = Usage()
        self._reason: str | None = None
        self._length = False
        self._generation: Any = None
        self._audio = "audio" in settings.modalities
        self._item: Item | None = None  # the assistant message being written
        self._text = ""
        self._said = 0  # characters of _text handed to the voice
        self._sentences: asyncio.Queue[str | None] = asyncio.Queue()
        self._voice_task: asyncio.Task[Any] | None = None
        self._audio_ms = 0.0
        self._spoken_chars = 0
        self._calls: dict[int, Item] = {}
        self._closing = False  # everything is said: only the closing events are left

    def _wire(self, status: str, details: dict[str, Any] | None = None, usage: Usage | None = None) -> dict[str, Any]:
        s = self.settings
        return render.response(self.id, status, self.output, modalities=s.modalities, voice=s.voice or s.voice_model,
                               details=details, u=usage, max_output_tokens=s.max_tokens, temperature=s.temperature)

    async def cancel(self, reason: str) -> None:
        """Stop now: the engine within a token, the voice within its current chunk. An
        answer whose audio has all been sent is done (OpenAI's rule: the client truncates
        what it had not yet played), so it closes as it is."""
        if self.finished or self._closing or self._reason is not None:
            return
        self._reason = reason
        if self._generation is not None:
            self._generation.stop()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task

    def abandon(self) -> None:
        """The client went: stop everything, say nothing."""
        if self._generation is not None:
            self._generation.stop()

    async def run(self) -> None:
        session = self.session
        await session.emit("response.created", response=self._wire("in_progress"))
        status, details = "completed", None
        try:
            await self._generate()
            if self._voice_task is not None:
                await self._sentences.put(None)
                await self._voice_task
            self._closing = True
            if self._length:
                status, details = "incomplete", {"type": "incomplete", "reason": "max_output_tokens"}
        except asyncio.CancelledError:
            if self._reason is None:
                raise  # the session is closing
            status, details = "cancelled", {"type": "cancelled", "reason": self._reason}
        except Exception as exc:  # noqa: BLE001 - told in response.done and an error event
            await session.fail(exc)
            status = "failed"
            details = {"type": "failed", "error": {"type": "server_error", "code": None, "message": str(exc)}}
        finally:
            if self._voice_task is not None and not self._voice_task.done():
                self._voice_task.cancel()
                with contextlib.suppress(BaseException):
                    await self._voice_task
        await self._close_items("completed" if status == "completed" else "incomplete")
        self.finished = True
        logs_usage(self.usage)
        await session.emit("response.done", response=self._wire(status, details, self.usage))

    # Generating ----------------------------------------------------------------------

    async def _generate(self) -> None:
        session, s = self.session, self.settings
        items = list(session.items)
        for item in items:
            if item.transcript is not None:
                await item.transcript
        sampling = Sampling(max_tokens=s.max_tokens, temperature=s.temperature)
        task = ChatTask(model=s.model, messages=conversation(items, s.instructions),
                        options=GenerationOptions(sampling=sampling, stream=True),
                        tools=s.tools if s.tool_choice != "none" else [],
                        tool_choice=s.tool_choice if s.tool_choice != "none" else "auto")
        run = await begin(session.app, task)
        self._generation = run.generation
        if self._reason is not None:
            run.generation.stop()
        try:  # closed at once when cancelled: the engine is told to stop before response.done
            async with contextlib.aclosing(run.batches()) as batches:
                async for batch in batches:
                    for delta in batch:
                        if delta.text:
                            await self._text_delta(delta.text)
                        for call in delta.tool_calls or ():
                            await self._call_delta(call)
                        if delta.finish_reason == "length":
                            self._length = True
        finally:
            self.usage = _usage(run.generation)
        if self._item is not None:
            self._say(final=True)

    async def _open_message(self) -> None:
        part = {"type": "audio", "transcript": ""} if self._audio else {"type": "text", "text": ""}
        self._item = Item(render.message(render.new_id("item"), "assistant", [], status="in_progress"))
        self.output.append(self._item.wire)
        await self._added(self._item)
        self._item.wire["content"].append(dict(part))
        await self._emit_part("response.content_part.added", part)

    async def _added(self, item: Item) -> None:
        session = self.session
        await session.emit("response.output_item.added", response_id=self.id, output_index=len(self.output) - 1,
                           item=item.wire)
        if self.into_conversation:
            await session.add_item(item)

    async def _emit_part(self, kind: str, part: dict[str, Any]) -> None:
        assert self._item is not None
        await self.session.emit(kind, response_id=self.id, item_id=self._item.id,
                                output_index=self.output.index(self._item.wire), content_index=0, part=part)

    def _ids(self) -> dict[str, Any]:
        assert self._item is not None
        return {"response_id": self.id, "item_id": self._item.id,
                "output_index": self.output.index(self._item.wire), "content_index": 0}

    async def _text_delta(self, text: str) -> None:
        if self._item is None:
            await self._open_message()
        assert self._item is not None
        self._text += text
        part = self._item.wire["content"][0]
        if self._audio:
            part["transcript"] += text
            await self.session.emit("response.audio_transcript.delta", **self._ids(), delta=text)
            self._say(final=False)
        else:
            part["text"] += text
            await self.session.emit("response.text.delta", **self._ids(), delta=text)

    async def _call_delta(self, delta: Any) -> None:
        item = self._calls.get(delta.position)
        if item is None:
            call_id = delta.id or render.new_id("call")
            item = Item(render.function_call(render.new_id("item"), call_id, delta.name or "", "",
                                             status="in_progress"))
            self._calls[delta.position] = item
            self.output.append(item.wire)
            await self._added(item)
        elif delta.name:
            item.wire["name"] = delta.name
        if delta.arguments:
            item.wire["arguments"] += delta.arguments
            await self.session.emit("response.function_call_arguments.delta", response_id=self.id, item_id=item.id,
                                    output_index=self.output.index(item.wire), call_id=item.wire["call_id"],
                                    delta=delta.arguments)

    # Speaking ------------------------------------------------------------------------

    def _say(self, *, final: bool) -> None:
        """Hand each finished sentence (at the end: the rest) to the voice."""
        if not self._audio:
            return
        pending = self._text[self._said:]
        cut = 0
        for match in SENTENCE_END.finditer(pending):
            cut = match.end()
        if cut == 0 and len(pending) > LONG_CLAUSE:  # a model that writes no full stops: a clause at a time
            cut = max(pending.rfind(", "), pending.rfind(" ", 0, LONG_CLAUSE)) + 1
        if final:
            cut = len(pending)
        if cut == 0:
            return
        sentence = pending[:cut]
        self._said += cut
        if self._voice_task is None:
            self._voice_task = asyncio.create_task(self._speak_sentences())
        self._sentences.put_nowait(sentence)

    async def _speak_sentences(self) -> None:
        encoder: AudioEncoder | None = None
        chars = 0
        while True:
            sentence = await self._sentences.get()
            if sentence is None:
                break
            chars += len(sentence)
            if not _SAYABLE.search(sentence):
                continue
            s = self.settings
            synthesis = await speak(self.session.app.state.registry,
                                    SpeakTask(model=s.voice_model, text=sentence.strip(), voice=s.voice))
            async with contextlib.aclosing(synthesis.batches()) as batches:  # cancelled: the voice stops now
                async for batch in batches:
                    for chunk in batch:
                        if encoder is None:
                            encoder = AudioEncoder("pcm", chunk.rate, rate=p.RATE)
                        await self._audio_out(encoder.feed(chunk.pcm))
            if encoder is not None:
                await self._audio_out(encoder.finish())
                encoder = None
            assert self._item is not None
            self._item.audio_marks.append((int(self._audio_ms), chars))

    async def _audio_out(self, pcm: bytes) -> None:
        if not pcm:
            return
        self._audio_ms += len(pcm) / (p.RATE * 2 / 1000)
        assert self._item is not None
        self._item.audio_ms = int(self._audio_ms)
        await self.session.emit("response.audio.delta", **self._ids(), delta=p.encode_audio(pcm))

    # Closing -------------------------------------------------------------------------

    async def _close_items(self, status: str) -> None:
        session = self.session
        if self._item is not None:
            item = self._item
            part = item.wire["content"][0]
            if self._audio:
                await session.emit("response.audio.done", **self._ids())
                await session.emit("response.audio_transcript.done", **self._ids(), transcript=part["transcript"])
            else:
                await session.emit("response.text.done", **self._ids(), text=part["text"])
            await self._emit_part("response.content_part.done", part)
            item.wire["status"] = status
            await session.emit("response.output_item.done", response_id=self.id,
                               output_index=self.output.index(item.wire), item=item.wire)
        for item in self._calls.values():
            wire = item.wire
            wire["status"] = status
            await session.emit("response.function_call_arguments.done", response_id=self.id, item_id=item.id,
                               output_index=self.output.index(wire), call_id=wire["call_id"], name=wire["name"],
                               arguments=wire["arguments"])
            await session.emit("response.output_item.done", response_id=self.id, output_index=self.output.index(wire),
                               item=wire)


def _usage(generation: Any) -> Usage:
    """The engine's count; for a run cut short (cancelled), what was seen of it."""
    return generation.known_usage or Usage(0, generation.tokens_seen)


def logs_usage(usage: Usage) -> None:
    """Add an answer's tokens to the session's (the access log and the key's usage)."""
    from lokal import logs

    context = logs.current()
    if context is None:
        return
    context.prompt_tokens = (context.prompt_tokens or 0) + usage.prompt_tokens
    context.completion_tokens = (context.completion_tokens or 0) + usage.completion_tokens
