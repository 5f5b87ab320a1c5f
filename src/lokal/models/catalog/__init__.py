"""The catalog: the models folder as named entries, and what each model can do.

- `entries`: the three kinds of entry (`ModelEntry`, `PendingEntry`, `BrokenEntry`);
- `reading`: a config into an entry (validated, paths confined, templates read);
- `scanning`: the folder into entries (configs, loose files, projector pairing);
- `describing`: a model's file read once into what it can do;
- `folder`: the `Catalog` of one folder (names, aliases, first-use downloads).

The config schema itself is `lokal.models.config`.
"""

from lokal.models.catalog.describing import abilities, describe, template_supports_tools
from lokal.models.catalog.entries import BrokenEntry, ChatTemplates, Entry, ModelEntry, PendingEntry
from lokal.models.catalog.folder import Catalog, resolve_alias
from lokal.models.catalog.reading import confine, load_templates
from lokal.models.catalog.scanning import MODEL_SUFFIXES, read_config_file, scan_models

__all__ = ["BrokenEntry", "Catalog", "ChatTemplates", "Entry", "MODEL_SUFFIXES", "ModelEntry", "PendingEntry",
           "abilities", "confine", "describe", "load_templates", "read_config_file", "resolve_alias",
           "scan_models", "template_supports_tools"]
