"""LocalAI's gallery through lokal's install planner and config reader (issue #26).

Two corpora, the same checks:

* the real one, LocalAI's `gallery/index.yaml` and its base configs, read from
  `$LOKAL_GALLERY_CORPUS`, `/work/shared/corpora/localai-gallery` or the checkout's
  `../shared/corpora/localai-gallery` (nothing fetched is committed; the test is
  skipped, saying so, when none is there);
* a synthetic one written for these tests (tests/gallery/synthetic), with an entry for
  every backend and config-field variant the real gallery uses.

Every entry is planned with downloads stubbed, then read back by the config reader
(see tests/gallery/corpus.py), and the test prints accepted / refused (with the reason) /
served-as-task per backend. It asserts:

1. every entry of a backend lokal serves is accepted, unless it is of a kind lokal does
   not serve (refused at planning as such) or its own files do not hold what its config
   names (broken in LocalAI too);
2. no entry is accepted and then refused by the config reader;
3. no entry is served as a task its known_usecases do not name;
4. no llama.cpp entry has a behaviour-changing field lokal ignores (the KV-cache and
   flash-attention fields that issue #30 passes on aside).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from lokal.models.localai_config import usecase_tasks
from tests.gallery.corpus import Report, run_corpus

HERE = Path(__file__).resolve().parent
SYNTHETIC = HERE / "synthetic"
#: backends lokal has an engine for (LocalAI's names); "(none)" is a config that names none
SERVED = {"llama-cpp", "llama", "llama.cpp", "(none)", "whisper", "sentencetransformers",
          "sentence-transformers", "transformers", "rerankers", "bert-embeddings", "piper", "kokoro",
          "silero-vad"}
LLAMA = {"llama-cpp", "llama", "llama.cpp", "(none)"}


def real_corpus() -> Path | None:
    candidates = [os.environ.get("LOKAL_GALLERY_CORPUS"), "/work/shared/corpora/localai-gallery",
                  str(HERE.parents[2] / "shared" / "corpora" / "localai-gallery")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "index.yaml").is_file():
            return Path(candidate)
    return None


def check(report: Report) -> None:
    print("\n" + report.text())
    wrongly_refused = [o for o in report.outcomes if o.backend in SERVED and o.status == "refused"
                       and o.refusal != "not-servable" and o.consistent]
    assert not wrongly_refused, "\n".join(f"{o.name}: {o.reason}" for o in wrongly_refused)
    broken = [o for o in report.outcomes if o.status == "broken"]
    assert not broken, "\n".join(f"{o.name} ({o.backend}): {o.reason}" for o in broken)
    unnamed = []
    for o in report.outcomes:
        if o.status == "accepted" and o.usecases is not None:
            allowed, _ = usecase_tasks(list(o.usecases))
            if not set(o.tasks) <= allowed:
                unnamed.append(f"{o.name}: serves {o.tasks}, its config names {o.usecases}")
    assert not unnamed, "\n".join(unnamed)
    ignored = {o.name: [f for f in o.ignored] for o in report.outcomes
               if o.backend in LLAMA and o.status == "accepted" and o.ignored}
    assert not ignored, ignored
    pending = Counter(f for o in report.outcomes if o.status == "accepted" for f in o.pending)
    if pending:
        print(f"accepted, passed to the engine by issue #30's work: {dict(pending)}")


def test_synthetic_gallery(tmp_path: Path) -> None:
    report = run_corpus(SYNTHETIC, tmp_path)
    check(report)
    by_name = {o.name: o for o in report.outcomes}
    accepted = {n for n, o in by_name.items() if o.status == "accepted"}
    assert {"go-chat-1b", "go-grammar-1b", "go-parallel-1b", "go-mixed-1b", "pythonic-1b", "quoted-1b",
            "native-q4", "native-q8", "native-dflash", "ngram-1b", "bare-gguf", "embed-gguf",
            "chat-and-embed", "rerank-gguf", "whisper-tiny", "minilm", "e5-openvino", "ms-marco"} <= accepted
    assert by_name["whisper-tiny"].tasks == ("transcribe",)
    assert by_name["rerank-gguf"].tasks == ("rerank",)
    assert by_name["embed-gguf"].tasks == ("embed",)
    assert set(by_name["chat-and-embed"].tasks) == {"chat", "complete", "embed"}
    assert by_name["minilm"].tasks == ("embed", "rerank")  # no known_usecases: what the model can do
    assert by_name["e5-openvino"].tasks == ("embed",)  # its known_usecases name embeddings only
    not_servable = {n for n, o in by_name.items() if o.refusal == "not-servable"}
    assert not_servable == {"vision-embedder", "tts-gguf", "router-score", "whisper-vad", "causal-openvino",
                            "colbert", "vllm-model"}
    assert set(by_name["image-model"].tasks) == {"image", "image_edit"}
    # Speech engines: a Piper voice speaks, Silero detects voice activity.
    assert by_name["voice-en"].tasks == ("speak",) and by_name["vad-silero"].tasks == ("vad",)
    assert "text-to-speech" in by_name["tts-gguf"].reason
    assert "vllm" in by_name["vllm-model"].reason
    # Entries whose own files do not hold their model: refused, for that reason.
    assert by_name["no-model-entry"].status == "refused" and not by_name["no-model-entry"].consistent
    assert by_name["mismatched-files"].status == "refused" and not by_name["mismatched-files"].consistent
    # The KV-cache fields are used (passed to the engine), not ignored.
    assert by_name["native-dflash"].ignored == () and by_name["native-dflash"].pending == ()


def test_real_localai_gallery(tmp_path: Path) -> None:
    corpus = real_corpus()
    if corpus is None:
        pytest.skip("LocalAI's gallery is not here: set LOKAL_GALLERY_CORPUS to a folder holding its "
                    "gallery/index.yaml and base configs (nothing fetched is committed)")
    report = run_corpus(corpus, tmp_path)
    commit = corpus / "COMMIT"
    if commit.is_file():
        print(f"\nLocalAI gallery at commit {commit.read_text().strip()}")
    check(report)
