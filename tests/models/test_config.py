"""LocalAI-style configs: reading, validation, path confinement, templates, loose files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lokal.models.config import ConfigError
from lokal.models.catalog import ModelEntry, confine, read_config_file, scan_models
from tests.conftest import place_model

GOOD = "good.gguf"

FULL_CONFIG = """\
name: full
backend: llama-cpp
parameters:
  model: good.gguf
  temperature: 0.3
  top_p: 0.8
  top_k: 30
  max_tokens: 77
  seed: 1234
  repeat_penalty: 1.1
  presence_penalty: 0.5
  frequency_penalty: -0.25
context_size: 1024
threads: 3
f16: true
mmap: false
gpu_layers: 0
stopwords:
  - "<|im_end|>"
  - "###"
roles:
  user: "USER:"
  assistant: "ASSISTANT:"
  system: "SYSTEM:"
system_prompt: You are terse.
template:
  chat: chatfile
  chat_message: "{{.Role}} {{.Content}}"
  completion: "Complete: {{.Input}}"
  use_tokenizer_template: false
known_usecases:
  - chat
  - completion
mirostat: 2
cuda: true
"""


def fake_gguf(path: Path) -> Path:
    """A valid GGUF header with no tensors and no metadata (scans read only the header)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + b"\0" * 16)
    return path


