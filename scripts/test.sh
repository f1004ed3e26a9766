#!/usr/bin/env bash
# The test suite (fast by default; slow and GPU tests are opt-in with -m slow / -m gpu),
# plus the lint and type checks, in the project's own virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh dev
bash scripts/setup-browser.sh
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
