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


def test_vllm_serves_the_export_as_lmforge_generates(tiny_run, tmp_path) -> None:  # noqa: ANN001
    """vLLM (GPU only: its wheels need a CUDA build of torch 2.14, so it cannot sit in the
    CPU venv; `pip install vllm` in a GPU environment) loads ``export hf`` and decodes
    greedily to the same tokens as lmforge's engine."""
    vllm = pytest.importorskip("vllm")
    from lmforge.export import export_hf
    from lmforge.infer import Engine
    from lmforge.model import load_model
    from lmforge.tokenizer import load_tokenizer

    folder = tiny_run / "pretrain" / "model"
    hf = export_hf(folder, tmp_path / "hf")
    tok = load_tokenizer(folder)
    prompts = [tok.encode(text).ids for text in ("被保险人在等待期内", "The policy covers")]
    engine = Engine(load_model(folder), tok, max_batch=2)
    config = SamplingConfig(max_new_tokens=16, temperature=0.0, ignore_eos=True)
    ours: dict[str, list[int]] = {"0": [], "1": []}
    for i, prompt in enumerate(prompts):
        engine.submit(prompt, config, str(i))
    for event in engine.run():
        if event.token is not None:
            ours[event.request].append(event.token)
    llm = vllm.LLM(model=str(hf), dtype="float32", enforce_eager=True, gpu_memory_utilization=0.2)
    params = vllm.SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    outputs = llm.generate([vllm.TokensPrompt(prompt_token_ids=p) for p in prompts], params)
    assert [list(o.outputs[0].token_ids) for o in outputs] == [ours["0"], ours["1"]]
