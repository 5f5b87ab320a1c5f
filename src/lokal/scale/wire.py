"""What crosses between lokal's ingress and its model replicas on a Ray cluster: errors as
plain data (raised again as the same `LokalError` kind, status and type), and the model
files every node must hold the same."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lokal import errors
from lokal.models.catalog import ModelEntry

log = logging.getLogger(__name__)

#: how often a replica posts its state to the board, and how old a post may be
REPORT_INTERVAL = 1.0
STALE_AFTER = 6.0


class ReplicaSetupError(RuntimeError):
    """A replica that cannot serve what the cluster offers (a model file missing on its node)."""


# Errors across the wire -----------------------------------------------------

_KINDS: dict[str, type[errors.LokalError]] = {
    cls.__name__: cls for cls in (
        errors.BadRequest, errors.Unauthorized, errors.Forbidden, errors.NotFound,
        errors.Conflict, errors.Busy, errors.Timeout, errors.ServerError, errors.Unavailable,
        errors.InsufficientStorage)
}


def encode_error(exc: BaseException) -> dict[str, Any]:
    """A replica's exception as plain data: its kind (the nearest of lokal's base kinds),
    message, status, type, param, headers and extra."""
    if isinstance(exc, errors.EngineError):
        exc = errors.normalize_engine_error(exc)
    if not isinstance(exc, errors.LokalError):
        log.error("replica error", exc_info=exc)
        exc = errors.ServerError(f"the model replica failed: {type(exc).__name__}: {exc}")
    kind = next((c.__name__ for c in type(exc).__mro__ if c.__name__ in _KINDS), "LokalError")
    return {"kind": kind, "message": exc.message, "status": exc.status, "type": exc.type,
            "param": exc.param, "headers": dict(exc.headers), "extra": dict(exc.extra),
            "retry_after": getattr(exc, "retry_after", None)}


def decode_error(data: dict[str, Any]) -> errors.LokalError:
    """The same kind of LokalError again, on the ingress."""
    cls = _KINDS.get(data.get("kind", ""), errors.LokalError)
    kwargs: dict[str, Any] = {"param": data.get("param"), "status": data.get("status"),
                              "type": data.get("type"), "headers": data.get("headers") or {},
                              "extra": data.get("extra") or {}}
    if cls is errors.Busy and data.get("retry_after") is not None:
        kwargs["retry_after"] = int(data["retry_after"])
    return cls(str(data.get("message") or "error"), **kwargs)


# Model files: the same on every node -----------------------------------------

def expected_files(entries: list[ModelEntry], models_path: Path) -> dict[str, dict[str, Any]]:
    """What each servable model's file is on the node that deploys: path (relative to
    the models folder when inside it) and size, for replicas to check theirs against.
    Files still to be downloaded on first use are left out."""
    out: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if entry.state != "ready":  # broken, or its files still to be downloaded on first use
            continue
        path = entry.model_path
        try:
            shown = str(path.resolve().relative_to(models_path.resolve()))
        except ValueError:
            shown = str(path)
        size = path.stat().st_size if path.is_file() else None
        out[entry.name] = {"path": shown, "size": size, "dir": path.is_dir()}
    return out


def check_model_files(models_path: Path, expected: dict[str, dict[str, Any]], node: str) -> None:
    """Refuse to start a replica on a node whose models folder lacks a model file the
    cluster offers, or holds a different one under its name."""
    problems: list[str] = []
    for name, want in sorted(expected.items()):
        path = Path(want["path"])
        if not path.is_absolute():
            path = models_path / path
        if want.get("dir"):
            if not path.is_dir():
                problems.append(f"model {name!r}: folder {path} is missing")
            continue
        if not path.is_file():
            problems.append(f"model {name!r}: file {path} is missing")
        elif want.get("size") is not None and path.stat().st_size != want["size"]:
            problems.append(f"model {name!r}: file {path} is {path.stat().st_size} bytes, "
                            f"not {want['size']} as on the node that deployed")
    if problems:
        raise ReplicaSetupError(
            f"node {node} cannot serve this cluster's models: " + "; ".join(problems)
            + ". The models folder (MODELS_PATH) must hold the same files on every node "
            "(a shared path, or `lokal models install` run on each node).")
