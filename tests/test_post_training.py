"""SFT masks, truncation and packing; LoRA equivalence and PEFT compatibility; the DPO loss;
the SFT/DPO/RM stages end to end on the tiny run."""

import json
import math
from pathlib import Path

import pytest
import torch

from lmforge.config import LoraConfig, ModelConfig
from lmforge.model import Transformer, save_model
from lmforge.model.lora import adapters_disabled, apply_lora, load_adapter, merge_lora, save_adapter
from lmforge.tokenizer import IM_END, IM_START
from lmforge.train.preference import preference_loss, sequence_logps
from lmforge.train.sft import IGNORE, encode_conversation, pack

FIXTURE_TOKENIZER = Path(__file__).parent / "fixtures" / "tokenizer"
CHAT = [{"role": "system", "content": "你是保险助手。"},
        {"role": "user", "content": "什么是犹豫期？"},
        {"role": "assistant", "content": "犹豫期是十五天。"},
        {"role": "user", "content": "能退保吗？"},
        {"role": "assistant", "content": "可以，全额退还。"}]


def test_loss_mask_covers_exactly_the_assistant_answers(tok, chat) -> None:  # noqa: ANN001
    example, status = encode_conversation(chat, CHAT, 512)
    assert status == "ok" and example is not None
    chatml = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in CHAT)
    assert tok.decode(example.ids, skip_special_tokens=False) == chatml
    trained = [i for i, label in zip(example.ids, example.labels, strict=True) if label != IGNORE]
    end = tok.token_to_id(IM_END)
    answers = tok.decode(trained, skip_special_tokens=False).split(IM_END)
    assert answers == ["犹豫期是十五天。", "可以，全额退还。", ""]
    assert trained.count(end) == 2


def test_truncation_drops_oldest_turns_and_never_cuts_an_answer(tok, chat) -> None:  # noqa: ANN001
    full, _ = encode_conversation(chat, CHAT, 512)
    assert full is not None
    short, status = encode_conversation(chat, CHAT, len(full.ids) - 1)
    assert status == "truncated" and short is not None
    assert "犹豫期" not in tok.decode(short.ids) and "全额退还" in tok.decode(short.ids)
    none, status = encode_conversation(chat, CHAT, 10)
    assert none is None and status == "too_long"


def test_packing_keeps_examples_whole_and_apart(chat) -> None:  # noqa: ANN001
    examples = [encode_conversation(chat, CHAT[:3], 512)[0],
                encode_conversation(chat, CHAT, 512)[0]]
    examples = [e for e in examples if e is not None] * 3
    ids, labels, docs = pack(examples, 256, 2, seed=0)
    assert ids.shape[1] == 256
    assert (labels != IGNORE).sum() == sum(sum(1 for x in e.labels if x != IGNORE)
                                           for e in examples)
    for row_ids, row_docs in zip(ids, docs, strict=True):
        for d in set(row_docs.tolist()):
            segment = row_ids[row_docs == d].tolist()
            if segment[0] != 2:  # not padding
                assert any(segment == e.ids for e in examples)


def _model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=320, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                   tie_embeddings=False)).eval()


