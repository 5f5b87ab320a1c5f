"""Thin routes of the Realtime API: the WebSocket session, and client secrets.

`GET /v1/realtime?model=...` (and `/realtime`) upgrades to a session (`session.Session`);
the API key was checked at the upgrade (`api.keys.KeysMiddleware`: a header, OpenAI's
`openai-insecure-api-key.` subprotocol, or a client secret minted here). An unknown model
is an `error` event (`model_not_found`) and the socket closes; a key over its limits
likewise (`rate_limit_exceeded`). A session counts as one request of its key for as
long as it lasts.

`POST /v1/realtime/sessions` (beta) and `POST /v1/realtime/client_secrets` (GA) mint a
client secret for a browser: a bearer for the upgrade, valid for `CLIENT_SECRET_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, Body, Request, WebSocket

from lokal import callers
import lokal.api.realtime.render as render
from lokal.api.realtime.roles import Roles
from lokal.api.realtime.session import Session
from lokal.errors import LokalError, NotFound

router = APIRouter()

CLIENT_SECRET_SECONDS = 60
#: the subprotocol the server picks when a browser offers OpenAI's
SUBPROTOCOL = "realtime"


@router.websocket("/realtime")
async def realtime(ws: WebSocket, model: str = "") -> None:
    app = ws.app
    offered = ws.scope.get("subprotocols") or []
    await ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    try:
        if not model:
            raise NotFound("Missing required parameter: 'model' (GET /v1/realtime?model=<a chat model>).")
        roles = Roles(app.state.registry, app.state.settings, model)
        caller = callers.current_caller()
        if caller is not None:
            caller.admit()  # the key's limits: a session is one request of its key
    except LokalError as exc:
        refused = render.refusal(exc, param="model")
        await ws.send_json(refused)
        await ws.close(1008, refused["error"]["code"] or "refused")
        return
    session = Session(ws, roles, app.state.settings)
    run = asyncio.create_task(session.run())
    stopping = asyncio.create_task(app.state.stopping.wait())
    try:
        await asyncio.wait({run, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stopping.done() and not run.done():
            await session.send(render.error("The server is shutting down.", type="server_error",
                                            code="server_shutting_down"))
            run.cancel()
    finally:
        stopping.cancel()
        for task in (run, stopping):
            with contextlib.suppress(BaseException):
                await task
        if not session.closed or ws.client_state.name == "CONNECTED":
            with contextlib.suppress(Exception):
                await ws.close()


def _mint(request: Request, session: dict[str, Any]) -> tuple[dict[str, Any], str, int]:
    registry = request.app.state.registry
    model = session.get("model")
    if not isinstance(model, str) or not model:
        raise NotFound("Missing required parameter: 'model'.")
    roles = Roles(registry, request.app.state.settings, model)
    config = roles.initial_config()
    value, expires = request.app.state.ephemeral_keys.mint(callers.current_caller(), CLIENT_SECRET_SECONDS)
    return config, value, expires


@router.post("/realtime/sessions", summary="Mint a client secret for a realtime session (beta)")
async def sessions(request: Request, body: dict[str, Any] = Body(default_factory=dict)) -> dict[str, Any]:
    config, value, expires = _mint(request, body)
    return {**render.session(config, render.new_id("sess"), expires),
            "client_secret": {"value": value, "expires_at": expires}}


@router.post("/realtime/client_secrets", summary="Mint a client secret for a realtime session")
async def client_secrets(request: Request, body: dict[str, Any] = Body(default_factory=dict)) -> dict[str, Any]:
    session = body.get("session") if isinstance(body.get("session"), dict) else {}
    config, value, expires = _mint(request, session)
    return {"value": value, "expires_at": expires,
            "session": {"type": "realtime", "object": "realtime.session", "id": render.new_id("sess"), **config}}
