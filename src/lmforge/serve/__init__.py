"""OpenAI-compatible HTTP serving and the web chat page, a thin layer over the engine."""

from lmforge.serve.app import Principal, ServeSettings, create_app

__all__ = ["Principal", "ServeSettings", "create_app"]
