"""Hostile requests beyond tests/api/test_errors.py: huge bodies, odd encodings,
absurd sizes, wrong methods, path tricks, and model folders that try to reach
outside themselves. Every one gets a 4xx in OpenAI's envelope (or a 200 where that
is the right answer), never a 5xx, a hang or a file read; the server serves on.
"""

from __future__ import annotations

import http.client as httpclient
import json
import os
import re
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import CHAT_FILE, LokalServer, place_model
from tests.reliability import (CHAT_MODEL, EMBED_MODEL, demo_models, envelope_problem, family, rss_mb,
                               stream_errors)

CONTEXT = 512
MB = 1024 * 1024
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("hostile")
    models = demo_models(root / "models")
    outside = root / "outside"
    place_model(outside, "secret.gguf")
    (outside / "sub").mkdir()
    place_model(outside / "sub", "deep.gguf")
    # A loose GGUF that is a symlink out of the folder, and a folder symlink.
    (models / "outside-link.gguf").symlink_to(outside / "secret.gguf")
    (models / "outside-dir").symlink_to(outside / "sub", target_is_directory=True)
    configs = {
        "linked.yaml": "name: linked-model\nparameters:\n  model: outside-link.gguf\n",
        "linked-dir.yaml": "name: linked-dir-model\nparameters:\n  model: outside-dir/deep.gguf\n",
        "absolute.yaml": f"name: absolute-model\nparameters:\n  model: {outside / 'secret.gguf'}\n",
        "dotdot.yaml": "name: dotdot-model\nparameters:\n  model: ../outside/secret.gguf\n",
        "dotdot-inner.yaml": f"name: dotdot-inner-model\nparameters:\n  model: sub/../{CHAT_FILE}\n",
    }
    for name, text in configs.items():
        (models / name).write_text(text)
    return models, outside


@pytest.fixture(scope="module")
def server(folders: tuple[Path, Path]) -> Iterator[LokalServer]:
    models, _ = folders
    with LokalServer(models, "--context-size", str(CONTEXT),
                     "--preload-models", f"{CHAT_MODEL},{EMBED_MODEL}") as srv:
        srv.wait_ready(180)
        yield srv


@pytest.fixture
def api(server: LokalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=120) as client:
        yield client


