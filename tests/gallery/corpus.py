"""Run a LocalAI-format gallery through lokal's install planner and config reader, offline.

A corpus is a folder with the gallery's `index.yaml` and the base configs its entries
name (`url: github:OWNER/REPO/gallery/NAME.yaml@BRANCH` is read as `NAME.yaml` from
the folder). Every entry is planned by lokal's `InstallManager` with the network
stubbed: base configs come from the folder, a Hugging Face repo lists a typical
file set, no HEAD request is made, and "downloading" writes a stub of the kind the
file name and the config say (a GGUF header, a whisper.cpp GGML header, a Hugging Face
folder's config). Then the config reader scans the models folder as `lokal serve`
would. Each entry ends up one of:

* refused at planning (with the reason the user would read),
* accepted and then broken at scan (the config reader's reason): never wanted,
* accepted and servable, with the tasks lokal would serve it for.
"""

from __future__ import annotations

import json
import struct
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lokal.errors import LokalError
from lokal.install.gallery import Entry, Galleries, GallerySource
from lokal.install.jobs import Job
from lokal.install.manager import InstallManager
from lokal.install.planning import Planner, deep_merge
from lokal.install.records import write_atomic
from lokal.transfer.netguard import OutboundPolicy
from tests.fakeengine import write_gguf

_RAW_PREFIX = "https://raw.githubusercontent.com/"


def _public_resolver(host: str, port: int) -> list[str]:
    return ["93.184.216.34"]  # a public address: no DNS in tests, every host "resolves"


class CorpusPolicy(OutboundPolicy):
    """Serves base configs from the corpus folder and a made-up Hugging Face listing."""

    corpus: Path | None = None

    def fetch_bytes(self, url: str, *, limit: int = 8 << 20, what: str = "file") -> bytes:
        assert self.corpus is not None
        if url.startswith(_RAW_PREFIX):
            name = url.rsplit("/", 1)[-1]
            path = self.corpus / name
            if path.is_file():
                return path.read_bytes()
        if "/api/models/" in url and "/tree/" in url:
            repo = url.split("/api/models/", 1)[1].split("/tree/", 1)[0]
            return json.dumps(hf_listing(repo)).encode()
        if url.endswith("/model_index.json"):  # a diffusers repo's index (see hf_listing)
            return json.dumps(DIFFUSERS_INDEX).encode()
        from lokal.transfer.netguard import FetchFailed

        raise FetchFailed(f"fetching {what} {url} failed: HTTP 404 (not in the corpus)")


#: the model_index.json of a made-up diffusers repo (one part, with its config and weights)
DIFFUSERS_INDEX = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}


def hf_listing(repo: str) -> list[dict[str, Any]]:
    """What a Hugging Face repo of a sentence-transformers / transformers model lists, with
    a diffusers pipeline's index and part beside it (only diffusers entries read those)."""
    files = ["config.json", "modules.json", "model.safetensors", "tokenizer.json",
             "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
             "sentence_bert_config.json", "1_Pooling/config.json", "README.md", ".gitattributes",
             "onnx/model.onnx", "pytorch_model.bin", "model_index.json", "unet/config.json",
             "unet/diffusion_pytorch_model.safetensors"]
    return [{"type": "file", "path": p, "size": 1000} for p in files]


class CorpusPlanner(Planner):
    def _remote_size(self, url: str) -> int | None:
        return None


class CachedGalleries(Galleries):
    """The index read once for the whole run (it is large; lokal reads it per request)."""

    def __init__(self, sources: list[GallerySource], policy: OutboundPolicy) -> None:
        super().__init__(sources, policy)
        self._cache: dict[str | None, list[Entry]] = {}

    def entries(self, gallery: str | None = None) -> list[Entry]:
        if gallery not in self._cache:
            self._cache[gallery] = super().entries(gallery)
        return self._cache[gallery]


