#!/usr/bin/env bash
# The main job: build the demo insurance model from the bundled data on this machine.
# So far: prepare the corpus, train the tokenizer, write token shards, pretrain a base model,
# fine-tune it (SFT, then DPO), export the assistant to Hugging Face format, and ask it a question.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh docs
recipe="${RECIPE:-recipes/insurance-zh.toml}"
run_dir=$(.venv/bin/python -c "import sys; from lmforge.config import RecipeConfig, load_config; from pathlib import Path; print(load_config(RecipeConfig, Path(sys.argv[1])).run.out_dir)" "$recipe")
.venv/bin/lmforge data prepare --recipe "$recipe" "$@"
.venv/bin/lmforge tokenizer train --recipe "$recipe" "$@"
.venv/bin/lmforge data tokenize --recipe "$recipe" "$@"
.venv/bin/lmforge pretrain --recipe "$recipe" "$@"
.venv/bin/lmforge sft --recipe "$recipe" "$@"
.venv/bin/lmforge dpo --recipe "$recipe" "$@"
.venv/bin/lmforge export hf --model "$run_dir/dpo/model" --out "$run_dir/export/hf"
echo "--- the base model continues a clause:"
.venv/bin/lmforge generate --recipe "$recipe" --model "$run_dir/pretrain/model" "被保险人在保险期间内"
echo "--- the assistant answers:"
.venv/bin/lmforge generate --recipe "$recipe" --model "$run_dir/dpo/model" --chat "什么是犹豫期？"
