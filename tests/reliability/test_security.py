"""Security properties a user relies on: prompts stay out of the logs, keys work and
stay secret, /metrics is closed unless opened, a warning for open binds, and the
engine's own HTTP port is closed to other local processes."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import CHAT_FILE, LokalServer, place_model
from tests.reliability import CHAT_MODEL, EMBED_MODEL, demo_models

CHAT = "/v1/chat/completions"


def marker(tag: str) -> str:
    return f"SECRETMARKER{tag}{secrets.token_hex(6)}"


def listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket the process listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            address, port = local.split(":")
            if width == 8:
                host = ".".join(str(b) for b in reversed(bytes.fromhex(address)))
            else:
                host = "::1" if address == "0" * 24 + "01000000" else address
            found.append((host, int(port, 16)))
    return found


# --- Prompts and logs ------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_models(tmp_path_factory.mktemp("security") / "models")


@pytest.fixture(scope="module")
def info_server(demo: Path) -> Iterator[LokalServer]:
    with LokalServer(demo, "--context-size", "512", "--preload-models", f"{CHAT_MODEL},{EMBED_MODEL}") as srv:
        srv.wait_ready(180)
        yield srv


def test_prompts_never_reach_the_log_at_the_default_level(info_server: LokalServer) -> None:
    marks = {name: marker(name) for name in ("chat", "system", "stream", "completion", "embedding",
                                              "rerank", "overflow", "tool", "badvalue")}
    with httpx.Client(base_url=info_server.base, timeout=120) as client:
        replies = [
            client.post(CHAT, json={"model": CHAT_MODEL, "max_tokens": 2, "messages": [
                {"role": "system", "content": marks["system"]}, {"role": "user", "content": marks["chat"]}]}),
            client.post(CHAT, json={"model": CHAT_MODEL, "max_tokens": 2, "stream": True,
                                    "messages": [{"role": "user", "content": marks["stream"]}]}),
            client.post("/v1/completions", json={"model": CHAT_MODEL, "max_tokens": 2, "prompt": marks["completion"]}),
            client.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": [marks["embedding"], "other"]}),
            client.post("/v1/rerank", json={"model": EMBED_MODEL, "query": marks["rerank"], "documents": ["a", "b"]}),
            # Failures log too; they must not log the prompt either.
            client.post(CHAT, json={"model": CHAT_MODEL, "max_tokens": 2, "messages": [
                {"role": "user", "content": marks["overflow"] + " word" * 2000}]}),
            client.post(CHAT, json={"model": CHAT_MODEL, "max_tokens": 2, "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "bogus"}}}],
                "messages": [{"role": "user", "content": marks["tool"]}]}),
            client.post(CHAT, json={"model": CHAT_MODEL, "max_tokens": 2, "repeat_penalty": 0,
                                    "messages": [{"role": "user", "content": marks["badvalue"]}]}),
        ]
    assert [r.status_code for r in replies] == [200, 200, 200, 200, 200, 400, 400, 400], \
        [(r.status_code, r.text[:200]) for r in replies]
    log = info_server.log()
    leaked = [name for name, mark in marks.items() if mark in log]
    assert not leaked, f"prompt text of {leaked} in the log at the default level"


def test_prompts_never_reach_the_log_even_when_the_engine_fails(info_server: LokalServer) -> None:
    mark = marker("surrogate")
    body = json.dumps({"model": CHAT_MODEL, "max_tokens": 2,
                       "messages": [{"role": "user", "content": f"{mark} \ud800"}]})
    httpx.post(f"{info_server.base}{CHAT}", content=body.encode(), timeout=120,
               headers={"content-type": "application/json"})
    assert mark not in info_server.log()


TEMPLATE_CONFIG = f"""\
name: templated
parameters:
  model: {CHAT_FILE}
template:
  chat_message: |-
    <|im_start|>{{{{.RoleName}}}}
    {{{{.Content}}}}<|im_end|>
  chat: |-
    {{{{.Input}}}}
    <|im_start|>assistant
