"""The training loop: learning, exact resume, crash safety, NaN handling, DDP equivalence."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmforge.config import RecipeConfig, TrainConfig, load_config
from lmforge.train import loop as loop_module
from lmforge.train.checkpoint import list_checkpoints
from lmforge.train.schedule import lr_multiplier
from lmforge.train.stages import pretrain

PRETRAIN = ["model.preset=\"tiny\"", "pretrain.steps=12", "pretrain.batch_size=4",
            "pretrain.seq_len=32", "pretrain.warmup_steps=2", "pretrain.eval_every=4",
            "pretrain.eval_batches=2", "pretrain.log_every=1", "pretrain.save_every=4",
            "pretrain.threads=1"]


def recipe_in(tiny_run: Path, out: Path, *extra: str) -> RecipeConfig:
    """The tiny run's recipe, writing into ``out`` with the tiny run's data and tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    for stage in ("data", "tokenizer"):
        if not (out / stage).exists():
            (out / stage).symlink_to(tiny_run / stage)
    return load_config(RecipeConfig, None, [f"run.out_dir={str(out)!r}", "run.seed=7",
                                            *PRETRAIN, *extra])


def losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "pretrain" / "metrics.jsonl").open()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def test_schedules() -> None:
    cosine = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_multiplier(0, cosine) == pytest.approx(0.1)
    assert lr_multiplier(9, cosine) == pytest.approx(1.0)
    assert lr_multiplier(99, cosine) == pytest.approx(0.1, abs=1e-3)
    wsd = TrainConfig(steps=100, warmup_steps=10, schedule="wsd", decay_fraction=0.2)
    assert lr_multiplier(50, wsd) == 1.0
    assert lr_multiplier(90, wsd) == pytest.approx(1 - 0.9 * 0.5)


def test_pretraining_learns_and_writes_its_outputs(tiny_run: Path, tmp_path: Path) -> None:
    recipe = recipe_in(tiny_run, tmp_path, "pretrain.steps=40", "pretrain.lr=0.01",
                       "pretrain.eval_every=20")
    report = pretrain(recipe, show_progress=False)
    assert report["first_eval"]["step"] == 0
    assert report["final"]["val_loss"] < report["first_eval"]["val_loss"] - 0.4
    assert 0 < report["final"]["val_bpb"] < 10
    out = tmp_path / "pretrain"
    for name in ("loss.png", "report.md", "metrics.jsonl", "config.json", "model/tokenizer.json",
                 "model/model.safetensors"):
        assert (out / name).exists(), name
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-000036",
                                                                        "step-000040"]


def test_resume_is_bit_identical(tiny_run: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    straight = tmp_path / "straight"
    pretrain(recipe_in(tiny_run, straight), show_progress=False)

    interrupted = tmp_path / "interrupted"
    real_step = loop_module.Trainer.train_step

    def killed_at_9(self, step: int):  # noqa: ANN001, ANN202
        if step == 9:
            raise KeyboardInterrupt
        return real_step(self, step)

    monkeypatch.setattr(loop_module.Trainer, "train_step", killed_at_9)
    with pytest.raises(KeyboardInterrupt):
        pretrain(recipe_in(tiny_run, interrupted), show_progress=False)
    monkeypatch.setattr(loop_module.Trainer, "train_step", real_step)
    assert list_checkpoints(interrupted / "pretrain" / "checkpoints")[-1].name == "step-000008"
    pretrain(recipe_in(tiny_run, interrupted), resume=True, show_progress=False)

    assert losses(straight) == losses(interrupted)  # exact float equality, every step
    from safetensors.torch import load_file

    a = load_file(str(straight / "pretrain" / "model" / "model.safetensors"))
    b = load_file(str(interrupted / "pretrain" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_half_written_checkpoints_are_never_selected(tiny_run: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from lmforge.train import checkpoint as checkpoint_module

    recipe = recipe_in(tiny_run, tmp_path)
    real_save = checkpoint_module.save_file
    calls = {"n": 0}

    def dying_save(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 5:  # the optimizer file of the third checkpoint
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        pretrain(recipe, show_progress=False)
    folder = tmp_path / "pretrain" / "checkpoints"
    assert [p.name for p in list_checkpoints(folder)] == ["step-000004", "step-000008"]
    (folder / "step-000012").mkdir()  # a folder without state.json, as if copied half-way
    assert list_checkpoints(folder)[-1].name == "step-000008"
    monkeypatch.setattr(checkpoint_module, "save_file", real_save)
    pretrain(recipe, resume=True, show_progress=False)


def test_nan_steps_are_skipped_then_training_stops(tiny_run: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from lmforge.train.pretrain import PretrainTask

    real_loss = PretrainTask.loss
    bad = {5}

    def sometimes_nan(self, model, batch):  # noqa: ANN001, ANN202
        loss, count = real_loss(self, model, batch)
        step = sometimes_nan.calls
        sometimes_nan.calls += 1
        return (loss * float("nan") if step in bad or step >= 100 else loss), count

    sometimes_nan.calls = 0
    monkeypatch.setattr(PretrainTask, "loss", sometimes_nan)
    report = pretrain(recipe_in(tiny_run, tmp_path / "a"), show_progress=False)
    assert report["bad_steps"] == 1

    sometimes_nan.calls = 0
    bad.update(range(6, 100))
    with pytest.raises(loop_module.TrainingDiverged, match="last good checkpoint"):
        pretrain(recipe_in(tiny_run, tmp_path / "b"), show_progress=False)
    assert list_checkpoints(tmp_path / "b" / "pretrain" / "checkpoints")[-1].name == "step-000004"


def test_two_processes_match_one(tiny_run: Path, tmp_path: Path) -> None:
    one = tmp_path / "one"
    pretrain(recipe_in(tiny_run, one), show_progress=False)
    two = tmp_path / "two"
    recipe_in(tiny_run, two)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", "29517", "-m", "lmforge.cli", "pretrain",
            "--set", f"run.out_dir={str(two)!r}", "--set", "run.seed=7",
            *[a for item in PRETRAIN for a in ("--set", item)]]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    single, double = losses(one), losses(two)
    assert [s for s, _ in single] == [s for s, _ in double]
    for (_, a), (_, b) in zip(single, double, strict=True):
        assert a == pytest.approx(b, rel=1e-5)


def test_kill_9_leaves_a_loadable_checkpoint_and_resume_finishes(tiny_run: Path,
                                                                  tmp_path: Path) -> None:
    import signal
    import time

    from lmforge.model import load_model

    recipe_in(tiny_run, tmp_path)
    args = [sys.executable, "-m", "lmforge.cli", "pretrain", "--set",
            f"run.out_dir={str(tmp_path)!r}", "--set", "run.seed=7",
            *[a for item in PRETRAIN for a in ("--set", item)],
            "--set", "pretrain.steps=150", "--set", "pretrain.save_every=1",
            "--set", "pretrain.keep_checkpoints=3"]
    folder = tmp_path / "pretrain" / "checkpoints"
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list_checkpoints(folder)) < 3:
        time.sleep(0.05)
    time.sleep(0.37)  # somewhere in the middle of writing the next ones
    process.send_signal(signal.SIGKILL)
    process.wait()
    found = list_checkpoints(folder)
    assert found, "no complete checkpoint before the kill"
    load_model(found[-1])  # complete and loadable, whatever the kill interrupted
    assert all((p / "optimizer.safetensors").exists() for p in found)
    killed_at = int(found[-1].name.split("-")[1])
    assert killed_at < 150
    result = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert list_checkpoints(folder)[-1].name == "step-000150"
