"""A real lokal server on the fake engine: uvicorn on a loopback port, in a thread.

Requests go through real HTTP (middleware, streaming, disconnects as clients see
them), and the engine is `lokal.engines.fake.FakeEngine`, so a test runs in
milliseconds. The only coupling to lokal's internals is `FakeServer._build`: the
app built the way `lokal serve` builds it, with the fake engine factory.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from lokal.engines.base import Engine, LoadOptions
from lokal.engines.fake import FakeEngine, FakeRequest, Script
from lokal.settings import Settings

# GGUF metadata value types (gguf spec).
_U32, _STRING = 4, 8


def write_gguf(path: Path, *, architecture: str = "llama", context_length: int = 4096,
               chat_template: str | None = None, extra: dict[str, int | str] | None = None) -> Path:
    """A minimal valid GGUF file: the header lokal reads, no tensors."""
    metadata: dict[str, int | str] = {"general.architecture": architecture,
                                      "general.name": "fake",
                                      f"{architecture}.context_length": context_length}
    if chat_template is not None:
        metadata["tokenizer.chat_template"] = chat_template
    metadata.update(extra or {})

    def string(value: str) -> bytes:
        data = value.encode()
        return struct.pack("<Q", len(data)) + data

    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, 0, len(metadata)))
    for key, value in metadata.items():
        out += string(key)
        if isinstance(value, int):
            out += struct.pack("<I", _U32) + struct.pack("<I", value)
        else:
            out += struct.pack("<I", _STRING) + string(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(out))
    return path


class _OnlyGiven(Settings):
    """Settings from the test's arguments only: no environment, no .env file."""

    @classmethod
    def settings_customise_sources(cls, settings_cls: Any, init_settings: Any, **others: Any) -> Any:
        return (init_settings,)


MODEL = "fake"


class FakeServer:
    """lokal serving a models folder of fake GGUFs, on the fake engine.

    `config` is YAML added to the default model's config (`name: fake`, file
    `fake.gguf`); `files` are more files for the folder (configs, templates,
    other GGUFs: a value of None writes a fake GGUF). `chat_template` goes into the
    default model's GGUF header. `settings` are `Settings` fields
    (`parallel_requests=1`, `queue_size=0`, `request_timeout=0.5`, ...).
    """

    def __init__(self, folder: Path, script: Script = "Hello from the fake engine.", *,
                 config: str = "", files: dict[str, str | None] | None = None,
                 context_length: int = 4096, chat_template: str | None = None, **settings: Any) -> None:
        self.folder = folder
        self.script = script
        self.engines: list[FakeEngine] = []
        write_gguf(folder / f"{MODEL}.gguf", context_length=context_length, chat_template=chat_template)
        (folder / f"{MODEL}.yaml").write_text(f"name: {MODEL}\nparameters:\n  model: {MODEL}.gguf\n" + config)
        for name, text in (files or {}).items():
            if text is None:
                write_gguf(folder / name, context_length=context_length)
            else:
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_text(text)
        settings.setdefault("threads", 1)
        self.settings = _OnlyGiven(models_path=folder, address="127.0.0.1:0", **settings)
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._server = self._build()
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="fake-lokal", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake lokal server did not start")
            time.sleep(0.005)

    def _factory(self, engine_name: str, options: LoadOptions) -> Engine:
        engine = FakeEngine(options, self.script)
        self.engines.append(engine)
        return engine

    def _build(self) -> Any:
        """The app as `lokal serve` builds it, on the fake engine (the one coupling point)."""
        import uvicorn

        from lokal.api.app import create_app
        from lokal.cli.main import make_registry

        self.registry = make_registry(self.settings, self.settings.effective_threads, self._factory)
        self.app = create_app(self.settings, self.registry)
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="on",
                                timeout_graceful_shutdown=2)
        return uvicorn.Server(config)

    # For tests ------------------------------------------------------------------

    @property
    def engine(self) -> FakeEngine:
        """The most recently loaded engine instance."""
        assert self.engines, "no model was loaded"
        return self.engines[-1]

    @property
    def calls(self) -> list[FakeRequest]:
        """Every engine call so far, over every engine instance."""
        return [call for engine in self.engines for call in engine.calls]

    @property
    def last(self) -> FakeRequest:
        calls = self.calls
        assert calls, "the engine was not called"
        return max(calls, key=lambda c: c.started)

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 10)
        return httpx.Client(base_url=self.base, **kwargs)

    def wait(self, predicate: Any, timeout: float = 5.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.002)

    def stop(self) -> None:
        for engine in self.engines:
            engine.unstick.set()  # stalled engine calls return, so nothing outlives the test
        self._server.should_exit = True
        self._thread.join(15)
        self._sock.close()
        if self._thread.is_alive():
            raise RuntimeError("the fake lokal server did not stop")

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def sse_events(text: str) -> list[Any]:
    """The data of a Server-Sent Events body: JSON objects, and "[DONE]" as a string."""
    import json

    out: list[Any] = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def chat(content: str = "hi", **fields: Any) -> dict[str, Any]:
    """A chat request body for the fake model."""
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


def completion(prompt: Any = "Once upon a time", **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": prompt, **fields}
