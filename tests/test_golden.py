"""Golden values: a short seeded run of every training stage on the tiny data, pinned to the
numbers the code gave before the runner refactor (issue 12) and re-pinned when the
pre-tokenizer became llama.cpp's (issue 18), so any other change that moves training
(data order, initialisation, the loss, the schedule, the chat encoding) is noticed.

Chat files are given by relative path from the repository root: an example's ``where`` (which
decides its train/validation side) then does not depend on where the checkout lives."""

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import ROOT

from lmforge.config import ModelConfig, RecipeConfig, TrainConfig, from_dict, load_config
from lmforge.data import heldout_contracts, preference_examples, sft_examples
from lmforge.train import dpo, pretrain, reward_model, sft

PRETRAIN_LOSS = [6.726252555847168, 6.720929145812988, 6.714682579040527, 6.714901924133301,
                 6.70400333404541, 6.70775842666626, 6.736505031585693, 6.626408100128174,
                 6.676767826080322, 6.655749320983887, 6.606517791748047, 6.635716915130615]
PRETRAIN_EVAL = {0: (6.721824884414673, 4.76501174122089), 4: (6.695214033126831,
                 4.7461476647221925), 8: (6.666808366775513, 4.726011267834635),
                 12: (6.635490417480469, 4.703810392526525)}
SFT_LOSS = {10: 6.61131477355957, 12: 6.6146240234375}
SFT_VAL = {0: 6.705806676147437, 6: 6.629668742756403, 12: 6.614350885394327}
DPO_VAL = {0: 0.6931471824645996, 4: 0.7251677513122559, 8: 0.6908938884735107}
DPO_LOSS = {8: 0.543301522731781}
RM_ACCURACY = {0: 0.375, 4: 0.375, 8: 0.625}
RM_LOSS = {8: 0.3726694583892822}


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").open()]


def by_step(out: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in rows(out) if key in r}


@pytest.fixture(scope="module")
def pretrained(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("golden") / "pretrain"
    train = TrainConfig(steps=12, batch_size=4, seq_len=32, warmup_steps=2, eval_every=4,
                        eval_batches=2, log_every=1, save_every=4, threads=1)
    pretrain(from_dict(ModelConfig, {"preset": "tiny"}), train, tiny_run / "tokenizer",
             tiny_run / "data" / "shards", out, 7, show_progress=False)
    return out


def test_pretraining_losses_are_unchanged(pretrained: Path) -> None:
    assert [loss for _, loss in sorted(by_step(pretrained, "loss").items())] == \
        pytest.approx(PRETRAIN_LOSS, abs=1e-5)
    evals = {s: (r["val_loss"], r["val_bpb"]) for s, r in
             ((r["step"], r) for r in rows(pretrained) if "val_bpb" in r)}
    assert evals.keys() == PRETRAIN_EVAL.keys()
    for step, values in PRETRAIN_EVAL.items():
        assert evals[step] == pytest.approx(values, abs=1e-5), step


def test_post_training_losses_are_unchanged(tiny_run: Path, pretrained: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    recipe = load_config(RecipeConfig, tiny_run.parent / "tiny.toml", ["run.seed=7"])
    sft_config = dataclasses.replace(
        recipe.sft, chat_files=["data/tiny/sft_zh.jsonl"], identity_file="data/chat/identity.json",
        qa_queries="data/tiny/rag_queries.jsonl", qa_passages="data/tiny/rag_passages.jsonl")
    held = heldout_contracts(tiny_run / "data" / "corpus")
    conversations, stats = sft_examples(sft_config, recipe.assistant, held, 7)
    out = pretrained.parent
    report = sft(sft_config, conversations, stats, pretrained / "model", out / "sft", 7,
                 show_progress=False)
    assert report["examples"] == {"train": 102, "val": 16} and report["rows"] == 40
    assert by_step(out / "sft", "val_loss") == pytest.approx(SFT_VAL, abs=1e-5)
    assert by_step(out / "sft", "loss") == pytest.approx(SFT_LOSS, abs=1e-5)

    for stage, config in (("dpo", recipe.dpo), ("rm", recipe.rm)):
        config = dataclasses.replace(config, pair_files=["data/tiny/dpo_zh.jsonl"])
        pairs, stats = preference_examples(config, sft_config, recipe.assistant, held, 7)
        run = dpo if stage == "dpo" else reward_model
        report = run(config, pairs, stats, out / "sft" / "model", out / stage, 7,
                     show_progress=False)
        assert report["pairs"] == {"train": 12, "val": 8}
    assert by_step(out / "dpo", "val_loss") == pytest.approx(DPO_VAL, abs=1e-5)
    assert by_step(out / "dpo", "loss") == pytest.approx(DPO_LOSS, abs=1e-5)
    assert by_step(out / "rm", "pair_accuracy") == pytest.approx(RM_ACCURACY, abs=1e-5)
    assert by_step(out / "rm", "loss") == pytest.approx(RM_LOSS, abs=1e-5)
