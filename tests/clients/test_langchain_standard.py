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

# The suite's async tests carry no asyncio mark (it expects asyncio_mode=auto): the
# classes get one, which pytest-asyncio ignores, with a warning, on the sync tests.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The test .* is marked with '@pytest.mark.asyncio' but it is not an async function")
_ASYNC = pytest.mark.asyncio(loop_scope="function")


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


_LOOPS = _too_small("asked for a joke as JSON it repeats one phrase until max_tokens, so the JSON "
                    "never closes (checked by hand: the call comes back cut, finish_reason length)")


@_ASYNC
class TestLokalChatOpenAI(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatOpenAI]:
        return ChatOpenAI

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # As the unit suite's standard parameters: greedy, and answers bounded.
        return {"model": CHAT, "stream_usage": True, "temperature": 0, "max_tokens": 100, **_options()}

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

    # Structured output: ChatOpenAI forces a tool call for the schema (for a model named
    # gpt-3.5-turbo it uses function calling), JSON mode sets response_format. lokal
    # holds the model to the JSON; the 135M model then writes "The cat was a cat, and
    # the cat was a cat, ..." until max_tokens, so the arguments never close and
    # LangChain gets a call cut by the limit (finish_reason length, as OpenAI answers).

    @_LOOPS
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    def test_structured_output(self, model: Any, schema_type: str) -> None:
        super().test_structured_output(model, schema_type)

    @_LOOPS
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    async def test_structured_output_async(self, model: Any, schema_type: str) -> None:
        await super().test_structured_output_async(model, schema_type)

    @_LOOPS
    def test_structured_output_pydantic_2_v1(self, model: Any) -> None:
        super().test_structured_output_pydantic_2_v1(model)

    @_LOOPS
    def test_structured_output_optional_param(self, model: Any) -> None:
        super().test_structured_output_optional_param(model)

    @_LOOPS
    def test_json_mode(self, model: Any) -> None:
        super().test_json_mode(model)

    # Forced to call `unicode_customer`, the model fills `description` with the tool's
    # whole docstring (LangChain sends the Args/Returns text as the description) and
    # runs into max_tokens=100 before the arguments close: LangChain then gets a call
    # cut by the limit (finish_reason length) and lists it as invalid. Whether it
    # copies the docstring depends on the requests before it (see test_data_query's
    # xfail on batch invariance); alone, it answers with a short description.
    @_too_small("forced to call unicode_customer it copies the tool's whole docstring into "
                "`description` and hits max_tokens=100 before the arguments close (checked by "
                "hand: finish_reason length, the cut call in invalid_tool_calls)")
    def test_unicode_tool_call_integration(self, model: Any, *, tool_choice: str | None = None,
                                           force_tool_call: bool = True) -> None:
        super().test_unicode_tool_call_integration(model, tool_choice=tool_choice,
                                                   force_tool_call=force_tool_call)


@_ASYNC
class TestLokalOpenAIEmbeddings(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[OpenAIEmbeddings]:
        return OpenAIEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": EMBED, **_options()}
