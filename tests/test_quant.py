"""Weight-only int8 and int4 for serving: each layer is within its quantisation step of the fp32
layer, the packed CPU kernels compute what the stored codes say, and bad formats are refused."""

import argparse

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import ModelConfig, SamplingConfig
from lmforge.infer import generate, load_for_inference
from lmforge.infer.loading import QUANTIZE
from lmforge.model import Transformer, fuse_for_inference, quantize_linears
from lmforge.model.quant import Int4Linear, Int8Linear, dequantize_int4, quantize_int4

U = 2.0 ** -8  # bfloat16's unit roundoff: the packed kernels take bf16 activations
# (in, out): shapes the CPU kernels take, and ones they do not (fallback: dequantise per call)
SHAPES = [(64, 48), (256, 512), (128, 96), (40, 20), (100, 33)]


def _linear(fan_in: int, fan_out: int, bias: bool = True) -> torch.nn.Linear:
    torch.manual_seed(fan_in * 1000 + fan_out)
    return torch.nn.Linear(fan_in, fan_out, bias=bias)


def _within(out: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor) -> None:
    excess = (out - ref).abs() - bound
    assert excess.max() <= 0, f"over the bound by {excess.max():.3g}"


def _bf16_bound(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """How far bf16 activations and a bf16 output may move x @ weight.T: (2u + u²)·|x||W| for
    the rounded inputs (and any bf16 rounding of the weights), u·|out| for the output."""
    return (2 * U + U * U) * (x.abs() @ weight.abs().T) + U * out.abs() + 1e-6


@pytest.mark.parametrize(("fan_in", "fan_out"), SHAPES)
def test_int8_is_within_half_a_step_of_the_fp32_layer(fan_in: int, fan_out: int) -> None:
    linear = _linear(fan_in, fan_out)
    layer = Int8Linear(linear)
    assert layer.kernel_shape == (fan_in % 16 == 0)
    step = layer.scale.float()[:, None]
    restored = layer.weight_int8.float() * step
    _within(restored, linear.weight, step / 2)  # every weight within half its channel's step
    x = torch.randn(3, 5, fan_in)
    with torch.no_grad():
        out, ref = layer(x), linear(x)
    # the kernel computes with exactly the stored codes and scales ...
    _within(out, F.linear(x, restored, linear.bias), _bf16_bound(x, restored, out))
    # ... so the layer is within half a step per weight of the fp32 layer
    step_bound = x.abs() @ (step / 2).expand(-1, fan_in).T
    _within(out, ref, step_bound + _bf16_bound(x, linear.weight, out))


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize(("fan_in", "fan_out"), SHAPES)
def test_int4_is_within_half_a_step_of_the_fp32_layer(fan_in: int, fan_out: int,
                                                      group: int) -> None:
    linear = _linear(fan_in, fan_out)
    codes, scale_zero = quantize_int4(linear.weight, group)
    restored = dequantize_int4(codes, scale_zero, fan_in)
    step = scale_zero[..., 0].float().T.repeat_interleave(group, dim=1)[:, :fan_in]
    zero = scale_zero[..., 1].float().T.repeat_interleave(group, dim=1)[:, :fan_in]
    # half a step, plus what rounding scale and zero to bf16 can shift the grid by
    _within(restored, linear.weight, step / 2 + U * (zero.abs() + 16 * step))
    assert codes.max() <= 15 and int(codes.shape[1]) % group == 0
    layer = Int4Linear(linear, group)
    assert layer.cpu_packed == (fan_out % 16 == 0 and fan_in % group == 0)
    x = torch.randn(4, fan_in)
    with torch.no_grad():
        out, ref = layer(x), linear(x)
    _within(out, F.linear(x, restored, linear.bias), _bf16_bound(x, restored, out))
    weight_bound = step / 2 + U * (zero.abs() + 16 * step)
    _within(out, ref, x.abs() @ weight_bound.T + _bf16_bound(x, linear.weight, out))
    padded = -(-fan_in // group) * group  # the last group padded with zeros
    assert layer.stored_bytes() == fan_out * padded // 2 + padded // group * fan_out * 4


@pytest.mark.parametrize("kind", [Int8Linear, Int4Linear])
def test_an_input_major_weight_quantises_alike(kind: type) -> None:
    """model/fuse.py may store a fused weight transposed ([in, out] memory): the same layer."""
    linear = _linear(128, 256)
    relaid = _linear(128, 256)
    relaid.weight = torch.nn.Parameter(linear.weight.detach().t().contiguous().t())
    assert not relaid.weight.is_contiguous()
    x = torch.randn(3, 128)
    with torch.no_grad():
        assert torch.equal(kind(relaid)(x), kind(linear)(x))


def test_cpu_packed_int4_refuses_input_on_another_device() -> None:
    """The kernel's packed layout means nothing elsewhere: an error, not a wrong result (a
    layer quantised on the GPU keeps the portable layout, tested above on kernel-less shapes)."""
    layer = Int4Linear(_linear(128, 64), 64)
    assert layer.cpu_packed
    with pytest.raises(RuntimeError, match="packed for the CPU kernel, input on meta"):
        layer(torch.randn(2, 128, device="meta"))


def test_quantize_linears_replaces_all_but_head_and_routers() -> None:
    """Fused layers too (quantisation runs after fusion): whatever nn.Linear is there."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, dim=64, n_layers=1, n_heads=4, n_kv_heads=2,
                                    n_experts=2)).eval()
    fuse_for_inference(model)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    before, after = quantize_linears(model, "int4")
    kinds = {name: type(m) for name, m in model.named_modules()}
    kept = [n for n in linears if kinds[n] is torch.nn.Linear]
    assert kept == ["layers.0.block_sparse_moe.gate", "lm_head"]
    assert {kinds[n] for n in linears if n not in kept} == {Int4Linear}
    assert "layers.0.self_attn.qkv_proj" in linears and "layers.0.self_attn.q_proj" not in kinds
    assert after / before < 0.5 / 4 + 0.02  # 4 bits and a bf16 scale + zero per group
    with torch.no_grad():
        assert model(torch.randint(0, 64, (1, 6))).logits.isfinite().all()
    with pytest.raises(ValueError, match="nf4, int8, int4, got 'int3'"):
        quantize_linears(model, "int3")
    with pytest.raises(ValueError, match="group: expected 32, 64, 128 or 256"):
        Int4Linear(torch.nn.Linear(64, 64), 48)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_the_engine_generates_with_quantized_weights(model, chat, kind: str) -> None:  # noqa: ANN001
    import copy

    quantized = copy.deepcopy(model)
    quantize_linears(quantized, kind)
    config = SamplingConfig(max_new_tokens=8, temperature=0.0, ignore_eos=True)
    prompts = ["被保险人", "To be"]
    out = generate(quantized, chat, prompts, config)
    assert len(out) == 2 and all(out), out
    tokens = torch.tensor([chat.tokenizer.encode("被保险人在保险期间内").ids])
    with torch.no_grad():
        full, low = model(tokens).logits, quantized(tokens).logits
    assert (full.argmax(-1) == low.argmax(-1)).float().mean() > 0.9
    assert not torch.equal(full, low)  # the quantised weights were really used


def test_serving_refuses_an_unknown_format(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="quantize: expected one of none, int8, int4, got 'nf4'"):
        load_for_inference(tmp_path, quantize="nf4")  # refused before the folder is read


def test_cli_offers_the_serving_formats(capsys: pytest.CaptureFixture) -> None:
    from lmforge.cli import build_parser

    parser = build_parser()
    for command in ("generate", "chat", "serve"):
        args = ["--model", "m", "x"] if command == "generate" else ["--model", "m"]
        parsed = parser.parse_args([command, *args, "--quantize", "int4"])
        assert parsed.quantize == "int4"
        with pytest.raises(SystemExit):
            parser.parse_args([command, *args, "--quantize", "int2"])
        assert "(choose from 'none', 'int8', 'int4')" in capsys.readouterr().err
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flag = next(a for a in sub.choices["serve"]._actions if a.dest == "quantize")
    assert tuple(flag.choices) == QUANTIZE