"""


def test_debug_level_logs_the_rendered_prompt_of_localai_templates(tmp_path: Path) -> None:
    models = tmp_path / "models"
    place_model(models)
    (models / "templated.yaml").write_text(TEMPLATE_CONFIG)
    mark = marker("debug")
    with LokalServer(models, "--log-level", "debug", "--context-size", "512") as server:
        r = httpx.post(f"{server.base}{CHAT}", timeout=120, json={
            "model": "templated", "max_tokens": 2, "messages": [{"role": "user", "content": mark}]})
        assert r.status_code == 200, r.text
        log = server.wait_log(mark)
    line = next(line for line in log.splitlines() if mark in line)
    assert "rendered chat prompt" in line and "<|im_start|>user" in line, line


# --- API keys ------------------------------------------------------------------------

FLAG_KEY = "flag-" + secrets.token_hex(12)
FILE_KEYS = ("file-" + secrets.token_hex(12), "file-" + secrets.token_hex(12))


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    root = tmp_path_factory.mktemp("keyed")
    models = root / "models"
    place_model(models)
    key_file = root / "keys.txt"
    key_file.write_text(f"# our keys: one per line\n{FILE_KEYS[0]}\n\n  {FILE_KEYS[1]}  \n")
    with LokalServer(models, "--api-key", FLAG_KEY, "--preload-models", CHAT_FILE,
                     env={"API_KEY_FILE": str(key_file)}) as server:
        server.wait_ready(180)
        yield server


@pytest.mark.parametrize("key", [FLAG_KEY, *FILE_KEYS], ids=["flag", "file-1", "file-2"])
def test_keys_from_the_flag_and_the_key_file_work(keyed: LokalServer, key: str) -> None:
    for headers in ({"Authorization": f"Bearer {key}"}, {"x-api-key": key}):
        r = httpx.get(f"{keyed.base}/v1/models", headers=headers, timeout=30)
        assert r.status_code == 200, (headers, r.text)
    r = httpx.post(f"{keyed.base}{CHAT}", headers={"Authorization": f"Bearer {key}"}, timeout=120, json={
        "model": CHAT_FILE, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("presented", [
    "flag-" + "0" * 24,                       # same length as the real keys, wrong
    FLAG_KEY[:-1] + ("a" if FLAG_KEY[-1] != "a" else "b"),
    FLAG_KEY.upper(),
    FLAG_KEY + "0",                           # the real key and one more character
    FLAG_KEY[:-1],                            # a prefix of it
    "# our keys: one per line",               # the key file's comment line
    f"{FLAG_KEY},{FILE_KEYS[0]}",
    "",
])
def test_wrong_keys_are_refused(keyed: LokalServer, presented: str) -> None:
    forms = [{"x-api-key": presented}] + ([{"Authorization": f"Bearer {presented}"}] if presented else [])
    for headers in forms:
        r = httpx.get(f"{keyed.base}/v1/models", headers=headers, timeout=30)
        assert r.status_code == 401, (headers, r.status_code)
        assert r.json()["error"]["code"] == 401


def test_metrics_need_a_key_and_health_routes_do_not(keyed: LokalServer) -> None:
    assert httpx.get(f"{keyed.base}/metrics", timeout=30).status_code == 401
    r = httpx.get(f"{keyed.base}/metrics", headers={"x-api-key": FILE_KEYS[1]}, timeout=30)
    assert r.status_code == 200 and "lokal_requests_total" in r.text
    for path in ("/healthz", "/readyz"):
        assert httpx.get(f"{keyed.base}{path}", timeout=30).status_code == 200, path


def test_metrics_open(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    with LokalServer(models, "--metrics-open", "--api-key", FLAG_KEY) as server:
        r = httpx.get(f"{server.base}/metrics", timeout=30)
        assert r.status_code == 200 and "lokal_requests_in_flight" in r.text
        assert httpx.get(f"{server.base}/v1/models", timeout=30).status_code == 401
        assert httpx.get(f"{server.base}/v1/metrics", timeout=30).status_code in (401, 404)


def test_keys_never_reach_the_log(keyed: LokalServer) -> None:
    for key in (FLAG_KEY, *FILE_KEYS):
        httpx.get(f"{keyed.base}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    httpx.get(f"{keyed.base}/v1/models", headers={"Authorization": f"Bearer {FLAG_KEY}x"}, timeout=30)
    log = keyed.log()
    for key in (FLAG_KEY, *FILE_KEYS):
        assert key not in log and key[5:] not in log


def test_keys_never_reach_the_debug_log(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    key = "dbg-" + secrets.token_hex(12)
    with LokalServer(models, "--log-level", "debug", env={"API_KEY": key}) as server:
        for headers in ({"Authorization": f"Bearer {key}"}, {"x-api-key": key}, {"Authorization": f"Bearer {key}z"}):
            httpx.get(f"{server.base}/v1/models", headers=headers, timeout=30)
        server.wait_log("GET /v1/models")  # the access log is on at debug
        assert key[4:] not in server.log()


# --- Binding --------------------------------------------------------------------------

WARNING = "without an API key"


@pytest.mark.parametrize("host, args, warned", [
    ("0.0.0.0", (), True),
    ("0.0.0.0", ("--api-key", "k-" + secrets.token_hex(8)), False),
    ("127.0.0.1", (), False),
])
def test_warning_when_listening_beyond_loopback_without_a_key(tmp_path: Path, host: str, args: tuple[str, ...],
                                                              warned: bool) -> None:
    models = tmp_path / "models"
    models.mkdir()
    with LokalServer(models, *args, host=host) as server:
        log = server.wait_log("listening on")
    assert (WARNING in log) is warned, log
    if warned:
        line = next(line for line in log.splitlines() if WARNING in line)
        assert "WARNING" in line and "0.0.0.0" in line and "API_KEY" in line, line


# --- The engine's own port -------------------------------------------------------------

# llama.cpp's server leaves its liveness routes open by design; they say only {"status": "ok"}.
ENGINE_PUBLIC = [("GET", "/health"), ("GET", "/v1/health")]
ENGINE_PATHS = [("GET", "/v1/models"), ("GET", "/models"), ("GET", "/api/tags"), ("GET", "/slots"), ("GET", "/props"),
                ("GET", "/metrics"), ("POST", "/v1/chat/completions"), ("POST", "/completion"),
                ("POST", "/v1/completions"), ("POST", "/tokenize"), ("POST", "/detokenize"),
                ("POST", "/embeddings"), ("POST", "/slots/0?action=erase")]


def family(pid: int) -> list[int]:
    """The process and its descendants (the engine workers, where engines run in them)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            pids.extend(family(int(child)))
    return pids


