"""The brief's LocalAI example folder, with SmolLM2 in place of ggml-gpt4all-j."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai

from tests.conftest import LokalServer, place_model

GPT35 = """\
name: gpt-3.5-turbo
parameters:
  model: ggml-gpt4all-j
  top_k: 80
  temperature: 0.2
  top_p: 0.7
context_size: 1024
stopwords:
- "HUMAN:"
- "GPT:"
roles:
  user: " "
  system: " "
template:
  completion: completion
  chat: gpt4all
"""

GPT4ALL = """The prompt below is a question to answer, a task to complete, or a conversation to respond to; decide which and write an appropriate response.
### Prompt:
{{.Input}}
### Response:
"""


def example_folder(root: Path) -> Path:
    models = root / "models"
    place_model(models, "ggml-gpt4all-j")  # the name the example uses, now a GGUF
    (models / "gpt-3.5-turbo.yaml").write_text(GPT35)
    (models / "completion.tmpl").write_text("{{.Input}}")
    (models / "gpt4all.tmpl").write_text(GPT4ALL)
    (root / ".env").write_text("THREADS=2\nCONTEXT_SIZE=512\nMODELS_PATH=models\nDEBUG=true\n")
    return models


def test_example_folder_serves_with_the_gpt4all_template(tmp_path: Path) -> None:
    example_folder(tmp_path)
    # Settings come from the .env in the working directory, as in the example.
    with LokalServer(tmp_path / "models", cwd=tmp_path) as server:
        log = server.log()
        assert "threads: 2" in log
        assert "model gpt-3.5-turbo: ggml-gpt4all-j" in log
        client = openai.OpenAI(base_url=f"{server.base}/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["gpt-3.5-turbo"]
        reply = client.chat.completions.create(
            model="gpt-3.5-turbo", messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=16)
        assert reply.choices[0].message.content
        assert reply.object == "chat.completion"
        log = server.wait_log("rendered chat prompt")
        # The user role prefix " " and the gpt4all template reached the model, in that order.
        assert "### Prompt:\\n What is the capital of France?\\n### Response:\\n" in log
        stream = list(client.chat.completions.create(
            model="gpt-3.5-turbo", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, stream=True))
        assert stream[0].choices[0].delta.role == "assistant"
        assert stream[-1].choices[0].finish_reason in ("stop", "length")
        text = client.completions.create(model="gpt-3.5-turbo", prompt="Once upon a time", max_tokens=4)
        assert text.choices[0].text
        server.wait_log("rendered completion prompt: ['Once upon a time']")


def test_example_config_stopwords_apply(tmp_path: Path) -> None:
    models = example_folder(tmp_path)
    (models / "gpt4all.tmpl").write_text("{{.Input}}")
    with LokalServer(models, cwd=tmp_path) as server:
        r = httpx.post(f"{server.base}/v1/completions", json={
            "model": "gpt-3.5-turbo", "prompt": "HUMAN: hi\nGPT: hello\n" * 6 + "HUMAN: hi\nGPT:",
            "max_tokens": 60, "temperature": 0}, timeout=60)
        assert r.status_code == 200
        choice = r.json()["choices"][0]
        # The pattern repeats: without the config's stopwords it would write "HUMAN:" next.
        assert choice["finish_reason"] == "stop"
        assert "HUMAN" not in choice["text"] and choice["text"].strip()
