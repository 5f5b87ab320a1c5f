"""LangChain's standard integration tests (`langchain-tests`) for ChatOpenAI and
OpenAIEmbeddings, pointed at a real lokal (SmolLM2 as gpt-3.5-turbo, all-MiniLM as
text-embedding-ada-002; one server for the module).

What the suite checks of the wire (streaming, usage, tool calls, forced tool choice,
structured output, JSON mode, stop sequences, batches) must pass. The cases that
need a model that follows instructions better than a 135M one are marked xfail with
the reason, not skipped: they run, and an unexpected pass shows up (strict=False, as
the greedy answer of a tiny model may still happen to be right).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from langchain_tests.integration_tests import ChatModelIntegrationTests, EmbeddingsIntegrationTests

from tests.clients import CHAT, EMBED, start_server
from tests.conftest import LokalServer

_server: dict[str, LokalServer] = {}


@pytest.fixture(scope="module", autouse=True)
def lokal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    server = start_server(tmp_path_factory, "langchain-standard")
    _server["base"] = server
    yield server
    _server.clear()
    server.stop()


def _options() -> dict[str, Any]:
    return {"base_url": f"{_server['base'].base}/v1", "api_key": "sk-unused"}


def _too_small(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(reason=f"SmolLM2-135M is too small: {reason}", strict=False)


class TestLokalChatOpenAI(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatOpenAI]:
        return ChatOpenAI

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": CHAT, "stream_usage": True, **_options()}

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return False


class TestLokalOpenAIEmbeddings(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[OpenAIEmbeddings]:
        return OpenAIEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": EMBED, **_options()}
