"""Hugging Face embedding models through sentence-transformers on torch (CPU).

An optional extra: `pip install 'lokal[sentence-transformers]'`. Without it, a
model that needs this engine fails to load with a message naming the extra.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from lokal.engines.base import Engine, Embeddings, EngineError, LoadOptions, ModelLoadError, Scores

log = logging.getLogger(__name__)

EXTRA_HINT = ("this model needs the sentence-transformers engine: "
              "pip install 'lokal[sentence-transformers]' (torch CPU + sentence-transformers)")


def prepare() -> None:
    """Import what a load will need (a spare worker does this before it is given a model):
    torch and sentence-transformers take seconds to import, far longer than a small model's weights."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch  # noqa: F401
    import sentence_transformers  # noqa: F401


class SentenceTransformersEngine(Engine):
    """An embedding model folder (modules.json / config.json + weights), or a
    cross-encoder (reranker) folder when loaded for rerank."""

    def __init__(self, options: LoadOptions) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a model folder never needs the hub
        try:
            import torch
            from sentence_transformers import CrossEncoder, SentenceTransformer
        except ImportError as exc:
            raise ModelLoadError(f"{options.model_path.name}: {EXTRA_HINT} ({exc})") from exc
        torch.set_num_threads(options.threads)
        self.cross_encoder = options.rerank
        try:
            if self.cross_encoder:
                self._model = CrossEncoder(str(options.model_path), device="cpu", local_files_only=True)
            else:
                self._model = SentenceTransformer(str(options.model_path), device="cpu",
                                                  local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any loader failure is the user's to read
            raise ModelLoadError(f"{options.model_path.name} failed to load: {exc}") from exc
        self._torch = torch
        self._lock = threading.Lock()  # torch already uses every thread it was given
        self.options = options
        self.window = int(getattr(self._model, "max_seq_length", None) or getattr(
            self._model, "max_length", None) or 512)
        log.info("loaded %s (sentence-transformers, %d dims, window %d)", options.model_path.name,
                 self.dimensions or 0, self.window)

    @property
    def dimensions(self) -> int | None:
        if self.cross_encoder:
            return None
        model = self._model
        get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return get()

    def _token_counts(self, texts: list[str]) -> list[int]:
        encoded: Any = self._model.tokenizer(texts, add_special_tokens=True, truncation=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def embed(self, inputs: list[str] | list[list[int]], truncate: bool) -> Embeddings:
        if inputs and isinstance(inputs[0], list):
            texts = [self._model.tokenizer.decode(ids, skip_special_tokens=True) for ids in inputs]
        else:
            texts = list(inputs)  # type: ignore[arg-type]
        counts = self._token_counts(texts)
        longest = max(counts, default=0)
        if longest > self.window and not truncate:
            raise EngineError(400, f"An input is {longest} tokens, more than this model's "
                                   f"{self.window}-token window (the model's config sets truncate: false).")
        with self._lock, self._torch.inference_mode():
            vectors = self._model.encode(texts, batch_size=64, normalize_embeddings=True,
                                         convert_to_numpy=True, show_progress_bar=False)
        return Embeddings(vectors.tolist(), sum(min(c, self.window) for c in counts))

    def rerank(self, query: str, documents: list[str]) -> Scores:
        pairs = [(query, doc) for doc in documents]
        encoded: Any = self._model.tokenizer(pairs, truncation=True, max_length=self.window)
        torch = self._torch
        with self._lock, torch.inference_mode():
            # The logits first (TEI's raw_scores), then the model's own activation on them.
            logits = self._model.predict(pairs, batch_size=32, show_progress_bar=False,
                                         activation_fn=torch.nn.Identity(), convert_to_tensor=True)
            activation = getattr(self._model, "activation_fn", None) or torch.nn.Sigmoid()
            scores = activation(logits)
        values = scores.reshape(len(documents), -1)[:, -1].tolist()
        raw = logits.reshape(len(documents), -1)[:, -1].tolist()
        return Scores([float(v) for v in values], sum(len(ids) for ids in encoded["input_ids"]),
                      [float(v) for v in raw])

    def close(self) -> None:
        self.__dict__.pop("_model", None)
