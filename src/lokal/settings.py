"""Server settings: one schema read from flags, environment and `.env`.

Precedence is flags > environment > `.env` in the working directory > defaults.
Every setting answers to its LocalAI name (``MODELS_PATH``) and to the same name
with LocalAI's ``LOCALAI_`` prefix (``LOCALAI_MODELS_PATH``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _env(*names: str) -> AliasChoices:
    """Accept each name bare and with LocalAI's LOCALAI_ prefix."""
    choices: list[str] = []
    for name in names:
        choices += [name, f"LOCALAI_{name}"]
    return AliasChoices(*choices)


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once)."""
    try:
        usable = os.sched_getaffinity(0)
    except AttributeError:  # pragma: no cover - not Linux
        usable = set(range(os.cpu_count() or 1))
    cores: set[str] = set()
    for cpu in usable:
        base = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (base / "physical_package_id").read_text().strip()
            core = (base / "core_id").read_text().strip()
        except OSError:
            cores.add(f"cpu{cpu}")
            continue
        cores.add(f"{package}:{core}")
    return max(1, len(cores))


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float | None:
    """Seconds from a number or a Go-style duration such as ``15m`` or ``1h30m``.

    ``None``, ``""``, ``0`` and ``"off"`` mean disabled.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        if text in ("", "off", "false", "none", "0"):
            return None
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"not a duration: {value!r} (use seconds or e.g. 15m, 1h30m)")
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds or None


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?$")


