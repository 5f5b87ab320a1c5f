from lokal.api.anthropic.routes import router

__all__ = ["router"]
