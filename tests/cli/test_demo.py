"""`lokal demo`: the quick start's server, with both demo models working."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.ports import free_port


def test_demo_serves_chat_and_embeddings(tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "demo.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "lokal", "demo", "--folder", str(tmp_path / "demo-models"),
                             "--address", f"127.0.0.1:{port}", "--threads", "2"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "demo.log").read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError((tmp_path / "demo.log").read_text())
        ids = {m["id"] for m in httpx.get(f"{base}/v1/models").json()["data"]}
        assert ids == {"gpt-3.5-turbo", "text-embedding-ada-002"}
        chat = httpx.post(f"{base}/v1/chat/completions", timeout=60, json={
            "model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8})
        assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"]
        emb = httpx.post(f"{base}/v1/embeddings", timeout=60,
                         json={"model": "text-embedding-ada-002", "input": "hello"})
        assert emb.status_code == 200 and len(emb.json()["data"][0]["embedding"]) == 384
        # Both were preloaded: nothing loaded on these requests.
        text = (tmp_path / "demo.log").read_text()
        assert text.index("model text-embedding-ada-002 ready") < text.index("lokal.api.app: ready")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