@pytest.fixture
def models(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    fake_gguf(folder / GOOD)
    return folder


def by_name(entries: list[ModelEntry]) -> dict[str, ModelEntry]:
    names = [e.name for e in entries]
    assert len(names) == len(set(names)), names
    return {e.name: e for e in entries}


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


# A valid config ------------------------------------------------------------------


def test_full_localai_config_is_read(models: Path) -> None:
    write(models, "chatfile.tmpl", "{{.Input}}\nASSISTANT:")
    path = write(models, "full.yaml", FULL_CONFIG)
    [entry] = read_config_file(models, path)
    assert entry.ok, entry.error
    assert entry.name == "full"
    assert entry.source == path
    assert entry.model_path == (models / GOOD).resolve()
    config = entry.config
    assert config is not None
    assert config.backend == "llama-cpp" and config.engine == "llama-cpp"
    p = config.parameters
    assert (p.model, p.temperature, p.top_p, p.top_k, p.max_tokens, p.seed) == (
        "good.gguf", 0.3, 0.8, 30, 77, 1234)
    assert (p.repeat_penalty, p.presence_penalty, p.frequency_penalty) == (1.1, 0.5, -0.25)
    assert p.request_defaults() == {
        "temperature": 0.3, "top_p": 0.8, "top_k": 30, "max_tokens": 77, "seed": 1234,
        "repeat_penalty": 1.1, "presence_penalty": 0.5, "frequency_penalty": -0.25,
    }
    assert config.context_size == 1024 and config.threads == 3
    assert config.f16 is True and config.mmap is False and config.gpu_layers == 0
    assert config.stopwords == ["<|im_end|>", "###"]
    assert config.roles == {"user": "USER:", "assistant": "ASSISTANT:", "system": "SYSTEM:"}
    assert config.system_prompt == "You are terse."
    assert config.template.chat == "chatfile"
    assert config.template.chat_message == "{{.Role}} {{.Content}}"
    assert config.template.completion == "Complete: {{.Input}}"
    assert config.template.use_tokenizer_template is False
    assert config.known_usecases == ["chat", "completion"]
    # Unknown LocalAI fields are kept and reported, not refused.
    assert config.unknown_fields == ["cuda", "mirostat"]
    # All three templates were resolved and parsed.
    assert entry.templates.chat is not None
    assert entry.templates.chat.render({"Input": "hi"}) == "hi\nASSISTANT:"
    assert entry.templates.chat_message is not None
    assert entry.templates.chat_message.render({"Role": "USER:", "Content": "x"}) == "USER: x"
    assert entry.templates.completion is not None
    assert entry.templates.completion.render({"Input": "a"}) == "Complete: a"


def test_minimal_config_has_no_unknown_fields(models: Path) -> None:
    path = write(models, "m.yaml", "name: m\nparameters:\n  model: good.gguf\n")
    [entry] = read_config_file(models, path)
    assert entry.ok, entry.error
    assert entry.config is not None and entry.config.unknown_fields == []
    assert entry.config.parameters.request_defaults() == {}
    assert not entry.templates.renders_chat


def test_single_string_stopwords_and_usecases(models: Path) -> None:
    path = write(models, "m.yaml",
                 "name: m\nparameters: {model: good.gguf}\nstopwords: END\nknown_usecases: chat\n")
    [entry] = read_config_file(models, path)
    assert entry.ok, entry.error
    assert entry.config is not None
    assert entry.config.stopwords == ["END"]
    assert entry.config.known_usecases == ["chat"]


def test_use_tokenizer_template_drops_chat_templates(models: Path) -> None:
    path = write(models, "m.yaml", "name: m\nparameters: {model: good.gguf}\n"
                 "template:\n  chat: 'C {{.Input}}'\n  chat_message: 'M {{.Content}}'\n"
                 "  completion: 'P {{.Input}}'\n  use_tokenizer_template: true\n")
    [entry] = read_config_file(models, path)
    assert entry.ok, entry.error
    assert entry.templates.chat is None and entry.templates.chat_message is None
    assert entry.templates.completion is not None


def test_model_file_in_a_subfolder_is_allowed(models: Path) -> None:
    fake_gguf(models / "sub" / "inner.gguf")
    path = write(models, "m.yaml", "name: m\nparameters: {model: sub/inner.gguf}\n")
    [entry] = read_config_file(models, path)
    assert entry.ok, entry.error
    assert entry.model_path == (models / "sub" / "inner.gguf").resolve()


# Broken configs: each becomes an errored entry, the others stay ok ------------------


BROKEN = {
    "badyaml.yaml": ("name: x\nparameters: [unclosed\n", "badyaml", "not valid YAML"),
    "scalar.yaml": ("just a string\n", "scalar", "expected a mapping"),
    "invalid.yaml": ("name: invalid\nparameters:\n  model: good.gguf\n  temperature: 7\n",
                     "invalid", "parameters.temperature"),
    "badtype.yaml": ("name: badtype\nparameters: {model: good.gguf}\ncontext_size: lots\n",
                     "badtype", "context_size"),
    "nomodel.yaml": ("name: nomodel\ncontext_size: 512\n", "nomodel", "parameters.model is missing"),
    "missing.yaml": ("name: missing\nparameters: {model: nope.gguf}\n", "missing",
                     "'nope.gguf' does not exist"),
    "backend.yaml": ("name: backend\nbackend: exllama2\nparameters: {model: good.gguf}\n",
                     "backend", "'exllama2' is not served"),
    "empty.yaml": ("", "empty", "is empty"),
}


def test_each_broken_config_is_an_errored_entry(models: Path) -> None:
    write(models, "ok.yaml", "name: ok\nparameters: {model: good.gguf}\n")
    for file_name, (text, _, _) in BROKEN.items():
        write(models, file_name, text)
    entries = by_name(scan_models(models))
    assert entries["ok"].ok, entries["ok"].error
    for file_name, (_, name, reason) in BROKEN.items():
        entry = entries[name]
        assert not entry.ok, file_name
        assert reason in entry.error, (file_name, entry.error)
        assert entry.source == models / file_name
    # The good file is referenced by configs: it is not listed again as a loose model.
    assert GOOD not in entries
    assert set(entries) == {"ok"} | {name for _, name, _ in BROKEN.values()}


def test_validation_error_names_the_file_and_field(models: Path) -> None:
    path = write(models, "v.yaml", "name: v\nparameters:\n  model: good.gguf\n  top_p: 3\n")
    [entry] = read_config_file(models, path)
    assert entry.name == "v"
    assert entry.error is not None
    assert entry.error.startswith("v.yaml: ")
    assert "parameters.top_p" in entry.error


def test_invalid_yaml_keeps_the_file_stem_as_name(models: Path) -> None:
    path = write(models, "my-model.yml", "name: [\n")
    [entry] = read_config_file(models, path)
    assert entry.name == "my-model"
    assert entry.error is not None and "my-model.yml is not valid YAML" in entry.error


def test_non_mapping_items_in_a_list(models: Path) -> None:
    path = write(models, "list.yaml", "- name: one\n  parameters: {model: good.gguf}\n- 42\n")
    entries = read_config_file(models, path)
    assert [e.name for e in entries] == ["one", "list"]
    assert entries[0].ok, entries[0].error
    assert entries[1].error is not None and "got int" in entries[1].error


@pytest.mark.parametrize("name", ["a/b", "..", "a\\b", "bad\x01name", ""])
def test_invalid_model_names_are_refused(models: Path, name: str) -> None:
    path = write(models, "n.yaml", f"name: {name!r}\nparameters: {{model: good.gguf}}\n".replace("'", '"'))
    [entry] = read_config_file(models, path)
    assert not entry.ok
    assert "name" in entry.error


def test_template_that_does_not_parse_names_file_and_line(models: Path) -> None:
    write(models, "broken.tmpl", "first line\nsecond line\n{{ if .Input }}\nno end\n")
    write(models, "tmpl.yaml", "name: tmpl\nparameters: {model: good.gguf}\ntemplate:\n  chat: broken\n")
    write(models, "ok.yaml", "name: ok\nparameters: {model: good.gguf}\n")
    entries = by_name(scan_models(models))
    assert entries["ok"].ok
    error = entries["tmpl"].error
    assert error is not None
    assert "template does not parse" in error
    assert "broken.tmpl:3:" in error, error
    assert "{{end}}" in error


def test_inline_template_that_does_not_parse(models: Path) -> None:
    path = write(models, "t.yaml", "name: t\nparameters: {model: good.gguf}\ntemplate:\n"
                 "  completion: \"{{ .Input | nosuchfunc }}\"\n")
    [entry] = read_config_file(models, path)
    assert entry.error is not None
    assert "template.completion:1:" in entry.error and "nosuchfunc" in entry.error


# Path confinement --------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside.gguf", "sub/../../outside.gguf",
                                 "sub\\model.gguf", "\\\\server\\share\\m.gguf", "C:model.gguf", ""])
