"""LlamaIndex against a real lokal: OpenAILike (chat and completion modes),
OpenAIEmbedding, and a VectorStoreIndex over the data-query example's document."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.llms import ChatMessage
from llama_index.core.node_parser import SentenceSplitter
from llama_index.embeddings.openai import OpenAIEmbedding
from llama_index.llms.openai_like import OpenAILike

from tests.clients import CHAT, DIMENSIONS, DOCUMENT, EMBED, TAXES, start_server
from tests.conftest import LokalServer


@pytest.fixture(scope="module")
def lokal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    server = start_server(tmp_path_factory, "llamaindex")
    yield server
    server.stop()


def llm(server: LokalServer, **overrides: object) -> OpenAILike:
    options: dict[str, object] = {
        "model": CHAT, "api_base": f"{server.base}/v1", "api_key": "sk-unused", "is_chat_model": True,
        "context_window": 2048, "max_tokens": 128, "temperature": 0, "timeout": 120, "max_retries": 0}
    options.update(overrides)
    return OpenAILike(**options)


def embed_model(server: LokalServer) -> OpenAIEmbedding:
    return OpenAIEmbedding(model_name=EMBED, api_base=f"{server.base}/v1", api_key="sk-unused",
                           max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def index(lokal: LokalServer) -> VectorStoreIndex:
    document = Document(text=DOCUMENT.read_text(), metadata={"source": DOCUMENT.name})
    return VectorStoreIndex.from_documents([document], embed_model=embed_model(lokal),
                                           transformations=[SentenceSplitter(chunk_size=96, chunk_overlap=16)])


def test_query_engine_answers_from_the_taxes_passage(lokal: LokalServer, index: VectorStoreIndex) -> None:
    engine = index.as_query_engine(llm=llm(lokal), similarity_top_k=2)
    response = engine.query("What did the council say about taxes?")
    assert str(response).strip()
    sources = [node.node.get_content() for node in response.source_nodes]
    assert len(sources) == 2 and any(TAXES in text for text in sources), sources
    assert response.source_nodes[0].score > response.source_nodes[1].score - 1e-9


def test_streaming_query_engine(lokal: LokalServer, index: VectorStoreIndex) -> None:
    engine = index.as_query_engine(llm=llm(lokal, max_tokens=48), similarity_top_k=2, streaming=True)
    response = engine.query("What will the council rebuild next year?")
    pieces = list(response.response_gen)
    assert len(pieces) > 1 and "".join(pieces).strip()
    assert any("Mill Lane" in node.node.get_content() for node in response.source_nodes)


def test_retriever_and_embeddings(lokal: LokalServer, index: VectorStoreIndex) -> None:
    nodes = index.as_retriever(similarity_top_k=1).retrieve("property tax rate for households")
    assert TAXES in nodes[0].node.get_content()
    model = embed_model(lokal)
    assert len(model.get_text_embedding("hello")) == DIMENSIONS
    vectors = model.get_text_embedding_batch(["one", "two", "three"])
    assert [len(v) for v in vectors] == [DIMENSIONS] * 3
    assert len(asyncio.run(model.aget_query_embedding("hello"))) == DIMENSIONS


def test_openai_like_chat_complete_and_stream(lokal: LokalServer) -> None:
    chat_model = llm(lokal, max_tokens=16)
    reply = chat_model.chat([ChatMessage(role="system", content="You are brief."),
                             ChatMessage(role="user", content="Say hello.")])
    assert reply.message.role == "assistant" and reply.message.content
    assert chat_model.complete("Say hello.").text  # a chat model serves complete() through chat
    deltas = [r.delta for r in chat_model.stream_chat([ChatMessage(role="user", content="Count to five.")])]
    assert len([d for d in deltas if d]) > 1


def test_openai_like_completion_mode(lokal: LokalServer) -> None:
    completion_model = llm(lokal, is_chat_model=False, max_tokens=12)
    assert completion_model.complete("The capital of France is").text
    deltas = [r.delta for r in completion_model.stream_complete("Once upon a time")]
    assert len([d for d in deltas if d]) > 1
    assert asyncio.run(completion_model.acomplete("One, two,")).text is not None
