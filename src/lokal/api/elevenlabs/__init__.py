"""ElevenLabs' text-to-speech routes, as LocalAI offers them (/v1/text-to-speech/{voice_id})."""

from lokal.api.elevenlabs.routes import router

__all__ = ["router"]