def _randomise_lora(model: Transformer) -> None:
    """Trained-looking adapters: B away from zero, DoRA's magnitudes away from ||W||."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
            elif "lora_magnitude_vector" in name:
                p.mul_(1 + 0.2 * torch.randn_like(p))


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_lora_starts_at_the_base_and_merges_exactly(dora: bool) -> None:
    model, tokens = _model(), torch.randint(0, 320, (2, 16))
    with torch.no_grad():
        base = model(tokens).logits
        names = apply_lora(model, LoraConfig(rank=4, alpha=8, dropout=0.0, use_dora=dora))
        assert len(names) == 2 * 7  # q, k, v, o, gate, up, down per block
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable and all(".lora_" in n for n in trainable)
        assert torch.equal(model(tokens).logits, base)
        _randomise_lora(model)
        adapted = model(tokens).logits
        assert not torch.allclose(adapted, base)
        with adapters_disabled(model):
            assert torch.equal(model(tokens).logits, base)
        merge_lora(model)
        assert torch.allclose(model(tokens).logits, adapted, atol=1e-5)


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_adapter_loads_in_peft_with_the_same_logits(tmp_path: Path, dora: bool) -> None:
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from lmforge.export import export_hf
    from lmforge.tokenizer import copy_tokenizer_files

    model = _model()
    save_model(model, tmp_path / "base")
    copy_tokenizer_files(FIXTURE_TOKENIZER, tmp_path / "base")
    export_hf(tmp_path / "base", tmp_path / "hf")
    config = LoraConfig(rank=4, alpha=8, dropout=0.0, use_dora=dora)
    apply_lora(model, config)
    _randomise_lora(model)
    save_adapter(model, config, tmp_path / "adapter", str(tmp_path / "hf"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
    peft_model = peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    tokens = torch.randint(0, 320, (2, 16))
    with torch.no_grad():
        ours, theirs = model(tokens).logits, peft_model(tokens).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    again = _model()
    load_adapter(again, tmp_path / "adapter")
    with torch.no_grad():
        assert torch.allclose(again(tokens).logits, ours, atol=1e-6)


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_a_sharded_checkpoints_adapters_fold_like_merge(dora: bool) -> None:
    """What ``lmforge export consolidate`` does with a checkpoint's adapter tensors."""
    from lmforge.model import load_state
    from lmforge.train.sharded import _fold_lora, _lora_scalings

    model, tokens = _model(), torch.randint(0, 320, (2, 16))
    apply_lora(model, LoraConfig(rank=4, alpha=8, dropout=0.0, use_dora=dora))
    _randomise_lora(model)
    folded = _fold_lora(model.state_dict(), _lora_scalings(model))
    plain = _model(seed=1)
    load_state(plain, folded, Path("checkpoint"))
    with torch.no_grad():
        assert torch.allclose(plain(tokens).logits, model(tokens).logits, atol=1e-5)


def _odds(mean_logp: float) -> float:
    return mean_logp - math.log(1 - math.exp(mean_logp))


# policy log-probs (chosen -10 over 5 tokens, rejected -12 over 4), reference -11 and -11:
# margin = (-10 + 11) - (-12 + 11) = 2; per-token means -2 and -3
@pytest.mark.parametrize(("loss", "beta", "expected"), [
    ("sigmoid", 0.1, math.log(1 + math.exp(-0.1 * 2))),
    ("ipo", 0.1, (2 - 1 / (2 * 0.1)) ** 2),
    ("simpo", 2.0, math.log(1 + math.exp(-(2.0 * (-2 + 3) - 0.5)))),
    ("orpo", 0.1, 2 + 0.25 * math.log(1 + math.exp(-(_odds(-2) - _odds(-3))))),
])
def test_preference_losses_match_hand_computed_values(loss: str, beta: float,
                                                      expected: float) -> None:
    from lmforge.config import PreferenceConfig

    config = PreferenceConfig(loss=loss, beta=beta, simpo_gamma=0.5,  # type: ignore[arg-type]
                              orpo_lambda=0.25)
    value = preference_loss(config, torch.tensor([[-10.0, -12.0]]),
                            torch.tensor([[-11.0, -11.0]]), torch.tensor([[5.0, 4.0]]))
    assert value.item() == pytest.approx(expected, abs=1e-5)


def test_sequence_logps_sum_only_labelled_tokens() -> None:
    from lmforge.model import Output

    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.25, 0.75], [0.9, 0.1]]]))
    targets = torch.tensor([[IGNORE, 1, 0]])
    model = lambda ids: Output(logits, None)  # noqa: E731  a model with fixed next-token odds
    assert sequence_logps(model, torch.zeros_like(targets), targets, 0).item() == \
        pytest.approx(math.log(0.75) + math.log(0.9))


def tiny_recipe(tiny_run: Path, *overrides: str):  # noqa: ANN201
    from lmforge.config import RecipeConfig, load_config

    return load_config(RecipeConfig, tiny_run.parent / "tiny.toml", list(overrides))


