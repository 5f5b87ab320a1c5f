"""API keys at the door, and usage per key: the middleware and `GET /lokal/usage`.

`KeysMiddleware` finds who a request comes from (`lokal.keys.Keyring`: `API_KEY`,
`ADMIN_API_KEY` or a named key of `API_KEYS_FILE`; 401 for a missing or wrong key
while keys are set), puts its `Caller` and the key's name in the request's
logging context (the model registry reads the caller there: models the key may
use, its limits, its fair share; the access log prints the name), and when the
request has ended records what it used (`lokal.usage` and the `lokal_key_*`
metrics) from the same context: the model, the tokens its answer reported,
audio seconds, images. Named keys that are not admin keys may not read
`/metrics` (it names every key and model) unless it is open (`METRICS_OPEN`).

`GET /lokal/usage?since=&until=` (admin) sums that usage per key and model over a
window: each bound is a Unix time, an ISO 8601 time (UTC unless it says), or a
duration back from now (`1h`, `30m`, `7d` as `168h`); the defaults are the
server's start and now.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lokal import logs
from lokal.api.admin import require_admin
from lokal.api.middleware import send_error
from lokal.errors import BadRequest
from lokal.keys import Caller, Gate, Keyring
from lokal.metrics import Metrics
from lokal.settings import parse_duration
from lokal.usage import Counts, UsageLedger

router = APIRouter(prefix="/lokal", tags=["lokal"])

WRONG_KEY = ("Missing or invalid API key. Send 'Authorization: Bearer <key>' or 'x-api-key: <key>'.")


#: A browser's WebSocket cannot send headers: OpenAI's realtime clients put the key in a subprotocol.
SUBPROTOCOL_KEY = b"openai-insecure-api-key."


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The key a request presents: Bearer, x-api-key or xi-api-key (a WebSocket upgrade:
    also the `openai-insecure-api-key.<key>` subprotocol)."""
    found = dict(headers)
    auth = found.get(b"authorization", b"")
    if auth[:7].lower() == b"bearer ":
        return auth[7:].strip()
    key = found.get(b"x-api-key") or found.get(b"xi-api-key")
    if key is None:
        for protocol in found.get(b"sec-websocket-protocol", b"").split(b","):
            if protocol.strip().startswith(SUBPROTOCOL_KEY):
                return protocol.strip()[len(SUBPROTOCOL_KEY):]
    return key


class EphemeralKeys:
    """Client secrets minted for realtime sessions (`POST /v1/realtime/sessions`): each
    stands for the key that minted it, for WebSocket upgrades only, until it expires."""

    def __init__(self) -> None:
        self._secrets: dict[bytes, tuple[Caller, float]] = {}

    def mint(self, caller: Caller | None, seconds: float) -> tuple[str, int]:
        now = time.time()
        self._secrets = {k: v for k, v in self._secrets.items() if v[1] > now}
        secret = "ek_" + secrets.token_urlsafe(24)
        expires = now + seconds
        self._secrets[secret.encode()] = (caller if caller is not None else Caller(None, Gate()), expires)
        return secret, int(expires)

    def identify(self, presented: bytes | None) -> Caller | None:
        if presented is None:
            return None
        found = self._secrets.get(presented)
        if found is None or found[1] <= time.time():
            return None
        minted = found[0]
        return Caller(minted.key, minted.gate, admin_key=minted.admin_key)


class KeysMiddleware:
    """See the module's docstring. Sits inside the observability middleware (its
    context is bound, its 401s are counted and logged)."""

    def __init__(self, app: ASGIApp, keyring: Keyring, open_paths: Iterable[str],
                 ledger: UsageLedger, metrics: Metrics, open_prefixes: tuple[str, ...] = (),
                 ephemeral: EphemeralKeys | None = None) -> None:
        self.app = app
        self.ephemeral = ephemeral
        self.keyring = keyring
        self.open_paths = frozenset(open_paths)
        self.open_prefixes = open_prefixes  # paths under these need no key either
        self.ledger = ledger
        self.metrics = metrics
        keyring.gate.on_refusal = metrics.key_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # WebSocket upgrades (realtime sessions) need the key as much as HTTP requests do.
        if scope["type"] not in ("http", "websocket") or scope["path"] in self.open_paths or (
                self.open_prefixes and scope["path"].startswith(self.open_prefixes)):
            await self.app(scope, receive, send)
            return
        presented = presented_key(scope["headers"])
        caller = self.keyring.identify(presented)
        if caller is None and scope["type"] == "websocket" and self.ephemeral is not None:
            caller = self.ephemeral.identify(presented)
        if caller is None:
            await send_error(send, scope, 401, WRONG_KEY, [(b"www-authenticate", b"Bearer")])
            return
        context = logs.current()
        if caller.key is not None and scope["path"] == "/metrics" and not caller.key.admin:
            await send_error(send, scope, 403, f"The API key '{caller.name}' may not read /metrics: it is "
                             "not an admin key (admin: true in API_KEYS_FILE). Scrape with an admin key, "
                             "or set METRICS_OPEN=true.")
            return
        if context is None:  # no observability middleware outside (a bare app in a test)
            await self.app(scope, receive, send)
            return
        context.caller = caller
        context.key = caller.name or None

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                # Counted before the client sees the end: its next request meets the new counts.
                self._record(caller, context)
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self._record(caller, context)

    def _record(self, caller: Caller, context: logs.RequestContext) -> None:
        if caller.finished:
            return
        prompt = context.prompt_tokens or 0
        completion = context.completion_tokens or 0
        caller.finish(prompt + completion)
        if context.model is None or caller.refused:
            return
        counts = Counts(1, prompt, completion, float(context.audio_seconds or 0.0), context.images or 0)
        self.ledger.record(caller.name, context.model, counts)
        self.metrics.key_usage(caller.name, context.model, prompt=prompt, completion=completion,
                               audio_seconds=counts.audio_seconds, images=counts.images)


def parse_time(value: str | None, param: str, now: float) -> float | None:
    """A bound of the usage window: Unix seconds, ISO 8601, or a duration back from now."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(number):
            return number
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        pass
    else:
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.timestamp()
    try:
        ago = parse_duration(text)
    except ValueError:
        ago = None
    if ago is not None:
        return now - ago
    raise BadRequest(f"Invalid value for '{param}': {value!r}. Give a Unix time, an ISO 8601 time "
                     "(2026-01-31T12:00:00Z) or a duration back from now (90m, 24h).", param=param)


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).isoformat().replace("+00:00", "Z")


@router.get("/usage", dependencies=[Depends(require_admin)],
            summary="Usage per API key and model over a time window (admin)")
async def usage(request: Request, since: str | None = None, until: str | None = None) -> dict[str, Any]:
    ledger: UsageLedger = request.app.state.usage
    now = time.time()
    start = parse_time(since, "since", now)
    end = parse_time(until, "until", now)
    if start is not None and end is not None and start > end:
        raise BadRequest("'since' is after 'until'.", param="since")
    answer = ledger.query(start, end)
    answer["since"] = _iso(answer["since"])
    answer["until"] = _iso(answer["until"])
    return answer

