"""Speculative decoding from the model config: same greedy output, draft vocabulary checked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lokal.models.catalog import read_config_file
from tests.conftest import CHAT_FILE, LokalServer, place_model
from tests.fakeengine import write_gguf

SPEC = """\
name: {name}
parameters:
  model: {file}
context_size: 1024
{extra}"""

# A prompt whose answer repeats its context: what n-gram drafting is for.
COPY = ("Repeat this list exactly, twice: apple, banana, cherry, date, elderberry, fig, grape, "
        "honeydew, apple, banana, cherry, date, elderberry, fig, grape, honeydew.")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    models = tmp_path_factory.mktemp("spec") / "models"
    place_model(models)
    (models / "plain.yaml").write_text(SPEC.format(name="plain", file=CHAT_FILE, extra=""))
    (models / "ngram.yaml").write_text(SPEC.format(
        name="ngram", file=CHAT_FILE, extra="speculative:\n  type: ngram_simple\n  size_n: 3\n  size_m: 8\n"))
    # A "draft model" from another family: a header with another tokenizer.
    write_gguf(models / "other-vocab.gguf", extra={"tokenizer.ggml.model": "llama",
                                                   "tokenizer.ggml.pre": "default"})
    (models / "drafted.yaml").write_text(SPEC.format(
        name="drafted", file=CHAT_FILE, extra="draft_model: other-vocab.gguf\nn_draft: 4\n"))
    server = LokalServer(models, "--parallel-requests", "1")
    yield server
    server.stop()


def _answer(server: LokalServer, model: str) -> str:
    r = httpx.post(f"{server.base}/v1/chat/completions", timeout=300, json={
        "model": model, "messages": [{"role": "user", "content": COPY}], "max_tokens": 48,
        "temperature": 0, "seed": 1, "cache_prompt": False})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_greedy_output_is_the_same_with_ngram_speculation(server: LokalServer) -> None:
    plain = _answer(server, "plain")
    assert plain
    assert _answer(server, "ngram") == plain
    log = server.log()
    assert "speculative" in log.lower() or "ngram" in log.lower(), "the engine was not told to speculate"


def test_a_draft_model_with_another_vocabulary_is_refused(server: LokalServer) -> None:
    r = httpx.post(f"{server.base}/v1/chat/completions", timeout=60, json={
        "model": "drafted", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert r.status_code == 500
    message = r.json()["error"]["message"]
    assert "other-vocab.gguf does not share the vocabulary" in message
    assert "tokenizer: 'gpt2' vs 'llama'" in message
    # The server keeps serving the others.
    assert _answer(server, "plain")


def _entry(tmp_path: Path, extra: str):  # type: ignore[no-untyped-def]
    models = tmp_path / "models"
    write_gguf(models / "m.gguf")
    path = models / "m.yaml"
    path.write_text(SPEC.format(name="m", file="m.gguf", extra=extra))
    [entry] = read_config_file(models, path)
    return entry


@pytest.mark.parametrize("extra,reason", [
    ("speculative:\n  type: draft\n", "speculative.type draft needs draft_model"),
    ("draft_model: missing.gguf\n", "draft_model 'missing.gguf' does not exist"),
    ("draft_model: ../outside.gguf\n", "may not contain '..'"),
    ("draft_model: m.gguf\nspeculative:\n  type: ngram_mod\n", "use type draft, or drop draft_model"),
    ("speculative:\n  type: turbo\n", "speculative.type"),
    ("speculative:\n  type: ngram_simple\n  size_n: 0\n", "speculative.size_n"),
    ("speculative:\n  type: ngram_simple\n  bogus: 1\n", "speculative.bogus"),
])
def test_bad_speculative_configs_are_reported(tmp_path: Path, extra: str, reason: str) -> None:
    entry = _entry(tmp_path, extra)
    assert entry.error is not None and reason in entry.error


def test_speculation_values() -> None:
    from lokal.models.config import ModelConfig

    assert ModelConfig(name="a").speculation is None
    assert ModelConfig(name="a", draft_model="d.gguf", n_draft=6).speculation == {"type": "draft", "n_max": 6}
    assert ModelConfig(name="a", speculative={"type": "ngram_mod", "n_match": 4}).speculation == {
        "type": "ngram_mod", "n_match": 4}
