"""Settings: flags > environment > `.env` in the working directory > defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from lokal.machine import physical_cores
from lokal.settings import Settings, env_names, split_list
from lokal.units import parse_duration


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting from the real environment or a real `.env`; cwd is an empty folder."""
    names = {name.upper() for field in Settings.model_fields for name in env_names(field)}
    for key in list(os.environ):
        if key.upper() in names:
            monkeypatch.delenv(key)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def dotenv(cwd: Path, text: str) -> None:
    (cwd / ".env").write_text(text)


def test_defaults() -> None:
    s = Settings()
    assert s.models_path == Path("models")
    assert s.config_file is None
    assert s.address == "0.0.0.0:8080"
    assert (s.host, s.port) == ("0.0.0.0", 8080)
    assert s.threads is None and s.effective_threads == physical_cores()
    assert s.watchdog_idle_timeout is None
    assert s.api_key is None and s.api_keys == []
    assert s.cors is False and s.cors_origins == ["*"]
    assert s.log_level == "info" and s.effective_log_level == "info"
    assert s.upload_limit_bytes == 15 * 1024 * 1024
    assert s.preload == []
    assert s.is_loopback is False


def test_flags_beat_environment_beat_dotenv(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dotenv(clean_env, "THREADS=5\nMODELS_PATH=/from/dotenv\nADDRESS=127.0.0.1:1111\n")
    assert Settings().threads == 5
    assert Settings().models_path == Path("/from/dotenv")
    monkeypatch.setenv("THREADS", "3")
    monkeypatch.setenv("ADDRESS", "127.0.0.1:2222")
    s = Settings()
    assert s.threads == 3
    assert s.address == "127.0.0.1:2222"
    assert s.models_path == Path("/from/dotenv")  # still from .env: env does not set it
    # Flags arrive as field names with the strings argparse gives.
    s = Settings(threads="7", models_path="/from/flag")
    assert s.threads == 7
    assert s.models_path == Path("/from/flag")
    assert s.address == "127.0.0.1:2222"


def test_dotenv_only_from_the_working_directory(tmp_path: Path, clean_env: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other"
    other.mkdir()
    dotenv(other, "THREADS=9\n")
    assert Settings().threads is None
    monkeypatch.chdir(other)
    assert Settings().threads == 9


@pytest.mark.parametrize("name", ["MODELS_PATH", "LOCALAI_MODELS_PATH"])
def test_localai_names_in_environment(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "/srv/models")
    assert Settings().models_path == Path("/srv/models")


def test_localai_prefixed_names_for_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "LOCALAI_ADDRESS": "127.0.0.1:9000", "LOCALAI_THREADS": "3", "LOCALAI_CONTEXT_SIZE": "2048",
        "LOCALAI_PARALLEL_REQUESTS": "2", "LOCALAI_MAX_ACTIVE_BACKENDS": "1",
        "LOCALAI_WATCHDOG_IDLE_TIMEOUT": "5m", "LOCALAI_API_KEY": "k1,k2", "LOCALAI_CORS": "true",
        "LOCALAI_CORS_ALLOW_ORIGINS": "http://a.example", "LOCALAI_UPLOAD_LIMIT": "2",
        "LOCALAI_LOG_LEVEL": "warning", "LOCALAI_PRELOAD_MODELS": "a,b",
        "LOCALAI_EMBEDDINGS_BATCHING": "false", "LOCALAI_CONFIG_FILE": "/etc/models.yaml",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    s = Settings()
    assert s.address == "127.0.0.1:9000" and s.threads == 3 and s.context_size == 2048
    assert s.parallel_requests == 2 and s.max_active_backends == 1
    assert s.watchdog_idle_timeout == 300
    assert s.api_keys == ["k1", "k2"]
    assert s.cors is True and s.cors_origins == ["http://a.example"]
    assert s.upload_limit_bytes == 2 * 1024 * 1024
    assert s.log_level == "warning" and s.preload == ["a", "b"]
    assert s.embeddings_batching is False
    assert s.config_file == Path("/etc/models.yaml")


def test_every_setting_answers_to_both_names() -> None:
    for field in Settings.model_fields:
        names = env_names(field)
        bare = field.upper()
        assert bare in names, (field, names)
        assert f"LOCALAI_{bare}" in names, (field, names)


def test_localai_prefixed_name_in_dotenv(clean_env: Path) -> None:
    dotenv(clean_env, "LOCALAI_THREADS=6\n")
    assert Settings().threads == 6


def test_environment_beats_dotenv_across_name_forms(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dotenv(clean_env, "THREADS=5\n")
    monkeypatch.setenv("LOCALAI_THREADS", "3")
    assert Settings().threads == 3


def test_single_active_backend_count_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SINGLE_ACTIVE_BACKEND_COUNT", "2")
    assert Settings().max_active_backends == 2


def test_invalid_dotenv_value_is_reported(clean_env: Path) -> None:
    dotenv(clean_env, "THREADS=lots\n")
    with pytest.raises(ValidationError, match="(?i)threads"):
        Settings()


# Durations -----------------------------------------------------------------------------


@pytest.mark.parametrize("text,seconds", [
    ("15m", 900.0), ("1h30m", 5400.0), ("90", 90.0), ("90s", 90.0), ("1.5h", 5400.0),
    ("500ms", 0.5), ("2h0m5s", 7205.0), (" 10M ", 600.0),
    ("off", None), ("OFF", None), ("0", None), ("", None), ("false", None), ("none", None),
])
def test_watchdog_idle_timeout_durations(monkeypatch: pytest.MonkeyPatch, text: str,
                                         seconds: float | None) -> None:
    monkeypatch.setenv("WATCHDOG_IDLE_TIMEOUT", text)
    assert Settings().watchdog_idle_timeout == seconds
    assert Settings(watchdog_idle_timeout=text).watchdog_idle_timeout == seconds


@pytest.mark.parametrize("text", ["15 minutes", "1h30", "m", "abc", "10d", "-5", "-1m"])
def test_invalid_durations(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("WATCHDOG_IDLE_TIMEOUT", text)
    with pytest.raises(ValidationError, match="(?i)watchdog_idle_timeout"):
        Settings()


def test_parse_duration_numbers() -> None:
    assert parse_duration(None) is None
    assert parse_duration(0) is None
    assert parse_duration(30) == 30.0
    assert parse_duration(2.5) == 2.5
    assert parse_duration(True) is None
    with pytest.raises(ValueError, match="negative"):
        parse_duration(-1)


# Validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["8080", "localhost", "host:port", "0.0.0.0:99999", "0.0.0.0:-1",
                                     "0.0.0.0:"])
def test_invalid_address(address: str) -> None:
    with pytest.raises(ValidationError, match="address must be HOST:PORT"):
        Settings(address=address)


@pytest.mark.parametrize("address,host,port,loopback", [
    (":8080", "0.0.0.0", 8080, False),
    ("127.0.0.1:80", "127.0.0.1", 80, True),
    ("127.0.0.2:80", "127.0.0.2", 80, True),
    ("localhost:1", "localhost", 1, True),
    ("[::1]:8080", "::1", 8080, True),
    ("0.0.0.0:0", "0.0.0.0", 0, False),
    ("192.168.1.5:8080", "192.168.1.5", 8080, False),
    (" 10.0.0.1:81 ", "10.0.0.1", 81, False),
])
def test_valid_addresses(address: str, host: str, port: int, loopback: bool) -> None:
    s = Settings(address=address)
    assert (s.host, s.port, s.is_loopback) == (host, port, loopback)


def test_invalid_address_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALAI_ADDRESS", "nowhere")
    with pytest.raises(ValidationError, match="address"):
        Settings()


@pytest.mark.parametrize("level", ["verbose", "trace", "", "critical"])
def test_invalid_log_level(level: str) -> None:
    with pytest.raises(ValidationError, match="log level must be"):
        Settings(log_level=level)


@pytest.mark.parametrize("level,expected", [("DEBUG", "debug"), ("Warn", "warning"), (" error ", "error")])
def test_log_level_normalised(level: str, expected: str) -> None:
    assert Settings(log_level=level).log_level == expected


def test_debug_flag_wins_over_log_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEBUG", "true")
    s = Settings(log_level="error")
    assert s.log_level == "error" and s.effective_log_level == "debug"


@pytest.mark.parametrize("field,value", [("threads", "abc"), ("threads", "0"), ("context_size", "10"),
                                         ("parallel_requests", "0"), ("upload_limit", "0"),
                                         ("max_active_backends", "-1"), ("cors", "perhaps")])
def test_invalid_values_raise(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**{field: value})
    assert [e["loc"][0] for e in info.value.errors()] == [field]


# Lists ---------------------------------------------------------------------------------


def test_api_keys_splitting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEY", " key-1 , key-2,,key-3 ,")
    assert Settings().api_keys == ["key-1", "key-2", "key-3"]
    assert Settings(api_key="solo").api_keys == ["solo"]
    assert Settings(api_key="").api_keys == []
    assert Settings(api_key=" , ").api_keys == []


def test_split_list() -> None:
    assert split_list(None) == []
    assert split_list("a") == ["a"]
    assert split_list("a, b ,") == ["a", "b"]


def test_preload_and_origins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRELOAD_MODELS", "gpt-3.5-turbo, text-embedding-ada-002")
    monkeypatch.setenv("CORS_ALLOW_ORIGINS", "http://a, http://b")
    s = Settings()
    assert s.preload == ["gpt-3.5-turbo", "text-embedding-ada-002"]
    assert s.cors_origins == ["http://a", "http://b"]


# Cores ---------------------------------------------------------------------------------


def test_physical_cores() -> None:
    cores = physical_cores()
    assert isinstance(cores, int)
    assert 1 <= cores <= (os.cpu_count() or 1)
    assert cores <= len(os.sched_getaffinity(0))


def test_effective_threads() -> None:
    assert Settings(threads=3).effective_threads == 3
    assert Settings().effective_threads == physical_cores()


def test_one_size_wording_for_every_message() -> None:
    from lokal.units import format_size, parse_size

    assert [format_size(n) for n in (None, 999, 1000, 2_100_000, 8 << 30)] == \
        ["?", "999 B", "1.0 KB", "2.1 MB", "8.6 GB"]
    assert parse_size("512M") == 512 << 20