def envelope(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    problem = envelope_problem(response.status_code, response.text)
    assert problem is None, problem
    return response.json()["error"]


def not_5xx(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        assert envelope_problem(response.status_code, response.text) is None, response.text[:500]
    elif "text/event-stream" in response.headers.get("content-type", ""):
        for error in stream_errors(response.text):
            assert isinstance(error.get("code"), int) and error["code"] < 500, error


def chat(api: httpx.Client, content: Any, **extra: Any) -> httpx.Response:
    return api.post(CHAT, json={"model": CHAT_MODEL, "messages": [{"role": "user", "content": content}],
                                 "max_tokens": 4, "temperature": 0, **extra})


def raw(port: int, request: bytes, timeout: float = 30) -> httpclient.HTTPResponse:
    """Send bytes exactly as given (no client-side URL or header normalizing)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(request)
    response = httpclient.HTTPResponse(sock)
    response.begin()
    response.body = response.read()  # type: ignore[attr-defined]
    sock.close()
    return response


def raw_get(port: int, target: str) -> tuple[int, bytes]:
    response = raw(port, f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode("latin-1"))
    return response.status, response.body  # type: ignore[attr-defined]


# --- Size -------------------------------------------------------------------------

def _read_answer(sock: socket.socket) -> bytes:
    """The response as far as it comes: the head, then the body its Content-Length
    names (the head and the body may arrive in separate packets)."""
    sock.settimeout(10)
    answer = b""
    try:
        while b"\r\n\r\n" not in answer:
            piece = sock.recv(4096)
            if not piece:
                return answer
            answer += piece
        head, _, body = answer.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        while length and len(body) < int(length.group(1)):
            piece = sock.recv(4096)
            if not piece:
                break
            body += piece
        return head + b"\r\n\r\n" + body
    except (ConnectionResetError, TimeoutError):
        return answer


def _push_until_answered(port: int, head: bytes, chunk: bytes, total: int,
                         pid: int, limit_s: float = 60) -> tuple[int, int, float, bytes]:
    """Send head, then chunk after chunk up to total bytes, until the server answers.

    Returns (bytes of body sent, peak server RSS growth in MB, seconds, response head)."""
    rss_before = rss_mb(pid)
    peak = rss_before
    sock = socket.create_connection(("127.0.0.1", port), timeout=limit_s)
    sent = 0
    started = time.monotonic()
    answer = b""
    try:
        sock.sendall(head)
        while time.monotonic() - started < limit_s:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            if sent < total:
                try:
                    sock.sendall(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += len(chunk)
            else:
                select.select([sock], [], [], 1)
            peak = max(peak, rss_mb(pid))
        answer = _read_answer(sock)
    finally:
        sock.close()
    peak = max(peak, rss_mb(pid))
    return sent, int(peak - rss_before), time.monotonic() - started, answer


def test_50mb_body_with_length_is_413_before_it_is_read(server: LokalServer) -> None:
    total = 50 * MB
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {total}\r\n\r\n").encode()
    sent, growth, took, answer = _push_until_answered(server.port, head, b"a" * (256 * 1024), total,
                                                      server.proc.pid)
    print(f"\n50 MB with Content-Length: answered after {sent / MB:.1f} MB sent, {took:.2f}s, "
          f"server RSS +{growth} MB; {answer[:40]!r}")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b'"code":413' in answer.replace(b" ", b"")
    assert sent < total / 2, f"the server let {sent / MB:.0f} MB in before answering"
    assert growth < 20, f"server RSS grew {growth} MB"


def test_50mb_chunked_body_is_413_once_past_the_limit(server: LokalServer) -> None:
    total = 50 * MB
    piece = 256 * 1024
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = f"{piece:x}\r\n".encode() + b"a" * piece + b"\r\n"
    sent, growth, took, answer = _push_until_answered(server.port, head, chunk, total, server.proc.pid)
    print(f"\n50 MB chunked: answered after {sent / MB:.1f} MB sent, {took:.2f}s, server RSS +{growth} MB; "
          f"{answer[:40]!r}")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    # The limit is 15 MB; socket buffers on both sides hold a few MB more.
    assert sent < 30 * MB, f"the server let {sent / MB:.0f} MB in before answering"
    assert growth < 60, f"server RSS grew {growth} MB for a body it refused"


# --- Encodings --------------------------------------------------------------------

SURROGATE = '{"model": "%s", %s, "max_tokens": 2}'
# lokal refuses lone surrogates at validation (a 400): they used to reach xllamacpp's
# JSON parser (RuntimeError, a 500) and the Hugging Face tokenizer (TypeError, a 500).
ENGINE_500 = TOKENIZER_500 = None


def _surrogate_cases() -> list[Any]:
    cases = [
        (CHAT, CHAT_MODEL, '"messages": [{"role": "user", "content": "a\\ud800b"}]', ENGINE_500),
        (CHAT, CHAT_MODEL, '"messages": [{"role": "user", "content": "\\udfff"}]', ENGINE_500),
        (CHAT, CHAT_MODEL, '"messages": [{"role": "system", "content": "\\ud83d"}, {"role": "user", "content": "hi"}]',
         ENGINE_500),
        (CHAT, CHAT_MODEL, '"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udc00"}]}]',
         ENGINE_500),
        (CHAT, CHAT_MODEL, '"messages": [{"role": "user", "content": "hi"}], "stop": ["\\ud800"]', ENGINE_500),
        (CHAT, CHAT_MODEL, '"messages": [{"role": "user", "content": "hi"}], "user": "\\ud800"', None),
        ("/v1/completions", CHAT_MODEL, '"prompt": "x\\ud800y"', ENGINE_500),
        ("/v1/completions", CHAT_MODEL, '"prompt": ["ok", "\\ud800"]', ENGINE_500),
        ("/v1/embeddings", EMBED_MODEL, '"input": "x\\ud800y"', TOKENIZER_500),
        ("/v1/embeddings", EMBED_MODEL, '"input": ["ok", "\\udbff\\udbff"]', TOKENIZER_500),
        ("/v1/rerank", EMBED_MODEL, '"query": "\\ud800", "documents": ["a", "\\udc00"]', None),
    ]
    out = []
    for stream in (False, True):
        for path, model, field, bug in cases:
            if stream and path in ("/v1/embeddings", "/v1/rerank"):
                continue  # no streaming there
            out.append(pytest.param(path, model, field, stream, marks=[bug] if bug else [],
                                    id=f"{path.rsplit('/', 1)[-1]}-{field[:40]}-{'stream' if stream else 'whole'}"))
    return out


@pytest.mark.parametrize("path, model, field, stream", _surrogate_cases())
def test_lone_surrogates_are_4xx_or_200(api: httpx.Client, path: str, model: str, field: str,
                                        stream: bool) -> None:
    body = SURROGATE % (model, field)
    if stream:
        body = body[:-1] + ', "stream": true}'
    r = api.post(path, content=body.encode("ascii"), headers={"content-type": "application/json"})
    not_5xx(r)


@pytest.mark.parametrize("where", ["response_format", "tools"])
def test_lone_surrogate_deep_inside_a_schema_is_4xx(api: httpx.Client, where: str) -> None:
    depth = 40
    schema = ('{"type": "object", "properties": {"a": ' * depth
              + '{"type": "string", "description": "\\ud800"}' + "}}" * depth)
    field = (f'"response_format": {{"type": "json_schema", "json_schema": {{"name": "x", "schema": {schema}}}}}'
             if where == "response_format" else
             f'"tools": [{{"type": "function", "function": {{"name": "f", "parameters": {schema}}}}}]')
    body = f'{{"model": "{CHAT_MODEL}", "messages": [{{"role": "user", "content": "hi"}}], "max_tokens": 2, {field}}}'
    not_5xx(api.post(CHAT, content=body.encode("ascii"), headers={"content-type": "application/json"}))


@pytest.mark.parametrize("path, body", [
    (CHAT, {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "a\x00b\x00"}]}),
    (CHAT, {"model": CHAT_MODEL, "messages": [{"role": "user\x00", "content": "hi"}]}),
    (CHAT, {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi", "name": "\x00"}]}),
    (CHAT, {"model": CHAT_MODEL + "\x00", "messages": [{"role": "user", "content": "hi"}]}),
    (CHAT, {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": ["\x00"]}),
    (CHAT, {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "grammar": "root ::= \"\x00\""}),
    ("/v1/completions", {"model": CHAT_MODEL, "prompt": "\x00" * 100}),
    ("/v1/completions", {"model": CHAT_MODEL, "prompt": ["\x00", "a\x00"]}),
    ("/v1/embeddings", {"model": EMBED_MODEL, "input": "\x00"}),
    ("/v1/embeddings", {"model": EMBED_MODEL, "input": ["a\x00b", "\x00" * 1000]}),
])
def test_nul_bytes_are_4xx_or_200(api: httpx.Client, path: str, body: dict[str, Any]) -> None:
    if path != "/v1/embeddings":
        body = dict(body, max_tokens=2)
    r = api.post(path, json=body)
    not_5xx(r)
    if body.get("model", "").endswith("\x00"):
        envelope(r, 404)


# --- Sizes the context cannot hold -------------------------------------------------

def test_max_tokens_a_billion_is_capped_or_refused(api: httpx.Client) -> None:
    r = chat(api, "Say hi.", max_tokens=10**9)
    if r.status_code == 400:
        envelope(r, 400)
        return
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= CONTEXT
    r = api.post("/v1/completions", json={"model": CHAT_MODEL, "prompt": "Once", "max_tokens": 10**9})
    assert r.status_code in (200, 400), r.text
    if r.status_code == 200:
        usage = r.json()["usage"]
        assert usage["prompt_tokens"] + usage["completion_tokens"] <= CONTEXT


def test_prompt_that_fills_the_context_stops_with_length(api: httpx.Client) -> None:
    # Find a prompt a few tokens short of the context, by its reported size.
    words = 400
    for _ in range(6):
        r = api.post("/v1/completions", json={"model": CHAT_MODEL, "prompt": "one " * words,
                                                "max_tokens": 1, "temperature": 0})
        if r.status_code == 400:
            words -= 40
            continue
        assert r.status_code == 200, r.text
        tokens = r.json()["usage"]["prompt_tokens"]
        if CONTEXT - 12 <= tokens < CONTEXT - 2:
            break
        words += max(1, (CONTEXT - 6 - tokens) // 2) if tokens < CONTEXT - 12 else -2
    else:
        pytest.fail("could not size a prompt to the context")
    r = api.post("/v1/completions", json={"model": CHAT_MODEL, "prompt": "one " * words,
                                            "max_tokens": 200, "temperature": 0, "logit_bias": {"2": -100}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length", body
    assert body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"] <= CONTEXT, body["usage"]


def test_ten_thousand_messages(api: httpx.Client) -> None:
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(10_000)]
    started = time.monotonic()
    r = api.post(CHAT, json={"model": CHAT_MODEL, "messages": messages, "max_tokens": 2})
    took = time.monotonic() - started
    error = envelope(r, 400)
    assert error["n_prompt_tokens"] > error["n_ctx"] == CONTEXT, error
    print(f"\n10,000 messages: 400 in {took:.2f}s ({error['n_prompt_tokens']} prompt tokens)")


def test_one_megabyte_system_prompt_is_a_context_error_with_counts(api: httpx.Client) -> None:
    r = api.post(CHAT, json={"model": CHAT_MODEL, "max_tokens": 2, "messages": [
        {"role": "system", "content": "You are helpful. " * (MB // 17)}, {"role": "user", "content": "hi"}]})
    error = envelope(r, 400)
    assert error["param"] == "messages"
    assert error["n_ctx"] == CONTEXT and error["n_prompt_tokens"] > 100_000, error
    assert str(CONTEXT) in error["message"] and str(error["n_prompt_tokens"]) in error["message"]


@pytest.mark.parametrize("part", [
    {"type": "video", "video": "x"},
    {"type": "text"},
    {"type": None, "text": "x"},
    {"text": "no type"},
    {"type": "text", "text": "ok", "extra": {"nested": [1, 2]}},
    "just a string in a list",
    {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}},
    {"type": "tool_result", "content": [{"type": "text", "text": "ok"}]},
])
def test_unknown_or_malformed_content_parts(api: httpx.Client, part: Any) -> None:
    r = chat(api, [part])
    if part in ({"type": "text", "text": "ok", "extra": {"nested": [1, 2]}},
                {"type": "tool_result", "content": [{"type": "text", "text": "ok"}]}):
        assert r.status_code == 200, r.text  # known part types; unknown fields ignored
        return
    error = envelope(r, 400)
    assert error["param"] and error["param"].startswith("messages.0"), error


# --- JSON oddities -----------------------------------------------------------------

def test_duplicate_keys_last_wins_consistently(api: httpx.Client) -> None:
    raw_body = (b'{"model": "no-such-model", "model": "%s", "max_tokens": 100000, "max_tokens": 2, '
                b'"messages": [{"role": "user", "content": "hi", "role": "user"}]}' % CHAT_MODEL.encode())
    r = api.post(CHAT, content=raw_body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == CHAT_MODEL
    assert r.json()["usage"]["completion_tokens"] <= 2
    raw_body = b'{"model": "%s", "model": "no-such-model", "prompt": "x"}' % CHAT_MODEL.encode()
    envelope(api.post("/v1/completions", content=raw_body, headers={"content-type": "application/json"}), 404)


def _nested(depth: int, leaf: str) -> str:
    return '{"a": ' * depth + leaf + "}" * depth


def _nested_schema(depth: int) -> str:
    """A JSON schema of objects nested depth deep, as JSON text (json.dumps would recurse)."""
    return ('{"type": "object", "properties": {"a": ' * depth + '{"type": "string"}'
            + '}, "required": ["a"]}' * depth)


@pytest.mark.parametrize("depth", [50, 500, 5000])
def test_deeply_nested_logit_bias(api: httpx.Client, depth: int) -> None:
    text = (f'{{"model": "{CHAT_MODEL}", "messages": [{{"role": "user", "content": "hi"}}], "max_tokens": 2, '
            f'"logit_bias": {_nested(depth, "1")}}}')
    r = api.post(CHAT, content=text, headers={"content-type": "application/json"})
    envelope(r, 400)


@pytest.mark.parametrize("depth", [20, 200, 900, 5000])
@pytest.mark.parametrize("where", ["json_schema", "schema", "tools"])
def test_deeply_nested_response_format(server: LokalServer, api: httpx.Client, depth: int, where: str) -> None:
    schema = _nested_schema(depth)
    field = {"json_schema": f'"response_format": {{"type": "json_schema", "json_schema": {{"name": "x", "schema": {schema}}}}}',
             "schema": f'"response_format": {{"type": "json_object", "schema": {schema}}}',
             "tools": f'"tools": [{{"type": "function", "function": {{"name": "f", "parameters": {schema}}}}}]'}[where]
    text = f'{{"model": "{CHAT_MODEL}", "messages": [{{"role": "user", "content": "hi"}}], "max_tokens": 2, {field}}}'
    r = api.post(CHAT, content=text, headers={"content-type": "application/json"})
    print(f"\n{depth}-deep {where}: {r.status_code} {r.text[:150]}")
    assert server.proc.poll() is None, f"server died on a {depth}-deep schema:\n{server.log()[-3000:]}"
    not_5xx(r)


# --- Content types and methods ---------------------------------------------------

@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "",
                                          "application/json; charset=latin-1", "image/png"])
def test_json_body_under_any_content_type(api: httpx.Client, content_type: str) -> None:
    body = json.dumps({"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    headers = {"content-type": content_type} if content_type else {}
    r = api.post(CHAT, content=body.encode(), headers=headers)
    assert r.status_code == 200, r.text
    r = api.post(CHAT, content=b"model=gpt-3.5-turbo&messages=hi", headers=headers)
    envelope(r, 400)


def test_get_with_a_body(server: LokalServer) -> None:
    body = b'{"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]}'
    for target, expected in (("/v1/models", 200), ("/healthz", 200), ("/v1/chat/completions", 405)):
        response = raw(server.port, (f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                                     ).encode() + body)
        assert response.status == expected, (target, response.status, response.body)  # type: ignore[attr-defined]
        if expected == 405:
            assert envelope_problem(405, response.body.decode()) is None  # type: ignore[attr-defined]


def _routes(server: LokalServer) -> dict[str, set[str]]:
    spec = httpx.get(f"{server.base}/openapi.json", timeout=30).json()
    routes = {path: {m.upper() for m in item} for path, item in spec["paths"].items()}
    for path in list(routes):
        if path.startswith("/v1/"):
            routes[path[3:]] = routes[path]  # every route also answers without /v1
    return routes


def _matches(template: str, path: str) -> bool:
    """Whether a route template (`/models/{model_id}`, `{name:path}` too) matches path."""
    pattern = re.sub(r"\\{[^}]+\\}", ".+", re.escape(template))  # `{x:path}` takes slashes too
    return re.fullmatch(pattern, path) is not None


def test_every_route_refuses_other_methods_with_405(server: LokalServer) -> None:
    routes = _routes(server)
    assert {"/v1/chat/completions", "/v1/models", "/healthz"} <= set(routes)
    checked = 0
    with httpx.Client(base_url=server.base, timeout=30) as client:
        for path, allowed in sorted(routes.items()):
            # A concrete path may also match another route's template (HEAD /models/apply
            # is GET /models/{model_id}: the model named "apply"); that route answers it.
            allowed = set().union(*(methods for template, methods in routes.items()
                                    if _matches(template, path)))
            if "GET" in allowed:
                allowed = allowed | {"HEAD"}  # HEAD is answered as GET (tests/api/test_auth_cors.py)
            for method in ("HEAD", "OPTIONS", "PUT", "DELETE", "PATCH", "GET", "POST"):
                if method in allowed:
                    continue
                r = client.request(method, path, content=b"{}" if method in ("PUT", "PATCH", "POST") else None)
                if r.status_code == 404:
                    # A route not in the schema may own the path for that method (GET and
                    # DELETE /responses/{id} answer that nothing is stored): not a 405 then.
                    body = client.get(path).text if method == "HEAD" else r.text
                    if "Unknown route" not in body:
                        continue
                assert r.status_code == 405, (method, path, r.status_code, r.text[:200])
                if method != "HEAD":  # HEAD answers carry no body
                    problem = envelope_problem(405, r.text, path)
                    assert problem is None, (method, path, problem)
                    if family(path) in ("openai", "anthropic"):  # Ollama: a bare string; ElevenLabs: a detail
                        assert r.json()["error"]["type"] == "invalid_request_error"
                assert "allow" in {k.lower() for k in r.headers}, (method, path, dict(r.headers))
                checked += 1
    print(f"\n{checked} wrong-method requests over {len(routes)} routes: all 405")


@pytest.mark.parametrize("target, expected", [
    ("/v1/%2e%2e/models", {404}),
    ("/v1/%2E%2E/%2E%2E/etc/passwd", {404}),
    ("/v1/../../etc/passwd", {404}),
    ("/v1/models%00", {404}),
    ("/v1/models%2f", {404, 307}),  # decoded to /v1/models/: redirected to /v1/models
    ("/v1%2fmodels", {404, 200}),   # decoded to /v1/models: routes are names, not files
    ("/v1/models/..%2f..%2fetc%2fpasswd", {404}),
    ("//v1//models", {200}),
    ("/v1/v1/models", {200}),
    ("/v1/models?x=%00&y=%ff", {200}),
    ("/%76%31/models", {200, 404}),
    ("/v1/models/gpt-3.5-turbo", {200, 404}),   # one model's entry, where that route exists
    ("/v1/models/..%2fgpt-3.5-turbo.yaml", {404}),
    ("/v1/models/%2e%2e%2f%2e%2e%2fetc%2fpasswd", {404}),
    ("/v1/models/outside-link.gguf", {404}),     # symlinked out of the folder: not a model
    ("/v1/models/linked-model", {404}),
    ("/v1/models/..%2foutside%2fsecret.gguf", {404}),
    ("/openapi.json/..", {404}),
])
def test_url_path_tricks(server: LokalServer, target: str, expected: set[int]) -> None:
    status, body = raw_get(server.port, target)
    assert status in expected, (target, status, body[:300])
    assert b"root:" not in body and b"parameters:" not in body  # no file ever read back
    if status == 200:
        assert json.loads(body)["object"] in ("list", "model"), body[:300]
    elif status == 307:
        assert not body
    else:
        assert envelope_problem(status, body.decode()) is None, body[:300]


# --- Model names and folders -------------------------------------------------------

HOSTILE_NAMES = ["../gpt-3.5-turbo", "/etc/passwd", "%2e%2e%2fsecret", "../outside/secret.gguf",
                 "secret.gguf", "outside-dir/deep.gguf", "./gpt-3.5-turbo", "gpt-3.5-turbo/",
                 "gpt-3.5-turbo.yaml", CHAT_FILE + "/../" + CHAT_FILE, "all-MiniLM-L6-v2",
                 "~/.ssh/id_rsa", "C:\\Windows\\win.ini", "GPT-3.5-TURBO", " gpt-3.5-turbo"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_model_names_are_404(api: httpx.Client, name: str) -> None:
    r = api.post(CHAT, json={"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    error = envelope(r, 404)
    assert error["param"] == "model"
    envelope(api.post("/v1/embeddings", json={"model": name, "input": "hi"}), 404)


# name -> what the refusal must say
OUTSIDE = {
    "outside-link.gguf": "points outside the models folder",
    "linked-model": "points outside the models folder",
    "linked-dir-model": "points outside the models folder",
    "absolute-model": "not absolute",
    "dotdot-model": "may not contain '..'",
    "dotdot-inner-model": "may not contain '..'",
}


def test_paths_out_of_the_folder_are_not_listed(api: httpx.Client) -> None:
    ids = {m["id"] for m in api.get("/v1/models").json()["data"]}
    assert {CHAT_MODEL, EMBED_MODEL} <= ids
    assert not ids & set(OUTSIDE), ids
    assert not {i for i in ids if "secret" in i or "deep" in i}, ids


@pytest.mark.parametrize("name", list(OUTSIDE))
def test_paths_out_of_the_folder_are_not_served(server: LokalServer, api: httpx.Client, name: str) -> None:
    r = api.post(CHAT, json={"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code in (404, 500), r.text  # an error, never an answer
    if r.status_code == 500:
        message = envelope(r, 500)["message"]
        assert OUTSIDE[name] in message, message
    log = server.log()
    assert f"model {name} (" in log and "cannot be served" in log
    line = next(line for line in log.splitlines() if f"model {name} (" in line)
    assert OUTSIDE[name] in line, line
    assert f"loading model {name}" not in log


def test_server_still_chats_after_everything(server: LokalServer, api: httpx.Client) -> None:
    assert server.proc.poll() is None
    r = chat(api, "Say hi.")
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]
    assert os.path.exists(f"/proc/{server.proc.pid}")
