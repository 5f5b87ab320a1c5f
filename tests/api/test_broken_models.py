"""Broken models answer clear OpenAI errors; the good model beside them keeps working."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lokal.formats.modelfile import read_gguf
from tests.conftest import LokalServer, place_model, smollm_gguf

GOOD = "good.gguf"
MB = 1_000_000


@pytest.fixture(scope="module")
def broken_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("broken") / "models"
    place_model(models, GOOD)
    data = smollm_gguf().read_bytes()
    # The real file cut to 1 MB: for SmolLM2 that is inside the metadata (the header
    # is about 1.77 MB, mostly the vocabulary), so lokal's own reader refuses it.
    (models / "trunc-header.gguf").write_bytes(data[:MB])
    # Cut after the header: the header reads fine, the tensor data is missing.
    (models / "trunc-data.gguf").write_bytes(data[:20 * MB])
    assert read_gguf(models / "trunc-data.gguf").architecture == "llama"
    (models / "zero.gguf").write_bytes(b"")
    (models / "legacy.gguf").write_bytes(b"tjgg" + b"\x01\x00\x00\x00" + b"\0" * 1024)
    (models / "missing.yaml").write_text("name: missing-file\nparameters:\n  model: not-here.gguf\n")
    # Its own copy of the model: a config "owns" the file it names.
    place_model(models, "tmpl-model.gguf")
    (models / "badtmpl.yaml").write_text(
        "name: bad-template\nparameters:\n  model: tmpl-model.gguf\ntemplate:\n  chat: chatml\n")
    (models / "chatml.tmpl").write_text("<|im_start|>\n{{.Input}}\n{{ if .SystemPrompt }}\n<|im_end|>\n")
    return models


@pytest.fixture(scope="module")
def server(broken_dir: Path) -> Iterator[LokalServer]:
    with LokalServer(broken_dir, "--parallel-requests", "1", "--context-size", "512") as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server: LokalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=120) as client:
        yield client


def chat(http: httpx.Client, model: str, **extra: object) -> httpx.Response:
    return http.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 4, "temperature": 0, **extra})


def assert_good_answers(http: httpx.Client) -> None:
    response = chat(http, GOOD)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == GOOD
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] >= 1


def assert_error_envelope(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status
    assert isinstance(error["message"], str) and error["message"]
    return error["message"]


# Each broken model: its reason, in OpenAI's error envelope, and the good one unharmed.
CASES = {
    "trunc-header.gguf": ["trunc-header.gguf", "ends inside its GGUF header", "truncated download"],
    "trunc-data.gguf": ["trunc-data.gguf failed to load"],
    "zero.gguf": ["zero.gguf is empty (0 bytes)"],
    "legacy.gguf": ["legacy GGJT model file", "GGUF"],
    "missing-file": ["model file 'not-here.gguf' does not exist in the models folder"],
    "bad-template": ["template does not parse", "chatml.tmpl:3:", "{{if}}"],
}


@pytest.mark.parametrize("model", list(CASES))
def test_broken_model_answers_a_clear_error(http: httpx.Client, model: str) -> None:
    message = assert_error_envelope(chat(http, model), 500)
    assert message.startswith(f"model '{model}' cannot be loaded: "), message
    for part in CASES[model]:
        assert part in message, (part, message)
    error = chat(http, model).json()["error"]
    assert error["type"] == "server_error" and error["param"] == "model"
    assert_good_answers(http)


@pytest.mark.parametrize("model", list(CASES))
def test_broken_model_on_completions_and_streaming(http: httpx.Client, model: str) -> None:
    completion = http.post("/v1/completions", json={"model": model, "prompt": "Hi", "max_tokens": 2})
    assert CASES[model][0] in assert_error_envelope(completion, 500)
    # A stream that cannot start is a plain error response, not an event stream.
    streamed = chat(http, model, stream=True)
    assert CASES[model][0] in assert_error_envelope(streamed, 500)
    assert_good_answers(http)


def test_truncated_tensor_data_reason_is_the_engines(http: httpx.Client) -> None:
    message = assert_error_envelope(chat(http, "trunc-data.gguf"), 500)
    assert "not within the file bounds" in message, message


def test_unknown_model_is_404_not_another_model(http: httpx.Client) -> None:
    # tmpl-model.gguf is named by a (broken) config: not served under its file name either.
    for model in ("no-such-model", "tmpl-model.gguf", "not-here.gguf"):
        message = assert_error_envelope(chat(http, model), 404)
        assert f"The model '{model}' does not exist" in message
    assert_good_answers(http)


def test_models_lists_only_servable_models(http: httpx.Client) -> None:
    response = http.get("/v1/models")
    assert response.status_code == 200
    ids = {m["id"] for m in response.json()["data"]}
    assert GOOD in ids
    for broken in ("zero.gguf", "legacy.gguf", "missing-file", "bad-template", "tmpl-model.gguf"):
        assert broken not in ids, ids


def test_models_does_not_list_a_file_with_a_truncated_header(http: httpx.Client) -> None:
    ids = {m["id"] for m in http.get("/v1/models").json()["data"]}
    assert "trunc-header.gguf" not in ids


def test_server_log_names_every_broken_model(server: LokalServer) -> None:
    log = server.wait_log("listening on")
    for name, source in (("zero.gguf", "zero.gguf"), ("legacy.gguf", "legacy.gguf"),
                         ("missing-file", "missing.yaml"), ("bad-template", "badtmpl.yaml")):
        assert f"model {name} ({source}) cannot be served: " in log, name
    assert f"model {GOOD}: {GOOD}" in log
