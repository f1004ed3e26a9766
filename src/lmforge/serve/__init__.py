"""OpenAI-compatible HTTP serving and the web chat page, a thin layer over the engine."""

from lmforge.serve.app import create_app, run_server
from lmforge.serve.keys import ApiKeys, Principal, load_api_keys
from lmforge.serve.launch import serve_folder

__all__ = ["ApiKeys", "Principal", "create_app", "load_api_keys", "run_server", "serve_folder"]
