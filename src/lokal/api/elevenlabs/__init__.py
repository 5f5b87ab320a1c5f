"""ElevenLabs' text-to-speech routes, as LocalAI offers them (/v1/text-to-speech/{voice_id}),
with errors in ElevenLabs' envelope."""

from __future__ import annotations

from lokal.api.elevenlabs.routes import PREFIX, elevenlabs_envelope, router
from lokal.api.family import Family, Mount

FAMILY = Family("elevenlabs", mounts=(Mount(router, "/v1", ("ElevenLabs",), also_bare=True),), prefixes=(PREFIX,),
                envelope=elevenlabs_envelope)
