"""langchain-openai against a real lokal: ChatOpenAI, OpenAIEmbeddings, OpenAI (completions).

OpenAIEmbeddings tokenizes each text with tiktoken's cl100k_base and sends the token
ids, not the text; lokal decodes them back to text for its own model. The request
bodies are recorded here to show what went over the wire.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator

import httpx
import openai
import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI, OpenAI, OpenAIEmbeddings

from tests.clients import CHAT, DIMENSIONS, DOCUMENT, EMBED, start_server
from tests.conftest import LokalServer

TEXTS = ["The council kept the property tax at 1.2 percent.",
         "Thirty apple trees were planted in the community orchard.",
         "The fire brigade bought a second-hand fire engine."]


@pytest.fixture(scope="module")
def lokal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    server = start_server(tmp_path_factory, "langchain")
    yield server
    server.stop()


def options(server: LokalServer) -> dict[str, object]:
    return {"base_url": f"{server.base}/v1", "api_key": "sk-unused", "max_retries": 0, "timeout": 120}


class Recorder:
    """An httpx client for langchain-openai that keeps each request's JSON body."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.client = httpx.Client(event_hooks={"request": [self._keep]})

    def _keep(self, request: httpx.Request) -> None:
        self.bodies.append(json.loads(request.content))


@pytest.fixture(scope="module")
def by_text(lokal: LokalServer) -> list[list[float]]:
    """TEXTS embedded as strings straight through the SDK: the reference vectors."""
    client = openai.OpenAI(base_url=f"{lokal.base}/v1", api_key="x", max_retries=0, timeout=120)
    return [d.embedding for d in client.embeddings.create(model=EMBED, input=TEXTS).data]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


# ChatOpenAI

def test_chat_invoke(lokal: LokalServer) -> None:
    llm = ChatOpenAI(model=CHAT, temperature=0, max_tokens=16, **options(lokal))
    message = llm.invoke([SystemMessage("You are brief."), HumanMessage("Say hello.")])
    assert isinstance(message.content, str) and message.content
    assert message.response_metadata["model_name"] == CHAT
    assert message.response_metadata["finish_reason"] in ("stop", "length")
    assert message.usage_metadata["input_tokens"] > 0 and 0 < message.usage_metadata["output_tokens"] <= 16


def test_chat_stream(lokal: LokalServer) -> None:
    llm = ChatOpenAI(model=CHAT, temperature=0, max_tokens=16, stream_usage=True, **options(lokal))
    llm.invoke("Count to five.")  # warm: the stream is compared with a warm answer
    whole = llm.invoke("Count to five.").content
    chunks = list(llm.stream("Count to five."))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert len([c for c in chunks if c.content]) > 1
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.content == whole
    assert merged.usage_metadata["output_tokens"] > 0


def test_chat_batch_and_async(lokal: LokalServer) -> None:
    llm = ChatOpenAI(model=CHAT, temperature=0, max_tokens=8, **options(lokal))
    questions = ["Name a colour.", "Name a fruit.", "Name an animal."]
    answers = llm.batch(questions)
    assert len(answers) == 3 and all(isinstance(a.content, str) and a.content for a in answers)
    again = asyncio.run(llm.abatch(questions))
    assert all(a.content for a in again)


# OpenAIEmbeddings

def test_embed_documents_sends_token_ids(lokal: LokalServer, by_text: list[list[float]]) -> None:
    recorder = Recorder()
    embeddings = OpenAIEmbeddings(model=EMBED, http_client=recorder.client, **options(lokal))
    vectors = embeddings.embed_documents(TEXTS)
    sent = recorder.bodies[-1]["input"]
    assert all(isinstance(ids, list) and all(isinstance(i, int) for i in ids) for ids in sent)
    assert len(sent) == 3
    assert [len(v) for v in vectors] == [DIMENSIONS] * 3
    for vector, reference in zip(vectors, by_text):
        assert cosine(vector, reference) > 0.9999  # the server decoded the ids back to the same text


def test_embed_query_and_async(lokal: LokalServer, by_text: list[list[float]]) -> None:
    embeddings = OpenAIEmbeddings(model=EMBED, **options(lokal))
    assert cosine(embeddings.embed_query(TEXTS[0]), by_text[0]) > 0.9999
    vectors = asyncio.run(embeddings.aembed_documents(TEXTS))
    assert all(cosine(v, r) > 0.9999 for v, r in zip(vectors, by_text))


def test_embed_without_ctx_length_check_sends_text(lokal: LokalServer, by_text: list[list[float]]) -> None:
    recorder = Recorder()
    embeddings = OpenAIEmbeddings(model=EMBED, check_embedding_ctx_length=False, http_client=recorder.client,
                                  **options(lokal))
    vectors = embeddings.embed_documents(TEXTS)
    assert recorder.bodies[-1]["input"] == TEXTS
    assert all(cosine(v, r) > 0.9999 for v, r in zip(vectors, by_text))


def test_long_document_split_into_token_windows(lokal: LokalServer) -> None:
    # Over embedding_ctx_length, LangChain sends several id windows per text and
    # averages their vectors: each window must decode to its own piece of text.
    recorder = Recorder()
    text = DOCUMENT.read_text()
    embeddings = OpenAIEmbeddings(model=EMBED, embedding_ctx_length=200, http_client=recorder.client,
                                  **options(lokal))
    vector = embeddings.embed_documents([text])[0]
    assert len(recorder.bodies[-1]["input"]) > 2
    assert len(vector) == DIMENSIONS and abs(math.sqrt(sum(v * v for v in vector)) - 1) < 1e-4
    assert cosine(vector, embeddings.embed_query("town council annual report")) > 0.3


# OpenAI (completions)

def test_completions_llm(lokal: LokalServer) -> None:
    recorder = Recorder()
    llm = OpenAI(model=CHAT, temperature=0, max_tokens=12, http_client=recorder.client, **options(lokal))
    llm.invoke("The capital of France is")  # warm
    text = llm.invoke("The capital of France is")
    assert isinstance(text, str) and text
    assert recorder.bodies[-1]["prompt"] == ["The capital of France is"]
    streamed = "".join(llm.stream("The capital of France is"))
    assert streamed == text
    results = llm.batch(["One, two,", "Red, green,"])
    assert len(results) == 2 and all(isinstance(r, str) for r in results)
    result = llm.generate(["Hello"])
    assert result.llm_output["token_usage"]["completion_tokens"] > 0
