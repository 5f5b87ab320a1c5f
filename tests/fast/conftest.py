"""The fast tier: lokal's HTTP API on the fake engine (no model), every test marked `fast`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakeengine import FakeServer

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.fast)


@pytest.fixture
def fake_server(tmp_path: Path) -> Iterator[Callable[..., FakeServer]]:
    """Start lokal on the fake engine: `fake_server(script, config=..., **settings)`."""
    servers: list[FakeServer] = []

    def start(script: Any = "Hello from the fake engine.", **kwargs: Any) -> FakeServer:
        server = FakeServer(tmp_path / f"models-{len(servers)}", script, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
