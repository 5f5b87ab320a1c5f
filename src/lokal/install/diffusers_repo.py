"""`hf://owner/repo` for a diffusers repo (model_index.json at its root, one folder per part).

The install gets what diffusers loads and nothing else: `model_index.json`, and for each
part it names, that folder's configs and tokenizer files and one copy of its weights —
`*.safetensors` (a sharded set with its index) in preference to a variant
(`*.fp16.safetensors`, then any other) and to pickled `*.bin`, which is taken only
where a part has no safetensors at all. Root-level single-file checkpoints, ONNX,
Flax and other exports in the same repo are left out. The files go into a folder named
after the repo, and the config says `backend: diffusers` with that folder as its model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from lokal.errors import BadRequest

#: Small files a part's folder needs besides its weights (configs, tokenizers, processors).
_SMALL = (".json", ".txt", ".model", ".tiktoken")
_WEIGHTS = re.compile(r"^(?P<stem>[^.]+)(?:-\d{5}-of-\d{5})?(?:\.(?P<variant>[A-Za-z0-9_]+))?\.(?P<ext>safetensors|bin)$")


def is_diffusers_repo(files: dict[str, dict[str, Any]]) -> bool:
    return "model_index.json" in files


def _weights(names: list[str]) -> list[str]:
    """The weight files of one part that diffusers would load."""
    groups: dict[tuple[str | None, str], list[str]] = {}
    for name in names:
        match = _WEIGHTS.match(name)
        if match is not None:
            groups.setdefault((match.group("variant"), match.group("ext")), []).append(name)
    for key in sorted(groups, key=lambda k: (k[1] != "safetensors", k[0] is not None, k[0] != "fp16", k[0] or "")):
        return sorted(groups[key])
    return []


def document(repo: str, files: dict[str, dict[str, Any]], fetch: Callable[[str], bytes],
             item: Callable[[str, str], dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The install document for a diffusers repo and its default name. fetch reads a file of
    the repo (model_index.json); item(path, filename) is the files entry for a repo path."""
    try:
        index = json.loads(fetch("model_index.json"))
    except ValueError:
        raise BadRequest(f"model_index.json of Hugging Face repo {repo} is not JSON", param="id") from None
    if not isinstance(index, dict):
        raise BadRequest(f"model_index.json of Hugging Face repo {repo} is not a JSON object", param="id")
    parts = [name for name, value in index.items()
             if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and value[0] is not None]
    default = re.sub(r"[^a-z0-9._-]+", "-", repo.rsplit("/", 1)[-1].lower()).strip("-.") or "diffusers-model"
    wanted = [item("model_index.json", f"{default}/model_index.json")]
    for part in parts:
        inside = [p.split("/", 1)[1] for p in files if p.startswith(part + "/") and p.count("/") == 1]
        small = [p for p in inside if p.endswith(_SMALL) and not p.endswith(".index.json")]
        weights = _weights(inside)
        shard = _WEIGHTS.match(weights[0]) if len(weights) > 1 else None
        if shard is not None:  # a sharded set: its index names the shards
            variant = f".{shard.group('variant')}" if shard.group("variant") else ""
            index_name = f"{shard.group('stem')}{variant}.{shard.group('ext')}.index.json"
            if index_name in inside:
                small.append(index_name)
        chosen = small + weights
        wanted.extend(item(f"{part}/{name}", f"{default}/{part}/{name}") for name in chosen)
    config = {"backend": "diffusers", "parameters": {"model": default}}
    return {"config_file": config, "files": wanted}, default
