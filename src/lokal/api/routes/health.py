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
        pool = request.app.state.registry.pool
        body: dict[str, object] = {"status": "ready", "worker_restarts": pool.restarts}
        if pool.failed:
            body["failed_models"] = dict(pool.failed)
        return JSONResponse(body)
    return JSONResponse({"status": "loading"}, status_code=503)
