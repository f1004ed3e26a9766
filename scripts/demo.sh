#!/usr/bin/env bash
# The main job: build the demo insurance assistant from the bundled data.
# So far: prepare the corpus, train the tokenizer, tokenise the corpus into shards.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh docs
recipe="${RECIPE:-recipes/insurance-zh.toml}"
.venv/bin/lmforge data prepare --recipe "$recipe" "$@"
.venv/bin/lmforge tokenizer train --recipe "$recipe" "$@"
.venv/bin/lmforge data tokenize --recipe "$recipe" "$@"
