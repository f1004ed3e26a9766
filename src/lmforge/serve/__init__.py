"""Serving: an OpenAI-compatible HTTP API over the inference engine (no training code here)."""

from lmforge.serve.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
