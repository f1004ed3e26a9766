"""KTO from the users' feedback: the loss against hand-computed values, the store's
deduplication and corrections as pairs, a tiny model that learns a rated preference, and the
whole path: answers and ratings through the real server, then ``lmforge kto``."""

import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from lmforge.config import AssistantConfig, KTOConfig, PreferenceConfig, SFTConfig, TrainConfig
from lmforge.data import PreferencePair, RatedAnswer, load_feedback, preference_examples
from lmforge.data.feedback import prompt_name
from lmforge.feedback import Feedback, append_feedback
from lmforge.train.distributed import DistInfo
from lmforge.train.kto import KTOTask, Rated, encode_examples, kto_loss, reference_point
from lmforge.train.loop import Trainer
from lmforge.train.preference import all_logps

CPU = DistInfo(0, 1, 0, torch.device("cpu"))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_kto_loss_matches_hand_computed_values() -> None:
    reward = torch.tensor([1.0, -2.0, 0.5, 0.1])
    desirable = torch.tensor([True, False, True, False])
    z = torch.tensor(0.3)
    losses = kto_loss(reward, desirable, z, beta=0.5, desirable_weight=1.0,
                      undesirable_weight=1.5)
    expected = [1 - _sigmoid(0.5 * (1.0 - 0.3)), 1.5 * (1 - _sigmoid(0.5 * (0.3 + 2.0))),
                1 - _sigmoid(0.5 * (0.5 - 0.3)), 1.5 * (1 - _sigmoid(0.5 * (0.3 - 0.1)))]
    assert losses.tolist() == pytest.approx(expected, rel=1e-6)
    # z is the mismatched rows' mean log-ratio, clamped at 0 and without gradient
    drift = torch.tensor([0.4, 1.0], requires_grad=True)
    assert float(reference_point(drift)) == pytest.approx(0.7)
    assert not reference_point(drift).requires_grad
    assert float(reference_point(torch.tensor([-1.0, 0.2]))) == 0.0  # mean -0.4: clamped
    # with z clamped to 0 the loss reads the rewards alone
    zero = reference_point(torch.tensor([-3.0]))
    assert kto_loss(torch.tensor([2.0, 2.0]), torch.tensor([True, False]), zero, 0.1, 1.0,
                    1.0).tolist() == pytest.approx([1 - _sigmoid(0.2), 1 - _sigmoid(-0.2)])


def _conversation(question: str) -> list[dict]:
    return [{"role": "system", "content": "你是保险助手。"}, {"role": "user", "content": question}]


def _feedback(n: int, question: str, answer: str, rating: str, response: str = "",
              correction: str = "") -> Feedback:
    return Feedback(id=f"fb-{n}", time=f"2025-01-01T00:00:{n:02d}Z", principal="alice",
                    tenant="", response_id=response or f"resp-{n}", model="tiny",
                    messages=_conversation(question), sources=[], answer=answer, rating=rating,
                    correction=correction)


def test_store_is_deduplicated_and_corrections_become_pairs(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for item in [
        _feedback(1, "犹豫期多久？", "十天。", "up", response="r-1"),
        _feedback(2, "犹豫期多久？", "十天。", "down", response="r-1"),  # changed their mind
        _feedback(3, "能退保吗？", "可以。", "up", response="r-3"),
        _feedback(4, "能退保吗？", "可以。", "down", response="r-4"),  # same answer, new id
        _feedback(5, "保费怎么交？", "不知道。", "down", correction="按年交或按月交。"),
        _feedback(6, "空回答", "  ", "up"),
    ]:
        append_feedback(first, item)
    append_feedback(second, _feedback(7, "等待期是什么？", "九十天内不赔。", "up"))
    data = load_feedback([first, second])
    assert data.stats == {
        "files": {str(first): 6, str(second): 1}, "records": 7,
        "duplicates_dropped": {"earlier_rating": 1, "same_answer": 1},
        "up": 1, "down": 3, "corrections": 1, "unusable": 1,
        "examples": {"desirable": 2, "undesirable": 3}, "prompts": 4}
    rated = {(e.answer, e.desirable) for e in data.examples}
    assert rated == {("十天。", False), ("可以。", False), ("按年交或按月交。", True),
                     ("不知道。", False), ("九十天内不赔。", True)}
    corrected = _conversation("保费怎么交？")
    assert data.pairs == [PreferencePair(corrected, "按年交或按月交。", "不知道。",
                                         prompt_name(corrected))]
    # the correction and the answer it corrects share their prompt's name: one side of a split
    assert {e.where for e in data.examples if e.prompt == corrected} == {prompt_name(corrected)}
    # the DPO stage trains on the corrections too
    config = PreferenceConfig(feedback_files=[str(first), str(second)], qa_pairs=False)
    pairs, stats = preference_examples(config, SFTConfig(), AssistantConfig(), set(), 0)
    assert pairs == data.pairs
    assert stats["sources"] == {str(first): 1, str(second): 0}
    assert stats["feedback"]["corrections"] == 1


GOOD, BAD = "好的，可以办理。", "不行。"


def _rated(n: int) -> list[RatedAnswer]:
    """One rated answer per question: the polite one desirable, the curt one not."""
    examples = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"第{i}个问题：保险{i}怎么办？"}]
        examples.append(RatedAnswer(prompt, GOOD if i % 2 else BAD, bool(i % 2),
                                    prompt_name(prompt)))
    return examples