def parse_size(value: Any) -> int | None:
    """Bytes from a number or a size such as ``512M`` or ``20G`` (binary units); 0: none."""
    match = _SIZE.match(str(value).strip().lower())
    if not match:
        raise ValueError(f"not a size: {value!r} (use bytes or e.g. 512M, 20G)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[match.group(2)]
    return int(float(match.group(1)) * scale) or None


def split_list(value: str | None) -> list[str]:
    """Items of a comma-separated setting, blanks dropped."""
    if not value:
        return []
    return [item.strip() for item in value.split(",") if item.strip()]


class Settings(BaseSettings):
    """Everything `lokal serve` can be told. Field descriptions become `--help`."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
    )

    models_path: Path = Field(
        Path("models"), validation_alias=_env("MODELS_PATH"),
        description="Folder of model files and LocalAI-style YAML configs.",
    )
    config_file: Path | None = Field(
        None, validation_alias=_env("CONFIG_FILE"),
        description="A YAML file holding a list of model configs, read besides the models folder.",
    )
    address: str = Field(
        "0.0.0.0:8080", validation_alias=_env("ADDRESS"),
        description="HOST:PORT to listen on (':8080' means all interfaces).",
    )
    ollama_address: str | None = Field(
        None, validation_alias=_env("OLLAMA_ADDRESS"),
        description="A second HOST:PORT serving the same API, for apps that only talk to Ollama's "
        "port (e.g. 127.0.0.1:11434). Off by default.",
    )
    threads: int | None = Field(
        None, ge=1, validation_alias=_env("THREADS"),
        description="Threads per model engine. Default: the number of physical cores.",
    )
    context_size: int | None = Field(
        None, ge=64, validation_alias=_env("CONTEXT_SIZE"),
        description="Default context window in tokens for models whose config sets none "
        "(default: the model's own, capped at 4096).",
    )
    max_tokens_default: int = Field(
        2048, ge=0, le=10_000_000, validation_alias=_env("MAX_TOKENS_DEFAULT"),
        description="Most tokens a chat or completion generates when neither the request "
        "(max_tokens, n_predict) nor the model's config sets a limit (0: no cap, up to the "
        "end of the context).",
    )
    parallel_requests: int = Field(
        4, ge=1, le=256, validation_alias=_env("PARALLEL_REQUESTS"),
        description="Slots per model: requests decoded together by continuous batching.",
    )
    queue_size: int = Field(
        128, ge=0, le=100_000, validation_alias=_env("QUEUE_SIZE"),
        description="Requests per model that may wait for a slot; beyond that, 429 with Retry-After.",
    )
    request_timeout: float | None = Field(
        None, validation_alias=_env("REQUEST_TIMEOUT"),
        description="End generation requests running longer than this (seconds or 5m; "
        "a request's own `timeout` field may set it per request).",
    )
    realtime_transcription_model: str | None = Field(
        None, validation_alias=_env("REALTIME_TRANSCRIPTION_MODEL"),
        description="Speech-to-text model of realtime sessions that name none "
        "(input_audio_transcription.model; unset: the catalog's first transcription model).",
    )
    realtime_voice_model: str | None = Field(
        None, validation_alias=_env("REALTIME_VOICE_MODEL"),
        description="Text-to-speech model of realtime sessions (a session's `voice` names one of "
        "its voices, or another speech model; unset: the catalog's first speech model).",
    )
    realtime_vad_model: str | None = Field(
        None, validation_alias=_env("REALTIME_VAD_MODEL"),
        description="Voice activity model for realtime sessions' server VAD (unset: the "
        "catalog's first VAD model; none at all: sessions start without turn detection).",
    )
    realtime_max_session_seconds: float = Field(
        1800, gt=0, validation_alias=_env("REALTIME_MAX_SESSION_SECONDS"),
        description="Longest a realtime session may last (seconds); then it ends with an error event.",
    )
    realtime_idle_seconds: float = Field(
        300, gt=0, validation_alias=_env("REALTIME_IDLE_SECONDS"),
        description="Longest a realtime session may go without a client event (seconds).",
    )
    realtime_max_frame_bytes: int = Field(
        15 * 1024 * 1024, gt=0, le=16 * 1024 * 1024, validation_alias=_env("REALTIME_MAX_FRAME_BYTES"),
        description="Largest client event of a realtime session, in bytes (larger: an error event).",
    )
    stream_keepalive: float = Field(
        5.0, gt=0, le=300, validation_alias=_env("STREAM_KEEPALIVE"),
        description="Seconds a stream may go without a byte (a long prompt, a queue) before "
        "its API family's keep-alive is sent (SSE comment, Anthropic ping, ...).",
    )
    watchdog_busy_timeout: float | None = Field(
        None, validation_alias=_env("WATCHDOG_BUSY_TIMEOUT"),
        description="End a request whose model produces nothing for this long, and reload "
        "the model (seconds or 5m; unset: never).",
    )
    shutdown_grace: float = Field(
        30, ge=0, le=3600, validation_alias=_env("SHUTDOWN_GRACE"),
        description="Seconds running requests may take to finish after SIGTERM; then they "
        "end with an error event.",
    )
    prompt_cache_ram: int = Field(
        0, ge=0, le=1_000_000, validation_alias=_env("PROMPT_CACHE_RAM"),
        description="MB of RAM per model for prompt states saved beyond the slots' own caches "
        "(llama.cpp would keep up to 8192; 0: none, memory stays flat).",
    )
    max_active_backends: int = Field(
        0, ge=0, validation_alias=_env("MAX_ACTIVE_BACKENDS", "SINGLE_ACTIVE_BACKEND_COUNT"),
        description="Most models loaded at once; the least recently used is unloaded "
        "to make room (0: no limit).",
    )
    watchdog_idle_timeout: float | None = Field(
        None, validation_alias=_env("WATCHDOG_IDLE_TIMEOUT"),
        description="Unload a model idle this long (seconds or a duration like 15m; "
        "unset: never).",
    )
    engine_isolation: str = Field(
        "process", validation_alias=_env("ENGINE_ISOLATION"),
        description="process: each loaded model's engine runs in a supervised worker process "
        "(a crash costs only that model's running requests); inprocess: engines run inside "
        "the server process.",
    )
    memory_limit: str = Field(
        "auto", validation_alias=_env("MEMORY_LIMIT"),
        description="Memory the loaded models may take (e.g. 8G); a load that would not fit "
        "unloads idle models, else is refused with 507. auto: what the machine has available "
        "less a margin; off: no check.",
    )
    spare_workers: str = Field(
        "auto", validation_alias=_env("SPARE_WORKERS"),
        description="auto: keep one engine worker process started ahead, its libraries imported, "
        "for each kind of engine that has a model not loaded yet, so a model's first load pays for "
        "its weights only; started only while free memory stays at least twice the worker's size, "
        "and stopped first when a load needs room. off: start each worker when a load needs it.",
    )
    embeddings_batching: bool = Field(
        True, validation_alias=_env("EMBEDDINGS_BATCHING"),
        description="Run concurrent embedding requests for a model as shared batches.",
    )
    preload_models: str | None = Field(
        None, validation_alias=_env("PRELOAD_MODELS"),
        description="Comma-separated model names to load at start-up.",
    )
    api_key: str | None = Field(
        None, validation_alias=_env("API_KEY"),
        description="Comma-separated API keys; when set every route but /healthz and "
        "/readyz needs one (Authorization: Bearer KEY or x-api-key: KEY).",
    )
    api_key_file: Path | None = Field(
        None, validation_alias=_env("API_KEY_FILE"),
        description="A file of API keys, one per line (# comments allowed), added to --api-key.",
    )
    api_keys_file: Path | None = Field(
        None, validation_alias=_env("API_KEYS_FILE"),
        description="A YAML list of named API keys (their sha256, never the keys) with optional "
        "limits: requests_per_minute, tokens_per_minute, concurrent_requests, models, admin, "
        "weight. Read again when it changes; `lokal keys add NAME` makes a key.",
    )
    metrics_open: bool = Field(
        False, validation_alias=_env("METRICS_OPEN"),
        description="Serve /metrics without an API key even when keys are set.",
    )
    cors: bool = Field(
        False, validation_alias=_env("CORS"),
        description="Answer cross-origin requests from browsers.",
    )
    cors_allow_origins: str | None = Field(
        None, validation_alias=_env("CORS_ALLOW_ORIGINS"),
        description="Comma-separated origins allowed with --cors (default: any).",
    )
    upload_limit: int = Field(
        15, ge=1, validation_alias=_env("UPLOAD_LIMIT"),
        description="Largest request body in MB; larger ones get 413.",
    )
    # Images (vision models) ----------------------------------------------
    max_image_size: str = Field(
        "20M", validation_alias=_env("MAX_IMAGE_SIZE"),
        description="Largest image a request may carry, decoded (bytes, or e.g. 512K, 20M).",
    )
    allow_remote_images: bool = Field(
        False, validation_alias=_env("ALLOW_REMOTE_IMAGES"),
        description="Fetch http(s) image URLs in requests (off: only data: URIs; fetches follow "
        "the ALLOWED_DOWNLOAD_HOSTS rules).",
    )
    image_fetch_timeout: float = Field(
        10, gt=0, le=600, validation_alias=_env("IMAGE_FETCH_TIMEOUT"),
        description="Seconds a remote image fetch may take.",
    )
    # Image generation ---------------------------------------------------
    image_max_side: int = Field(
        1024, ge=64, le=8192, validation_alias=_env("IMAGE_MAX_SIDE"),
        description="Largest width or height, in pixels, an image generation or edit may ask for "
        "(an image model's memory estimate is taken at this size).",
    )
    image_max_n: int = Field(
        4, ge=1, le=100, validation_alias=_env("IMAGE_MAX_N"),
        description="Most images one image request may ask for (n).",
    )
    generated_content_path: Path | None = Field(
        None, validation_alias=_env("GENERATED_CONTENT_PATH"),
        description="Folder for generated images answered by URL (kept in its images/ "
        "subfolder). Default: a private temporary folder, removed when the server stops.",
    )
    generated_images_ttl: float | None = Field(
        3600, validation_alias=_env("GENERATED_IMAGES_TTL"),
        description="How long a generated image stays at its URL (seconds or e.g. 1h; off: until "
        "GENERATED_IMAGES_KEEP newer ones push it out).",
    )
    generated_images_keep: int = Field(
        256, ge=1, le=1_000_000, validation_alias=_env("GENERATED_IMAGES_KEEP"),
        description="Most generated images kept for URLs; the oldest are removed first.",
    )
    # Model management (installs, deletes) -------------------------------
    galleries: str | None = Field(
        None, validation_alias=_env("GALLERIES"),
        description='Model galleries as LocalAI takes them: a JSON list of {"name", "url"} '
        "(file://, https:// or github:owner/repo/index.yaml@branch), searched after the "
        "built-in gallery.",
    )
    allowed_download_hosts: str | None = Field(
        None, validation_alias=_env("ALLOWED_DOWNLOAD_HOSTS"),
        description="Comma-separated HOST or HOST:PORT that downloads may reach although they "
        "resolve to loopback or private addresses, and over plain http.",
    )
    max_download_size: str = Field(
        "256G", validation_alias=_env("MAX_DOWNLOAD_SIZE"),
        description="Largest file an install may download (bytes, or e.g. 512M, 20G; 0: no cap).",
    )
    download_stall_timeout: float = Field(
        60, gt=0, le=3600, validation_alias=_env("DOWNLOAD_STALL_TIMEOUT"),
        description="Seconds a download may receive nothing before it is retried.",
    )
    admin_api_key: str | None = Field(
        None, validation_alias=_env("ADMIN_API_KEY"),
        description="A key required for model management routes only (install, delete, jobs); "
        "it also works as an API key.",
    )
    allow_remote_admin: bool = Field(
        False, validation_alias=_env("ALLOW_REMOTE_ADMIN"),
        description="Let clients not on loopback manage models without a key (unsafe on a "
        "shared network; logged at start).",
    )
    trusted_proxies: str | None = Field(
        None, validation_alias=_env("TRUSTED_PROXIES"),
        description="Comma-separated proxy addresses or CIDRs whose X-Forwarded-For names the "
        "client for the management routes' loopback check.",
    )
    model_aliases: dict[str, str] = Field(
        default_factory=dict, validation_alias=_env("MODEL_ALIASES"),
        description="JSON map of model names clients hard-code to models this server serves, "
        'e.g. \'{"claude-*": "qwen", "gpt-5*": "qwen"}\' (shell-style patterns; "*" alone is a '
        "catch-all default model). Names that match nothing stay unknown (404).",
    )
    keep_billing_header: bool = Field(
        False, validation_alias=_env("KEEP_BILLING_HEADER"),
        description="Keep the per-request billing line Claude Code puts at the top of its system "
        "prompt (it changes every request, so keeping it defeats the prompt cache).",
    )
    # A Ray cluster (`lokal serve --ray`, docs/scale-out.md) ----------------
    ray: str | None = Field(
        None, validation_alias=_env("RAY"),
        description="Serve as a Ray Serve application on the Ray cluster at this address "
        "(HOST:PORT of its head, or auto); needs pip install 'lokal[ray]'.",
    )
    ray_replicas: int = Field(
        1, ge=1, le=10_000, validation_alias=_env("RAY_REPLICAS"),
        description="Model replicas on the Ray cluster (each holds lokal's engines and pool).",
    )
    ray_min_replicas: int | None = Field(
        None, ge=0, le=10_000, validation_alias=_env("RAY_MIN_REPLICAS"),
        description="With RAY_MAX_REPLICAS: autoscale the model replicas between these bounds.",
    )
    ray_max_replicas: int | None = Field(
        None, ge=1, le=10_000, validation_alias=_env("RAY_MAX_REPLICAS"),
        description="Most model replicas when autoscaling (see RAY_MIN_REPLICAS).",
    )
    ray_cpus_per_replica: float | None = Field(
        None, gt=0, le=1024, validation_alias=_env("RAY_CPUS_PER_REPLICA"),
        description="CPUs each model replica reserves on its node (default: THREADS).",
    )
    ray_proxy_location: str = Field(
        "HeadOnly", validation_alias=_env("RAY_PROXY_LOCATION"),
        description="Where Ray Serve runs its HTTP proxy on ADDRESS: HeadOnly or EveryNode.",
    )
    log_level: str = Field(
        "info", validation_alias=_env("LOG_LEVEL"),
        description="debug, info, warning or error. debug logs rendered prompts.",
    )
    debug: bool = Field(
        False, validation_alias=_env("DEBUG"),
        description="Same as --log-level debug.",
    )
    log_format: str = Field(
        "text", validation_alias=_env("LOG_FORMAT"),
        description="text, or json for one JSON object per line (Loki, Elastic).",
    )

    @field_validator("watchdog_idle_timeout", "watchdog_busy_timeout", "request_timeout",
                     "generated_images_ttl", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        return parse_duration(value)

    @field_validator("max_download_size")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_size(value)
        return str(value).strip()

    @field_validator("model_aliases", mode="before")
    @classmethod
    def _aliases(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return {}
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise ValueError(f"MODEL_ALIASES must be a JSON object of names, e.g. "
                                 f'{{"claude-*": "my-model"}}: {exc}') from None
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) and k and v
                                                  for k, v in value.items()):
            raise ValueError('MODEL_ALIASES must map names to names, e.g. {"claude-*": "my-model"}')
        return value

    @field_validator("max_image_size")
    @classmethod
    def _image_size(cls, value: str) -> str:
        if not parse_size(value):
            raise ValueError("MAX_IMAGE_SIZE must be more than 0 (e.g. 20M)")
        return str(value).strip()

    @field_validator("engine_isolation")
    @classmethod
    def _isolation(cls, value: str) -> str:
        mode = value.strip().lower().replace("-", "").replace("_", "")
        if mode not in ("process", "inprocess"):
            raise ValueError("engine isolation must be process or inprocess")
        return mode

    @field_validator("spare_workers")
    @classmethod
    def _spare_workers(cls, value: str) -> str:
        mode = str(value).strip().lower()
        mode = {"on": "auto", "true": "auto", "1": "auto", "false": "off", "0": "off", "no": "off"}.get(mode, mode)
        if mode not in ("auto", "off"):
            raise ValueError("spare workers must be auto or off")
        return mode

    @field_validator("memory_limit")
    @classmethod
    def _memory_limit(cls, value: str) -> str:
        text = str(value).strip().lower()
        if text not in ("auto", "off", ""):
            if parse_size(text) is None:
                raise ValueError("memory limit must be a size (e.g. 8G), auto or off")
        return text or "auto"

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.strip().lower()
        if level == "warn":
            level = "warning"
        if level not in ("debug", "info", "warning", "error"):
            raise ValueError("log level must be debug, info, warning or error")
        return level

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        fmt = value.strip().lower()
        if fmt not in ("text", "json"):
            raise ValueError("log format must be text or json")
        return fmt

    @field_validator("ray_proxy_location")
    @classmethod
    def _proxy_location(cls, value: str) -> str:
        names = {"headonly": "HeadOnly", "everynode": "EveryNode"}
        key = value.strip().lower().replace("_", "").replace("-", "")
        if key not in names:
            raise ValueError("RAY_PROXY_LOCATION must be HeadOnly or EveryNode")
        return names[key]

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        host, sep, port = value.strip().rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("address must be HOST:PORT, e.g. 0.0.0.0:8080 or :8080")
        return value.strip()

    @field_validator("ollama_address")
    @classmethod
    def _ollama_address(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        host, sep, port = value.strip().rpartition(":")
        if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError("ollama address must be HOST:PORT, e.g. 127.0.0.1:11434")
        return value.strip()

    # Derived values -------------------------------------------------------

    @property
    def host(self) -> str:
        host = self.address.rpartition(":")[0].strip("[]")
        return host or "0.0.0.0"

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    @property
    def ollama_host_port(self) -> tuple[str, int] | None:
        """Where the second (Ollama-port) listener binds, when one is set."""
        if self.ollama_address is None:
            return None
        host, _, port = self.ollama_address.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)

    @property
    def effective_threads(self) -> int:
        return self.threads or physical_cores()

    @property
    def effective_log_level(self) -> str:
        return "debug" if self.debug else self.log_level

    @property
    def api_keys(self) -> list[str]:
        keys = split_list(self.api_key)
        if self.api_key_file is not None:
            try:
                lines = self.api_key_file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ValueError(f"cannot read API_KEY_FILE {self.api_key_file}: {exc.strerror}") from exc
            keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        return keys

    @property
    def cors_origins(self) -> list[str]:
        return split_list(self.cors_allow_origins) or ["*"]

    @property
    def preload(self) -> list[str]:
        return split_list(self.preload_models)

    @property
    def memory_limit_bytes(self) -> int | None:
        """MEMORY_LIMIT in bytes; None for auto and off."""
        return None if self.memory_limit in ("auto", "off") else parse_size(self.memory_limit)

    @property
    def upload_limit_bytes(self) -> int:
        return self.upload_limit * 1024 * 1024

    @property
    def download_hosts(self) -> list[str]:
        return [h.lower() for h in split_list(self.allowed_download_hosts)]

    @property
    def max_image_bytes(self) -> int:
        return parse_size(self.max_image_size) or 0

    @property
    def max_download_bytes(self) -> int | None:
        return parse_size(self.max_download_size)

    @property
    def admin_keys(self) -> list[str]:
        return [self.admin_api_key.strip()] if self.admin_api_key and self.admin_api_key.strip() else []

    @property
    def proxies(self) -> list[str]:
        return split_list(self.trusted_proxies)

    @property
    def is_loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")


def env_names(field: str) -> list[str]:
    """The environment names a setting answers to, for --help."""
    alias = Settings.model_fields[field].validation_alias
    assert isinstance(alias, AliasChoices)
    return [str(choice) for choice in alias.choices]
