"""Ollama's blobs and /api/create: a model made from uploaded files (Open WebUI's "upload a
GGUF"), or from another model with its own system prompt and parameters.

* `HEAD /api/blobs/sha256:<hex>`: 200 when the blob is here, 404 when not.
* `POST /api/blobs/sha256:<hex>`: the raw file, streamed to disk past the server's body
  limit (its own limit is MAX_DOWNLOAD_SIZE, and the disk must have room), its sha256
  checked as it arrives; it lands whole under its digest or not at all (a mismatch is a
  400 and leaves nothing). 201 when stored, 200 when it was here already, as Ollama.
  Blobs live in `<models>/.lokal/blobs/`, lokal's own folder.
* `POST /api/create`: Ollama's request (`model`, `from` or `files`, `adapters`,
  `template`, `system`, `parameters`, `messages`, `license`), or the older
  `{"name", "modelfile"}` form that Open WebUI's upload sends (`FROM @sha256:...` and a
  Modelfile's other lines), becomes `<model>.yaml`, a LocalAI config with the same
  meaning: the GGUF of `files` is put into the models folder under its file name (a hard
  link to the blob where the disk allows; a projector among them becomes `mmproj:`),
  `from` copies the other model's config, `system` is `system_prompt`, `parameters` map
  onto `parameters:` (num_predict -> max_tokens), `stopwords` (stop) and `context_size`
  (num_ctx), `messages` are the model's `messages:` (put before every chat's own, as
  Ollama does). Refused with a 400 that says so, never dropped: a `template` other than
  the model's own (Ollama's Go templates and LocalAI's do not mean the same), LoRA
  `adapters`, `quantize`, a parameter lokal does not apply. A name that is taken is a
  409 unless it was made by /api/create (then it is replaced, as Ollama's create does).

Admin routes, as pull and delete.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from lokal.api.admin import require_admin
from lokal.api.middleware import was_head
import lokal.api.ollama.models as catalog
from lokal.api.ollama.manage import _alias_config, _reference
from lokal.api.ollama.routes import read_body
from lokal.api.respond import ndjson
from lokal.errors import BadRequest, Conflict, InsufficientStorage, LokalError, NotFound
from lokal.formats.modelfile import ModelFileError, read_gguf
from lokal.models.config import check_config
from lokal.transfer.paths import STATE_DIR, check_model_name, confine
from lokal.units import format_size

router = APIRouter(dependencies=[Depends(require_admin)])

#: Paths whose uploads the server's body limit lets through (streamed here, with their own limit).
STREAMED_UPLOADS = ("/api/blobs/",)

_DIGEST = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")
#: Kept free on the disk beside an upload.
DISK_RESERVE = 64 << 20
#: The first line of a config /api/create wrote (it may replace it).
MARK = "# Created through Ollama's POST /api/create; lokal may replace it on the next create.\n"


class BlobTooLarge(LokalError):
    status = 413
    type = "invalid_request_error"


def blobs_folder(models_path: Path) -> Path:
    return models_path / STATE_DIR / "blobs"


def blob_hex(digest: str) -> str:
    """The hex of a `sha256:<hex>` digest (Ollama also takes `sha256-<hex>`), or a 400."""
    match = _DIGEST.match(digest or "")
    if match is None:
        raise BadRequest("invalid digest format", param="digest")
    return match.group(1).lower()


def blob_path(models_path: Path, digest: str) -> Path:
    return blobs_folder(models_path) / f"sha256-{blob_hex(digest)}"


def _models_path(request: Request) -> Path:
    return request.app.state.registry.models_path


# Blobs ---------------------------------------------------------------------------------


@router.head("/blobs/{digest}", summary="Ollama: is this blob here?")
@router.get("/blobs/{digest}", include_in_schema=False)  # HEAD arrives as GET (no body is sent)
async def head_blob(digest: str, request: Request) -> Response:
    if not was_head(request.scope):  # a real GET: Ollama has no such route
        raise StarletteHTTPException(405, "Method Not Allowed", headers={"Allow": "HEAD, POST"})
    if not blob_path(_models_path(request), digest).is_file():
        raise NotFound(f"blob {digest!r} not found", param="digest")
    return Response(status_code=200)


@router.post("/blobs/{digest}", summary="Ollama: upload a file (raw body, sha256 checked)")
async def create_blob(digest: str, request: Request) -> Response:
    expected = blob_hex(digest)
    target = blob_path(_models_path(request), digest)
    if target.is_file():
        return Response(status_code=200)
    limit = request.app.state.settings.max_download_bytes
    target.parent.mkdir(parents=True, exist_ok=True)
    length = request.headers.get("content-length")
    declared = int(length) if length is not None and length.isdigit() else None
    if declared is not None and limit is not None and declared > limit:
        raise BlobTooLarge(f"the blob is {declared} bytes, more than MAX_DOWNLOAD_SIZE allows ({limit})")
    free = shutil.disk_usage(target.parent).free
    if declared is not None and declared + DISK_RESERVE > free:
        raise InsufficientStorage(f"not enough disk space for the blob: {declared} bytes, {free} free "
                                  f"in the models folder (and a {format_size(DISK_RESERVE)} reserve)")
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=".upload-", suffix=".partial")
    temp = Path(temp_name)
    digest_so_far = hashlib.sha256()
    received = 0
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                received += len(chunk)
                if limit is not None and received > limit:
                    raise BlobTooLarge(f"the blob is more than MAX_DOWNLOAD_SIZE allows ({limit} bytes)")
                digest_so_far.update(chunk)
                await asyncio.to_thread(out.write, chunk)
        actual = digest_so_far.hexdigest()
        if actual != expected:
            raise BadRequest(f'digest mismatch, expected "sha256:{expected}", got "sha256:{actual}"',
                             param="digest")
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return Response(status_code=201)


# Create --------------------------------------------------------------------------------


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str = ""


class CreateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    model: str = ""
    name: str = ""  # older clients
    from_: str | None = Field(None, alias="from")
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    license: str | list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    quantize: str | None = None
    renderer: str | None = None
    parser: str | None = None
    stream: bool = True
    modelfile: str | None = None  # the form before Ollama 0.5 (Open WebUI's upload still sends it)

    @property
    def target(self) -> str:
        return self.model or self.name


#: Ollama's parameters and where they go in a LocalAI config (None: lokal does not apply it).
PARAMETERS: dict[str, str | None] = {
    "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
    "seed": "seed", "repeat_penalty": "repeat_penalty", "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty", "num_predict": "max_tokens",
    "stop": "stopwords", "num_ctx": "context_size",
}
ROLES = ("system", "user", "assistant")


def parse_modelfile(text: str) -> dict[str, Any]:
    """A Modelfile's instructions as /api/create's fields: FROM (a model, or `@sha256:...`
    for a blob), PARAMETER, TEMPLATE, SYSTEM, ADAPTER, LICENSE, MESSAGE; values may be
    quoted with `"` or, over several lines, `\"\"\"`."""
    fields: dict[str, Any] = {}
    parameters: dict[str, Any] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        command, _, rest = line.partition(" ")
        command, rest = command.upper(), rest.strip()
        if rest.startswith('"""'):
            body = rest[3:]
            while '"""' not in body and i < len(lines):
                body += "\n" + lines[i]
                i += 1
            if '"""' not in body:
                raise BadRequest(f'modelfile: the """ after {command} is not closed', param="modelfile")
            rest = body[: body.index('"""')]
        elif len(rest) >= 2 and rest[0] == rest[-1] == '"':
            rest = rest[1:-1]
        if command == "FROM":
            if rest.startswith("@"):  # an uploaded blob: the model file, named after the model
                blob_hex(rest[1:])
                fields["from_blob"] = rest[1:]
            else:
                fields["from"] = rest
        elif command == "PARAMETER":
            key, _, value = rest.partition(" ")
            value = value.strip().strip('"')
            try:
                parsed: Any = json.loads(value)
            except ValueError:
                parsed = value
            if key == "stop":
                parameters.setdefault("stop", []).append(str(parsed))
            else:
                parameters[key] = parsed
        elif command in ("TEMPLATE", "SYSTEM", "LICENSE"):
            fields[command.lower()] = rest
        elif command == "ADAPTER":
            fields.setdefault("adapters", {})[rest] = rest
        elif command == "MESSAGE":
            role, _, content = rest.partition(" ")
            fields.setdefault("messages", []).append({"role": role, "content": content.strip().strip('"')})
        else:
            raise BadRequest(f"modelfile: unknown instruction {command!r}", param="modelfile")
    if parameters:
        fields["parameters"] = parameters
    return fields


