"""The official `openai` npm package, on this machine's Node.js, against a real lokal.

tests/clients/node/ holds package.json and its lock (openai 6.x: openai 7 needs
Node.js 22). The test installs them with `npm ci` into pytest's cache directory
(.pytest_cache/d/lokal-node-sdk; a temporary one with -p no:cacheprovider), only
when the lock changed, and runs node/check.mjs there. Node.js and npm are
required: without them the test fails, it does not skip.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients import CHAT, DIMENSIONS, EMBED, start_server
from tests.conftest import LokalServer

NODE_DIR = Path(__file__).parent / "node"
FILES = ("package.json", "package-lock.json")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not on PATH: this test needs Node.js 18 or newer and npm "
                    "(Debian: apt-get install nodejs npm)")
    return path


@pytest.fixture(scope="module")
def node_project(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    node = tool("node")
    version = subprocess.run([node, "-v"], capture_output=True, text=True, check=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 18:
        pytest.fail(f"Node.js {version} is too old for the openai package: 18 or newer is needed")
    npm = tool("npm")
    cache = getattr(pytestconfig, "cache", None)
    folder = Path(cache.mkdir("lokal-node-sdk")) if cache is not None else tmp_path_factory.mktemp("node")
    digest = hashlib.sha256(b"".join((NODE_DIR / name).read_bytes() for name in FILES)).hexdigest()
    stamp = folder / ".installed"
    if not (stamp.is_file() and stamp.read_text() == digest and (folder / "node_modules" / "openai").is_dir()):
        for name in FILES:
            shutil.copyfile(NODE_DIR / name, folder / name)
        result = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=folder,
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            pytest.fail(f"npm ci failed in {folder}:\n{result.stdout}\n{result.stderr}")
        stamp.write_text(digest)
    shutil.copyfile(NODE_DIR / "check.mjs", folder / "check.mjs")
    return folder


@pytest.fixture(scope="module")
def lokal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    server = start_server(tmp_path_factory, "node")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def report(node_project: Path, lokal: LokalServer) -> dict:
    result = subprocess.run([tool("node"), "check.mjs", f"{lokal.base}/v1"], cwd=node_project,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"check.mjs failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_installed_sdk_is_the_locked_one(report: dict, node_project: Path) -> None:
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    installed = json.loads((node_project / "node_modules" / "openai" / "package.json").read_text())
    assert installed["version"] == lock["packages"]["node_modules/openai"]["version"]
    assert report["resolved"].startswith((node_project / "node_modules" / "openai").as_uri())


def test_models(report: dict) -> None:
    assert report["models"] == sorted([CHAT, EMBED])


def test_chat_stream(report: dict) -> None:
    stream = report["stream"]
    assert stream["objects"] == ["chat.completion.chunk"]
    assert len(stream["pieces"]) > 1 and "".join(stream["pieces"]).strip()
    assert stream["finish"] in ("stop", "length")
    assert stream["usage"]["completion_tokens"] > 0 and stream["usage"]["prompt_tokens"] > 0
    assert isinstance(report["chat"], str) and report["chat"]


def test_embeddings_default_base64_decodes_to_the_floats(report: dict) -> None:
    assert report["embeddingsContentType"].startswith("application/json")
    default = report["defaultEmbeddings"]
    assert [item["index"] for item in default] == [0, 1] and all(item["isArray"] for item in default)
    for item, floats in zip(default, report["floatEmbeddings"]):
        assert len(item["values"]) == len(floats) == DIMENSIONS
        assert max(abs(a - b) for a, b in zip(item["values"], floats)) < 1e-6
        assert abs(math.sqrt(sum(v * v for v in floats)) - 1) < 1e-4


def test_typed_not_found_error(report: dict) -> None:
    assert report["notFound"] == {"isNotFound": True, "status": 404, "param": "model"}
