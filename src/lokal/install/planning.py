"""Planning an install (in a thread, before any byte is downloaded): the reference read
into LocalAI's gallery-model document (a gallery entry, a config URL, a Hugging Face repo or
file, a plain URL), the config merged with the caller's overrides, every file named, confined
and checked against the outbound policy, and the resulting config checked as untrusted content.
The `Plan` it makes is what `manager` claims, checks for conflicts and downloads."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from lokal.errors import BadRequest, LokalError, NotFound
from lokal.install import diffusers_repo, localai_gallery, references
from lokal.install.gallery import Entry, Galleries, load_yaml, read_source
from lokal.models.config import BACKEND_ALIASES, check_config
from lokal.transfer.netguard import OutboundPolicy, URLRefused
from lokal.transfer.paths import check_model_name, check_relative, confine
from lokal.units import format_size

#: Config keys gallery content may not set: options that make lokal fetch or execute
#: something on its own. (A future remote-image option must be listed here.)
FORBIDDEN_KEYS = frozenset({
    "download_files_on_start", "allow_remote_images", "fetch_remote_images", "remote_images",
    "image_url_fetch", "external_backend", "backend_uri", "backend_path", "grpc", "pre_load_hook",
})
#: Config fields that name files in the models folder.
FILE_FIELDS = ("mmproj", "draft_model", "tokenizer")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.I)
CONFIG_LIMIT = 1 << 20


@dataclass
class FileSpec:
    filename: str
    url: str
    sha256: str | None
    size: int | None
    target: Path
    skip: bool = False  # already in place (verified or shared)


@dataclass
class Plan:
    name: str
    config: dict[str, Any]
    config_path: Path
    files: list[FileSpec]
    templates: dict[str, str]  # relative .tmpl name -> content
    source: str
    replace: bool = False


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def hf_meta(info: dict[str, Any]) -> dict[str, Any]:
    """sha256 and size of a file in a hub listing (LFS files carry their sha256)."""
    lfs = info.get("lfs") if isinstance(info.get("lfs"), dict) else {}
    sha = lfs.get("sha256") or lfs.get("oid")
    size = lfs.get("size") or info.get("size")
    out: dict[str, Any] = {}
    if isinstance(sha, str) and _SHA.match(sha):
        out["sha256"] = sha
    if isinstance(size, int) and not isinstance(size, bool):
        out["size"] = size
    return out


class Planner:
    """Turns a reference into a `Plan` for one models folder (no claims, no conflicts: the
    manager checks those under its lock)."""

    def __init__(self, models_path: Path, policy: OutboundPolicy, galleries: Galleries, *,
                 allow_file: bool = False) -> None:
        self.models_path = models_path
        self.policy = policy
        self.galleries = galleries
        self.allow_file = allow_file

    def plan(self, ref_text: str, name: str | None, overrides: dict[str, Any],
             extra_files: list[dict[str, Any]], variant: str | None = None) -> Plan:
        ref = references.parse(ref_text, allow_file=self.allow_file)
        doc, default_name = self._document(ref, variant)
        name = check_model_name(name if name is not None else default_name)
        config, file_items, prompt_templates = self._split(doc, ref.text)
        config = deep_merge(config, overrides)
        file_items = file_items + list(extra_files)
        config["name"] = name
        file_items = self._localai_rules(config, file_items, name)
        files = self._file_specs(file_items, config)
        templates = self._templates(prompt_templates)
        self._check_config(config, files, templates)
        config_path = confine(self.models_path, f"{name}.yaml", what="config name", write=True,
                              allow_config=True)
        return Plan(name=name, config=config, config_path=config_path, files=files,
                    templates=templates, source=ref.text)
    def _localai_rules(self, config: dict[str, Any], items: list[Any], name: str) -> list[Any]:
        """LocalAI's gallery as lokal plans it (see `localai_gallery`): refused with the reason
        before any download, or a Hugging Face repo's files added where the config names one."""
        why = localai_gallery.refusal(config, f"model {name!r}")
        if why is not None:
            raise localai_gallery.NotServable(f"cannot install {name!r}: {why}")
        repo = localai_gallery.diffusers_repo_of(config, items)
        if repo is not None:  # LocalAI's diffusers backend names a hub repo: its folder is installed
            files = self._hf_listing(repo)
            if not diffusers_repo.is_diffusers_repo(files):
                raise localai_gallery.NotServable(
                    f"cannot install {name!r}: Hugging Face repo {repo} has no model_index.json (lokal "
                    "runs diffusers pipelines from a diffusers folder)")
            document, _ = diffusers_repo.document(
                repo, files, lambda path: self.policy.fetch_bytes(
                    self.policy.map(f"huggingface://{repo}/{path}"), what=f"{path} of {repo}"),
                lambda path, filename: {"filename": f"{name}/{path}", "uri": f"huggingface://{repo}/{path}",
                                        **hf_meta(files[path])})
            config["parameters"] = dict(config.get("parameters") or {}, model=name)
            return items + document["files"]
        repo = localai_gallery.hf_repo(config, items)
        if repo is None:
            return items
        repo_items = localai_gallery.repo_files(repo, self._hf_listing(repo), name, hf_meta)
        config["parameters"] = dict(config.get("parameters") or {}, model=name)
        return items + repo_items

    def _document(self, ref: references.Reference, variant: str | None = None) -> tuple[dict[str, Any], str]:
        """The install document (LocalAI gallery-model form) and the default name."""
        if ref.kind == "gallery":
            entry = self.galleries.find(ref.name or "", ref.gallery)
            chosen = localai_gallery.choose_variant(entry.raw, variant, f"gallery entry {entry.name!r}")
            if chosen is not None:
                build = self.galleries.find(chosen, entry.gallery.name)
                if build.raw.get("variants"):
                    raise BadRequest(f"variant {chosen!r} of {entry.name!r} declares variants of its own; "
                                     "the gallery is inconsistent", param="variant")
                return self._entry_document(build), entry.name
            return self._entry_document(entry), entry.name
        if variant is not None:
            raise BadRequest("a variant can be named only for a gallery entry", param="variant")
        if ref.kind == "config":
            assert ref.url is not None
            what = f"config {ref.url}"
            raw = load_yaml(read_source(self.policy, ref.url, what=what, allow_file=self.allow_file,
                                        limit=CONFIG_LIMIT), what)
            if not isinstance(raw, dict):
                raise BadRequest(f"{what} is not a YAML mapping", param="url")
            stem = unquote(urlsplit(ref.url).path).rsplit("/", 1)[-1].rsplit(".", 1)[0]
            default = raw.get("name") if isinstance(raw.get("name"), str) else stem
            return raw, str(default)
        if ref.kind == "hf_repo":
            return self._hf_repo_document(ref)
        if ref.kind in ("hf_file", "url"):
            uri = ref.text if ref.kind == "hf_file" else str(ref.url)
            filename = unquote(urlsplit(self.policy.map(uri)).path).rsplit("/", 1)[-1]
            stem = filename[:-5] if filename.lower().endswith(".gguf") else filename
            item: dict[str, Any] = {"filename": filename, "uri": uri}
            if ref.kind == "hf_file":  # the hub's hash and size, when it lists them
                try:
                    info = self._hf_listing(str(ref.repo)).get(str(ref.file))
                except LokalError:
                    info = None
                if info is not None:
                    item.update(hf_meta(info))
            return {"config_file": {"parameters": {"model": filename}}, "files": [item]}, stem
        raise BadRequest(f"cannot install {ref.text!r}", param="id")

    def _hf_repo_document(self, ref: references.Reference) -> tuple[dict[str, Any], str]:
        """`hf://owner/repo[:QUANT]`: the GGUF carrying QUANT (default Q4_K_M, else the first
        GGUF), all parts of a split GGUF, and a matching mmproj when the repo has one."""
        repo = str(ref.repo)
        files = self._hf_listing(repo)
        ggufs = sorted(p for p in files if p.lower().endswith(".gguf")
                       and not p.rsplit("/", 1)[-1].lower().startswith("mmproj"))
        if not ggufs and diffusers_repo.is_diffusers_repo(files):  # an image model's folder
            return diffusers_repo.document(
                repo, files, lambda path: self.policy.fetch_bytes(
                    self.policy.map(f"huggingface://{repo}/{path}"), what=f"{path} of {repo}"),
                lambda path, filename: {"filename": filename, "uri": f"huggingface://{repo}/{path}",
                                        **hf_meta(files[path])})
        if not ggufs:
            raise NotFound(f"Hugging Face repo {repo} has no GGUF files", param="id")
        quant = (ref.quant or references.DEFAULT_QUANT).lower()
        matching = [p for p in ggufs if quant in p.rsplit("/", 1)[-1].lower()]
        if not matching and ref.quant:
            raise NotFound(f"no GGUF in {repo} carries {ref.quant!r}; it has: "
                           + ", ".join(p.rsplit("/", 1)[-1] for p in ggufs), param="id")
        chosen = (matching or ggufs)[0]
        parts = [chosen]
        split = _SPLIT.search(chosen)
        if split:
            prefix = chosen[: split.start()]
            parts = [p for p in ggufs if p.startswith(prefix) and _SPLIT.search(p)
                     and _SPLIT.search(p).group(2) == split.group(2)]  # type: ignore[union-attr]
            chosen = parts[0]
        projectors = sorted(p for p in files if p.rsplit("/", 1)[-1].lower().startswith("mmproj")
                            and p.lower().endswith(".gguf"))
        projector = next((p for p in projectors if quant in p.lower()), None) \
            or next((p for p in projectors if "f16" in p.lower()), None) \
            or (projectors[0] if projectors else None)

        def item(path: str) -> dict[str, Any]:
            return {"filename": path.rsplit("/", 1)[-1], "uri": f"huggingface://{repo}/{path}",
                    **hf_meta(files[path])}

        config: dict[str, Any] = {"backend": "llama-cpp",
                                  "parameters": {"model": chosen.rsplit("/", 1)[-1]}}
        wanted = [item(p) for p in parts]
        if projector is not None:
            config["mmproj"] = projector.rsplit("/", 1)[-1]
            wanted.append(item(projector))
        default = repo.rsplit("/", 1)[-1].lower()
        default = re.sub(r"[-_.]gguf$", "", default)
        return {"config_file": config, "files": wanted}, default

    def _hf_listing(self, repo: str) -> dict[str, dict[str, Any]]:
        """The files of a Hugging Face repo (path -> the hub's entry), from its tree API."""
        url = f"{self.policy.hf_endpoint}/api/models/{repo}/tree/main?recursive=true"
        what = f"the file list of Hugging Face repo {repo}"
        try:
            listing = json.loads(self.policy.fetch_bytes(url, what=what))
        except ValueError:
            raise BadRequest(f"{what} is not JSON", param="id") from None
        except LokalError as exc:
            if "HTTP 404" in exc.message or "HTTP 401" in exc.message:
                raise NotFound(f"no Hugging Face repo {repo!r} (or it is private: set HF_TOKEN)",
                               param="id") from None
            raise
        if not isinstance(listing, list):
            raise BadRequest(f"{what} is not a list", param="id")
        return {str(i["path"]): i for i in listing
                if isinstance(i, dict) and i.get("type", "file") == "file" and isinstance(i.get("path"), str)}

    def _entry_document(self, entry: Entry) -> dict[str, Any]:
        raw = entry.raw
        what = f"gallery {entry.gallery.name!r} entry {entry.name!r}"
        if isinstance(raw.get("url"), str) and raw["url"].strip():
            url = raw["url"].strip()
            base = load_yaml(read_source(self.policy, url, what=f"{what} base config {url}",
                                         allow_file=entry.gallery.url.startswith(("file:", "builtin")),
                                         limit=CONFIG_LIMIT), f"{what} base config {url}")
            if base is None:
                base = {}
            if not isinstance(base, dict):
                raise BadRequest(f"{what}: its base config is not a YAML mapping", param="id")
        else:
            base = {}
        doc = dict(base)
        if "config_file" in raw:
            doc["config_file"] = raw["config_file"]
        config, files, prompts = self._split(doc, what)
        if isinstance(raw.get("overrides"), dict):
            config = deep_merge(config, raw["overrides"])
        elif raw.get("overrides") is not None:
            raise BadRequest(f"{what}: overrides must be a mapping", param="id")
        entry_files = raw.get("files") or []
        if not isinstance(entry_files, list):
            raise BadRequest(f"{what}: files must be a list", param="id")
        return {"config_file": config, "files": files + entry_files, "prompt_templates": prompts}

    def _split(self, doc: dict[str, Any], what: str) -> tuple[dict[str, Any], list[Any], list[Any]]:
        """(config, files, prompt_templates) of a LocalAI gallery-model document, or of a
        plain model config (its download_files become the files)."""
        if "config_file" in doc:
            config = doc["config_file"]
            if isinstance(config, str):
                config = load_yaml(config.encode(), f"{what}: config_file")
            config = config or {}
            files = doc.get("files") or []
            prompts = doc.get("prompt_templates") or []
        else:
            config = {k: v for k, v in doc.items()
                      if k not in ("files", "prompt_templates", "description", "license", "urls",
                                   "icon", "tags")}
            files = list(doc.get("files") or [])
            prompts = doc.get("prompt_templates") or []
        if not isinstance(config, dict):
            raise BadRequest(f"{what}: config_file must be a mapping of config fields", param="id")
        if not isinstance(files, list) or not isinstance(prompts, list):
            raise BadRequest(f"{what}: files and prompt_templates must be lists", param="id")
        config = copy.deepcopy(config)
        downloads = config.pop("download_files", None) or []
        if not isinstance(downloads, list):
            raise BadRequest(f"{what}: download_files must be a list", param="id")
        return config, list(files) + downloads, prompts

    def _file_specs(self, items: list[Any], config: dict[str, Any]) -> list[FileSpec]:
        params = config.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise BadRequest("parameters must be a mapping", param="overrides")
        model = (params or {}).get("model")
        if isinstance(model, str) and ("://" in model or model.startswith("github:")):
            filename = unquote(urlsplit(self.policy.map(model)).path).rsplit("/", 1)[-1]
            items = items + [{"filename": filename, "uri": model}]
            config["parameters"] = dict(params or {}, model=filename)
        specs: dict[str, FileSpec] = {}
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("filename"), str) \
                    or not isinstance(item.get("uri"), str):
                raise BadRequest(f"each file needs a filename and a uri: {str(item)[:200]}", param="files")
            filename = item["filename"].strip()
            target = confine(self.models_path, filename, write=True)
            url = self.policy.map(item["uri"])
            self.policy.check(url)  # scheme, host, address rules now, before any byte
            sha = item.get("sha256")
            if isinstance(sha, int) and not isinstance(sha, bool):
                sha = str(sha).zfill(64)
            if sha is not None and sha != "":
                sha = str(sha).strip().lower()
                if not _SHA.match(sha):
                    raise BadRequest(f"{filename}: sha256 must be 64 hexadecimal digits", param="files")
            else:
                sha = None
            size = item.get("size")
            if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
                raise BadRequest(f"{filename}: size must be a number of bytes", param="files")
            if filename in specs:
                if specs[filename].url != url:
                    raise BadRequest(f"{filename} is named twice with different URIs", param="files")
                continue
            specs[filename] = FileSpec(filename, url, sha, size, target)
        for spec in specs.values():
            if spec.size is None:
                spec.size = self._remote_size(spec.url)
            cap = self.policy.max_bytes
            if cap is not None and spec.size is not None and spec.size > cap:
                raise URLRefused(spec.url, f"the file is {format_size(spec.size)}, over the size cap of "
                                           f"{format_size(cap)} (MAX_DOWNLOAD_SIZE)")
        return list(specs.values())

    def _remote_size(self, url: str) -> int | None:
        """The size a HEAD request announces (best effort; the download checks again)."""
        try:
            with self.policy.client() as client, self.policy.open(client, url, method="HEAD") as response:
                length = response.headers.get("content-length")
                if response.status_code == 200 and length and length.isdigit():
                    return int(length)
        except URLRefused:
            raise
        except Exception:  # noqa: BLE001 - only an estimate; the download reports real errors
            return None
        return None

    def _templates(self, items: list[Any]) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str) \
                    or not isinstance(item.get("content"), str):
                raise BadRequest("each prompt template needs a name and a content", param="id")
            filename = item["name"].strip()
            filename = filename if filename.endswith(".tmpl") else f"{filename}.tmpl"
            confine(self.models_path, filename, what="template name", write=True)
            out[filename] = item["content"]
        return out

    def _check_config(self, config: dict[str, Any], files: list[FileSpec],
                      templates: dict[str, str]) -> None:
        """Untrusted config content: no fetching/executing options, files confined and known."""
        bad = sorted(FORBIDDEN_KEYS & set(config))
        if bad:
            raise BadRequest(f"the config sets {', '.join(bad)}, which an installed config may not "
                             "set (it would make lokal fetch or run something on its own)", param="id")
        backend = config.get("backend")
        if backend is not None and str(backend).strip().lower() not in BACKEND_ALIASES:
            raise BadRequest(f"backend {backend!r} is not served by lokal (known: "
                             f"{', '.join(sorted(BACKEND_ALIASES))})", param="id")
        names = {spec.filename for spec in files} | set(templates)
        model = (config.get("parameters") or {}).get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("the config names no model file (parameters.model)", param="id")
        for field_name, value in [("parameters.model", model)] + [
                (f, config.get(f)) for f in FILE_FIELDS if isinstance(config.get(f), str)]:
            check_relative(value, what=field_name)
            target = confine(self.models_path, value, what=field_name, write=True)
            if value not in names and not any(n.startswith(value.rstrip("/") + "/") for n in names) \
                    and not target.exists():
                raise BadRequest(f"{field_name} names {value!r}, which is neither among the files to "
                                 "download nor in the models folder", param="id")
        check_config(config, refusal="the resulting config is not valid", param="overrides")