def _apply_parameters(config: dict[str, Any], parameters: dict[str, Any]) -> None:
    unknown = sorted(k for k in parameters if PARAMETERS.get(k) is None)
    if unknown:
        raise BadRequest(f"parameters lokal does not apply: {', '.join(unknown)} (it takes "
                         f"{', '.join(sorted(PARAMETERS))})", param="parameters")
    sampling = dict(config.get("parameters") or {})
    for key, value in parameters.items():
        field = PARAMETERS[key]
        if field == "stopwords":
            stops = value if isinstance(value, list) else [value]
            config["stopwords"] = [*config.get("stopwords", []), *(str(s) for s in stops)]
        elif field == "context_size":
            config["context_size"] = value
        else:
            sampling[field] = value
    config["parameters"] = sampling


def _own_template(entry: Any) -> str:
    return catalog.template(entry) if entry is not None else ""


def _same_content(path: Path, blob: Path) -> bool:
    if path.stat().st_size != blob.stat().st_size:
        return False
    if path.samefile(blob):
        return True
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest() == blob.name.removeprefix("sha256-")


def _place(models_path: Path, filename: str, blob: Path) -> None:
    """The blob in the models folder under filename: a hard link, else a copy (whole or
    not at all); a different file of that name already there is a 409."""
    target = confine(models_path, filename, what="file name", write=True)
    if target.exists():
        if _same_content(target, blob):
            return
        raise Conflict(f"a different file named {filename} is in the models folder already; "
                       "upload under another file name", param="files")
    try:
        os.link(blob, target)
        return
    except OSError:
        pass
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".create-", suffix=".partial")
    os.close(fd)
    try:
        shutil.copyfile(blob, temp)
        os.replace(temp, target)
    finally:
        Path(temp).unlink(missing_ok=True)


