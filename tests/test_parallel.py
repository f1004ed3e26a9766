"""Training past one device: FSDP2 over two CPU processes trains like one process, its sharded
checkpoints survive kill -9 and resume exactly, a sharded checkpoint consolidates into a model
folder, and activation checkpointing and the chunked loss change no loss or gradient."""

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import free_port
from test_train import assert_runs_match, driver, losses, run_pretrain

from lmforge.cli import main
from lmforge.config import ModelConfig, from_dict
from lmforge.model import Transformer, load_model
from lmforge.train.checkpoint import list_checkpoints
from lmforge.train.losses import IGNORE, token_nll
from lmforge.train.parallel import checkpoint_activations
from lmforge.train.sharded import consolidate, is_sharded

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(script: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", str(free_port()), str(script), *args]


def test_fsdp_on_two_processes_matches_one(tiny_run: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    # two micro-batches per process and step: accumulation too; evaluation (micro-batch x
    # processes windows) sees the same windows as one process with micro-batches of two
    run_pretrain(tiny_run, one, micro_batch_size=2)
    script = driver(tmp_path, parallel="fsdp", micro_batch_size=1)
    result = subprocess.run(torchrun(script, str(tiny_run), str(two), "fresh"), env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_runs_match(one, two)
    checkpoints = list_checkpoints(two / "checkpoints")
    assert checkpoints and all(is_sharded(c) for c in checkpoints)
    # the model gathered at the end, and the last sharded checkpoint consolidated, are the
    # one-process model
    reference = load_model(one / "model").state_dict()
    consolidated = tmp_path / "consolidated"
    assert main(["export", "consolidate", "--checkpoint", str(checkpoints[-1]), "--out",
                 str(consolidated), "--tokenizer", str(tiny_run / "tokenizer")]) == 0
    assert (consolidated / "tokenizer.json").exists()
    for folder in (two / "model", consolidated):
        for name, value in load_model(folder).state_dict().items():
            torch.testing.assert_close(value, reference[name], rtol=1e-4, atol=1e-5)


# a kill that lands inside a sharded save can leave a step folder that resume reads as a
# non-FSDP checkpoint ("saved without FSDP", step-000038 of 40 in a CI clone on 2026-12-03; once
# in five runs before): an open defect in train/sharded.py's save marker, slow-marked until fixed
@pytest.mark.slow
def test_kill_9_during_a_sharded_save_keeps_the_last_checkpoint_and_resume_is_exact(
        tiny_run: Path, tmp_path: Path) -> None:
    steps = 40
    whole, out = tmp_path / "whole", tmp_path / "killed"
    script = driver(tmp_path, steps=steps, save_every=1, keep_checkpoints=2, parallel="fsdp",
                    eval_every=steps)
    uninterrupted = subprocess.run(torchrun(script, str(tiny_run), str(whole), "fresh"),
                                   env=ENV, capture_output=True, text=True, timeout=300)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    folder = out / "checkpoints"
    process = subprocess.Popen(torchrun(script, str(tiny_run), str(out), "fresh"), env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list_checkpoints(folder)) < 2:
        time.sleep(0.02)
    time.sleep(0.23)  # somewhere in the middle of the next saves
    os.killpg(process.pid, signal.SIGKILL)  # torchrun and both workers at once
    process.wait()
    found = list_checkpoints(folder)
    assert found and all(is_sharded(c) for c in found)
    killed_at = int(found[-1].name.split("-")[1])
    assert killed_at < steps
    resumed = subprocess.run(torchrun(script, str(tiny_run), str(out), "resume"), env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, rank0_error(resumed.stderr)
    assert list_checkpoints(folder)[-1].name == f"step-{steps:06d}"
    after = [(s, v) for s, v in losses(out) if s > killed_at]
    reference = dict(losses(whole))
    assert after and all(v == pytest.approx(reference[s], rel=1e-6) for s, v in after)


def rank0_error(stderr: str) -> str:
    """Rank 0's own lines of a failed torchrun (a crash there shows on rank 1 only as a closed
    connection), else the end of the output."""
    mine = [line for line in stderr.splitlines() if line.startswith("[rank0]")]
    return "\n".join(mine)[-3000:] if mine else stderr[-3000:]


def tiny_model(**fields: object) -> Transformer:
    torch.manual_seed(0)
    return Transformer(from_dict(ModelConfig, {"preset": "tiny", "vocab_size": 97, **fields}))


def loss_and_grads(model: Transformer, chunk: int) -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    inputs, targets = torch.randint(0, 97, (3, 21)), torch.randint(0, 97, (3, 21))
    targets[0, :7] = IGNORE  # a prompt: no loss
    nll, _ = token_nll(model, inputs, targets, chunk)
    loss = nll.sum() / (targets != IGNORE).sum()
    model.zero_grad()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()
                         if p.grad is not None}


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("chunk", [1, 8, 64])
def test_chunked_loss_equals_the_whole_logits_loss(tied: bool, chunk: int) -> None:
    model = tiny_model(tie_embeddings=tied)
    plain_loss, plain_grads = loss_and_grads(model, 0)
    loss, grads = loss_and_grads(model, chunk)
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    assert grads.keys() == plain_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-7)


def test_activation_checkpointing_changes_no_loss_or_gradient() -> None:
    model = tiny_model(n_experts=2)
    plain_loss, plain_grads = loss_and_grads(model, 0)
    recomputed = copy.deepcopy(model)
    checkpoint_activations(recomputed)
    names = [n for n, _ in recomputed.named_parameters()]
    assert names == [n for n, _ in model.named_parameters()]  # wrapped, names unchanged
    loss, grads = loss_and_grads(recomputed, 0)
    assert loss == plain_loss
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=0, atol=0)


def test_activation_checkpointing_keeps_only_block_inputs() -> None:
    """What autograd saves for backward shrinks to about one tensor per block."""
    def saved_bytes(model: Transformer) -> int:
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        inputs = torch.randint(0, 97, (4, 64))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(inputs).logits.sum()
        return sum(seen.values())

    plain = tiny_model(n_layers=4)
    recomputed = copy.deepcopy(plain)
    checkpoint_activations(recomputed)
    assert saved_bytes(recomputed) < 0.5 * saved_bytes(plain)


def test_a_plain_checkpoint_is_not_consolidated(tiny_run: Path, tmp_path: Path) -> None:
    run_pretrain(tiny_run, tmp_path / "plain", **{"steps": 4, "save_every": 4})
    with pytest.raises(ValueError, match="not a sharded checkpoint"):
        consolidate(list_checkpoints(tmp_path / "plain" / "checkpoints")[-1], tmp_path / "x")



def test_peak_memory_sees_a_short_lived_allocation() -> None:
    from lmforge.train.memory import PeakMemory

    with PeakMemory(torch.device("cpu"), interval=0.001) as peak:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        time.sleep(0.5)  # hundreds of sampling intervals: seen even when the cores are busy
        del block
    assert 60 * 2**20 < peak.bytes < 200 * 2**20


def test_peak_memory_counts_memory_that_malloc_kept_from_before() -> None:
    """Freed tensors below glibc's mmap threshold stay resident in the heap (one kept above
    them stops the heap shrinking) and the next allocation reuses them: without giving them
    back first, the run's 64 MiB never shows in the resident set (CI read 4 KiB)."""
    from lmforge.train.memory import PeakMemory

    torch.ones(30 * 2**20 // 4)  # freeing an mmapped 30 MiB raises the threshold past 8 MiB
    freed = [torch.ones(8 * 2**20 // 4) for _ in range(12)]
    above = torch.ones(1024)
    del freed
    with PeakMemory(torch.device("cpu"), interval=0.001) as peak:
        block = torch.ones(64 * 2**20 // 4)
        time.sleep(0.5)
        del block
    assert 60 * 2**20 < peak.bytes < 200 * 2**20, above.sum()


def test_the_training_report_puts_measured_memory_and_mfu_beside_plans(
        tiny_run: Path, tmp_path: Path) -> None:
    report = run_pretrain(tiny_run, tmp_path / "run", steps=4, save_every=4)
    assert report["peak_memory_mib"] > 0 and 0 < report["mfu"] < 1
    assert report["predicted_peak_memory_mib"] > 0
    text = (tmp_path / "run" / "report.md").read_text()
    assert "`lmforge plan` predicts" in text and "model FLOPs utilisation" in text
