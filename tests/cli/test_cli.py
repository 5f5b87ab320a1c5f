"""`python -m lokal`: help, `models list`, setting errors, and the server's start-up log."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lokal import __version__
from lokal.machine import physical_cores
from lokal.settings import Settings, env_names
from tests.conftest import CHAT_FILE, LokalServer, place_model

_SETTING_ENVS = {name.upper() for field in Settings.model_fields for name in env_names(field)}


def lokal(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m lokal ARGS` with no setting leaking in from this environment."""
    full_env = {k: v for k, v in os.environ.items() if k.upper() not in _SETTING_ENVS}
    full_env.update({"COLUMNS": "100", "PYTHONUNBUFFERED": "1"})
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "lokal", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=120)


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


# Help ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "run"])
def test_help_documents_every_setting(tmp_path: Path, command: str) -> None:
    result = lokal(command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = flat(result.stdout)
    assert "Start the OpenAI/LocalAI-compatible API server." in text
    assert "flags > environment > .env > defaults" in text
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        assert re.search(rf"{re.escape(flag)}\b", text), flag
        for env in env_names(name):
            assert re.search(rf"\b{env}\b", text), (name, env)
        assert field.description, name
        # argparse wraps lines at spaces and after hyphens: compare without whitespace.
        assert re.sub(r"\s+", "", field.description) in re.sub(r"\s+", "", text), name
    assert "--no-cors" in text and "--no-debug" in text


def test_top_level_help_lists_run_as_alias(tmp_path: Path) -> None:
    result = lokal("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "alias of serve" in result.stdout
    version = lokal("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"lokal {__version__}"


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    result = lokal(cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: lokal" in result.stderr


# models list ---------------------------------------------------------------------------


@pytest.fixture
def listed(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    place_model(models, "good.gguf")
    (models / "chat.yaml").write_text("name: chat\nparameters:\n  model: good.gguf\n")
    return models


def test_models_list_all_fine(tmp_path: Path, listed: Path) -> None:
    result = lokal("models", "list", "--models-path", str(listed), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert re.fullmatch(r"chat\s+ok\s+good\.gguf\s+\(chat\.yaml\)", lines[0]), lines


def test_models_list_reports_broken_configs(tmp_path: Path, listed: Path) -> None:
    (listed / "broken.yaml").write_text("name: broken\nparameters:\n  model: nope.gguf\n")
    (listed / "zero.gguf").write_bytes(b"")
    result = lokal("models", "list", "--models-path", str(listed), cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert set(lines) == {"chat", "broken", "zero.gguf"}
    assert re.search(r"\bok\b.*good\.gguf", lines["chat"])
    assert "ERROR" in lines["broken"]
    assert "'nope.gguf' does not exist" in lines["broken"] and "(broken.yaml)" in lines["broken"]
    assert "ERROR" in lines["zero.gguf"] and "empty (0 bytes)" in lines["zero.gguf"]


def test_models_list_reads_settings_from_environment_and_dotenv(tmp_path: Path, listed: Path) -> None:
    result = lokal("models", "list", cwd=tmp_path, env={"LOCALAI_MODELS_PATH": str(listed)})
    assert result.returncode == 0 and result.stdout.startswith("chat "), result.stdout + result.stderr
    (tmp_path / ".env").write_text(f"MODELS_PATH={listed}\n")
    result = lokal("models", "list", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("chat "), result.stdout + result.stderr


def test_models_list_with_config_file(tmp_path: Path, listed: Path) -> None:
    config_file = tmp_path / "list.yaml"
    config_file.write_text("- name: one\n  parameters: {model: good.gguf}\n"
                           "- name: two\n  parameters: {model: good.gguf}\n")
    result = lokal("models", "list", "--models-path", str(listed), "--config-file", str(config_file),
                   cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["chat", "one", "two"]


def test_models_list_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = lokal("models", "list", "--models-path", str(tmp_path / "empty"), cwd=tmp_path)
    assert result.returncode == 0
    assert "no models in" in result.stdout


# Setting errors -----------------------------------------------------------------------


@pytest.mark.parametrize("args,name", [
    (["--threads", "abc"], "threads"),
    (["--threads", "0"], "threads"),
    (["--address", "nowhere"], "address"),
    (["--log-level", "loud"], "log_level"),
    (["--watchdog-idle-timeout", "soon"], "watchdog_idle_timeout"),
])
@pytest.mark.parametrize("command", [["serve"], ["models", "list"]])
def test_invalid_setting_exits_2_naming_it(tmp_path: Path, command: list[str], args: list[str],
                                           name: str) -> None:
    result = lokal(*command, "--models-path", str(tmp_path), *args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"lokal: invalid setting {name}:" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_setting_from_environment(tmp_path: Path) -> None:
    result = lokal("models", "list", "--models-path", str(tmp_path), cwd=tmp_path,
                   env={"THREADS": "many"})
    assert result.returncode == 2
    assert re.search(r"lokal: invalid setting (?i:threads):", result.stderr), result.stderr


def test_unknown_flag_is_a_usage_error(tmp_path: Path) -> None:
    result = lokal("serve", "--no-such-flag", cwd=tmp_path)
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in result.stderr


# The server's start-up log --------------------------------------------------------------


@pytest.fixture(scope="module")
def startup_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("cli") / "models"
    place_model(models)
    (models / "chat.yaml").write_text(f"name: chat\nparameters:\n  model: {CHAT_FILE}\nmirostat: 2\n")
    place_model(models, "loose.gguf")
    (models / "broken.yaml").write_text("name: broken\nparameters:\n  model: missing.gguf\n")
    return models


@pytest.fixture(scope="module")
def loopback_server(startup_models: Path) -> Iterator[LokalServer]:
    with LokalServer(startup_models) as srv:
        yield srv


def test_startup_log(loopback_server: LokalServer, startup_models: Path) -> None:
    log = loopback_server.wait_log("listening on")
    assert f"lokal version {__version__}" in log
    assert re.search(rf"threads: 2 \(physical cores: {physical_cores()}\)", log)
    assert f"models path: {startup_models.resolve()}" in log
    assert f"listening on http://127.0.0.1:{loopback_server.port}" in log
    assert f"model chat: {CHAT_FILE}" in log
    assert "model loose.gguf: loose.gguf" in log
    assert re.search(r"model broken \(broken\.yaml\) cannot be served: .*'missing\.gguf' does not exist", log)
    assert "model chat: fields lokal does not use: mirostat" in log
    # Loopback: no warning about a missing API key.
    assert "without an API key" not in log
    # The configured file is not listed a second time as a loose model.
    assert f"model {CHAT_FILE}:" not in log


def test_threads_within_cores_gives_no_warning(loopback_server: LokalServer) -> None:
    log = loopback_server.wait_log("listening on")
    if 2 > physical_cores():
        pytest.skip("this machine has fewer than 2 physical cores")
    assert "physical cores: expect slower" not in log


def test_public_address_without_api_key_warns(tmp_path: Path) -> None:
    models = tmp_path / "absent"  # also: a models folder that does not exist
    too_many = (os.cpu_count() or 1) + 1
    with LokalServer(models, "--threads", str(too_many), host="0.0.0.0") as srv:
        log = srv.wait_log("listening on")
    assert re.search(r"WARNING .*listening on 0\.0\.0\.0:\d+ without an API key", log), log
    assert "Set API_KEY, or bind to 127.0.0.1" in log
    assert f"threads: {too_many} (physical cores: {physical_cores()})" in log
    assert re.search(rf"WARNING .*THREADS={too_many} is more than the {physical_cores()} physical "
                     r"cores: expect slower generation", log), log
    assert re.search(r"WARNING .*models path .*absent does not exist: no models to serve", log), log


def test_public_address_with_api_key_does_not_warn(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    with LokalServer(models, "--api-key", "sk-test", host="0.0.0.0") as srv:
        log = srv.wait_log("listening on")
    assert f"listening on http://0.0.0.0:{srv.port}" in log
    assert "without an API key" not in log
    assert "physical cores: expect slower" not in log
    assert "WARNING" not in log