def _from_files(models_path: Path, files: dict[str, str]) -> tuple[dict[str, Any], list[tuple[str, Path]]]:
    """The config a set of uploaded GGUFs makes (model file, projector) and what to place."""
    model, projector, placed = None, None, []
    for filename, digest in files.items():
        if "/" in filename or not filename.lower().endswith(".gguf"):
            raise BadRequest(f"{filename}: only GGUF files are supported (a .gguf file name, no folders)",
                             param="files")
        blob = blob_path(models_path, digest)
        if not blob.is_file():
            raise BadRequest(f"{filename}: blob {digest} was not uploaded (POST /api/blobs/{digest} "
                             "first)", param="files")
        try:
            info = read_gguf(blob)
        except ModelFileError as exc:
            raise BadRequest(f"{filename}: {exc}", param="files") from None
        is_projector = info.architecture == "clip" or info.metadata.get("general.type") == "mmproj"
        if is_projector:
            if projector is not None:
                raise BadRequest("files: more than one multimodal projector", param="files")
            projector = filename
        else:
            if model is not None:
                raise BadRequest("files: more than one model GGUF (split GGUFs are not supported here; "
                                 "install them with `lokal models install`)", param="files")
            model = filename
        placed.append((filename, blob))
    if model is None:
        raise BadRequest("files: no model GGUF among them", param="files")
    config: dict[str, Any] = {"parameters": {"model": model}}
    if projector is not None:
        config["mmproj"] = projector
    return config, placed


def _check_name_free(models_path: Path, registry: Any, name: str) -> None:
    existing = models_path / f"{name}.yaml"
    made_here = existing.is_file() and existing.read_text(encoding="utf-8", errors="replace").startswith(MARK)
    taken = any(e.name == name for e in registry.entries)
    if (taken or existing.exists()) and not made_here:
        raise Conflict(f"a model named '{name}' is here already and was not made by /api/create; delete it "
                       "first (DELETE /api/delete) or create under another name", param="model")


