"""Embed, rerank and transcribe tasks, whatever API family they came through.

Chat and completion run as a `Generation` (they stream); these three answer at
once, so each is one function from its task to its result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lokal import logs
from lokal.engines.base import Transcription
from lokal.errors import BadRequest
from lokal.models.embedding import decode_openai_tokens
from lokal.models.registry import ModelRegistry
from lokal.tasks import EmbedTask, RerankTask, TranscribeTask


@dataclass
class EmbedResult:
    vectors: list[list[float]]
    prompt_tokens: int


@dataclass
class RerankResult:
    scores: list[float]  # relevance of each document, in document order
    prompt_tokens: int
    #: a cross-encoder's logits before its activation, when the engine has them;
    #: for a cosine rerank (and rerankers that give probabilities) the scores themselves
    raw: list[float] | None = None


def shorten(vector: list[float], dimensions: int) -> list[float]:
    """The first dimensions values, back to unit length (Matryoshka-style)."""
    head = vector[:dimensions]
    norm = math.sqrt(sum(v * v for v in head)) or 1.0
    return [v / norm for v in head]


async def embed(registry: ModelRegistry, task: EmbedTask) -> EmbedResult:
    async with registry.lease(task.model, "embed") as lease:
        config = lease.entry.config
        inputs = task.inputs
        if task.token_ids and not (config is not None and config.token_ids == "model"):
            inputs = decode_openai_tokens(inputs)  # type: ignore[arg-type]
        native = lease.engine.dimensions
        if task.dimensions is not None and native is not None and task.dimensions > native:
            raise BadRequest(f"dimensions must be at most {native} for the model '{task.model}'.",
                             param="dimensions")
        result = await lease.embed(inputs, task.truncate)
    logs.annotate(prompt_tokens=result.prompt_tokens)  # the access log and usage per key
    vectors = result.vectors
    if task.dimensions is not None:
        vectors = [shorten(v, task.dimensions) if task.dimensions < len(v) else v for v in vectors]
    return EmbedResult(vectors, result.prompt_tokens)


async def rerank(registry: ModelRegistry, task: RerankTask) -> RerankResult:
    """Scores from a cross-encoder, or the cosine of embeddings for an embedding model."""
    async with registry.lease(task.model, "rerank") as lease:
        if lease.entry.rerank_by == "cross-encoder":
            ranked = await lease.run(lease.engine.rerank, task.query, task.documents)
            logs.annotate(prompt_tokens=ranked.prompt_tokens)
            return RerankResult(ranked.scores, ranked.prompt_tokens, ranked.raw or ranked.scores)
        embedded = await lease.embed([task.query, *task.documents])
    logs.annotate(prompt_tokens=embedded.prompt_tokens)
    query, *documents = embedded.vectors
    scores = [sum(q * d for q, d in zip(query, doc)) for doc in documents]
    return RerankResult(scores, embedded.prompt_tokens, scores)


async def transcribe(registry: ModelRegistry, task: TranscribeTask) -> Transcription:
    async with registry.lease(task.model, "transcribe") as lease:
        # vad_filter is passed only when asked for, so engines without it (a Ray replica) serve the rest.
        vad = {"vad_filter": True} if task.vad_filter else {}
        result: Transcription = await lease.run(lambda: lease.engine.transcribe(
            task.audio, language=task.language, prompt=task.prompt, temperature=task.temperature, **vad))
    if result.duration is not None:
        logs.annotate(audio_seconds=float(result.duration))
    return result
