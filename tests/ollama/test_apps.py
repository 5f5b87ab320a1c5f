"""Apps that speak Ollama: LangChain's ChatOllama / OllamaEmbeddings, and the probe
sequence of VS Code Copilot's Ollama provider."""

from __future__ import annotations

import httpx
from pydantic import BaseModel

from tests.ollama.conftest import AUTH, CHAT, EMBED, Ollama


def test_langchain_chat(ollama_server: Ollama) -> None:
    from langchain_ollama import ChatOllama

    llm = ChatOllama(model=CHAT, base_url=ollama_server.ollama, temperature=0, num_predict=12,
                     client_kwargs={"headers": AUTH}, validate_model_on_init=True)
    reply = llm.invoke("Say hello.")
    assert reply.content.strip()
    assert reply.usage_metadata["output_tokens"] > 0
    assert reply.response_metadata["done_reason"] in ("stop", "length")
    chunks = list(llm.stream("Say hello."))
    assert "".join(c.content for c in chunks) == reply.content


class Answer(BaseModel):
    city: str


def test_langchain_structured_and_tools(ollama_server: Ollama) -> None:
    from langchain_ollama import ChatOllama

    llm = ChatOllama(model=CHAT, base_url=ollama_server.ollama, temperature=0, num_predict=60,
                     client_kwargs={"headers": AUTH})
    answer = llm.with_structured_output(Answer, method="json_schema").invoke(
        "Which city is the capital of France?")
    assert isinstance(answer, Answer) and answer.city

    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return "sunny"

    called = llm.bind_tools([get_weather]).invoke("What is the weather in Paris? Use the tool.")
    assert called.tool_calls and called.tool_calls[0]["name"] == "get_weather"
    assert isinstance(called.tool_calls[0]["args"], dict)


def test_langchain_embeddings(ollama_server: Ollama) -> None:
    from langchain_ollama import OllamaEmbeddings

    emb = OllamaEmbeddings(model=EMBED, base_url=ollama_server.ollama, client_kwargs={"headers": AUTH})
    docs = emb.embed_documents(["The sky is blue.", "Grass is green."])
    query = emb.embed_query("What colour is the sky?")
    assert len(docs) == 2 and len(docs[0]) == len(query) == 384
    score = [sum(a * b for a, b in zip(query, d)) for d in docs]
    assert score[0] > score[1]


def test_copilot_probe_sequence(ollama_server: Ollama) -> None:
    """As VS Code Copilot's Ollama provider: version (numeric, new enough), tags, show
    (tools in capabilities, the context length), then chat on /v1 at the same address."""
    with httpx.Client(base_url=ollama_server.ollama, headers=AUTH, timeout=60) as http:
        version = http.get("/api/version").json()["version"]
        assert tuple(int(p) for p in version.split(".")) >= (0, 6, 4)
        names = [m["model"] for m in http.get("/api/tags").json()["models"]]
        assert f"{CHAT}:latest" in names
        shown = http.post("/api/show", json={"model": f"{CHAT}:latest"}).json()
        assert "tools" in shown["capabilities"]
        arch = shown["model_info"]["general.architecture"]
        assert shown["model_info"][f"{arch}.context_length"] > 0
        reply = http.post("/v1/chat/completions", json={
            "model": f"{CHAT}:latest", "max_tokens": 8, "stream": False,
            "messages": [{"role": "user", "content": "Hi"}]})
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"]
