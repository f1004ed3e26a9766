"""The one runner: post-training under torchrun behaves like pretraining (one report and one set
of outputs, from the main process, and the same training as one process), a stage's thread
count does not outlive it, and the reranker scores on the device its parameters are on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port

from lmforge.train.checkpoint import list_checkpoints
from lmforge.train.sharded import is_sharded

DRIVER = """
import json, os, sys
from pathlib import Path
from lmforge.config import RecipeConfig, load_config
from lmforge.data import heldout_contracts, preference_examples, sft_examples
from lmforge.train import dpo, reward_model, sft

def run_stage(stage, run, out, overrides):
    # no LoRA dropout: its masks are drawn per process, so they differ from one process's
    recipe = load_config(RecipeConfig, run.parent / "tiny.toml",
                         [f"{s}.lora.dropout=0.0" for s in ("sft", "dpo", "rm")] + overrides)
    held = heldout_contracts(run / "data" / "corpus")
    base = run / "pretrain" / "model"
    if stage == "sft":
        conversations, stats = sft_examples(recipe.sft, recipe.assistant, held, 7)
        return sft(recipe.sft, conversations, stats, base, out, 7, show_progress=False)
    config = recipe.dpo if stage == "dpo" else recipe.rm
    pairs, stats = preference_examples(config, recipe.sft, recipe.assistant, held, 7)
    train = dpo if stage == "dpo" else reward_model
    return train(config, pairs, stats, base, out, 7, show_progress=False)

if __name__ == "__main__":
    stage, run, out, reports = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    report = run_stage(stage, run, out, sys.argv[5:])
    (reports / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(report))
"""


def losses(out: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.mark.parametrize(("stage", "parallel"), [("sft", "ddp"), ("dpo", "ddp"), ("rm", "ddp"),
                                                 ("sft", "fsdp"), ("dpo", "fsdp")])
def test_post_training_under_torchrun_matches_one_process(stage: str, parallel: str,
                                                          tiny_run: Path, tmp_path: Path) -> None:
    """LoRA under FSDP: the frozen base is sharded with the adapters, only adapters train."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER, encoding="utf-8")
    reports = tmp_path / "reports"
    reports.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(driver), stage, str(tiny_run), str(tmp_path / "one"),
                          str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(free_port()), str(driver), stage, str(tiny_run),
                          str(tmp_path / "two"), str(reports),
                          f"{stage}.train.parallel={parallel}"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]

    main, other = (json.loads((reports / f"rank{r}.json").read_text()) for r in (0, 1))
    assert other == {}  # only the main process saves and reports
    assert main["processes"] == 2
    assert json.loads((tmp_path / "two" / "report.json").read_text())["processes"] == 2
    assert (tmp_path / "two" / "model" / "model.safetensors").exists()
    saved = list_checkpoints(tmp_path / "two" / "checkpoints")
    assert saved and all(is_sharded(c) == (parallel == "fsdp") for c in saved)
    single = json.loads((tmp_path / "one" / "report.json").read_text())
    assert main["before"] == pytest.approx(single["before"], rel=1e-5)  # the same start
    assert [s for s, _ in losses(tmp_path / "one")] == [s for s, _ in losses(tmp_path / "two")]
    for (_, a), (_, b) in zip(losses(tmp_path / "one"), losses(tmp_path / "two"), strict=True):
        assert a == pytest.approx(b, rel=1e-3)


def test_a_stages_thread_count_does_not_outlive_it(tiny_run: Path, tmp_path: Path) -> None:
    from lmforge.config import ModelConfig, TrainConfig, from_dict
    from lmforge.train import pretrain

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        train = TrainConfig(steps=2, batch_size=2, seq_len=32, warmup_steps=1, eval_every=2,
                            eval_batches=1, save_every=2, threads=1)
        pretrain(from_dict(ModelConfig, {"preset": "tiny"}), train, tiny_run / "tokenizer",
                 tiny_run / "data" / "shards", tmp_path, 7, show_progress=False)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_reranker_scores_on_the_device_of_its_parameters(tok, tmp_path: Path,  # noqa: ANN001
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop leaves the encoder on the training device (a GPU); scoring must follow it
    there, and the model comes back on the CPU. "meta" stands in for the GPU."""
    from lmforge.config import RerankerConfig, TrainConfig
    from lmforge.model import RerankGroup
    from lmforge.train import rerank

    def trained_on_another_device(train, build, out, seed, **kwargs):  # noqa: ANN001, ANN003, ANN202
        model, _ = build(None, 1)
        model.to("meta")
        model.cpu = lambda: model.to_empty(device="cpu")  # meta tensors hold no values to copy
        return {"seconds": 0.0}

    seen: list[tuple[torch.device, torch.device]] = []

    def score(model, group, device):  # noqa: ANN001, ANN202
        seen.append((device, next(model.parameters()).device))
        return np.arange(len(group.ids), dtype=np.float32)

    monkeypatch.setattr(rerank, "run_task", trained_on_another_device)
    monkeypatch.setattr(rerank, "score_group", score)
    groups = [RerankGroup([[5, 6, 7]] * 3, np.zeros((3, 4), np.float32),
                          np.array([True, False, False]), ["a", "b", "c"], f"g{i}")
              for i in range(12)]
    phase = TrainConfig(steps=2, batch_size=1, seq_len=16, warmup_steps=1, eval_every=1,
                        save_every=1)
    config = RerankerConfig(dim=32, n_layers=1, n_heads=4, negatives=1, candidates=3,
                            feature_train=phase, train=phase)
    model, report = rerank.train_cross_encoder(groups[:6], groups[6:8], groups[8:], tok, config,
                                               tmp_path, 0, 0, show_progress=False)
    assert seen and all(used == where == torch.device("meta") for used, where in seen)
    assert next(model.parameters()).device == torch.device("cpu")
    assert report["inner_val_questions"] > 0