def test_confine_refuses(models: Path, bad: str) -> None:
    with pytest.raises(ConfigError):
        confine(models, bad)


def test_confine_accepts_relative_paths(models: Path) -> None:
    assert confine(models, "good.gguf") == (models / "good.gguf").resolve()
    assert confine(models, "./a/b.gguf") == (models / "a" / "b.gguf").resolve()


def test_confine_refuses_a_symlink_leading_outside(tmp_path: Path, models: Path) -> None:
    outside = fake_gguf(tmp_path / "elsewhere" / "secret.gguf")
    (models / "link.gguf").symlink_to(outside)
    with pytest.raises(ConfigError, match="outside the models folder"):
        confine(models, "link.gguf")
    (models / "linkdir").symlink_to(outside.parent, target_is_directory=True)
    with pytest.raises(ConfigError, match="outside the models folder"):
        confine(models, "linkdir/secret.gguf")


def test_symlink_inside_the_folder_is_fine(models: Path) -> None:
    (models / "alias.gguf").symlink_to(models / GOOD)
    assert confine(models, "alias.gguf") == (models / GOOD).resolve()


@pytest.mark.parametrize("ref", ["/etc/hostname", "../outside.gguf", "sub\\good.gguf", "link.gguf"])
def test_config_pointing_outside_is_an_error(tmp_path: Path, models: Path, ref: str) -> None:
    outside = fake_gguf(tmp_path / "outside.gguf")
    (models / "link.gguf").symlink_to(outside)
    path = write(models, "out.yaml", f"name: out\nparameters:\n  model: '{ref}'\n")
    [entry] = read_config_file(models, path)
    assert not entry.ok
    assert entry.model_path is None
    assert "absolute" in entry.error or "'..'" in entry.error or "outside" in entry.error, entry.error


def test_loose_symlink_outside_is_an_errored_entry(tmp_path: Path, models: Path) -> None:
    outside = fake_gguf(tmp_path / "outside.gguf")
    (models / "link.gguf").symlink_to(outside)
    entries = by_name(scan_models(models))
    assert entries[GOOD].ok
    assert not entries["link.gguf"].ok
    assert "outside the models folder" in entries["link.gguf"].error


def test_template_name_outside_the_folder_is_not_read(tmp_path: Path, models: Path) -> None:
    # A template "name" that would escape the folder is never read as a file.
    (tmp_path / "evil.tmpl").write_text("SECRET {{.Input}}")
    path = write(models, "t.yaml", "name: t\nparameters: {model: good.gguf}\ntemplate:\n  chat: ../evil\n")
    [entry] = read_config_file(models, path)
    assert entry.ok, entry.error
    assert entry.templates.chat is not None
    assert entry.templates.chat.render({"Input": "x"}) == "../evil"


# Template names ----------------------------------------------------------------------


