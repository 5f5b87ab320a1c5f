"""The benches' bare HTTP/1.1 client: the least CPU a client can spend.

Clients share the machine with the server under test, and pooled httpx spent
enough CPU per token or request to set the pace itself on two cores. Each call
opens a fresh connection (as Dify's `requests.post` does) and sends one POST.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any


async def post(host: str, port: int, path: str, body: dict[str, Any],
               accept: str | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Send body as a JSON POST on a new connection; the connection, to read the answer from."""
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection(host, port)
    extra = f"Accept: {accept}\r\n".encode() if accept else b""
    writer.write(b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n%s"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                 % (path.encode(), host.encode(), port, extra, len(payload)) + payload)
    await writer.drain()
    return reader, writer