def plan_create(body: CreateRequest, registry: Any) -> tuple[str, dict[str, Any], list[tuple[str, Path]]]:
    """The new model's name, its config and the blobs to place, all checked (nothing written)."""
    models_path: Path = registry.models_path
    if body.modelfile is not None:
        if body.files or body.from_:
            raise BadRequest("send either modelfile or from/files", param="modelfile")
        parsed = parse_modelfile(body.modelfile)
        blob = parsed.pop("from_blob", None)
        merged = {**parsed, **body.model_dump(by_alias=True, exclude_none=True, exclude={"modelfile"})}
        body = CreateRequest.model_validate(merged)
        if blob is not None and body.target:
            body.files = {f"{check_model_name(_reference(body.target))}.gguf": blob}
    if not body.target:
        raise BadRequest("model is required", param="model")
    name = check_model_name(_reference(body.target))
    for field, what in (("quantize", "quantizing"), ("renderer", "Ollama's renderers"),
                        ("parser", "Ollama's parsers")):
        if getattr(body, field):
            raise BadRequest(f"{field}: {what} are not supported by lokal; leave it out", param=field)
    if body.adapters:
        raise BadRequest("adapters: LoRA adapters are not supported by lokal yet", param="adapters")
    base_entry = None
    if body.from_ and body.files:
        raise BadRequest("send either from (a model) or files (uploaded GGUFs), not both", param="from")
    if body.from_:
        base_entry = catalog.resolve(registry, body.from_)
        config = _alias_config(base_entry, name, models_path)
        placed: list[tuple[str, Path]] = []
    elif body.files:
        config, placed = _from_files(models_path, body.files)
    else:
        raise BadRequest("neither 'from' or 'files' was specified", param="files")
    config = {**config, "name": name}
    if body.template is not None and body.template.strip() and body.template != _own_template(base_entry):
        raise BadRequest("template: lokal uses the model's own chat template (in its GGUF) and cannot "
                         "take an Ollama Go template with the same meaning; leave template out",
                         param="template")
    if body.system is not None:
        config["system_prompt"] = body.system
    if body.parameters:
        _apply_parameters(config, body.parameters)
    if body.messages:
        bad = [m.role for m in body.messages if m.role not in ROLES]
        if bad:
            raise BadRequest(f"messages: role {bad[0]!r} is not one of {', '.join(ROLES)}", param="messages")
        config["messages"] = [{"role": m.role, "content": m.content} for m in body.messages]
    if body.license:
        config["license"] = body.license if isinstance(body.license, str) else "\n\n".join(body.license)
    check_config(config, refusal="the model's config would not be valid", param="parameters")
    _check_name_free(models_path, registry, name)
    return name, config, placed


def commit_create(registry: Any, name: str, config: dict[str, Any], placed: list[tuple[str, Path]]) -> None:
    models_path: Path = registry.models_path
    for filename, blob in placed:
        _place(models_path, filename, blob)
    text = MARK + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    target = models_path / f"{name}.yaml"
    fd, temp = tempfile.mkstemp(dir=models_path, prefix=".create-", suffix=".yaml.tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temp, target)
    finally:
        Path(temp).unlink(missing_ok=True)


@router.post("/create", summary="Ollama: create a model from uploaded GGUF blobs or another model")
async def create(request: Request) -> Any:
    body = await read_body(request, CreateRequest)
    registry = request.app.state.registry
    name, config, placed = await asyncio.to_thread(plan_create, body, registry)
    await asyncio.to_thread(commit_create, registry, name, config, placed)
    registry.scan()
    if not body.stream:
        return JSONResponse({"status": "success"})
    lines = [{"status": "parsing GGUF"} if placed else {"status": "reading model metadata"}]
    lines += [{"status": f"using existing layer sha256:{blob.name.removeprefix('sha256-')}"}
              for _, blob in placed]
    lines += [{"status": "writing manifest"}, {"status": "success"}]

    async def out() -> AsyncIterator[bytes]:
        for line in lines:
            yield ndjson(line)

    return StreamingResponse(out(), media_type="application/x-ndjson")
