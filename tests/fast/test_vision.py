"""Image input on the fake engine: translation, checks, errors and the engine body.

The real engine path (a tiny projector made here, paired with SmolLM2) is in
tests/api/test_vision.py; this checks everything short of the engine, fast.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.fakeengine import MODEL, write_gguf


def png(width: int = 2, height: int = 2, color: tuple[int, int, int] = (255, 0, 0)) -> bytes:
    """A real PNG, written by hand (no imaging library needed)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + bytes(color) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def ask(*parts: dict[str, Any], model: str = MODEL, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, *parts]}], **fields}


def write_projector(path: Path, projection_dim: int | None = None, vision: bool = True) -> Path:
    extra: dict[str, int | str] = {"general.type": "mmproj", "clip.projector_type": "gemma3"}
    if vision:
        extra["clip.has_vision_encoder"] = 1
    if projection_dim is not None:
        extra["clip.vision.projection_dim"] = projection_dim
    return write_gguf(path, architecture="clip", extra=extra)


@pytest.fixture
def vision_server(fake_server: Any, tmp_path: Path) -> Any:
    """Start the fake model with `mmproj:` in its config (the projector placed in the folder
    the fake server is about to use, tmp_path/models-N)."""
    def start(script: Any = "A red square.", config: str = "mmproj: mmproj-fake.gguf\n", **kw: Any) -> Any:
        index = len(list(tmp_path.glob("models-*")))
        write_projector(tmp_path / f"models-{index}" / "mmproj-fake.gguf")
        return fake_server(script, config=config, **kw)
    return start


