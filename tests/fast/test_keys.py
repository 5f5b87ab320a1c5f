"""Named API keys on the fake engine: the keys file (hashes only, reloaded on change),
each limit's 429, the 403 for models a key may not use, admin rights, usage per key
against the answers' own usage, the access log, and fair share of the slots."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from lokal import callers
from lokal.cli.main import main as lokal_main
from lokal.engines.fake import reply, stall
from lokal.keys import KeysFileError, add_key, hash_key, parse_keys, remove_key
from tests.fakeengine import chat, sse_events

MODELS = {"other.gguf": None, "other.yaml": "name: other\nparameters:\n  model: other.gguf\n",
          "emb.gguf": None, "emb.yaml": "name: emb\nparameters:\n  model: emb.gguf\nembeddings: true\n",
          "whisper-1.yaml": "name: whisper-1\nbackend: whisper\nparameters:\n  model: whisper\n"}


def _whisper(folder: Path) -> None:
    """A folder the catalog reads as a CTranslate2 Whisper model (the fake engine transcribes it)."""
    target = folder / "whisper"
    target.mkdir(parents=True, exist_ok=True)
    (target / "model.bin").write_bytes(b"\0" * 16)
    (target / "config.json").write_text(json.dumps({"alignment_heads": [[1, 0]]}))


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Keys:
    """A keys file made with `add_key`, and the keys it printed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys: dict[str, str] = {}

    def add(self, name: str, **limits: Any) -> str:
        self.keys[name] = add_key(self.path, name, **limits)
        return self.keys[name]

    def __getitem__(self, name: str) -> str:
        return self.keys[name]


@pytest.fixture
def keyfile(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "keys.yaml")


def _server(fake_server, keyfile: Keys, script: Any = "Hello from the fake engine.", **settings: Any):
    server = fake_server(script, files=MODELS, api_keys_file=keyfile.path, **settings)
    _whisper(server.folder)
    server.registry.scan()
    return server


# The keys file ------------------------------------------------------------------------


