"""Who may manage models: one FastAPI dependency for every management route.

Installing, deleting and copying models makes the server fetch URLs and write and
remove files, so these routes are closed unless their owner opens them (#21):

* a named key of ``API_KEYS_FILE`` passes if it has ``admin: true``, else gets 403;
* with ``ADMIN_API_KEY`` set, that key is required (Bearer or x-api-key);
* else with API keys set, a valid API key (the auth middleware checks it first);
* else ``ALLOW_REMOTE_ADMIN`` opens them to everyone (a warning is logged at start);
* else only clients on loopback may use them; anyone else gets 403 saying how to
  allow it. The client is the socket's peer address; ``X-Forwarded-For`` counts only
  when the peer is in ``TRUSTED_PROXIES``, and a loopback peer that forwards for
  someone else (a reverse proxy on this host that is not declared) is not local.

Use: ``router = APIRouter(dependencies=[Depends(require_admin)])``.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from typing import Any

from fastapi import Request

from lokal.errors import Forbidden, Unauthorized
from lokal.callers import current_caller

log = logging.getLogger(__name__)

HOW_TO_ALLOW = ("Model management is allowed from loopback only while no API key is set. To manage "
                "this server from elsewhere, set API_KEY (or ADMIN_API_KEY) and send the key, or "
                "set ALLOW_REMOTE_ADMIN=true (unsafe on a shared network).")


def _networks(values: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            log.error("TRUSTED_PROXIES: %r is not an address or CIDR; ignored", value)
    return out


def _ip(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not value:
        return None
    try:
        ip = ipaddress.ip_address(value.strip().strip("[]").split("%")[0])
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped or ip


def client_address(scope: dict[str, Any], trusted: list[str]) -> tuple[Any, bool]:
    """(the client's IP or None, whether a forwarding header was left unexplained)."""
    client = scope.get("client")
    peer = _ip(client[0] if client else None)
    headers = {k.lower(): v for k, v in scope.get("headers", [])}
    forwarded = headers.get(b"x-forwarded-for") or headers.get(b"forwarded")
    networks = _networks(trusted)
    if peer is not None and forwarded and any(peer in n for n in networks):
        hops = [h.strip() for h in headers.get(b"x-forwarded-for", b"").decode("latin-1").split(",")
                if h.strip()]
        for hop in reversed(hops):  # the right-most address no trusted proxy added
            ip = _ip(hop)
            if ip is None:
                return None, False
            if not any(ip in n for n in networks):
                return ip, False
        return peer, False
    return peer, bool(forwarded)


def _presented(request: Request) -> bytes | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip().encode()
    key = request.headers.get("x-api-key")
    return key.encode() if key else None


def _matches(key: bytes | None, keys: list[str]) -> bool:
    ok = False
    for expected in keys:
        ok |= key is not None and hmac.compare_digest(key, expected.encode())
    return ok


async def require_admin(request: Request) -> None:
    """Refuse a management request its client may not make (403/401, in the family's envelope)."""
    settings = request.app.state.settings
    caller = current_caller()
    if caller is not None and caller.key is not None:  # a named key (the middleware checked it)
        if caller.key.admin:
            return
        raise Forbidden(f"The API key '{caller.name}' may not manage this server: it is not an admin "
                        "key (admin: true in API_KEYS_FILE). Use an admin key, or ADMIN_API_KEY.")
    if settings.admin_keys:
        if not _matches(_presented(request), settings.admin_keys):
            raise Unauthorized("This route manages models and needs the ADMIN_API_KEY: send "
                               "'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
                               headers={"WWW-Authenticate": "Bearer"})
        return
    if settings.api_keys:
        if not _matches(_presented(request), settings.api_keys):  # the middleware let it through
            raise Unauthorized("Missing or invalid API key.", headers={"WWW-Authenticate": "Bearer"})
        return
    if settings.allow_remote_admin:
        return
    ip, unexplained_proxy = client_address(request.scope, settings.proxies)
    if ip is not None and ip.is_loopback and not unexplained_proxy:
        return
    who = str(ip) if ip is not None else "an unknown address"
    if unexplained_proxy:
        who += " forwarding for another client (set TRUSTED_PROXIES to name the proxy)"
    raise Forbidden(f"Refused: the client ({who}) is not on loopback. {HOW_TO_ALLOW}")


def log_admin_posture(settings: Any) -> None:
    """Say at start how the management routes are guarded (a warning when wide open)."""
    if settings.allow_remote_admin and not settings.admin_keys and not settings.api_keys \
            and settings.api_keys_file is None:
        log.warning("ALLOW_REMOTE_ADMIN is set and no key is configured: anyone who can reach this "
                    "server can install and delete models and make it download from the network.")
    elif settings.admin_keys:
        log.info("model management needs the ADMIN_API_KEY")
    elif not settings.api_keys and settings.api_keys_file is None:
        log.info("model management is open to loopback clients only (no API key set)")
