"""YAML as LocalAI reads it (go-yaml v3), where that differs from PyYAML's safe loader.

* A double-quoted string may escape a single quote (`"\\'"`): go-yaml reads `'`,
  PyYAML refuses the document (LocalAI's own command-r base config has one).
* Only `true`/`false` are booleans (YAML 1.2, as go-yaml): `on`, `off`, `yes`, `no`,
  `y`, `n` stay strings (`flash_attention: on` is the string LocalAI means).

Everything else is PyYAML's safe loader: no tags that build objects, no code.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class LocalAILoader(yaml.SafeLoader):
    ESCAPE_REPLACEMENTS = {**yaml.SafeLoader.ESCAPE_REPLACEMENTS, "'": "'"}


# Booleans per YAML 1.2's core schema, replacing YAML 1.1's yes/no/on/off.
LocalAILoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
LocalAILoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load(text: str) -> Any:
    """One YAML document, read as go-yaml reads it; yaml.YAMLError when it cannot be."""
    return yaml.load(text, Loader=LocalAILoader)  # noqa: S506 - a SafeLoader subclass