def test_template_name_reads_the_tmpl_file(models: Path) -> None:
    write(models, "gpt4all.tmpl", "### Prompt:\n{{.Input}}\n### Response:\n")
    write(models, "gpt4all-chat.tmpl", "{{.RoleName}}: {{.Content}}")
    path = write(models, "t.yaml", "name: t\nparameters: {model: good.gguf}\ntemplate:\n"
                 "  chat: gpt4all\n  chat_message: gpt4all-chat.tmpl\n  completion: gpt4all\n")
    [entry] = read_config_file(models, path)
    assert entry.ok, entry.error
    assert entry.templates.chat is not None and entry.templates.completion is not None
    assert entry.templates.chat.render({"Input": "Hi"}) == "### Prompt:\nHi\n### Response:\n"
    assert entry.templates.completion.render({"Input": "Yo"}) == "### Prompt:\nYo\n### Response:\n"
    assert entry.templates.chat_message is not None
    assert entry.templates.chat_message.render({"RoleName": "user", "Content": "c"}) == "user: c"


def test_template_name_without_file_is_the_template_text(models: Path) -> None:
    path = write(models, "t.yaml", "name: t\nparameters: {model: good.gguf}\ntemplate:\n"
                 "  chat: nosuchtemplate\n  completion: 'Q: {{.Input}} A:'\n")
    [entry] = read_config_file(models, path)
    assert entry.ok, entry.error
    assert entry.templates.chat is not None and entry.templates.completion is not None
    assert entry.templates.chat.render({"Input": "x"}) == "nosuchtemplate"
    assert entry.templates.completion.render({"Input": "x"}) == "Q: x A:"


def test_unreadable_template_file_is_an_error(models: Path) -> None:
    (models / "bin.tmpl").write_bytes(b"\xff\xfe\x00bad")
    path = write(models, "t.yaml", "name: t\nparameters: {model: good.gguf}\ntemplate:\n  chat: bin\n")
    [entry] = read_config_file(models, path)
    assert entry.error is not None and "cannot read template bin.tmpl" in entry.error


# Loose model files -------------------------------------------------------------------


def test_loose_gguf_is_served_by_its_file_name(models: Path) -> None:
    [entry] = scan_models(models)
    assert entry.ok
    assert entry.name == GOOD
    assert entry.source == models / GOOD
    assert entry.model_path == (models / GOOD).resolve()
    assert entry.config is not None and entry.config.name == GOOD


def test_referenced_gguf_is_not_listed_twice(models: Path) -> None:
    fake_gguf(models / "other.gguf")
    write(models, "chat.yaml", "name: chat\nparameters: {model: good.gguf}\n")
    entries = scan_models(models)
    assert [e.name for e in entries] == ["chat", "other.gguf"]


def test_referenced_through_a_symlink_is_not_listed_twice(models: Path) -> None:
    (models / "alias.gguf").symlink_to(models / GOOD)
    write(models, "chat.yaml", "name: chat\nparameters: {model: alias.gguf}\n")
    # alias.gguf and good.gguf both resolve to the referenced file.
    assert [e.name for e in scan_models(models)] == ["chat"]


def test_broken_config_still_hides_its_referenced_file(models: Path) -> None:
    # A config whose template is broken still "owns" its file: the file is not
    # served loose under another name behind the user's back.
    write(models, "c.yaml", "name: c\nparameters: {model: good.gguf}\ntemplate:\n  chat: '{{ if }}'\n")
    entries = by_name(scan_models(models))
    assert set(entries) == {"c"}
    assert not entries["c"].ok


def test_loose_zero_byte_and_legacy_files_are_errors(models: Path) -> None:
    (models / "empty.gguf").write_bytes(b"")
    (models / "old-ggml.gguf").write_bytes(b"lmgg" + b"\0" * 100)
    (models / "old-ggjt.gguf").write_bytes(b"tjgg" + b"\0" * 100)
    (models / "junk.gguf").write_bytes(b"<html>404</html>")
    (models / "notes.txt").write_text("not a model")
    entries = by_name(scan_models(models))
    assert set(entries) == {GOOD, "empty.gguf", "old-ggml.gguf", "old-ggjt.gguf", "junk.gguf"}
    assert entries[GOOD].ok
    assert "empty (0 bytes)" in entries["empty.gguf"].error
    for name, kind in (("old-ggml.gguf", "GGML"), ("old-ggjt.gguf", "GGJT")):
        error = entries[name].error
        assert error is not None
        assert f"legacy {kind}" in error and "GGUF" in error, error
    assert "not a GGUF model file" in entries["junk.gguf"].error


