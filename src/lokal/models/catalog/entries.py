"""What the catalog holds for a model name: one of three types, each whole.

- `BrokenEntry`: a name that cannot be served, with the reason (a config that does not
  validate, a path that leaves the models folder, a file that is not a model ...).
- `PendingEntry`: a config whose files are named and confined but not all in the
  folder yet (LocalAI's `download_files`, a model given by URL): it becomes a
  `ModelEntry` (or a `BrokenEntry`) when the catalog has fetched them and read them.
- `ModelEntry`: a servable model: its config, its file, what the file is and the tasks
  it serves, decided once (`describing.describe`).

The type is the entry's readiness (`state`: broken, pending, ready); nothing is filled
in later. All three say `name`, `source`, `ok`, `error`, `tasks` and `state`, so lists
of entries read the same whatever is in them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from lokal import templates
from lokal.formats.modelfile import ModelFile
from lokal.models import download
from lokal.models.config import ModelConfig
from lokal.tasks import Task

State = Literal["broken", "pending", "ready"]


@dataclass(frozen=True)
class ChatTemplates:
    """LocalAI templates resolved and parsed, ready to render."""

    chat: templates.Template | None = None
    chat_message: templates.Template | None = None
    completion: templates.Template | None = None
    function: templates.Template | None = None

    @property
    def renders_chat(self) -> bool:
        return self.chat is not None or self.chat_message is not None


@dataclass(frozen=True)
class BrokenEntry:
    """A model name that cannot be served, and why. A config that validated is kept (its
    fields are shown beside the reason), and so is the model path it named, if any."""

    name: str
    source: Path | None  # the YAML file, or the model file itself for loose files
    reason: str
    config: ModelConfig | None = None
    model_path: Path | None = None

    state: ClassVar[State] = "broken"
    ok: ClassVar[bool] = False
    tasks: ClassVar[frozenset[Task]] = frozenset()

    @property
    def error(self) -> str:
        return self.reason


@dataclass(frozen=True)
class PendingEntry:
    """A config whose files are not all in the models folder yet."""

    name: str
    source: Path
    config: ModelConfig
    model_path: Path
    downloads: tuple[download.Download, ...]
    draft_path: Path | None = None  # a draft model for speculative decoding, in the folder
    mmproj_path: Path | None = None  # the multimodal projector the config names
    voices_path: Path | None = None  # a speech model's voice pack (Kokoro: config `tts.voices`)

    state: ClassVar[State] = "pending"
    ok: ClassVar[bool] = True
    error: ClassVar[None] = None
    tasks: ClassVar[frozenset[Task]] = frozenset()  # known once its file is in

    @property
    def pending_downloads(self) -> list[download.Download]:
        """Files this model needs that are not in the models folder yet."""
        return [d for d in self.downloads if not d.path.exists()]


@dataclass(frozen=True)
class ModelEntry:
    """A servable model: its config, its file, and what it can do (read once)."""

    name: str
    source: Path
    config: ModelConfig
    model_path: Path
    file: ModelFile
    tasks: frozenset[Task]
    templates: ChatTemplates = field(default_factory=ChatTemplates)
    rerank_by: Literal["cross-encoder", "cosine"] | None = None  # how a rerank runs
    draft_path: Path | None = None
    draft_file: ModelFile | None = None
    # Vision: the projector (config `mmproj:`, or a loose mmproj*.gguf paired by name),
    # set only when it was checked against the model (the model then takes images).
    mmproj_path: Path | None = None
    native_tools: bool = False  # the GGUF's own chat template knows tools
    voices_path: Path | None = None
    downloads: tuple[download.Download, ...] = ()

    state: ClassVar[State] = "ready"
    ok: ClassVar[bool] = True
    error: ClassVar[None] = None

    @property
    def vision(self) -> bool:
        return self.mmproj_path is not None

    @property
    def pending_downloads(self) -> list[download.Download]:
        return []

    @property
    def tool_format(self) -> Literal["native", "grammar"]:
        """How this model calls tools: its own format through its chat template
        ("native": tools passed to the template, the engine parses the calls), or
        lokal's JSON envelope held by a grammar. LocalAI templates always mean the
        grammar: they have no place for tools."""
        if self.templates.renders_chat:
            return "grammar"
        mode = self.config.function_calling
        if mode == "auto":
            return "native" if self.native_tools else "grammar"
        return mode


#: What the catalog holds for a name.
Entry = ModelEntry | PendingEntry | BrokenEntry
