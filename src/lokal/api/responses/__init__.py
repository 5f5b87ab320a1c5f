from lokal.api.responses import errors
from lokal.api.responses.routes import router

errors.register()

__all__ = ["router"]
