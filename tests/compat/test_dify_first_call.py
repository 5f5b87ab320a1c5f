"""Dify's LocalAI provider checks an embedding model with one request and gives it 10 s.

On a busy machine the first embedding request after a start used to take 9-17 s (the
worker imported torch first), so adding the model in Dify failed once. `lokal demo`
now serves its embedding model on ONNX Runtime from a worker started ahead and preloads
it first: the provider's check passes on the first request sent the moment the server
answers, with another process spinning on a CPU the whole time.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.ports import free_port

EMBED = "text-embedding-ada-002"
DIFY_READ_TIMEOUT = 10.0  # the provider's timeout for the validation request


def test_the_embedding_check_passes_on_the_first_call_after_the_demo_starts(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "demo.log"
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    log = log_path.open("wb")
    demo = subprocess.Popen([sys.executable, "-m", "lokal", "demo", "--folder", str(tmp_path / "demo-models"),
                             "--address", f"127.0.0.1:{port}", "--threads", "2"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        # The demo first prepares its folder (the ONNX export, once); then the server listens.
        deadline = time.monotonic() + 1200
        while True:
            assert demo.poll() is None and time.monotonic() < deadline, log_path.read_text()
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        # What the provider sends to validate the model, with its timeout, at once.
        started = time.monotonic()
        r = httpx.post(f"{base}/v1/embeddings", json={"model": EMBED, "input": "ping"},
                       headers={"Authorization": "Bearer 1", "Content-Type": "application/json"},
                       timeout=httpx.Timeout(DIFY_READ_TIMEOUT, connect=10))
        took = time.monotonic() - started
        assert r.status_code == 200, r.text
        assert len(r.json()["data"][0]["embedding"]) == 384
        print(f"the first embedding request answered {took:.2f}s after the server started listening")
        assert "ONNX Runtime" in log_path.read_text()
    finally:
        spinner.kill()
        spinner.wait()
        demo.terminate()
        try:
            demo.wait(timeout=30)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
        log.close()