def test_keys_add_prints_the_key_once_and_stores_only_its_hash(tmp_path: Path, capsys) -> None:
    path = tmp_path / "keys.yaml"
    assert lokal_main(["keys", "add", "alice", "--file", str(path), "--requests-per-minute", "5",
                       "--models", "fake,emb*", "--weight", "2"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("lk-") and len(key) > 40
    text = path.read_text()
    assert key not in text and hash_key(key) in text
    assert path.stat().st_mode & 0o077 == 0  # readable by its owner only
    [alice] = parse_keys(text)
    assert (alice.name, alice.requests_per_minute, alice.models, alice.weight) == ("alice", 5, ("fake", "emb*"), 2.0)
    assert lokal_main(["keys", "list", "--file", str(path)]) == 0
    listed = capsys.readouterr().out
    assert "alice" in listed and "requests_per_minute=5" in listed and hash_key(key) not in listed
    assert lokal_main(["keys", "add", "alice", "--file", str(path)]) == 1  # the name is taken
    assert "already has a key named 'alice'" in capsys.readouterr().err


def test_keys_file_errors_say_what_and_where(tmp_path: Path) -> None:
    good = "a" * 64
    cases = {
        "- name: a\n  key: sk-123\n": "never the key itself",
        "- name: a\n  sha256: sk-123\n": "64 hex digits",
        f"- name: a\n  sha256: {good}\n  request_per_minute: 5\n": "unknown field",
        f"- name: a\n  sha256: {good}\n- name: a\n  sha256: {'b' * 64}\n": "used twice",
        f"- name: a\n  sha256: {good}\n- name: b\n  sha256: {good}\n": "listed twice",
        f"- name: a b\n  sha256: {good}\n": "name",
        f"- name: a\n  sha256: {good}\n  weight: 0\n": "weight",
        "name: a\n": "YAML list",
        "- [": "not valid YAML",
    }
    for text, expected in cases.items():
        with pytest.raises(KeysFileError, match=expected):
            parse_keys(text)
    assert parse_keys("") == [] and parse_keys("# only a comment\n") == []
    assert [k.name for k in parse_keys(f"keys:\n  - name: a\n    sha256: {good.upper()}\n")] == ["a"]


def test_remove_keeps_the_other_keys_and_comments(keyfile: Keys) -> None:
    keyfile.add("a")
    keyfile.add("b", models=["x"])
    keyfile.add("c", admin=True)
    keyfile.path.write_text(keyfile.path.read_text() + "# a note at the end\n")
    assert remove_key(keyfile.path, "b") is True
    assert [k.name for k in parse_keys(keyfile.path.read_text())] == ["a", "c"]
    assert "# a note at the end" in keyfile.path.read_text()
    assert remove_key(keyfile.path, "nobody") is False


def test_a_bad_keys_file_stops_the_start(tmp_path: Path, capsys) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("- name: a\n  key: secret\n")
    assert lokal_main(["serve", "--models-path", str(tmp_path), "--api-keys-file", str(path)]) == 2
    assert "never the key itself" in capsys.readouterr().err
    assert lokal_main(["serve", "--models-path", str(tmp_path), "--api-keys-file", str(tmp_path / "no")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_named_keys_are_checked_and_reloaded_on_change(fake_server, keyfile: Keys) -> None:
    alice = keyfile.add("alice")
    server = _server(fake_server, keyfile, api_key="plain")
    with server.client() as client:
        assert client.get("/v1/models", headers=auth(alice)).status_code == 200
        assert client.get("/v1/models", headers={"x-api-key": alice}).status_code == 200
        assert client.get("/v1/models", headers=auth("plain")).status_code == 200  # API_KEY still works
        r = client.get("/v1/models", headers=auth("lk-wrong"))
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = client.post("/api/chat", json={"model": "fake", "messages": []}, headers=auth("lk-wrong"))
        assert r.status_code == 401 and set(r.json()) == {"error"}  # in Ollama's envelope
        bob = keyfile.add("bob")  # while the server runs
        assert client.get("/v1/models", headers=auth(bob)).status_code == 200
        remove_key(keyfile.path, "alice")
        assert client.get("/v1/models", headers=auth(alice)).status_code == 401
        # A change that does not parse leaves the keys read before in force.
        keyfile.path.write_text(keyfile.path.read_text() + "- name: broken\n")
        assert client.get("/v1/models", headers=auth(bob)).status_code == 200
        assert client.get("/v1/models", headers=auth(alice)).status_code == 401


def test_keys_are_compared_as_hashes_in_constant_time(fake_server, keyfile: Keys, monkeypatch) -> None:
    for name in ("a", "b", "c"):
        keyfile.add(name)
    server = _server(fake_server, keyfile, api_key="plain")
    compared: list[tuple[bytes, bytes]] = []
    real = callers.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(callers.hmac, "compare_digest", spy)
    with server.client() as client:
        assert client.get("/v1/models", headers=auth(keyfile["b"])).status_code == 200
    digest = hashlib.sha256(keyfile["b"].encode()).hexdigest().encode()
    # The presented key's hash against every hash (API_KEY's and the three named ones),
    # never the key itself, and no early exit on the match.
    assert {a for a, _ in compared} == {digest}
    assert sorted(b for _, b in compared) == sorted(
        [hash_key("plain").encode()] + [hash_key(keyfile[n]).encode() for n in ("a", "b", "c")])


# Limits ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


#: One request per API family, and how to read its error: (method, path, body, error reader).
FAMILIES = {
    "openai chat": ("/v1/chat/completions", lambda m: chat("hi", model=m),
                    lambda r: r.json()["error"]["message"]),
    "openai completion": ("/v1/completions", lambda m: {"model": m, "prompt": "hi"},
                          lambda r: r.json()["error"]["message"]),
    "ollama": ("/api/chat", lambda m: {"model": m, "stream": False, "messages": [{"role": "user", "content": "hi"}]},
               lambda r: r.json()["error"]),
    "responses": ("/v1/responses", lambda m: {"model": m, "input": "hi"}, lambda r: r.json()["error"]["message"]),
    "messages": ("/v1/messages", lambda m: {"model": m, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
                 lambda r: r.json()["error"]["message"]),
}


def _envelope_ok(family: str, r: httpx.Response, status: int) -> None:
    body = r.json()
    if family == "ollama":
        assert set(body) == {"error"} and isinstance(body["error"], str)
    elif family == "messages":
        assert body["type"] == "error" and body["error"]["type"] == {
            403: "permission_error", 429: "rate_limit_error"}[status]
    else:
        assert body["error"]["code"] == status
        assert body["error"]["type"] == {403: "permission_error", 429: "rate_limit_error"}[status]


def test_requests_per_minute_is_a_429_naming_the_limit_in_each_family(fake_server, keyfile: Keys) -> None:
    key = keyfile.add("scripts", requests_per_minute=2)
    boss = keyfile.add("boss", admin=True)
    server = _server(fake_server, keyfile)
    clock = Clock()
    server.app.state.keys.gate.clock = clock
    with server.client(headers=auth(key)) as client:
        assert client.get("/v1/models").status_code == 200  # no model used: not counted
        for family, (path, body, message) in FAMILIES.items():
            clock.now += 61  # a fresh minute for each family
            assert client.post(path, json=body("fake")).status_code == 200, family
            clock.now += 10
            assert client.post(path, json=body("fake")).status_code == 200, family
            clock.now += 10
            r = client.post(path, json=body("fake"))
            assert r.status_code == 429, (family, r.text)
            assert r.headers["retry-after"] == "40"  # the first of the two leaves the minute then
            assert "requests_per_minute" in message(r) and "'scripts'" in message(r), family
            _envelope_ok(family, r, 429)
            clock.now += 40
            assert client.post(path, json=body("fake")).status_code == 200, family
        # An Ollama chat leases its model twice (load, then generate): it counts once.
        clock.now += 61
        for _ in range(2):
            assert client.post("/api/chat", json=FAMILIES["ollama"][1]("fake")).status_code == 200
    with server.client(headers=auth(boss)) as client:
        metrics = client.get("/metrics").text
    assert 'lokal_key_limited_total{key="scripts",limit="requests_per_minute"} 5.0' in metrics


def test_tokens_per_minute(fake_server, keyfile: Keys) -> None:
    key = keyfile.add("t", tokens_per_minute=10)
    server = _server(fake_server, keyfile, [reply("a", "b", "c", prompt_tokens=4)])  # 7 tokens a request
    clock = Clock()
    server.app.state.keys.gate.clock = clock
    with server.client(headers=auth(key)) as client:
        assert client.post("/v1/chat/completions", json=chat()).status_code == 200
        clock.now += 1
        assert client.post("/v1/chat/completions", json=chat(stream=True)).status_code == 200  # 7 < 10
        clock.now += 1
        r = client.post("/v1/chat/completions", json=chat())  # 14 >= 10
        assert r.status_code == 429 and r.json()["error"]["limit"] == "tokens_per_minute"
        assert "10 tokens per minute" in r.json()["error"]["message"]
        assert r.headers["retry-after"] == "58"  # then the first request's 7 leave: 7 < 10
        clock.now += 58
        assert client.post("/v1/chat/completions", json=chat()).status_code == 200


def test_concurrent_requests(fake_server, keyfile: Keys) -> None:
    key = keyfile.add("c", concurrent_requests=1)
    other = keyfile.add("d")
    gate = threading.Event()
    server = _server(fake_server, keyfile, lambda req: [stall(gate), reply("x")] if "slow" in req.text
                     else [reply("y")])
    results: list[httpx.Response] = []
    def slow() -> None:
        with server.client(headers=auth(key)) as client:
            results.append(client.post("/v1/chat/completions", json=chat("slow")))

    worker = threading.Thread(target=slow)
    worker.start()
    server.wait(lambda: len(server.calls) == 1, what="the first request generating")
    with server.client() as client:
        for stream in (False, True):
            r = client.post("/v1/chat/completions", json=chat(stream=stream), headers=auth(key))
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["limit"] == "concurrent_requests"
        r = client.post("/v1/embeddings", json={"model": "emb", "input": "x"}, headers=auth(key))
        assert r.status_code == 429  # every family counts
        assert client.post("/v1/chat/completions", json=chat(), headers=auth(other)).status_code == 200
        gate.set()
        worker.join(5)
        assert results[0].status_code == 200
        assert client.post("/v1/chat/completions", json=chat(), headers=auth(key)).status_code == 200


# Models a key may use -------------------------------------------------------------


def test_a_forbidden_model_is_a_403_that_does_not_reveal_whether_it_exists(fake_server, keyfile: Keys) -> None:
    key = keyfile.add("narrow", models=["fake", "emb"])
    server = _server(fake_server, keyfile)
    with server.client(headers=auth(key)) as client:
        for family, (path, body, message) in FAMILIES.items():
            assert client.post(path, json=body("fake")).status_code == 200, family
            answers = {}
            for model in ("other", "no-such-model"):
                r = client.post(path, json=body(model))
                assert r.status_code == 403, (family, model, r.text)
                _envelope_ok(family, r, 403)
                answers[model] = r.text.replace(model, "MODEL")
            assert answers["other"] == answers["no-such-model"], family
        for path, body in (("/v1/embeddings", {"input": "x"}), ("/api/embed", {"input": "x"}),
                           ("/v1/rerank", {"query": "q", "documents": ["a"]})):
            assert client.post(path, json={"model": "emb", **body}).status_code == 200, path
            assert client.post(path, json={"model": "other", **body}).status_code == 403, path
        r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF", "audio/wav")},
                        data={"model": "whisper-1"})
        assert r.status_code == 403
        # Listings show the models the key may use, and asking about others is the same 403.
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["emb", "fake"]
        assert sorted(m["name"] for m in client.get("/api/tags").json()["models"]) == ["emb:latest", "fake:latest"]
        assert client.get("/v1/models/fake").status_code == 200
        one, two = client.get("/v1/models/other"), client.get("/v1/models/nope")
        assert one.status_code == two.status_code == 403
        assert one.text.replace("other", "X") == two.text.replace("nope", "X")
        assert client.post("/api/show", json={"model": "other"}).status_code == 403
        assert client.post("/api/chat", json={"model": "fake:latest", "stream": False,
                                              "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    assert not any(call.last_user == "other" for call in server.calls)


def test_admin_rights(fake_server, keyfile: Keys) -> None:
    user = keyfile.add("user")
    boss = keyfile.add("boss", admin=True)
    server = _server(fake_server, keyfile, api_key="plain")
    with server.client() as client:
        for path in ("/lokal/usage", "/metrics", "/models/jobs"):
            r = client.get(path, headers=auth(user))
            assert r.status_code == 403, path
            assert "'user'" in r.json()["error"]["message"] and "admin" in r.json()["error"]["message"]
            assert client.get(path, headers=auth(boss)).status_code == 200, path
            assert client.get(path, headers=auth("plain")).status_code == 200, path  # every right
        r = client.post("/api/pull", json={"model": "x"}, headers=auth(user))
        assert r.status_code == 403 and set(r.json()) == {"error"}


# Usage ---------------------------------------------------------------------------


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _answer_usage(family: str, r: httpx.Response) -> tuple[int, int]:
    """(prompt, completion) tokens as the answer itself reports them."""
    if family == "stream":
        usage = [e for e in sse_events(r.text) if isinstance(e, dict) and e.get("usage")][-1]["usage"]
        return usage["prompt_tokens"], usage["completion_tokens"]
    body = r.json()
    if family in ("chat", "completion", "embeddings", "rerank"):
        return body["usage"]["prompt_tokens"], body["usage"].get("completion_tokens", 0)
    if family == "ollama":
        return body["prompt_eval_count"], body["eval_count"]
    if family == "ollama-embed":
        return body["prompt_eval_count"], 0
    if family == "responses":
        return body["usage"]["input_tokens"], body["usage"]["output_tokens"]
    if family == "messages":
        return body["usage"]["input_tokens"] + body["usage"]["cache_read_input_tokens"], body["usage"]["output_tokens"]
    raise AssertionError(family)


def test_usage_per_key_matches_the_answers_own_usage(fake_server, keyfile: Keys, caplog) -> None:
    caplog.set_level(logging.INFO, logger="lokal.access")
    keyfile.add("boss", admin=True)
    a, b = keyfile.add("team-a"), keyfile.add("team-b")
    server = _server(fake_server, keyfile, [reply("one", " two", " three")])
    requests = [
        ("chat", "/v1/chat/completions", chat("count these five words")),
        ("stream", "/v1/chat/completions", chat("and these three", stream=True,
                                                stream_options={"include_usage": True})),
        ("completion", "/v1/completions", {"model": "fake", "prompt": "once upon a time"}),
        ("ollama", "/api/generate", {"model": "fake", "prompt": "why is the sky blue", "stream": False}),
        ("responses", "/v1/responses", {"model": "fake", "input": "hello there"}),
        ("messages", "/v1/messages", {"model": "fake", "max_tokens": 9,
                                      "messages": [{"role": "user", "content": "hi you"}]}),
        ("embeddings", "/v1/embeddings", {"model": "emb", "input": ["a b c", "d e"]}),
        ("ollama-embed", "/api/embed", {"model": "emb", "input": "one two three four"}),
        ("rerank", "/v1/rerank", {"model": "emb", "query": "red car", "documents": ["a red car", "blue"]}),
    ]
    expected: dict[tuple[str, str], list[int]] = {}
    with server.client() as client:
        for key, name, rounds in ((a, "team-a", 2), (b, "team-b", 1)):
            for _ in range(rounds):
                for family, path, body in requests:
                    r = client.post(path, json=body, headers=auth(key))
                    assert r.status_code == 200, (family, r.text)
                    prompt, completion = _answer_usage(family, r)
                    totals = expected.setdefault((name, body["model"]), [0, 0, 0])
                    totals[0] += 1
                    totals[1] += prompt
                    totals[2] += completion
        for _ in range(3):
            r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF0000", "audio/wav")},
                            data={"model": "whisper-1", "response_format": "verbose_json"}, headers=auth(a))
            assert r.status_code == 200
        audio = 3 * r.json()["duration"]
        expected[("team-a", "whisper-1")] = [3, 0, 0]
        usage = client.get("/lokal/usage", headers=auth(keyfile["boss"])).json()
        metrics = client.get("/metrics", headers=auth(keyfile["boss"])).text
        window = client.get("/lokal/usage", params={"until": "2000-01-01T00:00:00Z"},
                            headers=auth(keyfile["boss"])).json()
        bad = client.get("/lokal/usage", params={"since": "yesterday-ish"}, headers=auth(keyfile["boss"]))
    rows = {(row["key"], row["model"]): row for row in usage["data"]}
    assert set(rows) == set(expected)
    for (name, model), (count, prompt, completion) in expected.items():
        row = rows[(name, model)]
        assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (count, prompt, completion), row
        assert _metric(metrics, "lokal_key_requests_total", key=name, model=model) == count
        assert _metric(metrics, "lokal_key_prompt_tokens_total", key=name, model=model) == prompt
        assert _metric(metrics, "lokal_key_completion_tokens_total", key=name, model=model) == completion
    assert rows[("team-a", "whisper-1")]["audio_seconds"] == audio > 0
    assert _metric(metrics, "lokal_key_audio_seconds_total", key="team-a", model="whisper-1") == audio
    assert {k["key"]: k["requests"] for k in usage["keys"]} == {"team-a": 2 * len(requests) + 3,
                                                                "team-b": len(requests)}
    assert window["data"] == [] and window["until"] == "2000-01-01T00:00:00Z"
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
    for key in (a, b, keyfile["boss"]):  # never a key in /metrics or the log
        assert key not in metrics and key not in caplog.text
    lines = [r for r in caplog.records if r.name == "lokal.access" and "/v1/chat/completions" in r.getMessage()]
    assert lines and all(getattr(r, "key", None) in ("team-a", "team-b") for r in lines)
    assert " key=team-a" in lines[0].getMessage()


# Fair share ----------------------------------------------------------------------


def _waiting(server) -> int:
    """Requests waiting in lokal for one of the engine's slots."""
    return sum(i.slots.waiting for i in server.registry.pool.loaded().values() if i.slots is not None)


def test_one_keys_burst_does_not_hold_another_keys_request_back(fake_server, keyfile: Keys) -> None:
    """Two slots; key A queues 40 requests, then key B sends one: B is admitted at the first
    free slot and finishes before A's fifth."""
    a, b = keyfile.add("a"), keyfile.add("b")
    gates = {f"a{i}": threading.Event() for i in range(40)}

    def script(request) -> list:
        if request.last_user == "b":
            return [reply("b")]
        return [stall(gates[request.last_user]), reply("a")]

    server = _server(fake_server, keyfile, script, parallel_requests=2, queue_size=64)
    finished: list[str] = []
    lock = threading.Lock()
    failures: list[str] = []

    client = server.client(timeout=60, limits=httpx.Limits(max_connections=64))  # shared by the threads

    def send(key: str, text: str) -> None:
        r = client.post("/v1/chat/completions", json=chat(text), headers=auth(key))
        with lock:
            finished.append(text)
            if r.status_code != 200:
                failures.append(r.text)

    senders = [threading.Thread(target=send, args=(a, f"a{i}")) for i in range(40)]
    for thread in senders:
        thread.start()
    server.wait(lambda: bool(server.engines) and server.engine.active == 2 and _waiting(server) == 38,
                timeout=60, what="2 of A's running, 38 waiting")
    late = threading.Thread(target=send, args=(b, "b"))
    late.start()
    server.wait(lambda: _waiting(server) == 39, timeout=30, what="B's request waiting")
    gates[server.calls[0].last_user].set()  # one slot frees up
    server.wait(lambda: "b" in finished, timeout=30, what="B's answer")
    assert server.calls[2].last_user == "b"  # the freed slot went to B, ahead of A's 38
    assert sum(1 for text in finished if text.startswith("a")) < 5  # B finished before A's fifth
    for gate in gates.values():
        gate.set()
    for thread in [*senders, late]:
        thread.join(30)
    client.close()
    assert not failures and len(finished) == 41


def test_without_named_keys_the_queue_is_first_come_first_served(fake_server) -> None:
    gates = {f"r{i}": threading.Event() for i in range(8)}
    server = fake_server(lambda req: [stall(gates[req.last_user]), reply("x")], parallel_requests=1)
    threads = []
    client = server.client(timeout=30)  # shared by the threads
    statuses: list[int] = []

    def send(text: str) -> None:
        statuses.append(client.post("/v1/chat/completions", json=chat(text)).status_code)

    for i in range(8):
        thread = threading.Thread(target=send, args=(f"r{i}",))
        thread.start()
        threads.append(thread)
        server.wait(lambda i=i: len(server.calls) == 1 and _waiting(server) == i, what=f"request {i} queued")
    for i in range(8):
        server.wait(lambda i=i: len(server.calls) == i + 1, what=f"request {i} admitted")
        gates[server.calls[i].last_user].set()
    for thread in threads:
        thread.join(10)
    client.close()
    assert statuses == [200] * 8
    assert [call.last_user for call in server.calls] == [f"r{i}" for i in range(8)]