@dataclass
class Outcome:
    name: str
    backend: str
    status: str  # refused, broken, accepted
    reason: str = ""
    tasks: tuple[str, ...] = ()
    usecases: tuple[str, ...] | None = None
    ignored: tuple[str, ...] = ()
    #: refused: "not-servable" (a kind lokal does not serve, said at planning) or "other"
    refusal: str = ""
    #: whether the entry's own files hold what its config names (False: broken in LocalAI too)
    consistent: bool = True
    #: fields accepted and left to issue #30 (KV cache, flash attention)
    pending: tuple[str, ...] = ()


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)

    def by_backend(self) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = defaultdict(Counter)
        for o in self.outcomes:
            out[o.backend][o.status] += 1
        return dict(out)

    def text(self) -> str:
        lines = []
        totals = Counter(o.status for o in self.outcomes)
        lines.append(f"{len(self.outcomes)} entries: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())))
        for backend, counts in sorted(self.by_backend().items(), key=lambda kv: -sum(kv[1].values())):
            tasks = Counter(",".join(o.tasks) for o in self.outcomes if o.backend == backend and o.status == "accepted")
            reasons = Counter(o.reason[:110] for o in self.outcomes
                              if o.backend == backend and o.status != "accepted")
            lines.append(f"  {backend}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                         + (f"; served as {dict(tasks)}" if tasks else ""))
            for reason, count in reasons.most_common(3):
                lines.append(f"      {count} x {reason}")
        return "\n".join(lines)


def _entry_config(corpus: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """The entry's config as its base and overrides make it (read leniently: for grouping
    and for checking the entry itself)."""
    config: dict[str, Any] = {}
    url = entry.get("url")
    if isinstance(url, str) and "/" in url:
        path = corpus / url.rsplit("/", 1)[-1].split("@")[0]
        try:
            from lokal.install.gallery import load_yaml

            base = load_yaml(path.read_bytes(), "base") or {}
            raw = base.get("config_file") or {}
            config = load_yaml(raw.encode(), "config_file") if isinstance(raw, str) else dict(raw)
        except (OSError, LokalError):
            text = path.read_text() if path.is_file() else ""
            for line in text.splitlines():
                if line.strip().startswith("backend:"):
                    config = {"backend": line.split(":", 1)[1].strip().strip("\"'")}
    return deep_merge(config or {}, entry.get("overrides") or {})


def consistent(config: dict[str, Any], entry: dict[str, Any]) -> bool:
    """Whether the files an entry lists hold the model (and projector) its config names."""
    names = {str(f.get("filename")) for f in entry.get("files") or [] if isinstance(f, dict)}
    model = (config.get("parameters") or {}).get("model")
    if not isinstance(model, str) or not model:
        return False
    backend = str(config.get("backend") or "").lower()
    hf_named = backend in ("sentencetransformers", "sentence-transformers", "transformers", "rerankers")
    if model not in names and "://" not in model and not hf_named:
        return False
    mmproj = config.get("mmproj")
    return not (isinstance(mmproj, str) and mmproj not in names and "://" not in mmproj)


_WHISPER_GGML = struct.pack("<I", 0x67676D6C)


def write_stub(path: Path, config: dict[str, Any]) -> None:
    """A stand-in for a downloaded file, of the kind its name and the config say."""
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name.lower()
    usecases = [str(u).lower() for u in (config.get("known_usecases") or [])]
    if name.endswith(".gguf"):
        if "mmproj" in name or name == str(config.get("mmproj", "")).rsplit("/", 1)[-1].lower():
            write_gguf(path, architecture="clip", extra={"general.type": "mmproj",
                                                         "clip.has_vision_encoder": 1})
        elif "chat" in usecases or "completion" in usecases or config.get("mmproj"):
            write_gguf(path, chat_template="{% for m in messages %}{{ m.content }}{% endfor %}")
        elif any(u in usecases for u in ("rerank", "reranking")) or config.get("reranking"):
            write_gguf(path, architecture="bert", extra={"bert.pooling_type": 4})
        elif "embeddings" in usecases or config.get("embeddings"):
            write_gguf(path, architecture="bert", extra={"bert.pooling_type": 1})
        else:
            write_gguf(path, chat_template="{% for m in messages %}{{ m.content }}{% endfor %}")
    elif name.endswith(".bin") and str(config.get("backend", "")).lower() == "whisper":
        # whisper.cpp's header: vocabulary, audio context, width, heads, layers (x2), mel bands
        path.write_bytes(_WHISPER_GGML + struct.pack("<11i", 51865, 1500, 384, 6, 4, 448, 384, 6, 4, 80, 1))
    elif name.endswith(".bin") and str(config.get("backend", "llama-cpp")).lower() in ("llama-cpp", "llama"):
        write_gguf(path, chat_template="{% for m in messages %}{{ m.content }}{% endfor %}")  # GGUF named .bin
    elif name.endswith(".safetensors"):  # a safetensors file with one small tensor
        header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
        path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    elif name == "model_index.json":
        path.write_text(json.dumps(DIFFUSERS_INDEX))
    elif name == "config.json" and path.parent.name == "unet":
        path.write_text(json.dumps({"_class_name": "UNet2DConditionModel", "sample_size": 64}))
    elif name == "config.json":
        path.write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    elif name == "modules.json":
        path.write_text("[]")
    elif name.endswith(".onnx.json"):  # a Piper voice's config
        path.write_text(json.dumps({"phoneme_id_map": {"a": [1]}, "audio": {"sample_rate": 22050},
                                    "espeak": {"voice": "en-us"}}))
    else:
        path.write_bytes(b"stub")


def run_corpus(corpus: Path, work: Path, *, names: list[str] | None = None) -> Report:
    """Plan and scan every entry of the corpus (or those named), each in a folder of its own."""
    import lokal.models.catalog as model_catalog

    index = yaml.safe_load((corpus / "index.yaml").read_text())
    policy = CorpusPolicy(resolver=_public_resolver)
    object.__setattr__(policy, "corpus", corpus)
    source = GallerySource("localai", (corpus / "index.yaml").resolve().as_uri())
    galleries = CachedGalleries([source], policy)
    report = Report()
    for number, raw in enumerate(index):
        name = str(raw.get("name"))
        if names is not None and name not in names:
            continue
        models = work / f"m{number}"
        models.mkdir(parents=True)
        manager = InstallManager(models, policy, [source], allow_file=True)
        manager.planner = CorpusPlanner(models, policy, galleries, allow_file=True)
        try:
            merged = _entry_config(corpus, raw)
        except yaml.YAMLError:
            merged = {}
        backend = str(merged.get("backend") or "(none)")
        try:
            plan = manager._plan(Job(f"localai@{name}"), f"localai@{name}", None, False, {}, [])
        except LokalError as exc:
            kind = "not-servable" if type(exc).__name__ == "NotServable" else "other"
            report.outcomes.append(Outcome(name, backend, "refused", exc.message, refusal=kind,
                                           consistent=consistent(merged, raw)))
            continue
        for spec in plan.files:
            write_stub(spec.target, plan.config)
        _commit(manager, plan)
        entries = [e for e in model_catalog.scan_models(models) if e.name == plan.name]
        usecases = plan.config.get("known_usecases")
        ignored = tuple(_ignored_fields(plan.config))
        pending = tuple(_pending_fields(plan.config))
        if not entries:
            report.outcomes.append(Outcome(name, backend, "broken", "not found at scan", ignored=ignored))
            continue
        entry = entries[0]
        if entry.error is not None:
            report.outcomes.append(Outcome(name, backend, "broken", entry.error, ignored=ignored))
            continue
        report.outcomes.append(Outcome(name, backend, "accepted", tasks=tuple(sorted(entry.tasks)),
                                       usecases=tuple(usecases) if isinstance(usecases, list) else None,
                                       ignored=ignored, pending=pending))
    return report


def _commit(manager: InstallManager, plan: Any) -> None:
    """The install's commit without the downloader (the stubs are in place already)."""
    for template, content in plan.templates.items():
        write_atomic(manager.models_path / template, content.encode())
    text = yaml.safe_dump(plan.config, sort_keys=False, allow_unicode=True)
    write_atomic(plan.config_path, text.encode())


def _pending_fields(config: dict[str, Any]) -> list[str]:
    try:
        from lokal.models.localai_config import pending_fields
    except ImportError:
        return []
    return pending_fields(config)


def _ignored_fields(config: dict[str, Any]) -> list[str]:
    """Config fields lokal neither uses nor lists as cosmetic (empty before lokal knew)."""
    try:
        from lokal.models.localai_config import ignored_fields
    except ImportError:
        return ["(lokal has no list of the fields it uses)"]
    return ignored_fields(config)