def test_kto_raises_desirable_rewards_over_undesirable_on_held_out(tok, chat,  # noqa: ANN001
                                                                   tmp_path: Path) -> None:
    train_config = TrainConfig(steps=30, batch_size=8, lr=3e-3, warmup_steps=2, eval_every=30,
                               save_every=30, eval_batches=4)
    config = KTOConfig(beta=0.1, val_fraction=0.25, train=train_config)
    sides, stats = encode_examples(chat, _rated(48), config, 128, 0)
    assert stats["examples"]["train"] + stats["examples"]["val"] == 48
    model = tiny_model(tok, max_seq_len=128, seed=0)
    train, val = (Rated(rows, desirable, all_logps(model, rows, 8, CPU.device, 0))
                  for rows, desirable in sides)
    # every row pairs the example's answer with another prompt's answer (its KL row)
    assert not torch.equal(train.rows.ids[:, 0], train.rows.ids[:, 1])
    result = Trainer(train_config, model, KTOTask(train, val, config, 0, 8), tmp_path, CPU, 0,
                     show_progress=False).fit()
    before, after = result.history[0], result.final_metrics
    # at step 0 the policy is its reference: no reward, z = 0, each loss 1 - sigmoid(0)
    assert before["reward_margin"] == 0.0 and before["kl"] == 0.0
    assert before["desirable_above_z"] == 0.0 and before["undesirable_below_z"] == 0.0
    assert before["val_loss"] == pytest.approx(0.5)
    assert after["reward_margin"] > 0.5
    assert after["desirable_above_z"] == 1.0 and after["undesirable_below_z"] == 1.0
    assert after["val_loss"] < before["val_loss"] - 0.1


def test_stage_says_which_store_holds_too_little(tmp_path: Path) -> None:
    from lmforge.pipeline.kto import kto_stage

    with pytest.raises(ValueError, match="kto.feedback_files: no feedback store"):
        kto_stage(KTOConfig(), tmp_path, tmp_path / "kto", 0)
    store = tmp_path / "feedback.jsonl"
    with pytest.raises(ValueError, match=re.escape(f"kto.feedback_files: no such file: {store}")):
        kto_stage(KTOConfig(feedback_files=[str(store)]), tmp_path, tmp_path / "kto", 0)
    append_feedback(store, _feedback(1, "犹豫期多久？", "十天。", "up"))
    append_feedback(store, _feedback(2, "犹豫期多久？", "十五天。", "down"))
    with pytest.raises(ValueError, match=re.escape(f"{store} hold 2 feedback records, 2 usable "
                                                   "rated answers on 1 distinct prompts")):
        kto_stage(KTOConfig(feedback_files=[str(store)]), tmp_path, tmp_path / "kto", 0)


def test_ratings_through_the_server_then_lmforge_kto(tok, chat, tmp_path: Path) -> None:  # noqa: ANN001
    from conftest import FIXTURE_TOKENIZER
    from fastapi.testclient import TestClient

    from lmforge.cli import main
    from lmforge.config import ServeConfig
    from lmforge.model import save_model
    from lmforge.serve import create_app
    from lmforge.tokenizer import copy_tokenizer_files

    model = tiny_model(tok, max_seq_len=256, seed=5)
    assistant = tmp_path / "assistant"
    save_model(model, assistant)
    copy_tokenizer_files(FIXTURE_TOKENIZER, assistant)
    store = tmp_path / "feedback.jsonl"
    app = create_app(model, chat, AssistantConfig(), ServeConfig(feedback_file=str(store)),
                     model_name="tiny")
    # (rating, correction) per question: thumbs up and down, two corrections
    ratings = [("up", ""), ("down", ""), ("up", ""), ("down", "犹豫期是十五天。"), ("up", ""),
               ("down", "可以退保，退还现金价值。"), ("up", ""), ("down", "")]
    with TestClient(app) as client:
        for i, (rating, correction) in enumerate(ratings):
            answer = client.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": f"第{i}个问题：保险{i}怎么办？"}],
                "max_tokens": 8, "temperature": 1.0, "seed": i})
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"].strip()
            response_id = answer.json()["id"]
            rated = client.post("/v1/feedback", json={"response_id": response_id,
                                                      "rating": rating, "correction": correction})
            assert rated.status_code == 200, rated.text
            if i == 0:  # the first user changes their mind: only the last rating counts
                rated = client.post("/v1/feedback",
                                    json={"response_id": response_id, "rating": "down"})
                assert rated.status_code == 200, rated.text
    recipe = tmp_path / "kto.toml"
    recipe.write_text(f"""
[run]
name = "kto"
out_dir = "{(tmp_path / 'run').as_posix()}"
seed = 7

[kto]
feedback_files = ["{store.as_posix()}"]
val_fraction = 0.5

[kto.lora]
rank = 4
alpha = 8.0

[kto.train]
init_from = "{assistant.as_posix()}"
steps = 4
batch_size = 2
seq_len = 256
lr = 0.003
warmup_steps = 1
eval_every = 2
eval_batches = 2
save_every = 4
threads = 1
""", encoding="utf-8")
    assert main(["kto", "--recipe", str(recipe)]) == 0
    out = tmp_path / "run" / "kto"
    assert (out / "model" / "model.safetensors").exists() and (out / "adapter").is_dir()
    assert (out / "report.md").exists()
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["steps"] == 4 and report["method"] == "lora"
    feedback = report["feedback"]
    assert feedback["records"] == 9 and feedback["files"] == {str(store): 9}
    assert feedback["duplicates_dropped"] == {"earlier_rating": 1, "same_answer": 0}
    assert (feedback["up"], feedback["down"], feedback["corrections"]) == (3, 5, 2)
    assert feedback["examples"] == {"desirable": 5, "undesirable": 5}
    assert report["examples"]["train"] + report["examples"]["val"] == 10
    assert {"val_loss", "kl", "reward_margin", "desirable_above_z"} <= set(report["final"])
