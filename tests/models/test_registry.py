"""Model lifecycle with the real engine: load once, LRU limit, idle unload, preload."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path

import httpx
import pytest

from lokal.api.app import create_app
from lokal.engines.base import Engine, LoadOptions
from lokal.errors import ModelUnavailableError, UnknownModelError
from lokal.models.registry import EngineDefaults, ModelRegistry, default_engine_factory, local_registry
from lokal.settings import Settings
from tests.conftest import place_model


class CountingFactory:
    """The real engine factory, counting loads and closes, optionally held at a gate."""

    def __init__(self) -> None:
        self.loads: list[str] = []
        self.closed: list[str] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, engine_name: str, options: LoadOptions) -> Engine:
        self.gate.wait(30)
        self.loads.append(options.model_path.name)
        engine = default_engine_factory(engine_name, options)
        close = engine.close

        def counted_close() -> None:
            self.closed.append(options.model_path.name)
            close()

        engine.close = counted_close  # type: ignore[method-assign]
        return engine


@pytest.fixture
def two_models(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    place_model(models, "a.gguf")
    place_model(models, "b.gguf")
    return models


async def use(registry: ModelRegistry, name: str) -> None:
    """One request's worth of the model: lease it and give it back."""
    async with registry.lease(name, "chat"):
        pass


def make(models: Path, factory: CountingFactory, **kwargs: object) -> ModelRegistry:
    return local_registry(models, EngineDefaults(threads=2, parallel=2, context_size=512),
                         engine_factory=factory, **kwargs)  # type: ignore[arg-type]


def test_concurrent_first_requests_load_once(two_models: Path) -> None:
    factory = CountingFactory()

    async def main() -> None:
        registry = make(two_models, factory)
        async with contextlib.AsyncExitStack() as stack:
            leases = await asyncio.gather(*[stack.enter_async_context(registry.lease("a.gguf", "chat"))
                                            for _ in range(5)])
            assert len({id(lease.engine) for lease in leases}) == 1
        await registry.close()

    asyncio.run(main())
    assert factory.loads == ["a.gguf"]
    assert factory.closed == ["a.gguf"]


def test_lru_model_is_unloaded_when_the_limit_is_reached(two_models: Path) -> None:
    factory = CountingFactory()

    async def main() -> None:
        registry = make(two_models, factory, max_active=1)
        await use(registry, "a.gguf")
        await use(registry, "b.gguf")
        assert not registry.is_loaded("a.gguf") and registry.is_loaded("b.gguf")
        await registry.close()

    asyncio.run(main())
    assert factory.loads == ["a.gguf", "b.gguf"]
    assert factory.closed == ["a.gguf", "b.gguf"]


def test_a_model_in_use_is_not_unloaded_under_its_request(two_models: Path) -> None:
    factory = CountingFactory()

    async def main() -> None:
        registry = make(two_models, factory, max_active=1)
        held = contextlib.AsyncExitStack()
        await held.enter_async_context(registry.lease("a.gguf", "chat"))
        waiting = asyncio.create_task(use(registry, "b.gguf"))
        await asyncio.sleep(0.3)
        assert not waiting.done() and registry.is_loaded("a.gguf")
        await held.aclose()
        await waiting
        assert registry.is_loaded("b.gguf") and not registry.is_loaded("a.gguf")
        await registry.close()

    asyncio.run(main())


def test_idle_models_are_unloaded_by_the_watchdog(two_models: Path) -> None:
    factory = CountingFactory()

    async def main() -> None:
        registry = make(two_models, factory, idle_timeout=0.5)
        registry.start_watchdog()
        await use(registry, "a.gguf")
        assert registry.is_loaded("a.gguf")
        for _ in range(40):
            await asyncio.sleep(0.1)
            if not registry.is_loaded("a.gguf"):
                break
        assert not registry.is_loaded("a.gguf")
        # It loads again on the next request.
        await use(registry, "a.gguf")
        await registry.close()

    asyncio.run(main())
    assert factory.loads == ["a.gguf", "a.gguf"]


def test_unknown_and_broken_models(two_models: Path) -> None:
    (two_models / "empty.gguf").write_bytes(b"")

    async def main() -> None:
        registry = make(two_models, CountingFactory())
        with pytest.raises(UnknownModelError):
            await use(registry, "c.gguf")
        with pytest.raises(ModelUnavailableError, match="empty"):
            await use(registry, "empty.gguf")
        await registry.close()

    asyncio.run(main())


def test_readyz_is_503_while_preloading(two_models: Path) -> None:
    factory = CountingFactory()
    factory.gate.clear()
    settings = Settings(models_path=two_models, preload_models="a.gguf", threads=2)

    async def main() -> None:
        registry = make(two_models, factory)
        app = create_app(settings, registry)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://lokal") as http:
                assert (await http.get("/healthz")).status_code == 200
                assert (await http.get("/readyz")).status_code == 503
                factory.gate.set()
                for _ in range(100):
                    if (await http.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.05)
                assert (await http.get("/readyz")).status_code == 200
                assert registry.is_loaded("a.gguf")

    asyncio.run(main())
    assert factory.loads == ["a.gguf"]
