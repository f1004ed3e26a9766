"""Prefix tuning (P-Tuning v2): the same logits as ``peft`` on the exported base, the prefix
seen alike by a whole pass, a cached decode and packed documents, a model folder that carries
it, and SFT with ``method = "prefix"`` training the prefixes alone."""

import json
from pathlib import Path

import pytest
import torch

from lmforge.config import ModelConfig, PrefixConfig, SFTConfig, TrainConfig
from lmforge.model import (
    PREFIX_FOLDER,
    KVCache,
    Transformer,
    apply_prefix,
    document_inputs,
    load_model,
    save_model,
)
from lmforge.model.prefix import PrefixEncoder

FIXTURE_TOKENIZER = Path(__file__).parent / "fixtures" / "tokenizer"


def _prefixed_model(projection: bool = False, vocab: int = 320
                    ) -> tuple[Transformer, PrefixEncoder]:
    """A small GQA model (4 query heads, 2 key/value heads) with trained-looking prefixes;
    weights large enough that attention is peaked and a position off by one shows."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=vocab, dim=64, n_layers=2, n_heads=4,
                                    n_kv_heads=2, tie_embeddings=False, init_std=0.1)).eval()
    encoder = apply_prefix(model, PrefixConfig(virtual_tokens=5, projection=projection,
                                               projection_dim=24))
    with torch.no_grad():
        for p in encoder.parameters():
            p.normal_(0, 0.5)
    return model, encoder


@pytest.mark.parametrize("projection", [False, True], ids=["plain", "projected"])
def test_prefix_loads_in_peft_with_the_same_logits(tmp_path: Path, projection: bool) -> None:
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from lmforge.export import export_hf
    from lmforge.tokenizer import copy_tokenizer_files

    model, _ = _prefixed_model(projection)
    save_model(model, tmp_path / "base")  # the base's weights, the prefix in base/prefix/
    copy_tokenizer_files(FIXTURE_TOKENIZER, tmp_path / "base")
    export_hf(tmp_path / "base", tmp_path / "hf")  # the base again, and hf/prefix/
    adapter = tmp_path / "hf" / PREFIX_FOLDER
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "PREFIX_TUNING" and config["num_virtual_tokens"] == 5
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
    peft_model = peft.PeftModel.from_pretrained(hf, str(adapter)).eval()
    tokens = torch.randint(0, 320, (2, 16))
    with torch.no_grad():
        ours, theirs = model(tokens).logits, peft_model(input_ids=tokens).logits
        assert not torch.allclose(ours, hf(tokens).logits, atol=1e-2)  # the prefix matters
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    loaded = load_model(tmp_path / "base")  # base/prefix/ is applied
    with torch.no_grad():
        assert torch.allclose(loaded(tokens).logits, ours, atol=1e-5)


def test_prefix_is_seen_alike_by_a_cached_decode_and_packed_documents() -> None:
    model, _ = _prefixed_model()
    tokens = torch.randint(0, 320, (1, 12))
    with torch.no_grad():
        whole = model(tokens).logits
        cache = KVCache(model.config, 1, 12, torch.device("cpu"), torch.float32)
        steps = [model(tokens[:, :7], cache=cache).logits]
        steps += [model(tokens[:, i:i + 1], cache=cache).logits for i in range(7, 12)]
        assert torch.allclose(torch.cat(steps, dim=1), whole, atol=1e-5)
        # two documents packed in one row: each sees the prefix and only itself
        packed = torch.cat([tokens[:, :5], tokens[:, 5:]], dim=1)
        docs = torch.tensor([[0] * 5 + [1] * 7])
        logits = model(packed, **document_inputs(docs)).logits
        alone = model(tokens[:, 5:]).logits
        assert torch.allclose(logits[:, :5], whole[:, :5], atol=1e-5)
        assert torch.allclose(logits[:, 5:], alone, atol=1e-5)


def _greedy(model: Transformer, prompt: list[int], n: int) -> list[tuple[int, float]]:
    """Greedy tokens and their log-probabilities from whole forward passes (no cache): the
    reference for the engine."""
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], dim=-1)
            ids.append(int(logp.argmax()))
            out.append((ids[-1], logp[ids[-1]].item()))
    return out


def test_engine_decodes_with_the_prefix(tok) -> None:  # noqa: ANN001
    from lmforge.config import SamplingConfig
    from lmforge.infer.engine import Engine

    model, _ = _prefixed_model(vocab=tok.get_vocab_size())
    # a long prompt (its blocks are cached, then reused by the third request) and a short one:
    # a batched decode at two positions, through the engine's own slot cache
    prompts = [tok.encode("被保险人的犹豫期是多少天？" * 3).ids, tok.encode("保").ids]
    prompts.append(prompts[0])
    expected = {str(i): _greedy(model, p, 6) for i, p in enumerate(prompts)}
    engine = Engine(model, tok, max_batch=2, max_len=96)
    config = SamplingConfig(max_new_tokens=6, temperature=0.0, ignore_eos=True)
    got: dict[str, list[tuple[int, float]]] = {}
    for i, prompt in enumerate(prompts):
        engine.submit(prompt, config, str(i))
        got[str(i)] = []
    for event in engine.run():
        if event.token is not None and event.logprob is not None:
            got[event.request].append((event.token, event.logprob))
    for name, steps in expected.items():
        assert [t for t, _ in got[name]] == [t for t, _ in steps], name
        assert [p for _, p in got[name]] == pytest.approx([p for _, p in steps], abs=1e-4)


def test_a_projected_prefix_resumes_exactly_from_a_checkpoint(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from lmforge.model import load_state

    model, encoder = _prefixed_model(projection=True)
    save_model(model, tmp_path / "step")  # what a training checkpoint writes
    again, _ = _prefixed_model(projection=True)
    with torch.no_grad():
        for p in again.parameters():
            p.zero_()
    load_state(again, load_file(str(tmp_path / "step" / "model.safetensors")), tmp_path / "step")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                 model.state_dict().values(), strict=True))


def _base_folder(tmp_path: Path) -> Path:
    from lmforge.tokenizer import copy_tokenizer_files, load_tokenizer

    vocab = load_tokenizer(FIXTURE_TOKENIZER).get_vocab_size()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4,
                                    n_kv_heads=2, max_seq_len=128,
                                    init_std=0.3))  # peaked logits a prefix can move
    save_model(model, tmp_path / "base")
    copy_tokenizer_files(FIXTURE_TOKENIZER, tmp_path / "base")
    return tmp_path / "base"


def test_sft_with_a_prefix_trains_only_the_prefix(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from lmforge.data import Conversation
    from lmforge.train.sft import sft

    base = _base_folder(tmp_path)
    answers = ["犹豫期是十五天。", "可以，全额退还。", "请联系保险公司。", "需要提供保单。"]
    conversations = [Conversation([{"role": "user", "content": f"第{i}个问题：保险怎么办？"},
                                   {"role": "assistant", "content": answers[i % 4]}], f"q{i}")
                     for i in range(24)]
    config = SFTConfig(method="prefix", prefix=PrefixConfig(virtual_tokens=4), val_fraction=0.25,
                       train=TrainConfig(steps=12, batch_size=4, seq_len=128, lr=0.3,
                                         weight_decay=0.0, warmup_steps=1, eval_every=12,
                                         log_every=1, save_every=12))
    report = sft(config, conversations, {}, base, tmp_path / "sft", 7, show_progress=False)
    losses = [row["loss"] for row in map(json.loads, (tmp_path / "sft" / "metrics.jsonl")
                                         .read_text().splitlines()) if "loss" in row]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2, losses
    assert report["final"]["val_loss"] < report["before"]["val_loss"]
    out = tmp_path / "sft" / "model"
    # the folder's weights are the base's, untouched; the prefix is beside them
    assert load_file(str(out / "model.safetensors")).keys() == \
        load_file(str(base / "model.safetensors")).keys()
    for name, tensor in load_file(str(out / "model.safetensors")).items():
        assert torch.equal(tensor, load_file(str(base / "model.safetensors"))[name]), name
    adapter = json.loads((tmp_path / "sft" / "adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "PREFIX_TUNING"
    tokens = torch.randint(0, 100, (1, 10))
    with torch.no_grad():
        tuned = load_model(out)(tokens).logits
        assert (out / PREFIX_FOLDER / "adapter_model.safetensors").exists()
        assert not torch.allclose(tuned, load_model(base)(tokens).logits, atol=1e-3)
        via_adapter = load_model(base, adapter=tmp_path / "sft" / "adapter")
        assert torch.allclose(via_adapter(tokens).logits, tuned, atol=1e-6)


def test_gguf_refuses_a_prefix_it_would_drop(tmp_path: Path) -> None:
    from lmforge.config import ConfigError, ExportConfig, RecipeConfig
    from lmforge.export import export_gguf

    with pytest.raises(ConfigError, match="export.gguf"):
        RecipeConfig(sft=SFTConfig(method="prefix"))
    RecipeConfig(sft=SFTConfig(method="prefix"), export=ExportConfig(gguf="none"))
    model, _ = _prefixed_model()
    save_model(model, tmp_path / "model")
    with pytest.raises(ValueError, match="prefix"):
        export_gguf(tmp_path / "model", tmp_path / "model.gguf")