def test_the_engines_own_port_refuses_requests_without_its_secret(keyed: LokalServer) -> None:
    pids = family(keyed.proc.pid)
    ports = [(host, port) for pid in pids for host, port in listening(pid) if port != keyed.port]
    assert ports, f"no engine listener found for pids {pids}"
    body = {"messages": [{"role": "user", "content": "hi"}], "prompt": "hi", "max_tokens": 2, "content": "hi",
            "tokens": [1], "input": "hi"}
    checked = 0
    for host, port in ports:
        assert host in ("127.0.0.1", "::1"), f"the engine listens on {host}:{port}, beyond loopback"
        for method, path in ENGINE_PATHS:
            for headers in ({}, {"Authorization": f"Bearer {FLAG_KEY}"}, {"x-api-key": FILE_KEYS[0]},
                            {"Authorization": "Bearer x"}):
                r = httpx.request(method, f"http://127.0.0.1:{port}{path}", headers=headers,
                                  json=body if method == "POST" else None, timeout=30)
                assert r.status_code == 401, (port, method, path, headers, r.status_code, r.text[:200])
                checked += 1
    print(f"\nengine listeners {ports}: {checked} requests, all 401")
    for host, port in ports:
        for method, path in ENGINE_PUBLIC:
            r = httpx.request(method, f"http://127.0.0.1:{port}{path}", timeout=30)
            print(f"  open by design: {method} {path} -> {r.status_code} {r.text[:160]}")
            assert r.status_code == 401 or r.json() == {"status": "ok"}, r.text
    assert keyed.proc.poll() is None
