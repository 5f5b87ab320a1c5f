"""Image tasks on a leased model: checked against the model, run step by step, stoppable.

`start` leases the model (404 unknown, 400 for a model that makes no images, 429 when
its slots and queue are full), checks the task against what the model accepts (sizes,
masks), and starts the engine on a thread; its progress arrives as `ImageRun` batches
(`step`, `partial`, `image` events, plain dicts from the engine). `ImageRun.begin` waits for the
engine's one slot (a request that is queued and whose client leaves never reaches
the engine); `stop()` (the client went away) makes the engine end before its next step.
The request's timeout and the busy watchdog apply as to a chat.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from lokal.engines.base import ImageJob, ImageResult
from lokal.errors import BadRequest, RequestTimeout
from lokal.formats.diffusion import INPAINT_KINDS
from lokal.models.catalog import ModelEntry
from lokal.models.generation import ClientGone, admit_until, engine_chunks, guarded
from lokal.models.planner import EngineDefaults
from lokal.models.registry import ModelRegistry
from lokal.tasks import ImageTask

#: Pixels per image token in the usage: a 16x16 patch, what an 8x VAE latent's 2x2 patch
#: covers (the token of DiT models such as SD3 and Flux).
TOKEN_SIDE = 16


def image_tokens(width: int, height: int) -> int:
    return math.ceil(width / TOKEN_SIDE) * math.ceil(height / TOKEN_SIDE)


@dataclass
class ImageUsage:
    """Usage as OpenAI's images API reports it: the prompt's text tokens (by the model's own
    tokenizer), the input image's tokens (edits) and the output images' tokens."""

    text_tokens: int = 0
    image_tokens: int = 0
    output_tokens: int = 0

    @property
    def input_tokens(self) -> int:
        return self.text_tokens + self.image_tokens

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def as_openai(self) -> dict[str, Any]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "total_tokens": self.total_tokens,
                "input_tokens_details": {"text_tokens": self.text_tokens, "image_tokens": self.image_tokens},
                "output_tokens_details": {"image_tokens": self.output_tokens, "text_tokens": 0}}


def _fit(width: int, height: int, limit: int, multiple: int, least: int) -> tuple[int, int]:
    """An input image's size scaled down to fit limit, in multiples of the model's."""
    scale = min(1.0, limit / max(width, height))
    w = max(least, int(width * scale) // multiple * multiple)
    h = max(least, int(height * scale) // multiple * multiple)
    return w, h


def plan_image(entry: ModelEntry, task: ImageTask, defaults: EngineDefaults) -> ImageJob:
    """The engine job for task on entry, or a BadRequest naming the parameter at fault."""
    info = entry.file.diffusion
    assert info is not None, "the planner let a non-image model through"
    limit, multiple, least = defaults.image_max_side, info.multiple, info.min_side
    if task.width is None or task.height is None:
        if task.image_size is not None:
            width, height = _fit(*task.image_size, min(limit, 2048), multiple, least)
        else:
            side = min(info.default_size, limit) // multiple * multiple
            width = height = side
    else:
        width, height = task.width, task.height
        if width % multiple or height % multiple:
            raise BadRequest(f"Invalid size {width}x{height}: width and height must be multiples of "
                             f"{multiple} for the model '{entry.name}'.", param="size")
        if min(width, height) < least or max(width, height) > limit:
            raise BadRequest(f"Invalid size {width}x{height}: each side must be between {least} and "
                             f"{limit} pixels for the model '{entry.name}' (the largest is IMAGE_MAX_SIDE).",
                             param="size")
    if task.mask is not None and not info.inpaint:
        raise BadRequest(f"The model '{entry.name}' does image-to-image but not inpainting: its pipeline "
                         f"takes no mask. Leave the mask out, or use one of: {INPAINT_KINDS}.", param="mask")
    seed = task.seed if task.seed is not None else secrets.randbelow(2**32)
    return ImageJob(prompt=task.prompt, width=width, height=height, negative_prompt=task.negative_prompt,
                    n=task.n, steps=task.steps, guidance=task.guidance, seed=seed, image=task.image,
                    mask=task.mask, strength=task.strength, output_format=task.output_format,
                    compression=task.compression, partial_images=task.partial_images)


@dataclass
class ImageRun:
    """A started image task: iterate its event batches, then read `result` and `usage`."""

    job: ImageJob
    entry: ModelEntry
    cancel: threading.Event
    _batches: AsyncIterator[list[dict[str, Any]]]
    _close: Callable[[], Any]
    result: ImageResult | None = None
    usage: ImageUsage = field(default_factory=ImageUsage)
    first: list[dict[str, Any]] = field(default_factory=list)
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)
    _closed: bool = False
    _on_close: list[Callable[[], Any]] = field(default_factory=list)

    def on_close(self, callback: Callable[[], Any]) -> None:
        """Call callback when the run closes (the API stops watching its client)."""
        self._on_close.append(callback)

    async def begin(self) -> None:
        """Wait for the slot and the first events, so that a request the engine refuses at
        once is an HTTP error (watch for the client leaving before: a queued request
        whose client left never reaches the engine)."""
        try:
            async for batch in self._batches:  # up to the first step: the inputs were taken
                self._count(batch)
                self.first.extend(batch)
                if any(event.get("event") != "start" for event in batch):
                    break
        except BaseException:
            await self.close()
            raise

    def stop(self) -> None:
        """The client went away: the engine ends before its next step (a request still
        waiting for the slot never starts)."""
        self.cancel.set()
        self._stopped.set()

    async def batches(self) -> AsyncIterator[list[dict[str, Any]]]:
        """Every batch of events, the first one included; the run is closed at the end."""
        try:
            if self.first:
                yield self.first
            async for batch in self._batches:
                self._count(batch)
                yield batch
        finally:
            await self.close()

    async def collect(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        async for batch in self.batches():
            events.extend(batch)
        return events

    def _count(self, batch: list[dict[str, Any]]) -> None:
        for event in batch:
            if event.get("event") == "start":
                self.usage.text_tokens = int(event.get("prompt_tokens") or 0)
            elif event.get("event") == "image":
                self.usage.output_tokens += image_tokens(int(event["width"]), int(event["height"]))

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.cancel.set()
            for callback in self._on_close:
                callback()
            await self._close()


async def start(registry: ModelRegistry, task: ImageTask, *, timeout: float | None = None,
                stopping: asyncio.Event | None = None) -> ImageRun:
    """Lease the model and check task against it; `ImageRun.begin` then starts the work."""
    stack = contextlib.AsyncExitStack()
    try:
        lease = await stack.enter_async_context(registry.lease(task.model, task.task))
        job = plan_image(lease.entry, task, registry.defaults)
        run = _running(lease, job, stack, timeout=timeout, stopping=stopping)
    except BaseException:
        await stack.aclose()
        raise
    if task.image_size is not None:
        run.usage.image_tokens = image_tokens(*task.image_size)
    return run


def _running(lease: Any, job: ImageJob, stack: contextlib.AsyncExitStack, *, timeout: float | None,
             stopping: asyncio.Event | None) -> ImageRun:
    loop = asyncio.get_running_loop()
    cancel = threading.Event()
    deadline = loop.time() + timeout if timeout else None
    engine_done = lease.hold()
    give_slot: list[Callable[[], None]] = []
    started = False
    holder: dict[str, ImageResult] = {}

    def done() -> None:  # on the event loop, once the engine call has returned
        for give in give_slot:
            give()
        engine_done()

    def on_start() -> None:
        nonlocal started
        started = True

    def call(sink: Callable[[dict[str, Any]], bool]) -> None:
        holder["result"] = lease.engine.generate_image(job, sink)

    run: ImageRun

    async def admitted() -> AsyncIterator[list[dict[str, Any]]]:
        give = await admit_until(lease, 1, run._stopped, deadline)
        if give is not None:
            give_slot.append(give)
            if cancel.is_set():
                raise ClientGone()
        elif cancel.is_set():
            raise ClientGone()
        else:
            raise RequestTimeout(timeout or 0)
        chunks = guarded(engine_chunks(call, cancel, on_done=done, on_start=on_start), cancel,
                         timeout=timeout, busy=lease.busy_timeout, on_stuck=lease.retire,
                         stopping=stopping, deadline=deadline)
        async for batch in chunks:
            yield batch
        run.result = holder.get("result")

    async def close() -> None:
        await batches.aclose()
        if not started:
            done()  # the engine was never asked: the slot and the model go back now
        await stack.aclose()

    batches = admitted()
    run = ImageRun(job=job, entry=lease.entry, cancel=cancel, _batches=batches, _close=close)
    return run