def test_post_training_stages_end_to_end(tiny_run: Path, tmp_path: Path) -> None:
    from lmforge.data import heldout_contracts, preference_examples, sft_examples
    from lmforge.train import dpo, reward_model, sft

    # 24 SFT steps, not the recipe's 12: at 12 the drop in val loss was within the noise of
    # which documents the held-out split takes (their ids hold the checkout's path)
    recipe = tiny_recipe(tiny_run, "sft.train.steps=24")
    held = heldout_contracts(tiny_run / "data" / "corpus")
    conversations, stats = sft_examples(recipe.sft, recipe.assistant, held, 7)
    assert any(recipe.assistant.name in m["content"] for c in conversations
               for m in c.messages)  # identity placeholders filled from [assistant]
    report = sft(recipe.sft, conversations, stats, tiny_run / "pretrain" / "model",
                 tmp_path / "sft", 7, show_progress=False)
    assert report["final"]["val_loss"] < report["before"]["val_loss"]
    assert report["encoding"]["ok"] > 0 and report["heldout_contracts"] >= 1
    assert (tmp_path / "sft" / "adapter" / "adapter_config.json").exists()
    assert not (tmp_path / "sft" / "config.json").exists()  # the pipeline writes it
    config = json.loads((tmp_path / "sft" / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert "## Data" in (tmp_path / "sft" / "report.md").read_text()
    pairs, stats = preference_examples(recipe.dpo, recipe.sft, recipe.assistant, held, 7)
    report = dpo(recipe.dpo, pairs, stats, tmp_path / "sft" / "model", tmp_path / "dpo", 7,
                 show_progress=False)
    assert report["before"]["reward_accuracy"] == 0.0  # policy == reference at the start
    assert report["before"]["val_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert report["final"]["log_ratio"] != 0.0  # the policy moved away from the reference
    report = reward_model(recipe.rm, pairs, stats, tmp_path / "sft" / "model", tmp_path / "rm",
                          7, show_progress=False)
    assert "pair_accuracy" in report["final"]
    assert (tmp_path / "rm" / "model" / "reward_head.safetensors").exists()
    assert (tmp_path / "rm" / "model" / "tokenizer.json").exists()


def test_reward_model_learns_a_separable_preference(tok, chat, tmp_path: Path) -> None:  # noqa: ANN001
    from lmforge.config import TrainConfig
    from lmforge.data import PreferencePair
    from lmforge.train.distributed import DistInfo
    from lmforge.train.loop import Trainer
    from lmforge.train.preference import PairData, RewardModel, RewardTask

    questions = [f"第{i}个问题：保险{i}怎么办？" for i in range(40)]
    pairs = [PreferencePair([{"role": "user", "content": q}], "好的，可以办理。", "不行。", q)
             for q in questions]
    train, val = PairData(chat, pairs[:32], 128), PairData(chat, pairs[32:], 128)
    torch.manual_seed(0)
    model = RewardModel(Transformer(ModelConfig(vocab_size=tok.get_vocab_size(), dim=32,
                                                n_layers=1, n_heads=4, n_kv_heads=2)))
    task = RewardTask(train, val, seed=0, eval_batch_size=8)
    config = TrainConfig(steps=30, batch_size=8, lr=3e-3, warmup_steps=2, eval_every=30,
                         save_every=30)
    result = Trainer(config, model, task, tmp_path, DistInfo(0, 1, 0, torch.device("cpu")), 0,
                     show_progress=False).fit()
    assert result.final_metrics["pair_accuracy"] == 1.0


def test_nf4_round_trip_error_is_small_and_memory_is_cut() -> None:
    from lmforge.model.quant import NF4_LEVELS, dequantize_nf4, quantize_linears, quantize_nf4

    torch.manual_seed(0)
    weight = torch.randn(96, 64) * 0.02
    packed, absmax = quantize_nf4(weight)
    restored = dequantize_nf4(packed, absmax, weight.shape)
    assert packed.dtype == torch.uint8 and packed.numel() == weight.numel() // 2
    assert (restored - weight).norm() / weight.norm() < 0.12  # NF4's typical ~0.1
    exact = NF4_LEVELS.repeat(4).view(1, 64) * 3.0  # values on the grid come back exactly
    assert torch.equal(dequantize_nf4(*quantize_nf4(exact), exact.shape), exact)
    model = _model()
    before, after = quantize_linears(model)
    assert after / before == pytest.approx((0.5 + 4 / 64) / 4, rel=0.01)  # 4.5 of 32 bits


def test_qlora_trains_adapters_over_a_4bit_base(tok, tmp_path: Path) -> None:  # noqa: ANN001
    from lmforge.model.quant import NF4Linear, quantize_linears

    model = _model()
    tokens = torch.randint(0, 320, (2, 16))
    with torch.no_grad():
        full = model(tokens).logits
    quantize_linears(model)
    apply_lora(model, LoraConfig(rank=4, alpha=8, dropout=0.0))
    assert any(isinstance(m, NF4Linear) for m in model.modules())
    with torch.no_grad():
        quantized = model(tokens).logits
    assert (quantized - full).abs().mean() < 0.1 * full.abs().mean()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    targets = torch.randint(0, 320, (2, 16))
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(model(tokens).logits.flatten(0, 1),
                                                 targets.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    merge_lora(model)
    assert not any(isinstance(m, NF4Linear) for m in model.modules())
    with torch.no_grad():
        merged = model(tokens).logits
    loss = torch.nn.functional.cross_entropy(merged.flatten(0, 1), targets.flatten())
    assert loss.item() == pytest.approx(losses[-1], abs=0.3)


def test_qlora_sft_stage_reports_memory_saved(tiny_run: Path, tmp_path: Path) -> None:
    from lmforge.data import heldout_contracts, sft_examples
    from lmforge.train import sft

    recipe = tiny_recipe(tiny_run, "sft.qlora=true", "sft.train.steps=4",
                         "sft.train.eval_every=4")
    held = heldout_contracts(tiny_run / "data" / "corpus")
    conversations, stats = sft_examples(recipe.sft, recipe.assistant, held, 7)
    report = sft(recipe.sft, conversations, stats, tiny_run / "pretrain" / "model",
                 tmp_path / "sft", 7, show_progress=False)
    assert report["qlora_linear_bytes"]["saved"] > 0.8
    assert (tmp_path / "sft" / "adapter" / "adapter_model.safetensors").exists()


def test_dpo_learns_a_separable_preference(tok, chat, tmp_path: Path) -> None:  # noqa: ANN001
    from lmforge.config import PreferenceConfig, TrainConfig
    from lmforge.data import PreferencePair
    from lmforge.train.distributed import DistInfo
    from lmforge.train.loop import Trainer
    from lmforge.train.preference import DPOTask, PairData, all_logps

    pairs = [PreferencePair([{"role": "user", "content": f"第{i}个问题：保险{i}怎么办？"}],
                            "好的，可以办理。", "不行。", str(i)) for i in range(40)]
    train, val = PairData(chat, pairs[:32], 128), PairData(chat, pairs[32:], 128)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.get_vocab_size(), dim=32, n_layers=1,
                                    n_heads=4, n_kv_heads=2)).eval()
    cpu = torch.device("cpu")
    ref_train, ref_val = all_logps(model, train, 8, cpu, 0), all_logps(model, val, 8, cpu, 0)
    config = TrainConfig(steps=30, batch_size=8, lr=3e-3, warmup_steps=2, eval_every=30,
                         save_every=30)
    task = DPOTask(train, val, ref_train, ref_val, PreferenceConfig(beta=0.1, train=config),
                   seed=0, eval_batch_size=8)
    result = Trainer(config, model, task, tmp_path, DistInfo(0, 1, 0, cpu), 0,
                     show_progress=False).fit()
    before, after = result.history[0], result.final_metrics
    assert before["reward_accuracy"] == 0.0 and after["reward_accuracy"] == 1.0
    assert after["val_loss"] < before["val_loss"] - 0.3
    assert after["preference_accuracy_per_token"] == 1.0  # summed log-probs favour the short one


def test_model_loads_with_an_adapter_on_top(tmp_path: Path) -> None:
    from lmforge.model import load_model

    model = _model()
    save_model(model, tmp_path / "base")
    config = LoraConfig(rank=4, alpha=8, dropout=0.0)
    apply_lora(model, config)
    _randomise_lora(model)
    save_adapter(model, config, tmp_path / "adapter", str(tmp_path / "base"))
    loaded = load_model(tmp_path / "base", adapter=tmp_path / "adapter")
    tokens = torch.randint(0, 320, (1, 12))
    with torch.no_grad():
        assert torch.allclose(loaded(tokens).logits, model(tokens).logits, atol=1e-6)
        with adapters_disabled(loaded):
            base = load_model(tmp_path / "base")
            assert torch.equal(loaded(tokens).logits, base(tokens).logits)
