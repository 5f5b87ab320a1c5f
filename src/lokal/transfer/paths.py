"""File names from galleries, configs and requests, confined to the models folder.

Every name is checked before a byte is written (CVE-2024-5182 was a model name used
as a path): relative, no `..`, no backslashes, NUL or control characters, no hidden
components (lokal's own partial files and install records are hidden), no `.yaml`
config names, and no symlink anywhere on the way from the models folder to it.
"""

from __future__ import annotations

import re
from pathlib import Path

from lokal.errors import BadRequest

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+@ -]{0,127}$")
#: Where lokal keeps its install records, inside the models folder.
STATE_DIR = ".lokal"
CONFIG_SUFFIXES = (".yaml", ".yml")


class UnsafePath(BadRequest):
    """A file or model name that would leave the models folder or touch lokal's own files."""

    def __init__(self, name: str, rule: str, *, param: str = "files") -> None:
        super().__init__(f"refused file name {name!r}: {rule}", param=param)
        self.rule = rule


def check_model_name(name: str) -> str:
    """A model name usable as `<name>.yaml` in the models folder, or UnsafePath (400)."""
    if not isinstance(name, str) or not name.strip():
        raise UnsafePath(str(name), "a model name may not be empty", param="name")
    name = name.strip()
    if "/" in name or "\\" in name or ".." in name or _CONTROL.search(name):
        raise UnsafePath(name, "a model name may not contain '/', '\\', '..' or control "
                               "characters (it names a file in the models folder)", param="name")
    if not _MODEL_NAME.match(name):
        raise UnsafePath(name, "a model name is 1-128 letters, digits and . _ - : + @ or spaces, "
                               "starting with a letter or digit", param="name")
    return name


def check_relative(name: str, *, what: str = "file name") -> str:
    """A relative file name (subfolders allowed) that stays in the models folder."""
    if not isinstance(name, str) or not name:
        raise UnsafePath(str(name), f"the {what} is empty")
    if "\x00" in name or _CONTROL.search(name):
        raise UnsafePath(name, f"the {what} contains NUL or control characters")
    if "\\" in name:
        raise UnsafePath(name, f"the {what} may not contain '..' or backslashes")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise UnsafePath(name, f"the {what} must be a path relative to the models folder, not absolute")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafePath(name, f"the {what} may not contain '..', '.' or empty path components")
    if any(part.startswith(".") for part in parts):
        raise UnsafePath(name, f"the {what} has a hidden component (names starting with '.' are "
                               "lokal's own partial files and records)")
    if len(name) > 1024:
        raise UnsafePath(name, f"the {what} is longer than 1024 characters")
    return name


def confine(models_path: Path, name: str, *, what: str = "file name", write: bool = False,
            allow_config: bool = False) -> Path:
    """The path name denotes under the models folder, checked by one set of rules
    (`check_relative`), wherever the name came from:

    - to read (a config naming its files): the path may go through symlinks that stay in
      the folder (a model linked in from a subfolder), never to one that leaves it, and
      `./` steps are read as nothing (configs write `./model.gguf`); the resolved path is
      returned;
    - to write (`write`: downloads, installs, records): no symlink anywhere on the way
      (the target itself included) and no model config unless allow_config."""
    if not write and isinstance(name, str) and "/" in name:
        name = "/".join(part for part in name.split("/") if part != ".") or name
    check_relative(name, what=what)
    root = models_path.resolve()
    if not write:
        resolved = (root / name).resolve()
        if resolved != root and root not in resolved.parents:
            raise UnsafePath(name, f"the {what} points outside the models folder (symlink?)")
        return resolved
    if not allow_config and name.lower().endswith(CONFIG_SUFFIXES):
        raise UnsafePath(name, f"the {what} names a model config; configs are written by lokal "
                               "from the entry, not downloaded over")
    current = root
    for part in name.split("/"):
        current = current / part
        if current.is_symlink():
            raise UnsafePath(name, f"the {what} goes through a symlink ({current.relative_to(root)})")
    if root != current.resolve().parent and root not in current.resolve().parents:
        raise UnsafePath(name, f"the {what} points outside the models folder")
    return current


def hidden_sibling(path: Path, suffix: str) -> Path:
    """lokal's hidden work file beside path (`.NAME.SUFFIX`)."""
    return path.parent / f".{path.name}.{suffix}"
