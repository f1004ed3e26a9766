"""The one place that knows how a run folder is laid out. Stages receive the paths they read and
write from here, never a run directory to work names out from; the pipeline also uses it to see
which stage produced a path a stage reads (that stage's fingerprint then stands for the path).

```
runs/<name>/
  data/            corpus/ (train.jsonl, val.jsonl), report.md        <- data
  data/shards/     *.bin + index.json                                 <- shards
  tokenizer/       tokenizer.json, ...                                <- tokenizer
  pretrain/ sft/ dpo/ rm/ kto/ ppo/ grpo/   model/, checkpoints/, metrics.jsonl, report.md
  rag/             the index (store, keyword index, manifest, reranker/)
  decoding/        model/ (the trained assistant + its chosen grounded decoding), report.md
  eval/            report.json, report.md, heldout_queries.jsonl
  export/hf/       the assistant as a Hugging Face folder
  report.md        the run's report card (+ training.png, eval.png, report.json)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STAGE_FOLDERS = {"data": "data", "shards": "data/shards", "tokenizer": "tokenizer",
                 "pretrain": "pretrain", "sft": "sft", "dpo": "dpo", "rm": "rm", "kto": "kto",
                 "ppo": "ppo", "grpo": "grpo", "rag": "rag",
                 "decoding": "decoding", "eval": "eval", "export": "export"}
TRAINING_STAGES = ("pretrain", "sft", "dpo")  # the chain that makes the assistant
ASSISTANT_STAGE = TRAINING_STAGES[-1]


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def stage(self, name: str) -> Path:
        return self.root / STAGE_FOLDERS[name]

    def model(self, stage: str) -> Path:
        """The self-contained model folder a training stage leaves."""
        return self.stage(stage) / "model"

    @property
    def corpus(self) -> Path:
        return self.stage("data") / "corpus"

    @property
    def shards(self) -> Path:
        return self.stage("shards")

    @property
    def tokenizer(self) -> Path:
        return self.stage("tokenizer")

    @property
    def rag(self) -> Path:
        return self.stage("rag")

    @property
    def trained(self) -> Path:
        """The last training stage's model."""
        return self.model(ASSISTANT_STAGE)

    @property
    def assistant(self) -> Path:
        """The final model (the trained one with its decoding chosen): what chat, eval,
        export and the server use."""
        return self.model("decoding")

    @property
    def hf_export(self) -> Path:
        return self.stage("export") / "hf"

    def gguf_export(self, qtype: str) -> Path:
        return self.stage("export") / "gguf" / f"model-{qtype}.gguf"

    @property
    def report_card(self) -> Path:
        return self.root / "report.md"

    def owner(self, path: Path) -> str | None:
        """The stage whose folder holds ``path`` (the innermost one), or None outside the run."""
        path = Path(path)
        found = [(len(folder), name) for name, folder in STAGE_FOLDERS.items()
                 if path == self.root / folder or (self.root / folder) in path.parents]
        return max(found)[1] if found else None
