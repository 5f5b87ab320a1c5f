"""A client that leaves while its long prompt is being read frees the model's slot.

The binding lokal drives llama.cpp through never asks whether a client left; the engine
only learns of it through a chunk's callback. lokal asks the engine for a progress chunk
after each prompt batch (and bounds the batch), so a request whose client is gone is
stopped within a batch or two of its prefill, not after the whole prompt.
"""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import httpx

from tests.conftest import LokalServer, place_model

BATCH = 64  # prompt tokens per engine step: small, so that each step is short on any machine


def test_a_client_leaving_during_prefill_frees_the_slot(tmp_path: Path) -> None:
    models = tmp_path / "models"
    place_model(models, "smol.gguf")
    (models / "smol.yaml").write_text(f"name: smol\nparameters:\n  model: smol.gguf\n  batch: {BATCH}\n"
                                      "context_size: 4096\n")
    # One slot: the second request can only run once the first has let go of it.
    with LokalServer(models, "--parallel-requests", "1", "--preload-models", "smol", "--log-level", "debug") as server:
        server.wait_ready(300)
        words = " ".join(f"item{i}" for i in range(700))  # about 2,900 tokens: some 45 batches
        body = json.dumps({"model": "smol", "stream": True, "max_tokens": 4,
                           "messages": [{"role": "user", "content": f"Summarise: {words}"}]}).encode()
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        # In prefill: the engine has reported its first batches.
        deadline = time.monotonic() + 280
        while "prompt processing, n_tokens" not in server.log():
            assert time.monotonic() < deadline and " 400 " not in server.log(), server.log()[-3000:]
            time.sleep(0.1)
        time.sleep(1)
        sock.close()
        left = time.monotonic()
        r = httpx.post(f"{server.base}/v1/chat/completions", timeout=600, json={
            "model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        took = time.monotonic() - left
        assert r.status_code == 200, r.text
        log = server.log()
    # The long prompt's task was released part-way through its prompt, not at its end: its
    # progress lines say how far each batch got, its release line where it stopped.
    progress = re.search(r"task (\d+) \| prompt processing, n_tokens =\s*(\d+), progress = ([\d.]+)", log)
    assert progress is not None, log[-3000:]
    task, done, share = progress.group(1), int(progress.group(2)), float(progress.group(3))
    total = done / share
    released = re.search(rf"task {task} \| stop processing: n_tokens = (\d+)", log)
    assert released is not None, log[-3000:]
    assert int(released.group(1)) < total / 2, (released.group(0), total)
    # The access log says the client went away (499) and counts the prompt it sent.
    gone = re.search(r"POST /v1/chat/completions 499 [\d.]+s model=smol tokens=(\d+)\+\d+", log)
    assert gone is not None and int(gone.group(1)) > total / 2, log[-3000:]
    print(f"the short request was answered {took:.1f}s after the client left; the long prompt stopped at "
          f"{released.group(1)} of about {total:.0f} tokens")
