"""OpenAI's Realtime API over WebSocket: speech in (VAD, Whisper), the chat model, speech out.

`protocol` (the client events), `session` (one session's state and events), `turns`
(input audio, server VAD, transcription), `answer` (one response: generation and
sentence-by-sentence speech), `roles` (which model plays which part), `render` (the
server events), `routes` (the WebSocket and client secrets).
"""

from lokal.api.family import Family, Mount
from lokal.api.realtime.routes import router

FAMILY = Family("realtime", mounts=(Mount(router, prefix="/v1", tags=("realtime",), also_bare=True),),
                prefixes=("/realtime",))

__all__ = ["FAMILY"]