def test_image_reaches_the_engine_as_a_data_uri_part(vision_server: Any) -> None:
    server = vision_server()
    image = png(3, 2)
    with server.client() as http:
        r = http.post("/v1/chat/completions", json=ask(image_part(data_uri(image))))
        assert r.status_code == 200, r.text
    content = server.last.body["messages"][-1]["content"]
    assert content[0]["type"] == "image_url"
    url = content[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == image
    assert content[1] == {"type": "text", "text": "What is this?"}
    assert server.engine.options.mmproj_path is not None
    assert server.engine.options.mmproj_path.name == "mmproj-fake.gguf"


def test_several_images_per_message_and_conversation(vision_server: Any) -> None:
    server = vision_server()
    a, b, c = png(1, 1, (1, 2, 3)), png(2, 2, (4, 5, 6)), png(3, 3, (7, 8, 9))
    body = {"model": MODEL, "messages": [
        {"role": "user", "content": [image_part(data_uri(a)), image_part(data_uri(b)),
                                     {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "and"}, image_part(data_uri(c))]},
    ]}
    with server.client() as http:
        assert http.post("/v1/chat/completions", json=body).status_code == 200
    messages = server.last.body["messages"]
    urls = [p["image_url"]["url"] for m in messages if isinstance(m["content"], list)
            for p in m["content"] if p["type"] == "image_url"]
    assert [base64.b64decode(u.split(",", 1)[1]) for u in urls] == [a, b, c]
    assert messages[1]["content"] == "ok"


def test_other_formats_are_sniffed_from_the_bytes(vision_server: Any) -> None:
    pil = pytest.importorskip("PIL.Image")
    server = vision_server()
    with server.client() as http:
        for fmt, media_type in (("JPEG", "image/jpeg"), ("GIF", "image/gif"), ("BMP", "image/bmp")):
            out = io.BytesIO()
            pil.new("RGB", (5, 4), "blue").save(out, fmt)
            # The client's label is wrong on purpose: the bytes decide.
            r = http.post("/v1/chat/completions", json=ask(image_part(data_uri(out.getvalue(), "image/png"))))
            assert r.status_code == 200, (fmt, r.text)
            url = server.last.body["messages"][-1]["content"][0]["image_url"]["url"]
            assert url.startswith(f"data:{media_type};base64,"), fmt


def _error(r: Any) -> dict[str, Any]:
    assert r.status_code == 400, r.text
    return r.json()["error"]


def test_bad_images_are_400_naming_the_part(vision_server: Any) -> None:
    server = vision_server()
    webp = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 24
    cases = {
        "not valid base64": "data:image/png;base64,@@@not-base64@@@",
        "not an image lokal can read": data_uri(b"hello, this is text"),
        "WebP images are not supported": data_uri(webp, "image/webp"),
        "cut short or corrupt": data_uri(png()[:20]),
        "is not an image": data_uri(png(), "text/plain"),
        "over the limit of": data_uri(png(10_000, 10_000)[:33] + b"\x00" * 40),  # 100M pixels
        "ALLOW_REMOTE_IMAGES is off": "http://127.0.0.1:9/cat.png",
        "file:// URLs are never read": "file:///etc/passwd",
        "must be a data: URI": "ftp://example.com/cat.png",
        "needs a comma": "data:image/png;base64",
    }
    with server.client() as http:
        for expected, url in cases.items():
            error = _error(http.post("/v1/chat/completions",
                                     json=ask({"type": "text", "text": "x"}, image_part(url))))
            assert expected in error["message"], (expected, error)
            assert error["message"].startswith("messages.0.content.2: ")
            assert error["param"] == "messages.0.content.2"
        # and the server keeps serving
        assert http.post("/v1/chat/completions", json=ask(image_part(data_uri(png())))).status_code == 200
    assert len(server.calls) == 1  # no bad image reached the engine


def test_size_cap_is_a_setting(vision_server: Any) -> None:
    server = vision_server(max_image_size="1K")
    small, big = png(2, 2), png(200, 200, (1, 1, 1)) + b"\x00" * 2000
    with server.client() as http:
        assert http.post("/v1/chat/completions", json=ask(image_part(data_uri(small)))).status_code == 200
        error = _error(http.post("/v1/chat/completions", json=ask(image_part(data_uri(big)))))
        assert "1024-byte limit" in error["message"] and "MAX_IMAGE_SIZE" in error["message"]


def test_image_to_a_text_model_is_400_naming_it(fake_server: Any) -> None:
    server = fake_server()
    with server.client() as http:
        error = _error(http.post("/v1/chat/completions", json=ask(image_part(data_uri(png())))))
        assert error["param"] == "messages"
        assert f"'{MODEL}' does not take images" in error["message"]
        assert http.post("/v1/chat/completions", json=ask()).status_code == 200
    assert all(not isinstance(m["content"], list) for c in server.calls for m in c.body["messages"])


def test_localai_template_model_refuses_images_with_the_reason(vision_server: Any) -> None:
    server = vision_server(config="mmproj: mmproj-fake.gguf\ntemplate:\n  chat_message: '{{.RoleName}}: {{.Content}}'\n")
    with server.client() as http:
        error = _error(http.post("/v1/chat/completions", json=ask(image_part(data_uri(png())))))
        assert "LocalAI templates" in error["message"] and "use_tokenizer_template" in error["message"]
        assert error["param"] == "messages"


def test_unsupported_part_types_are_still_refused(vision_server: Any) -> None:
    server = vision_server()
    with server.client() as http:
        r = http.post("/v1/chat/completions", json=ask({"type": "input_audio", "input_audio": {}}))
        assert r.status_code == 400 and "input_audio" in r.text


def test_models_list_says_which_models_take_images(vision_server: Any) -> None:
    server = vision_server(files={"plain.gguf": None})
    with server.client() as http:
        models = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
        assert models[MODEL]["capabilities"] == ["chat", "complete", "vision"]
        assert models["plain.gguf"]["capabilities"] == ["chat", "complete"]
        assert "mmproj-fake.gguf" not in models  # a projector is not a model
        assert http.get(f"/v1/models/{MODEL}").json()["capabilities"][-1] == "vision"
        for m in models.values():
            assert {"id", "object", "created", "owned_by"} <= set(m)


def test_loose_projector_pairs_by_name(fake_server: Any, tmp_path: Path) -> None:
    folder = tmp_path / "models-0"
    write_gguf(folder / "eyes-Q4_K_M.gguf")
    write_gguf(folder / "other.gguf")
    write_projector(folder / "mmproj-eyes-f16.gguf")
    server = fake_server()
    with server.client() as http:
        models = {m["id"]: m["capabilities"] for m in http.get("/v1/models").json()["data"]}
        assert "vision" in models["eyes-Q4_K_M.gguf"]
        assert "vision" not in models["other.gguf"] and "vision" not in models[MODEL]
        assert not any(name.startswith("mmproj") for name in models)
        r = http.post("/v1/chat/completions", json=ask(image_part(data_uri(png())), model="eyes-Q4_K_M.gguf"))
        assert r.status_code == 200, r.text
    assert server.engine.options.mmproj_path is not None
    assert server.engine.options.mmproj_path.name == "mmproj-eyes-f16.gguf"


def test_bad_mmproj_configs_are_reported(fake_server: Any, tmp_path: Path) -> None:
    folder = tmp_path / "models-0"
    write_gguf(folder / "a.gguf")
    write_gguf(folder / "b.gguf", extra={"llama.embedding_length": 64})
    write_projector(folder / "proj.gguf", projection_dim=576)
    write_projector(folder / "audio-proj.gguf", vision=False)
    configs = {
        "missing.yaml": "name: missing\nparameters: {model: a.gguf}\nmmproj: nope.gguf\n",
        "outside.yaml": "name: outside\nparameters: {model: a.gguf}\nmmproj: ../proj.gguf\n",
        "notproj.yaml": "name: notproj\nparameters: {model: a.gguf}\nmmproj: b.gguf\n",
        "mismatch.yaml": "name: mismatch\nparameters: {model: b.gguf}\nmmproj: proj.gguf\n",
        "audio.yaml": "name: audio\nparameters: {model: a.gguf}\nmmproj: audio-proj.gguf\n",
    }
    for name, text in configs.items():
        (folder / name).write_text(text)
    server = fake_server()
    errors = {e.name: e.error for e in server.registry.entries}
    assert "does not exist" in errors["missing"]
    assert "may not contain '..'" in errors["outside"]
    assert "not a multimodal projector" in errors["notproj"]
    assert "projects images to 576 dimensions" in errors["mismatch"]
    assert "no vision encoder" in errors["audio"]
    with server.client() as http:
        r = http.post("/v1/chat/completions", json=ask(model="mismatch"))
        assert r.status_code in (404, 500, 503) and "576" in r.text


def test_small_context_is_raised_or_refused(fake_server: Any, tmp_path: Path) -> None:
    index = 0
    write_projector(tmp_path / f"models-{index}" / "mmproj-fake.gguf")
    server = fake_server(config="mmproj: mmproj-fake.gguf\n", context_length=1024)
    with server.client() as http:
        assert http.post("/v1/chat/completions", json=ask(image_part(data_uri(png())))).status_code == 200
    assert server.engine.options.context_size == 2048
    write_projector(tmp_path / "models-1" / "mmproj-fake.gguf")
    server = fake_server(config="mmproj: mmproj-fake.gguf\ncontext_size: 1024\n")
    with server.client() as http:
        r = http.post("/v1/chat/completions", json=ask())
        assert r.status_code >= 400 and "at least 2048" in r.text


@pytest.fixture
def image_host() -> Any:
    """A loopback HTTP server with a few images and a redirect."""
    import http.server
    import threading
    import time

    files = {"/cat.png": png(4, 4, (9, 9, 9)), "/big.png": png(300, 300) + b"\x00" * 4000}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if self.path == "/slow":
                time.sleep(2)
            if self.path == "/elsewhere":
                self.send_response(302)
                self.send_header("Location", "http://127.0.0.2:9/cat.png")
                self.end_headers()
                return
            data = files.get(self.path)
            if data is None:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.files = files  # type: ignore[attr-defined]
    yield server
    server.shutdown()
    server.server_close()


def test_remote_images_only_when_allowed(vision_server: Any, image_host: Any) -> None:
    host = f"127.0.0.1:{image_host.server_address[1]}"
    url = f"http://{host}/cat.png"
    off = vision_server()
    with off.client() as http:
        error = _error(http.post("/v1/chat/completions", json=ask(image_part(url))))
        assert "ALLOW_REMOTE_IMAGES is off" in error["message"]
    assert not off.calls

    # Allowed, but loopback is still off limits unless the host is named.
    unnamed = vision_server(allow_remote_images=True)
    with unnamed.client() as http:
        error = _error(http.post("/v1/chat/completions", json=ask(image_part(url))))
        assert "loopback" in error["message"] and "ALLOWED_DOWNLOAD_HOSTS" in error["message"]

    on = vision_server(allow_remote_images=True, allowed_download_hosts=host, max_image_size="2K")
    with on.client() as http:
        r = http.post("/v1/chat/completions", json=ask(image_part(url)))
        assert r.status_code == 200, r.text
        sent = on.last.body["messages"][-1]["content"][0]["image_url"]["url"]
        assert base64.b64decode(sent.split(",", 1)[1]) == image_host.files["/cat.png"]
        for path, words in (("/big.png", "limit"), ("/missing.png", "HTTP 404"),
                            ("/elsewhere", "127.0.0.2")):  # a redirect to an unnamed loopback host
            error = _error(http.post("/v1/chat/completions",
                                     json=ask(image_part(f"http://{host}{path}"))))
            assert words in error["message"], (path, error)
            assert error["param"] == "messages.0.content.1"
    assert len(on.calls) == 1


def test_a_wrong_loose_pairing_leaves_the_model_a_text_model(fake_server: Any, tmp_path: Path) -> None:
    folder = tmp_path / "models-0"
    write_gguf(folder / "wide.gguf", extra={"llama.embedding_length": 64})
    write_projector(folder / "mmproj-wide.gguf", projection_dim=576)
    server = fake_server()
    entry = server.registry.entry("wide.gguf")
    assert entry.ok and not entry.vision and entry.mmproj_path is None
    with server.client() as http:
        error = _error(http.post("/v1/chat/completions", json=ask(image_part(data_uri(png())), model="wide.gguf")))
        assert "'wide.gguf' does not take images" in error["message"]


def test_a_slow_image_host_is_cut_off(vision_server: Any, image_host: Any) -> None:
    host = f"127.0.0.1:{image_host.server_address[1]}"
    server = vision_server(allow_remote_images=True, allowed_download_hosts=host, image_fetch_timeout=0.5)
    with server.client() as http:
        error = _error(http.post("/v1/chat/completions", json=ask(image_part(f"http://{host}/slow"))))
        assert "0.5s" in error["message"] and "IMAGE_FETCH_TIMEOUT" in error["message"]
    assert not server.calls
