"""`mmfuse serve`: a FastAPI model server with micro-batching, metrics, auth and a web page."""
from .app import create_app, serve
from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "serve"]
