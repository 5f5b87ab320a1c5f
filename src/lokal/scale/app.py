"""`lokal serve --ray`: lokal as a Ray Serve application, and `lokal models list --ray`.

Three deployments in one Serve application (`lokal`):

* `lokal-ingress`: lokal's own FastAPI app (every route, validation, auth,
  streaming, the catalog) over a registry whose pool is the replicas'; behind Ray's HTTP proxy on
  ADDRESS. It uses no CPU of its own and runs on the head node.
* `lokal-models`: the model replicas (`lokal.scale.replica.ModelReplica`), each
  reserving RAY_CPUS_PER_REPLICA CPUs (default: THREADS), RAY_REPLICAS of them or
  autoscaled between RAY_MIN_REPLICAS and RAY_MAX_REPLICAS; Serve's multiplexing
  routes model M to a replica that holds M.
* `lokal-board`: where replicas post their state for /metrics, /readyz and
  `lokal models list --ray`.

Each answer served by a replica carries `X-Lokal-Node` (the Ray node id) and
`X-Lokal-Replica`.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from lokal.scale.ingress import ClusterView, remote_registry, served_by
from lokal.scale.replica import Board, ModelReplica
from lokal.scale.wire import expected_files
from lokal.settings import Settings

log = logging.getLogger(__name__)

APP_NAME = "lokal"
INGRESS, MODELS, BOARD = "lokal-ingress", "lokal-models", "lokal-board"


# The ingress's additions to lokal's app ------------------------------------------

class ClusterMiddleware:
    """Outermost: a box per request where the serving replica is written (answered as
    X-Lokal-Node / X-Lokal-Replica), and /readyz with every replica's state."""

    def __init__(self, app: Any, view: ClusterView) -> None:
        self.app = app
        self.view = view

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"].rstrip("/") == "/readyz" and scope["method"] in ("GET", "HEAD"):
            await self._readyz(scope, receive, send)
            return
        box: dict[str, Any] = {}
        token = served_by.set(box)

        async def send_with_node(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and box.get("node"):
                node = box["node"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-lokal-node", node["node"].encode()),
                                                  (b"x-lokal-replica", node["replica"].encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_node)
        finally:
            served_by.reset(token)

    async def _readyz(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        replicas = await self.view.refresh()
        inner_ready = await _inner_status(self.app, scope, receive)
        ready = inner_ready and bool(replicas)
        status = "ready" if ready else ("loading" if not inner_ready else "no model replicas")
        body = json.dumps({"status": status, "replicas": [
            {"replica": r["replica"], "node": r["node"], "ip": r["ip"], "active": r["active"],
             "models": sorted({m["model"] for m in r["models"]})} for r in replicas]}).encode()
        await send({"type": "http.response.start", "status": 200 if ready else 503,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})


async def _inner_status(app: Any, scope: dict[str, Any], receive: Any) -> bool:
    """Whether lokal's own /readyz says ready (preloading done)."""
    status = 500

    async def capture(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app({**scope, "method": "GET"}, receive, capture)
    return status == 200


class ReplicaCollector(Collector):
    """Per-replica gauges at scrape time, from the board."""

    def __init__(self, view: ClusterView) -> None:
        self.view = view

    def collect(self) -> Any:
        up = GaugeMetricFamily("lokal_replica_up", "Model replicas posting their state, by node",
                               labels=["replica", "node"])
        active = GaugeMetricFamily("lokal_replica_requests_in_flight",
                                   "Requests a model replica is answering now", labels=["replica", "node"])
        loaded = GaugeMetricFamily("lokal_replica_model_loaded",
                                   "Model instances loaded on a replica (1 each)",
                                   labels=["replica", "node", "model", "purpose"])
        in_use = GaugeMetricFamily("lokal_replica_model_in_use", "Requests holding a replica's model instance",
                                   labels=["replica", "node", "model", "purpose"])
        for r in self.view.replicas:
            up.add_metric([r["replica"], r["node"]], 1)
            active.add_metric([r["replica"], r["node"]], r["active"])
            for m in r["models"]:
                labels = [r["replica"], r["node"], m["model"], m["purpose"]]
                loaded.add_metric(labels, 1)
                in_use.add_metric(labels, m["in_use"])
        return [up, active, loaded, in_use]


class Ingress:
    """The ingress deployment: lokal's app over a registry of remote leases."""

    async def __init__(self, settings: Settings, options: dict[str, Any], models: Any, board: Any) -> None:
        from lokal import logs

        logs.setup(settings.effective_log_level, settings.log_format)
        self.settings = settings
        self.registry = remote_registry(models, board, options, aliases=dict(settings.model_aliases))

    def __serve_build_asgi_app__(self) -> Any:
        from lokal.api.app import create_app

        app = create_app(self.settings, self.registry)
        view = self.registry.pool.view  # the RemotePool's view of the replicas
        app.add_middleware(ClusterMiddleware, view=view)
        app.state.metrics.registry.register(ReplicaCollector(view))
        return app


# Deploying ----------------------------------------------------------------------------

def replica_options(settings: Settings) -> tuple[float, int]:
    """CPUs each model replica reserves and threads its engines use."""
    if settings.threads:
        threads = settings.threads
    elif settings.ray_cpus_per_replica:
        threads = max(1, int(settings.ray_cpus_per_replica))
    else:
        threads = settings.effective_threads
    cpus = settings.ray_cpus_per_replica or float(threads)
    return cpus, threads


def build_application(settings: Settings, registry_options: Callable[[Settings, int], dict[str, Any]]) -> Any:
    """The Serve application for settings (not yet running); registry_options gives
    `ModelRegistry`'s arguments for settings and a thread count (lokal.cli.main)."""
    from ray import serve

    from lokal.models.catalog import Catalog

    cpus, threads = replica_options(settings)
    options = registry_options(settings, threads)
    catalog = Catalog(settings.models_path, settings.config_file)
    expected = expected_files(catalog.entries, settings.models_path)
    max_models = settings.max_active_backends or max(8, len(catalog.entries))

    class LokalModelReplica(ModelReplica):
        @serve.multiplexed(max_num_models_per_replica=max_models)
        async def _model(self, name: str) -> Any:
            return await self._load_model(name)

    scaling: dict[str, Any]
    if settings.ray_min_replicas is not None or settings.ray_max_replicas is not None:
        low = settings.ray_min_replicas if settings.ray_min_replicas is not None else 1
        high = settings.ray_max_replicas if settings.ray_max_replicas is not None else max(low, settings.ray_replicas)
        scaling = {"autoscaling_config": {"min_replicas": low, "max_replicas": high,
                                          "target_ongoing_requests": settings.parallel_requests}}
    else:
        scaling = {"num_replicas": settings.ray_replicas}
    quiet = {"logging_config": {"enable_access_log": False}}  # lokal logs its own access lines
    board = serve.deployment(name=BOARD, num_replicas=1, ray_actor_options={"num_cpus": 0},
                             **quiet)(Board).bind()
    # A replica takes as many requests as its model has slots and as many again (at most
    # QUEUE_SIZE, what its own pool lets wait): those wait in the pool, so a slot that
    # frees starts the next request at once. Held to the
    # slots alone, the rest waited at Ray's router, which polls full replicas with a
    # back-off: bench/ray_scale.py lost 12-15% of one replica's throughput to the gaps.
    # Past that, requests wait at the router (up to QUEUE_SIZE), preferring a replica
    # that holds the model.
    models = serve.deployment(
        name=MODELS,
        max_ongoing_requests=settings.parallel_requests + min(settings.parallel_requests, settings.queue_size),
        max_queued_requests=settings.queue_size or -1,
        ray_actor_options={"num_cpus": cpus}, health_check_period_s=2, health_check_timeout_s=10,
        graceful_shutdown_timeout_s=settings.shutdown_grace, **scaling, **quiet,
    )(LokalModelReplica).bind(options, expected, board, settings.engine_isolation)
    # No CPU of its own, on the head node (where Ray's proxy runs by default).
    ingress_options = {"num_cpus": 0, "resources": {"node:__internal_head__": 0.001}}
    ingress = serve.deployment(name=INGRESS, num_replicas=1, max_ongoing_requests=100_000,
                               ray_actor_options=ingress_options, **quiet)(serve.ingress()(Ingress))
    return ingress.bind(settings, options, models, board)


def _connect(settings: Settings) -> None:
    import ray

    ray.init(address=settings.ray, namespace="lokal", logging_level=logging.WARNING,
             configure_logging=False)


def _serve_running() -> bool:
    from ray.serve.context import _connect

    return _connect(raise_if_no_controller_running=False) is not None


def serve_ray(settings: Settings, registry_options: Callable[[Settings, int], dict[str, Any]]) -> int:
    """Deploy lokal on the Ray cluster at settings.ray and stay in the foreground; on
    SIGTERM or SIGINT the application is deleted."""
    try:
        from ray import serve
    except ImportError:
        print("lokal: --ray needs Ray Serve: pip install 'lokal[ray]'", file=sys.stderr)
        return 2
    _connect(settings)
    if _serve_running():
        log.warning("Ray Serve already runs on this cluster: its HTTP proxy keeps the address it "
                    "was started with (ADDRESS=%s applies only to a new Serve)", settings.address)
    serve.start(http_options={"host": settings.host, "port": settings.port},
                proxy_location=settings.ray_proxy_location)
    app = build_application(settings, registry_options)
    log.info("deploying lokal on the Ray cluster at %s (HTTP on %s:%d)", settings.ray,
             settings.host, settings.port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        log.info("listening on http://%s:%d (Ray Serve)", settings.host, settings.port)
        stop.wait()
    finally:
        log.info("shutting down: deleting the Ray Serve application %s", APP_NAME)
        serve.delete(APP_NAME)
        if not serve.status().applications:
            # Serve (its proxy and HTTP address) is one per cluster: stop it when lokal was
            # its only application, so that the next `lokal serve --ray` binds its own ADDRESS.
            serve.shutdown()
    return 0


def models_list_ray(settings: Settings) -> int:
    """Which node holds which model, from the running application's board."""
    from ray import serve

    _connect(settings)
    try:
        board = serve.get_deployment_handle(BOARD, app_name=APP_NAME)
        replicas = board.snapshot.remote().result()
    except Exception as exc:  # noqa: BLE001 - any failure: not deployed
        print(f"lokal: no lokal application on the Ray cluster at {settings.ray}: {exc}", file=sys.stderr)
        return 1
    if not replicas:
        print("no model replicas are running")
        return 1
    for r in replicas:
        models = sorted({m["model"] for m in r["models"]})
        print(f"node {r['node']} ({r['ip']})  replica {r['replica']}  in flight {r['active']}  "
              f"models: {', '.join(models) if models else '-'}")
    return 0