def test_config_pointing_at_legacy_or_empty_file(models: Path) -> None:
    (models / "ggml-model.bin").write_bytes(b"tjgg" + b"\0" * 100)
    (models / "zero.bin").write_bytes(b"")
    write(models, "old.yaml", "name: old\nparameters: {model: ggml-model.bin}\n")
    write(models, "zero.yaml", "name: zero\nparameters: {model: zero.bin}\n")
    entries = by_name(scan_models(models))
    assert "legacy GGJT" in entries["old"].error and "GGUF" in entries["old"].error
    assert "empty (0 bytes)" in entries["zero"].error
    assert entries[GOOD].ok


def test_config_pointing_at_a_folder_is_not_magic_checked(models: Path) -> None:
    (models / "hf").mkdir()
    (models / "hf" / "config.json").write_text("{}")
    path = write(models, "hf.yaml", "name: hf\nbackend: sentence-transformers\nparameters: {model: hf}\n")
    [entry] = read_config_file(models, path)
    assert entry.ok, entry.error
    assert entry.config is not None and entry.config.engine == "sentence-transformers"


def test_missing_models_folder_gives_no_entries(tmp_path: Path) -> None:
    assert scan_models(tmp_path / "nope") == []


# CONFIG_FILE and duplicates ----------------------------------------------------------


def test_config_file_with_a_list_of_configs(tmp_path: Path, models: Path) -> None:
    fake_gguf(models / "second.gguf")
    config_file = tmp_path / "models.yaml"
    config_file.write_text(
        "- name: first\n  parameters:\n    model: good.gguf\n    temperature: 0.1\n"
        "- name: second\n  parameters:\n    model: second.gguf\n  context_size: 256\n"
    )
    entries = scan_models(models, config_file)
    assert [e.name for e in entries] == ["first", "second"]
    assert all(e.ok for e in entries), [e.error for e in entries]
    assert all(e.source == config_file for e in entries)
    assert entries[0].config.parameters.temperature == 0.1
    assert entries[1].config.context_size == 256
    assert entries[1].model_path == (models / "second.gguf").resolve()


def test_config_file_resolves_models_in_the_models_folder(tmp_path: Path, models: Path) -> None:
    # Paths in CONFIG_FILE are relative to the models folder, never to the file itself.
    fake_gguf(tmp_path / "beside.gguf")
    config_file = tmp_path / "models.yaml"
    config_file.write_text("- name: beside\n  parameters: {model: beside.gguf}\n")
    entry = by_name(scan_models(models, config_file))["beside"]
    assert not entry.ok
    assert "does not exist" in entry.error


def test_missing_config_file_is_an_errored_entry(tmp_path: Path, models: Path) -> None:
    entries = by_name(scan_models(models, tmp_path / "absent.yaml"))
    assert entries[GOOD].ok
    assert not entries["absent"].ok
    assert "does not exist" in entries["absent"].error


def test_duplicate_names_keep_the_first(models: Path, caplog: pytest.LogCaptureFixture) -> None:
    fake_gguf(models / "b.gguf")
    write(models, "a.yaml", "name: dup\nparameters: {model: good.gguf}\n")
    write(models, "b.yaml", "name: dup\nparameters: {model: b.gguf}\n")
    with caplog.at_level("ERROR", logger="lokal.models"):
        entries = scan_models(models)
    assert [e.name for e in entries] == ["dup"]
    assert entries[0].source == models / "a.yaml"
    assert entries[0].model_path == (models / "good.gguf").resolve()
    assert "defined twice" in caplog.text and "a.yaml" in caplog.text and "b.yaml" in caplog.text


def test_duplicate_between_folder_and_config_file(tmp_path: Path, models: Path) -> None:
    write(models, "x.yaml", "name: x\nparameters: {model: good.gguf}\ncontext_size: 111\n")
    config_file = tmp_path / "list.yaml"
    config_file.write_text("- name: x\n  parameters: {model: good.gguf}\n  context_size: 222\n")
    [entry] = scan_models(models, config_file)
    assert entry.source == models / "x.yaml"
    assert entry.config.context_size == 111


def test_config_named_like_a_loose_file_wins(models: Path) -> None:
    fake_gguf(models / "other.gguf")
    write(models, "a.yaml", "name: other.gguf\nparameters: {model: good.gguf}\n")
    [entry] = scan_models(models)
    assert entry.name == "other.gguf"
    assert entry.source == models / "a.yaml"


def test_real_gguf_passes_the_scan(tmp_path: Path) -> None:
    folder = tmp_path / "real"
    place_model(folder, "smol.gguf")
    [entry] = scan_models(folder)
    assert entry.ok and entry.name == "smol.gguf"
    assert os.path.samefile(entry.model_path, folder / "smol.gguf")
