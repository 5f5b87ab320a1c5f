"""OpenAI's API family: chat and text completions, models, embeddings, audio; and rerank
(Jina's and Cohere's shape), counted as a family of its own."""

from __future__ import annotations

from lokal.api.family import Family, Mount
from lokal.api.openai import audio, embeddings, images_generation, rerank, routes, speech

FAMILY = Family("openai", mounts=(
    Mount(routes.router, "/v1", ("OpenAI",), also_bare=True),
    Mount(embeddings.router, "/v1", ("OpenAI",), also_bare=True),
    Mount(audio.router, "/v1", ("OpenAI",), also_bare=True),
    Mount(speech.router, "/v1", ("OpenAI",), also_bare=True),
    Mount(images_generation.router, "/v1", ("OpenAI",), also_bare=True),
))
RERANK = Family("rerank", mounts=(Mount(rerank.router, "/v1", ("Rerank",), also_bare=True),
                                  Mount(rerank.router, "/v2", schema=False)),  # Cohere's v2 client
                prefixes=("/rerank", "/v2/rerank"))
