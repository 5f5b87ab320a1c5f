"""Liveness and readiness, outside auth (as LocalAI's /healthz and /readyz)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter()


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: preloading is done")
async def readyz(request: Request) -> JSONResponse:
    if request.app.state.ready.is_set():
        status = request.app.state.registry.status()
        body: dict[str, object] = {"status": "ready", "worker_restarts": status.restarts}
        if status.failed:
            body["failed_models"] = dict(status.failed)
        return JSONResponse(body)
    return JSONResponse({"status": "loading"}, status_code=503)
