"""A checkpoint save killed half-way leaves a temporary folder; the next save removes it and
never touches a complete checkpoint."""

import subprocess
import sys
from pathlib import Path

import torch

from lmforge.config import ModelConfig
from lmforge.model import Transformer
from lmforge.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint

SAVE_THEN_DIE = """
import os, sys
from pathlib import Path
import torch
from lmforge.config import ModelConfig
from lmforge.model import Transformer
from lmforge.train import checkpoint

model = Transformer(ModelConfig(vocab_size=32, dim=16, n_layers=1, n_heads=2, n_kv_heads=1,
                                max_seq_len=16))
optimizer = torch.optim.AdamW(model.parameters())
checkpoint.save_file = lambda *args, **kwargs: os._exit(9)  # killed while writing the optimizer
checkpoint.save_checkpoint(Path(sys.argv[1]), int(sys.argv[2]), model, optimizer, {}, keep=5)
"""


def tiny() -> tuple[Transformer, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=32, dim=16, n_layers=1, n_heads=2, n_kv_heads=1,
                                    max_seq_len=16))
    return model, torch.optim.AdamW(model.parameters())


def test_leftovers_of_killed_saves_are_removed_complete_checkpoints_kept(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    model, optimizer = tiny()
    save_checkpoint(folder, 4, model, optimizer, {}, keep=5)
    for step in (8, 12):
        result = subprocess.run([sys.executable, "-c", SAVE_THEN_DIE, str(folder), str(step)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 9, result.stderr
    # each save starts by removing what the killed ones before it left: one is left now
    leftovers = [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".step-000012."), leftovers
    (folder / "notes.tmp").write_text("not ours", encoding="utf-8")

    save_checkpoint(folder, 8, model, optimizer, {}, keep=5)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.tmp", "step-000004",
                                                         "step-000008"]
    assert [p.name for p in list_checkpoints(folder)] == ["step-000004", "step-000008"]
    assert load_checkpoint(folder / "step-000004", *tiny())["step"] == 4
