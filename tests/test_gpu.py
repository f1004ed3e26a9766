"""The CUDA path: the same code on a GPU. Skipped by default (pytest -m gpu on a GPU machine)."""

import pytest
import torch

from lmforge.config import ModelConfig, SamplingConfig
from lmforge.model import Transformer

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_cuda_logits_match_cpu() -> None:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=512, dim=128, n_layers=2, n_heads=4, n_kv_heads=2)
    model = Transformer(config).eval()
    tokens = torch.randint(0, 512, (2, 64))
    with torch.no_grad():
        cpu = model(tokens).logits
        gpu = model.cuda()(tokens.cuda()).logits.cpu()
    assert torch.allclose(cpu, gpu, atol=1e-3)


def test_bf16_training_steps_reduce_loss(tiny_run, tmp_path) -> None:  # noqa: ANN001
    from lmforge.config import RecipeConfig, load_config
    from lmforge.train import pretrain

    recipe = load_config(RecipeConfig, None, [
        'model.preset="tiny"', "pretrain.steps=60", "pretrain.batch_size=8",
        "pretrain.seq_len=64", "pretrain.lr=0.01", "pretrain.warmup_steps=5",
        "pretrain.eval_every=30", "pretrain.eval_batches=2"])
    report = pretrain(recipe.model, recipe.pretrain, tiny_run / "tokenizer",
                      tiny_run / "data" / "shards", tmp_path / "pretrain", recipe.run.seed,
                      show_progress=False)
    assert report["device"] == "cuda"
    assert report["final"]["val_loss"] < report["before"]["val_loss"] - 0.5


def test_generation_on_cuda_matches_cpu(tiny_run) -> None:  # noqa: ANN001
    from lmforge.infer import generate
    from lmforge.model import load_model
    from lmforge.tokenizer import load_chat_format

    folder = tiny_run / "pretrain" / "model"
    chat = load_chat_format(folder)
    config = SamplingConfig(max_new_tokens=16, temperature=0.0)
    prompts = ["被保险人", "To be"]
    cpu = generate(load_model(folder), chat, prompts, config)
    gpu = generate(load_model(folder, device="cuda"), chat, prompts, config)
    assert cpu == gpu
