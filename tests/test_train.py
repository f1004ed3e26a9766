"""The training loop: learning, exact resume, crash safety, NaN handling, DDP equivalence."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port, killed_at

from lmforge.config import ModelConfig, TrainConfig, from_dict
from lmforge.train import loop as loop_module
from lmforge.train import pretrain
from lmforge.train.checkpoint import list_checkpoints
from lmforge.train.schedule import lr_multiplier

PRETRAIN = dict(steps=12, batch_size=4, seq_len=32, warmup_steps=2, eval_every=4,
                eval_batches=2, log_every=1, save_every=4, threads=1)
DRIVER = """
import sys
from pathlib import Path
from lmforge.config import ModelConfig, TrainConfig, from_dict
from lmforge.train import pretrain
run, out, resume = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "resume"
pretrain(from_dict(ModelConfig, {"preset": "tiny"}), TrainConfig(**%r), run / "tokenizer",
         run / "data" / "shards", out, 7, resume=resume, show_progress=False)
"""


def run_pretrain(tiny_run: Path, out: Path, resume: bool = False, **overrides: object
                 ) -> dict:
    """The tiny model pretrained on the tiny run's shards into ``out``, seed 7."""
    train = TrainConfig(**{**PRETRAIN, **overrides})  # type: ignore[arg-type]
    return pretrain(from_dict(ModelConfig, {"preset": "tiny"}), train, tiny_run / "tokenizer",
                    tiny_run / "data" / "shards", out, 7, resume=resume, show_progress=False)


def driver(tmp_path: Path, **overrides: object) -> Path:
    """A script that runs ``run_pretrain`` from the command line (for torchrun and kill -9)."""
    path = tmp_path / "driver.py"
    path.write_text(DRIVER % {**PRETRAIN, **overrides}, encoding="utf-8")
    return path


def losses(out: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def assert_runs_match(one: Path, two: Path) -> None:
    """Run ``two`` (two processes) logged the losses and final validation of run ``one``."""
    single, double = losses(one), losses(two)
    assert [s for s, _ in single] == [s for s, _ in double]
    for (_, a), (_, b) in zip(single, double, strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    report = json.loads((two / "report.json").read_text())
    assert report["processes"] == 2
    assert report["final"]["val_loss"] == pytest.approx(
        json.loads((one / "report.json").read_text())["final"]["val_loss"], rel=1e-5)


def test_schedules() -> None:
    cosine = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_multiplier(0, cosine) == pytest.approx(0.1)
    assert lr_multiplier(9, cosine) == pytest.approx(1.0)
    assert lr_multiplier(99, cosine) == pytest.approx(0.1, abs=1e-3)
    wsd = TrainConfig(steps=100, warmup_steps=10, schedule="wsd", decay_fraction=0.2)
    assert lr_multiplier(50, wsd) == 1.0
    assert lr_multiplier(90, wsd) == pytest.approx(1 - 0.9 * 0.5)


def test_pretraining_learns_and_writes_its_outputs(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "pretrain"
    report = run_pretrain(tiny_run, out, steps=40, lr=0.01, eval_every=20)
    assert report["before"]["step"] == 0
    assert report["final"]["val_loss"] < report["before"]["val_loss"] - 0.4
    assert 0 < report["final"]["val_bpb"] < 10
    assert json.loads((out / "report.json").read_text())["final"] == report["final"]
    assert not (out / "config.json").exists()  # the pipeline writes the resolved recipe
    for name in ("loss.png", "report.md", "metrics.jsonl", "model/tokenizer.json",
                 "model/model.safetensors"):
        assert (out / name).exists(), name
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-000036",
                                                                        "step-000040"]


def test_resume_is_bit_identical(tiny_run: Path, tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    run_pretrain(tiny_run, straight)

    interrupted = tmp_path / "interrupted"
    with killed_at(9):
        run_pretrain(tiny_run, interrupted)
    assert list_checkpoints(interrupted / "checkpoints")[-1].name == "step-000008"
    run_pretrain(tiny_run, interrupted, resume=True)

    assert losses(straight) == losses(interrupted)  # exact float equality, every step
    from safetensors.torch import load_file

    a = load_file(str(straight / "model" / "model.safetensors"))
    b = load_file(str(interrupted / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_half_written_checkpoints_are_never_selected(tiny_run: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from lmforge.train import checkpoint as checkpoint_module

    real_save = checkpoint_module.save_file
    calls = {"n": 0}

    def dying_save(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 5:  # the optimizer file of the third checkpoint
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(tiny_run, tmp_path)
    folder = tmp_path / "checkpoints"
    assert [p.name for p in list_checkpoints(folder)] == ["step-000004", "step-000008"]
    (folder / "step-000012").mkdir()  # a folder without state.json, as if copied half-way
    assert list_checkpoints(folder)[-1].name == "step-000008"
    monkeypatch.setattr(checkpoint_module, "save_file", real_save)
    run_pretrain(tiny_run, tmp_path, resume=True)


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
    report = run_pretrain(tiny_run, tmp_path / "a")
    assert report["bad_steps"] == 1

    sometimes_nan.calls = 0
    bad.update(range(6, 100))
    with pytest.raises(loop_module.TrainingDiverged, match="last good checkpoint"):
        run_pretrain(tiny_run, tmp_path / "b")
    assert list_checkpoints(tmp_path / "b" / "checkpoints")[-1].name == "step-000004"


def test_two_processes_match_one(tiny_run: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    run_pretrain(tiny_run, one)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", str(free_port()), str(driver(tmp_path)), str(tiny_run), str(two),
            "fresh"]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_runs_match(one, two)


def test_kill_9_leaves_a_loadable_checkpoint_and_resume_finishes(tiny_run: Path,
                                                                  tmp_path: Path) -> None:
    import signal
    import time

    from lmforge.model import load_model

    out = tmp_path / "pretrain"
    script = driver(tmp_path, steps=150, save_every=1, keep_checkpoints=3)
    args = [sys.executable, str(script), str(tiny_run), str(out)]
    folder = out / "checkpoints"
    process = subprocess.Popen([*args, "fresh"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
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
    result = subprocess.run([*args, "resume"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert list_checkpoints(folder)[-1].name == "step-000150"
