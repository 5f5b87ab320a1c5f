"""Prometheus metrics of one server: what it is asked, how fast it answers, what it holds.

One `Metrics` per app, each with its own `CollectorRegistry` (nothing in the
client library's global registry: two apps in one process never share numbers).
Code on the request path calls small methods (`request_done`, `observe`, ...);
gauges of current state (requests running and waiting, slots, loaded models and
their memory) are read from the model registry when /metrics is scraped, so they
cannot drift from it.

Names live in the `lokal_` namespace with units in the names; buckets are chosen
for CPU inference, where a first token takes from a tenth of a second to minutes
and a token from milliseconds to a second (docs/operations.md lists them).

This module sits at the bottom of the import graph next to `lokal.logs`: it
imports nothing of lokal but the request context it fills in for the access log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from lokal import logs

#: Time to first token: a warm short prompt is ~0.1 s, a 1,000-token prefill on two
#: cores ~7 s, a queue behind busy slots or a big model minutes.
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0,
                30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0)
#: Time per output token: a 135M model decodes at ~8 ms a token, a 7-8B model on
#: CPU at 100-300 ms; a second or more means the machine is overloaded.
ITL_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
               0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
#: Whole requests: from a health check to a long generation on a slow model.
REQUEST_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0,
                   60.0, 90.0, 120.0, 180.0, 300.0, 600.0, 1200.0)
#: Waiting for a slot: nothing when one is free, then multiples of a generation.
QUEUE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
                 300.0, 600.0)
#: Loading a model: mmap of a small GGUF to reading a large one from a slow disk.
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
#: Inputs per embedding engine call (the batcher joins requests, up to 256).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass
class ModelState:
    """One loaded model instance as the registry sees it at a scrape."""

    model: str
    purpose: str
    engine: str
    in_use: int  # requests holding it (running or waiting for a slot)
    slots: int | None  # sequences it decodes at once (None: no such limit)
    memory_bytes: int | None  # its weights' size
    kv_cache_usage: float | None = None  # 0..1, where the engine reports it


@dataclass
class RegistryState:
    known: int
    loaded: list[ModelState] = field(default_factory=list)


StateSource = Callable[[], RegistryState]


class RequestObservation:
    """Timing and tokens of one generation request, fed where its stream is consumed.

    `chunk(n)` each time engine output arrives (n tokens, all of it arrived now),
    `finish(usage, status)` once at the end (the engine's usage when it sent one).
    Cheap: a clock read and one histogram observation per token.
    """

    __slots__ = ("_metrics", "model", "started", "_last", "_first", "_itl",
                 "tokens_seen", "_prompt_seconds", "_done")

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._metrics = metrics
        self.model = model
        self.started = time.perf_counter()
        self._last = 0.0
        self._first: float | None = None
        self._itl = metrics.itl.labels(model)
        self.tokens_seen = 0
        self._prompt_seconds: float | None = None
        self._done = False

    def chunk(self, n_tokens: int = 1) -> None:
        """n_tokens generated tokens arrived together, now."""
        if n_tokens <= 0:
            return
        now = time.perf_counter()
        self.tokens_seen += n_tokens
        if self._first is None:
            self._first = now - self.started
            self._metrics.ttft.labels(self.model).observe(self._first)
            gap = 0.0  # the others came with the first
            n_tokens -= 1
        else:
            # Tokens that arrived together share the time since the last arrival.
            gap = (now - self._last) / n_tokens
        observe = self._itl.observe
        for _ in range(n_tokens):
            observe(gap)
        self._last = now

    def prompt_seconds(self, seconds: float) -> None:
        """How long the engine spent on the prompt (the rest of the time to the first
        token was spent waiting for a slot)."""
        self._prompt_seconds = seconds if self._prompt_seconds is None else min(self._prompt_seconds, seconds)

    def finish(self, usage: dict[str, Any] | None, status: str = "ok") -> None:
        """The request is over: status is ok, error or cancelled."""
        if self._done:
            return
        self._done = True
        m = self._metrics
        model = self.model
        if self._first is not None and self._prompt_seconds is not None:
            m.queue_wait.labels(model).observe(max(0.0, self._first - self._prompt_seconds))
        prompt = cached = 0
        generated = self.tokens_seen
        if usage:
            prompt = int(usage.get("prompt_tokens") or 0)
            generated = int(usage.get("completion_tokens") or 0)
            cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        m.tokens(model, prompt=prompt, cached=cached, generated=generated)
        m.generations.labels(model, status).inc()
        logs.annotate(prompt_tokens=prompt if usage else None, completion_tokens=generated,
                      cached_tokens=cached if usage else None)


class Metrics:
    """The collectors of one app, and the methods that move them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("lokal_requests", "HTTP requests answered, by API family, route, "
                                "model and status (499: the client went away first)",
                                ["family", "route", "model", "status"], registry=r)
        self.request_seconds = Histogram("lokal_request_duration_seconds",
                                         "End-to-end time of HTTP requests, until the last byte was sent",
                                         ["family", "route", "model"], buckets=REQUEST_BUCKETS, registry=r)
        self.in_flight = Gauge("lokal_requests_in_flight", "HTTP requests being answered now",
                               registry=r)
        self.generations = Counter("lokal_generation_requests", "Generation requests (chat and "
                                   "completion) by model and how they ended: ok, error or cancelled",
                                   ["model", "status"], registry=r)
        self.ttft = Histogram("lokal_time_to_first_token_seconds", "Time from a generation "
                              "request holding its model to its first token (queue + prompt)",
                              ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("lokal_time_per_output_token_seconds", "Time between consecutive "
                             "output tokens of a request (inter-token latency)",
                             ["model"], buckets=ITL_BUCKETS, registry=r)
        self.queue_wait = Histogram("lokal_queue_wait_seconds", "Time a generation request waited "
                                    "for a slot (time to first token minus the engine's prompt time)",
                                    ["model"], buckets=QUEUE_BUCKETS, registry=r)
        self.prompt_tokens = Counter("lokal_prompt_tokens", "Prompt tokens of generation requests, "
                                     "cached ones included", ["model"], registry=r)
        self.cached_tokens = Counter("lokal_prompt_cached_tokens", "Prompt tokens served from the "
                                     "prompt cache (not computed again)", ["model"], registry=r)
        self.generated_tokens = Counter("lokal_generation_tokens", "Tokens generated",
                                        ["model"], registry=r)
        self.loads = Counter("lokal_model_loads", "Model instances loaded", ["model", "purpose"],
                             registry=r)
        self.load_seconds = Histogram("lokal_model_load_duration_seconds", "Time to load a model "
                                      "instance", ["model", "purpose"], buckets=LOAD_BUCKETS, registry=r)
        self.load_failures = Counter("lokal_model_load_failures", "Model loads that failed",
                                     ["model", "purpose"], registry=r)
        self.unloads = Counter("lokal_model_unloads", "Model instances unloaded (idle, evicted, "
                               "retired, on request or at shutdown)", ["model", "purpose"], registry=r)
        self.evictions = Counter("lokal_model_evictions", "Model instances unloaded to make room "
                                 "under MAX_ACTIVE_BACKENDS", ["model", "purpose"], registry=r)
        self.restarts = Counter("lokal_worker_restarts", "Engine instances replaced after they "
                                "crashed or stopped responding (WATCHDOG_BUSY_TIMEOUT)", ["model", "purpose"],
                                registry=r)
        self.embedding_inputs = Counter("lokal_embedding_inputs", "Texts (or token lists) "
                                        "embedded", ["model"], registry=r)
        self.embedding_batch = Histogram("lokal_embedding_batch_inputs", "Inputs per embedding "
                                         "engine call (concurrent requests are batched together)",
                                         ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.downloads = Counter("lokal_downloads", "Model files downloaded, by result (ok, failed)",
                                 ["model", "status"], registry=r)
        self.download_bytes = Counter("lokal_download_bytes", "Bytes of model files downloaded",
                                      ["model"], registry=r)
        # Usage per API key (its name, "" for none or an unnamed one) and model.
        usage = ["key", "model"]
        self.key_requests = Counter("lokal_key_requests", "Requests that used a model, by API key "
                                    "name and model", usage, registry=r)
        self.key_prompt_tokens = Counter("lokal_key_prompt_tokens", "Prompt (input) tokens, as the "
                                         "answers reported them, by API key name and model", usage, registry=r)
        self.key_completion_tokens = Counter("lokal_key_completion_tokens", "Completion (output) tokens, "
                                             "by API key name and model", usage, registry=r)
        self.key_audio_seconds = Counter("lokal_key_audio_seconds", "Seconds of audio transcribed or "
                                         "spoken, by API key name and model", usage, registry=r)
        self.key_images = Counter("lokal_key_images", "Images made, by API key name and model",
                                  usage, registry=r)
        self.key_refusals = Counter("lokal_key_limited", "Requests refused because their API key "
                                    "was over a limit (429), by key name and limit", ["key", "limit"],
                                    registry=r)
        self._state = _StateCollector()
        r.register(self._state)

    # State -----------------------------------------------------------------

    def track(self, source: StateSource) -> None:
        """Read the gauges of current state from source at every scrape."""
        self._state.source = source

    def render(self) -> bytes:
        """The Prometheus text exposition of everything."""
        return generate_latest(self.registry)

    # Requests --------------------------------------------------------------

    def request_done(self, family: str, route: str, model: str, status: int | str,
                     seconds: float) -> None:
        self.requests.labels(family, route, model, str(status)).inc()
        self.request_seconds.labels(family, route, model).observe(seconds)

    def observe(self, model: str) -> RequestObservation:
        """The observation of one generation request, started now."""
        return RequestObservation(self, model)

    def first_token(self, model: str, seconds: float) -> None:
        self.ttft.labels(model).observe(seconds)

    def inter_token(self, model: str, seconds: float) -> None:
        self.itl.labels(model).observe(seconds)

    def queue_waited(self, model: str, seconds: float) -> None:
        self.queue_wait.labels(model).observe(seconds)

    def tokens(self, model: str, prompt: int = 0, cached: int = 0, generated: int = 0) -> None:
        if prompt:
            self.prompt_tokens.labels(model).inc(prompt)
        if cached:
            self.cached_tokens.labels(model).inc(cached)
        if generated:
            self.generated_tokens.labels(model).inc(generated)

    def key_usage(self, key: str, model: str, *, prompt: int = 0, completion: int = 0,
                  audio_seconds: float = 0.0, images: int = 0) -> None:
        """One request of the key (its name) that used model, and what it used."""
        self.key_requests.labels(key, model).inc()
        self.key_prompt_tokens.labels(key, model).inc(prompt)
        self.key_completion_tokens.labels(key, model).inc(completion)
        if audio_seconds:
            self.key_audio_seconds.labels(key, model).inc(audio_seconds)
        if images:
            self.key_images.labels(key, model).inc(images)

    def key_refused(self, key: str, limit: str) -> None:
        self.key_refusals.labels(key, limit).inc()

    # Models ----------------------------------------------------------------

    def model_loaded(self, model: str, purpose: str, seconds: float) -> None:
        self.loads.labels(model, purpose).inc()
        self.load_seconds.labels(model, purpose).observe(seconds)
        # Series start at 0, so that rate() and increase() see the first events.
        for family in (self.unloads, self.evictions, self.restarts, self.load_failures):
            family.labels(model, purpose)
        if purpose == "generate":
            for family in (self.prompt_tokens, self.cached_tokens, self.generated_tokens):
                family.labels(model)
        elif purpose == "embed":
            self.embedding_inputs.labels(model)

    def model_unloaded(self, model: str, purpose: str) -> None:
        self.unloads.labels(model, purpose).inc()

    def model_evicted(self, model: str, purpose: str) -> None:
        self.evictions.labels(model, purpose).inc()

    def model_load_failed(self, model: str, purpose: str) -> None:
        self.load_failures.labels(model, purpose).inc()

    def worker_restarted(self, model: str, purpose: str) -> None:
        self.restarts.labels(model, purpose).inc()

    def downloaded(self, model: str, size: int | None) -> None:
        """A file fetched for model (size None: it failed)."""
        self.downloads.labels(model, "ok" if size is not None else "failed").inc()
        if size:
            self.download_bytes.labels(model).inc(size)

    def embeddings(self, model: str, inputs: int) -> None:
        """A request's inputs to embed."""
        self.embedding_inputs.labels(model).inc(inputs)

    def embedding_batch_ran(self, model: str, batch_size: int) -> None:
        """One embedding engine call over batch_size inputs."""
        self.embedding_batch.labels(model).observe(batch_size)


class _StateCollector(Collector):
    """Gauges computed from the model registry at scrape time."""

    def __init__(self) -> None:
        self.source: StateSource | None = None

    def describe(self) -> list[Metric]:
        return []  # names are known only at collect time; nothing to check up front

    def collect(self) -> Iterator[Metric]:
        state = self.source() if self.source is not None else RegistryState(known=0)
        labels = ["model", "purpose"]
        known = GaugeMetricFamily("lokal_models_known", "Models in the models folder and config")
        known.add_metric([], state.known)
        count = GaugeMetricFamily("lokal_models_loaded", "Model instances loaded now")
        count.add_metric([], len(state.loaded))
        loaded = GaugeMetricFamily("lokal_model_loaded", "1 for each loaded model instance",
                                   labels=[*labels, "engine"])
        memory = GaugeMetricFamily("lokal_model_memory_bytes", "Size of a loaded model's weights "
                                   "(its KV cache comes on top)", labels=labels)
        running = GaugeMetricFamily("lokal_requests_running", "Requests being computed now",
                                    labels=labels)
        waiting = GaugeMetricFamily("lokal_requests_waiting", "Requests holding a model and "
                                    "waiting for a free slot", labels=labels)
        busy = GaugeMetricFamily("lokal_slots_busy", "Slots decoding a request now", labels=labels)
        total = GaugeMetricFamily("lokal_slots_total", "Slots (sequences decoded at once, "
                                  "PARALLEL_REQUESTS)", labels=labels)
        kv = GaugeMetricFamily("lokal_kv_cache_usage_ratio", "Share of the KV cache in use, where "
                               "the engine reports it", labels=labels)
        for m in state.loaded:
            key = [m.model, m.purpose]
            loaded.add_metric([*key, m.engine], 1)
            if m.memory_bytes is not None:
                memory.add_metric(key, m.memory_bytes)
            active = m.in_use if m.slots is None else min(m.in_use, m.slots)
            running.add_metric(key, active)
            waiting.add_metric(key, m.in_use - active)
            if m.slots is not None:
                busy.add_metric(key, active)
                total.add_metric(key, m.slots)
            if m.kv_cache_usage is not None:
                kv.add_metric(key, m.kv_cache_usage)
        yield from (known, count, loaded, memory, running, waiting, busy, total, kv)
