#!/usr/bin/env bash
# The main job: build the demo insurance assistant from the bundled data on this machine, then
# serve it with the web chat. `lmforge run` skips stages whose inputs and config have not changed
# and resumes an interrupted one, so running this again is cheap.
#   RECIPE=recipes/insurance-zh-gpu.toml bash scripts/demo.sh   # the one-GPU recipe
#   SERVE=0 bash scripts/demo.sh                                # build only
#   PORT=8080 bash scripts/demo.sh --set sft.train.steps=400    # extra args go to lmforge run
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh docs
serve=()
if [ "${SERVE:-1}" = "1" ]; then
  serve=(--serve --port "${PORT:-8000}")
fi
exec .venv/bin/lmforge run "${RECIPE:-recipes/insurance-zh.toml}" "${serve[@]}" "$@"
