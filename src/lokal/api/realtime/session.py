"""One realtime session: its configuration, its conversation, its input audio buffer,
and the client events that change them.

Events are handled one at a time, in order (a `session.update` is in force before the
next event is read); what takes long runs beside the loop: voice activity checks and
transcriptions (`turns.Turns`), and the one response at a time (`answer.Answer`).
Every refused event is an `error` event and the session goes on. The session ends when
the client goes (everything it started is cancelled: the engine stops within a token),
when it has been idle or open too long (an error event, then the socket closes), or at
the server's shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from lokal.api.errors import as_lokal_error
import lokal.api.realtime.protocol as p
import lokal.api.realtime.render as render
from lokal.api.realtime.answer import Answer
from lokal.api.realtime.items import Item
from lokal.api.realtime.roles import Roles
from lokal.api.realtime.turns import Turns
from lokal.errors import LokalError
from lokal.settings import Settings

log = logging.getLogger(__name__)


class Session:
    def __init__(self, ws: WebSocket, roles: Roles, settings: Settings) -> None:
        self.ws = ws
        self.app = ws.app
        self.roles = roles
        self.settings = settings
        self.id = render.new_id("sess")
        self.started = time.monotonic()
        self.expires_at = int(time.time() + settings.realtime_max_session_seconds)
        self.config = roles.initial_config()
        self.items: list[Item] = []
        self.answer: Answer | None = None
        self.turns = Turns(self)
        self.tasks: set[asyncio.Task[Any]] = set()
        self._send_lock = asyncio.Lock()
        self.closed = False

    # Sending -----------------------------------------------------------------------

    async def send(self, event: dict[str, Any]) -> None:
        if self.closed:
            return
        text = json.dumps(event)
        async with self._send_lock:
            try:
                await self.ws.send_text(text)
            except Exception:  # noqa: BLE001 - the client went away mid-send
                self.closed = True

    async def emit(self, kind: str, **fields: Any) -> None:
        await self.send(render.event(kind, **fields))

    async def fail(self, exc: BaseException, event_id: str | None = None) -> None:
        """An error event for exc (an EventError, or a LokalError in OpenAI's words)."""
        if isinstance(exc, p.EventError):
            await self.send(render.error(exc.message, type=exc.type, code=exc.code, param=exc.param,
                                         event_id=exc.event_id or event_id))
            return
        await self.send(render.refusal(as_lokal_error(exc), event_id=event_id))

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # The loop ------------------------------------------------------------------------

    async def run(self) -> None:
        await self.emit("session.created", session=self.wire_session())
        try:
            await self._loop()
        finally:
            self.closed = True
            if self.answer is not None:
                self.answer.abandon()
            for task in list(self.tasks):
                task.cancel()
            for task in list(self.tasks):
                with contextlib.suppress(BaseException):
                    await task

    async def _loop(self) -> None:
        settings = self.settings
        while not self.closed:
            left = settings.realtime_max_session_seconds - (time.monotonic() - self.started)
            if left <= 0:
                await self._end(f"The session reached its longest duration, "
                                f"{settings.realtime_max_session_seconds:g} seconds.", "session_expired")
                return
            try:
                message = await asyncio.wait_for(self.ws.receive(), min(left, settings.realtime_idle_seconds))
            except asyncio.TimeoutError:
                if time.monotonic() - self.started >= settings.realtime_max_session_seconds:
                    continue  # said at the top of the loop
                await self._end(f"The session was idle (no client event) for "
                                f"{settings.realtime_idle_seconds:g} seconds.", "session_idle_timeout")
                return
            except WebSocketDisconnect:
                return
            if message["type"] == "websocket.disconnect":
                return
            await self._frame(message)

    async def _end(self, message: str, code: str) -> None:
        await self.send(render.error(message, code=code))
        self.closed = True
        with contextlib.suppress(Exception):
            await self.ws.close(1000, code)

    async def _frame(self, message: dict[str, Any]) -> None:
        text = message.get("text")
        if text is None:
            await self.send(render.error("Binary frames are not events: send each event as a JSON text "
                                         "frame.", code="invalid_value"))
            return
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > self.settings.realtime_max_frame_bytes:
            await self.send(render.error(f"The event is {size} bytes; this server takes at most "
                                         f"{self.settings.realtime_max_frame_bytes} bytes per event "
                                         "(REALTIME_MAX_FRAME_BYTES). Send audio in smaller appends.",
                                         code="invalid_value"))
            return
        try:
            event = p.parse_event(text)
            handler = getattr(self, "on_" + event.type.replace(".", "_"))
            await handler(event)
        except p.EventError as exc:
            await self.fail(exc)
        except LokalError as exc:
            await self.fail(exc, getattr(locals().get("event"), "event_id", None))

    # Session --------------------------------------------------------------------------

    def wire_session(self) -> dict[str, Any]:
        return render.session(self.config, self.id, self.expires_at)

    async def on_session_update(self, event: p.SessionUpdate) -> None:
        changes = event.session.model_dump(exclude_unset=True, mode="json")
        config = self.roles.apply(self.config, changes, event.event_id)
        self.config = config
        await self.emit("session.updated", session=self.wire_session())

    # Input audio ----------------------------------------------------------------------

    async def on_input_audio_buffer_append(self, event: p.AudioAppend) -> None:
        pcm = p.decode_audio(event.audio)
        pcm = bytes(pcm)
        self.turns.append(pcm)

    async def on_input_audio_buffer_commit(self, event: p.AudioCommit) -> None:
        if len(self.turns.buffer) < p.RATE * 2 // 10:  # 100 ms of pcm16 at 24 kHz
            raise p.EventError(f"Error committing input audio buffer: buffer too small. Expected at least "
                               f"100ms of audio, but buffer only has {self.turns.buffered_ms():.2f}ms of audio.",
                               code="input_audio_buffer_commit_empty", event_id=event.event_id)
        await self.turns.commit(self.turns.take_all())

    async def on_input_audio_buffer_clear(self, event: p.AudioClear) -> None:
        self.turns.clear()
        await self.emit("input_audio_buffer.cleared")

    # Conversation -------------------------------------------------------------------

    def find(self, item_id: str, event_id: str | None, param: str = "item_id") -> Item:
        for item in self.items:
            if item.id == item_id:
                return item
        raise p.EventError(f"Item with item_id not found: {item_id}", code="item_not_found", param=param,
                           event_id=event_id)

    async def add_item(self, item: Item, previous_item_id: str | None = None) -> None:
        if previous_item_id is not None and previous_item_id != "root":
            at = self.items.index(self.find(previous_item_id, None, "previous_item_id")) + 1
        else:
            at = 0 if previous_item_id == "root" else len(self.items)
        previous = self.items[at - 1].id if at > 0 else None
        self.items.insert(at, item)
        await self.emit("conversation.item.created", previous_item_id=previous, item=item.wire)

    async def on_conversation_item_create(self, event: p.ItemCreate) -> None:
        given = event.item
        item_id = given.id or render.new_id("item")
        if any(i.id == item_id for i in self.items):
            raise p.EventError(f"Item with id '{item_id}' already exists.", code="item_id_exists",
                               param="item.id", event_id=event.event_id)
        if given.type == "function_call_output":
            if given.call_id is None or given.output is None:
                raise p.EventError("A function_call_output item needs 'call_id' and 'output'.",
                                   code="missing_required_parameter", param="item.call_id", event_id=event.event_id)
            item = Item(render.function_output(item_id, given.call_id, given.output))
        elif given.type == "function_call":
            if given.call_id is None or given.name is None:
                raise p.EventError("A function_call item needs 'call_id' and 'name'.",
                                   code="missing_required_parameter", param="item.name", event_id=event.event_id)
            item = Item(render.function_call(item_id, given.call_id, given.name, given.arguments or "{}"))
        else:
            if given.role is None:
                raise p.EventError("Missing required parameter: 'item.role'.", code="missing_required_parameter",
                                   param="item.role", event_id=event.event_id)
            content: list[dict[str, Any]] = []
            audio: bytes | None = None
            for index, part in enumerate(given.content):
                if part.type in ("input_audio", "audio") and part.audio is not None:
                    if audio is not None:
                        raise p.EventError("One audio part per message.", param=f"item.content.{index}",
                                           event_id=event.event_id)
                    audio = p.decode_audio(part.audio, f"item.content.{index}.audio")
                    content.append({"type": part.type, "transcript": part.transcript})
                elif part.type in ("input_audio", "audio"):
                    content.append({"type": part.type, "transcript": part.transcript or ""})
                else:
                    content.append({"type": part.type, "text": part.text or ""})
            item = Item(render.message(item_id, given.role, content))
            if audio is not None:
                item.transcript = self.turns.transcribe(item, audio)
        await self.add_item(item, event.previous_item_id)

    async def on_conversation_item_truncate(self, event: p.ItemTruncate) -> None:
        item = self.find(event.item_id, event.event_id)
        if item.wire.get("role") != "assistant" or not item.audio_marks and not any(
                c.get("type") == "audio" for c in item.wire.get("content", [])):
            raise p.EventError("Only an assistant message with audio can be truncated.", param="item_id",
                               event_id=event.event_id)
        spoken = item.audio_ms
        if event.audio_end_ms > spoken:
            raise p.EventError(f"Audio content of {spoken}ms is already shorter than {event.audio_end_ms}ms",
                               param="audio_end_ms", event_id=event.event_id)
        heard = 0
        for ms, chars in item.audio_marks:
            if ms <= event.audio_end_ms:
                heard = chars
        for part in item.wire["content"]:
            if part.get("type") == "audio":
                part["transcript"] = (part.get("transcript") or "")[:heard]
        item.audio_marks = [(ms, c) for ms, c in item.audio_marks if ms <= event.audio_end_ms]
        item.audio_ms = event.audio_end_ms
        await self.emit("conversation.item.truncated", item_id=item.id, content_index=event.content_index,
                        audio_end_ms=event.audio_end_ms)

    async def on_conversation_item_delete(self, event: p.ItemDelete) -> None:
        item = self.find(event.item_id, event.event_id)
        self.items.remove(item)
        await self.emit("conversation.item.deleted", item_id=item.id)

    async def on_conversation_item_retrieve(self, event: p.ItemRetrieve) -> None:
        item = self.find(event.item_id, event.event_id)
        await self.emit("conversation.item.retrieved", item=item.wire)

    # Responses ------------------------------------------------------------------------

    async def on_response_create(self, event: p.ResponseCreate) -> None:
        await self.respond(event.response, event.event_id)

    async def respond(self, config: p.ResponseConfig | None, event_id: str | None = None) -> None:
        if self.answer is not None and not self.answer.finished:
            raise p.EventError("Conversation already has an active response in progress: "
                               f"{self.answer.id}. Wait until the response is finished before creating a new one.",
                               code="conversation_already_has_active_response", event_id=event_id)
        overrides = config.model_dump(exclude_unset=True, mode="json") if config is not None else {}
        settings = self.roles.response_settings(self.config, overrides, event_id)
        self.answer = Answer(self, settings, into_conversation=overrides.get("conversation", "auto") == "auto")
        self.answer.task = self.spawn(self.answer.run())

    async def on_response_cancel(self, event: p.ResponseCancel) -> None:
        answer = self.answer
        if answer is None or answer.finished or (event.response_id and event.response_id != answer.id):
            raise p.EventError("Cancellation failed: no active response found.", code="response_cancel_not_active",
                               event_id=event.event_id)
        await answer.cancel("client_cancelled")

    async def barge_in(self) -> None:
        """The user started speaking: an answer still running is cancelled (turn_detected)."""
        detection = self.config.get("turn_detection") or {}
        if self.answer is not None and not self.answer.finished and detection.get("interrupt_response", True):
            await self.answer.cancel("turn_detected")
