"""Schema-driven fuzzing (schemathesis) of a real server from its own /openapi.json.

Every operation in the schema is fuzzed with positive (schema-valid) and
negative (schema-violating) cases until at least 2,000 requests have been sent,
within a time budget; the routes that generate text get at most ENGINE_SHARE
seconds of waiting per mode, so that slow model work cannot starve the rest.
Only two things in the generated requests are changed, to keep them cheap and
useful, and they are reported in the printed figures:

- `max_tokens`/`max_completion_tokens` are clamped to at most 8 (and set to 8 when
  the case leaves both out, else the tiny model would fill its whole context), `n`
  to at most 2, and lokal's own `timeout` field to at most 15 s (the server runs
  with `--request-timeout 15`): a valid request may ask for 64 prompts x n choices,
  minutes of work on two cores, and only a deadline the server must honour tells
  such work from a hang;
- `model`: a random string is always a 404, so three cases in four ask for a served
  model instead (the route's own one mostly, the other kind sometimes), chosen from
  the generated string so that the choice is as random as the case.

Checks, per request: no 5xx (nor a 5xx error event inside a 200 stream), an answer
within the per-request timeout, and every 4xx in OpenAI's envelope with
`code == status`. After all of it the server process is alive and still chats.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

from tests.conftest import LokalServer  # noqa: E402
from tests.reliability import (CHAT_MODEL, EMBED_MODEL, demo_models, envelope_problem,  # noqa: E402
                               percentile, stream_errors)

pytestmark = pytest.mark.slow  # schema fuzzing for up to 6 minutes

TARGET_REQUESTS = 2000
TIME_BUDGET = 360.0        # seconds of fuzzing, all operations together
ENGINE_SHARE = 30.0        # of which at most this waiting per generating route and mode (4 in all)
BATCH = 50                 # examples per hypothesis run; runs rotate over the operations
REQUEST_TIMEOUT = 90.0     # a request not answered by then is a hang (a loaded 2-core box is slow)
MAX_TOKENS = 8
MAX_N = 2
SERVER_TIMEOUT = 15        # --request-timeout: generation answered (408 at worst) by then

GENERATING = ("/v1/chat/completions", "/v1/completions")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokalServer]:
    models = demo_models(tmp_path_factory.mktemp("fuzz") / "models")
    with LokalServer(models, "--context-size", "512", "--request-timeout", str(SERVER_TIMEOUT),
                     "--preload-models", f"{CHAT_MODEL},{EMBED_MODEL}") as server:
        server.wait_ready(180)
        yield server


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def adjust(path: str, body: Any) -> Any:
    """The changes to generated bodies (see the module docstring): bounded generation
    (tokens, choices, timeout) and models that exist; nothing else."""
    if not isinstance(body, dict):
        return body
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        if _is_int(body.get(key)) and body[key] > MAX_TOKENS:
            body[key] = MAX_TOKENS
    if path in GENERATING and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = MAX_TOKENS
    # The other API families generate too (Responses, Ollama): the same bound on their fields.
    if path.endswith("/responses") and body.get("max_output_tokens") is None:
        body["max_output_tokens"] = MAX_TOKENS
    if path in ("/api/chat", "/api/generate"):
        options = body.get("options")
        if options is None:
            body["options"] = {"num_predict": MAX_TOKENS}
        elif isinstance(options, dict) and (not _is_int(options.get("num_predict"))
                                            or not 0 <= options["num_predict"] <= MAX_TOKENS):
            options["num_predict"] = MAX_TOKENS
    if _is_int(body.get("n")) and body["n"] > MAX_N:
        body["n"] = MAX_N
    if isinstance(body.get("timeout"), (int, float)) and not isinstance(body["timeout"], bool) \
            and body["timeout"] > SERVER_TIMEOUT:
        body["timeout"] = SERVER_TIMEOUT
    if isinstance(body.get("model"), str):
        own, other = (CHAT_MODEL, EMBED_MODEL) if path in GENERATING else (EMBED_MODEL, CHAT_MODEL)
        pick = sum(body["model"].encode("utf-8", "surrogatepass")) % 4
        if pick < 2:
            body["model"] = own
        elif pick == 2:
            body["model"] = other
    return body


class Tally:
    """What was sent and what came back."""

    def __init__(self) -> None:
        self.sent = 0
        self.by_status: collections.Counter[tuple[str, int]] = collections.Counter()
        self.latencies: list[float] = []
        self.problems: list[str] = []
        self.engine_seconds: collections.Counter[str] = collections.Counter()
        self.reached_engine: collections.Counter[str] = collections.Counter()

    def check(self, label: str, case: Any, status: int, text: str, content_type: str, took: float,
              path: str = "") -> None:
        self.sent += 1
        self.by_status[(label, status)] += 1
        self.latencies.append(took)

        def problem(what: str) -> None:
            body = json.dumps(case.body, default=repr)[:600]
            self.problems.append(f"{label} -> {status}: {what}\n    body: {body}")

        if status >= 500:
            problem(f"server error {text[:300]!r}")
        elif status >= 400 and not label.startswith("HEAD "):  # HEAD answers carry no body
            why = envelope_problem(status, text, path)
            if why:
                problem(why)
        elif "text/event-stream" in content_type and path.endswith("/completions"):
            # OpenAI's chat and text completion streams (Responses and Messages streams
            # are named events without [DONE]; their own suites check them).
            for error in stream_errors(text):
                code = error.get("code")
                if not isinstance(code, int) or code >= 500:
                    problem(f"error event in a 200 stream: {error}")
            if not text.rstrip().endswith("data: [DONE]"):
                problem(f"stream does not end with [DONE]: {text[-200:]!r}")


def test_schema_fuzzing(fuzz_server: LokalServer) -> None:
    raw = httpx.get(f"{fuzz_server.base}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(raw)
    operations = [result.ok() for result in schema.get_all_operations()]
    # The generating routes first in every round: with a schema of many routes (every API
    # family), the request target can be reached before a round gets to them.
    operations.sort(key=lambda op: op.path not in GENERATING)
    labels = sorted(op.label for op in operations)
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank"):
        operation = raw["paths"][path]["post"]
        assert operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema"), (
            f"{path} has no request body schema: schemathesis would generate nothing useful for it")

    tally = Tally()
    started = time.monotonic()
    deadline = started + TIME_BUDGET
    done: set[tuple[str, str]] = set()
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    client = httpx.Client(base_url=fuzz_server.base, timeout=httpx.Timeout(REQUEST_TIMEOUT, connect=10))

    strategies: dict[tuple[str, str], Any] = {}
    spent: collections.Counter[tuple[str, str]] = collections.Counter()  # wall seconds per operation and mode
    waited: collections.Counter[tuple[str, str]] = collections.Counter()  # of which waiting for answers

    def run_batch(operation: Any, mode: GenerationMode) -> None:
        path = operation.path
        engine = path in GENERATING
        key = (operation.label, mode.value)
        if key not in strategies:
            strategies[key] = operation.as_strategy(generation_mode=mode)

        @settings(max_examples=BATCH, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
        @given(case=strategies[key])
        def send(case: Any) -> None:
            if time.monotonic() > deadline or tally.sent >= TARGET_REQUESTS * 1.05:
                return
            if engine and tally.engine_seconds[f"{path} {mode.value}"] > ENGINE_SHARE:
                return
            case.body = adjust(path, case.body) if case.body is not None else case.body
            kwargs = case.as_transport_kwargs(base_url=fuzz_server.base)
            request = client.build_request(
                kwargs["method"], kwargs["url"], headers=kwargs.get("headers"),
                params=kwargs.get("params"), cookies=kwargs.get("cookies"),
                content=_content(kwargs))
            begun = time.monotonic()
            try:
                response = client.send(request)
            except httpx.TimeoutException:
                tally.problems.append(f"{operation.label}: no answer within {REQUEST_TIMEOUT:.0f}s (hang)\n"
                                      f"    body: {json.dumps(case.body, default=repr)[:20000]}")
                tally.sent += 1
                return
            except httpx.TransportError as exc:
                tally.problems.append(f"{operation.label}: transport error {exc!r}\n"
                                      f"    body: {json.dumps(case.body, default=repr)[:600]}")
                tally.sent += 1
                return
            took = time.monotonic() - begun
            waited[key] += took
            if engine:
                tally.engine_seconds[f"{path} {mode.value}"] += took
                if response.status_code == 200:
                    tally.reached_engine[f"{path} {mode.value}"] += 1
            counts[(operation.label, mode.value)] += 1
            tally.check(operation.label, case, response.status_code, response.text,
                        response.headers.get("content-type", ""), took, path)

        begun = time.monotonic()
        try:
            send()
        except hypothesis.errors.Unsatisfiable:
            done.add(key)  # nothing to vary (no parameters, no body)
        spent[key] += time.monotonic() - begun
        if engine and tally.engine_seconds[f"{path} {mode.value}"] > ENGINE_SHARE:
            done.add(key)  # its share is used up: no more batches (they would only be generated)

    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    while tally.sent < TARGET_REQUESTS and time.monotonic() < deadline:
        before = tally.sent
        for operation in operations:
            for mode in modes:
                if (operation.label, mode.value) in done:
                    continue
                if operation.method.upper() == "GET" and mode is GenerationMode.NEGATIVE:
                    continue  # no parameters to violate
                run_batch(operation, mode)
                assert fuzz_server.proc.poll() is None, (
                    f"the server died (exit {fuzz_server.proc.returncode}) fuzzing {operation.label}:\n"
                    + "\n".join(tally.problems[-5:]) + "\n" + fuzz_server.log()[-5000:])
        if tally.sent == before:
            break
    elapsed = time.monotonic() - started
    client.close()

    statuses = collections.Counter(status for (_, status), n in tally.by_status.items() for _ in range(n))
    print(f"\nschemathesis {schemathesis.__version__}: {tally.sent} requests in {elapsed:.0f}s "
          f"over {len(labels)} operations; max_tokens<={MAX_TOKENS}, n<={MAX_N}, "
          f"timeout<={SERVER_TIMEOUT}, 3/4 of model names replaced by served ones")
    print("by status:", dict(sorted(statuses.items())))
    for (label, status), count in sorted(tally.by_status.items()):
        print(f"  {label:28} {status}: {count}")
    print("by operation and mode: requests, wall seconds (of which waiting for answers)")
    for key in sorted(spent):
        print(f"  {key[0]:32} {key[1]:8} {counts[key]:5} {spent[key]:6.1f}s ({waited[key]:.1f}s)")
    for route in sorted(tally.engine_seconds):
        print(f"{route}: {tally.reached_engine[route]} answers from the model (200) in "
              f"{tally.engine_seconds[route]:.0f}s of waiting")
    print(f"latency p50 {percentile(tally.latencies, 50) * 1000:.1f} ms, "
          f"p99 {percentile(tally.latencies, 99) * 1000:.1f} ms, "
          f"max {max(tally.latencies, default=0) * 1000:.0f} ms")
    for line in tally.problems[:40]:
        print("PROBLEM", line)

    assert fuzz_server.proc.poll() is None, fuzz_server.log()[-5000:]
    assert not tally.problems, f"{len(tally.problems)} problems; first:\n" + "\n".join(tally.problems[:10])
    assert tally.sent >= TARGET_REQUESTS, (
        f"only {tally.sent} requests in the {TIME_BUDGET:.0f}s budget: {dict(counts)}")
    for path in ("POST /v1/chat/completions", "POST /v1/completions", "POST /v1/embeddings", "POST /v1/rerank"):
        assert tally.by_status.get((path, 200)), f"no 200 for {path}: the fuzzing never got past validation"
    reply = httpx.post(f"{fuzz_server.base}/v1/chat/completions", timeout=120, json={
        "model": CHAT_MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4})
    assert reply.status_code == 200, reply.text


def _content(kwargs: dict[str, Any]) -> bytes | None:
    """The body schemathesis would send (JSON, or raw bytes for negative media types)."""
    if "json" in kwargs:
        return json.dumps(kwargs["json"], allow_nan=True).encode("utf-8", "surrogatepass")
    data = kwargs.get("data") or kwargs.get("content")
    if data is None:
        return None
    if isinstance(data, str):
        return data.encode("utf-8", "surrogatepass")
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    return json.dumps(data).encode()
