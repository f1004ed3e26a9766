"""Weight-only quantised linear layers: 4-bit NormalFloat (NF4), the frozen base of QLoRA, and
per-channel int8 and group-wise int4 for serving (``--quantize int8|int4``).

Serving formats run on torch's own packed CPU kernels, fed bfloat16 activations, so no call
dequantises the whole matrix. ``bench/quantize.py`` measures every candidate at the model's
own (fused) shapes; figures below are µs per call on this 2-core AMD EPYC (AVX-512 BF16),
torch 2.13, 2 threads, cpu-demo shapes (256→256 … 256→1408 fused gate/up, 704→256), 1 row
(a decode step) and 32 rows:
- int8, ``aten._weight_int8pack_mm`` (plain int8 [out, in] and one scale per row): bf16 in,
  20-32 µs at 1 row and 56-863 at 32; fed fp32 it takes a scalar path, 37-579 at 1 row and
  4,300-21,000 at 32 (100x F.linear). The old dequantise-per-call path: 31-1,232 at 1 row.
- int4, ``aten._weight_int4pack_mm_for_cpu`` (tinygemm's layout, from
  ``_convert_weight_to_int4pack_for_cpu``): bf16 in, 20-32 at 1 row, 51-641 at 32; fed fp32,
  68-1,145 and 9,900-35,800. Dequantising per call: 69-2,250 at 1 row.
- fp32 ``F.linear``: 7-40 at 1 row, 37-974 at 32. At the demo's size every fp32 matrix sits in
  cache, so quantisation buys memory, not time, and a layer's two casts (x to bf16, out back,
  ~3 µs each) cost more than the smaller read saves; once the weights leave the cache the
  kernels win: ``small``'s 512→2816 at 1 row, fp32 108-335 µs, either kernel 45-62.
- torchao 0.18 (``pip install --no-deps``; torch left at 2.13) was measured and not taken:
  its ``Int8WeightOnlyConfig`` ran slower than the dequantise path here (326 against 272 µs
  for 512→2816 at 1 row, 1 thread), and its int4 weight-only packings have no CPU kernel left
  (they need mslk or CUDA). fbgemm's dynamic int8 linear (``quantized::linear_dynamic``) is
  fastest at 8-32 rows but quantises the activations too: not weight-only, not taken.

bfloat16 activations round each input and output to 8 significant bits (2^-8 relative), on the
order of the int8 weights' own step; tests/test_quant.py bounds both. The kernels have no
backward: these layers serve, they do not train.

Int8: one scale per output channel (absmax / 127, rounded to bf16, the kernel's scale dtype,
before the codes are chosen against it), so memory is a quarter of fp32.

Int4: asymmetric per group of ``INT4_GROUP`` input weights (the group's min..max in 15 steps),
stored as tinygemm's (code - 8) * scale + zero with bf16 scale and zero: 4 + 32/group bits per
weight. Group 64 is the default: on Gaussian weights the relative output error is 0.077 / 0.090
/ 0.100 for groups 32 / 64 / 128, speed is the same within noise (128 ~5% faster at 1 row),
and 32 costs 5 bits a weight against 64's 4.5; GPTQ and AWQ checkpoints use 128, llama.cpp's
Q4 blocks 32. Held-out perplexity (``bench/quantize.py``, a 2-layer dim-128 model pretrained
300 steps on the tiny data) moved by -0.11% / -0.11% / +0.06% for groups 32 / 64 / 128 and
0.00% for int8: too small a model to rank the groups, so the demo's run should be measured.

Off the kernels' ground both formats dequantise per call (correct, memory-saving, not faster):
on other devices (CUDA included: torch's CUDA tinygemm ``_weight_int4pack_mm`` needs sm80 and
its own packing, untested here, so not used) and for shapes the CPU kernels do not take
(int8: in_features % 16, below which torch 2.13's kernel reads past the row and crashes; int4:
out_features % 16 and in_features % group). An int4 layer built on the CPU holds the
kernel's packed layout, which nothing else reads, and refuses input on another device rather
than misread it: quantise on the device that serves.

QLoRA (Dettmers et al. 2023) stores the frozen weights as 4-bit indices into the 16 NF4 levels
(quantiles of a normal distribution), with one absmax scale per block of 64 weights, and
dequantizes on the fly for each matmul; LoRA adapters train in full precision on top. We write
it in plain PyTorch rather than depend on bitsandbytes: it runs on CPU and any GPU, it is ~100
lines, and the same container serves the weights' 4.5 bits per value on every device.
bitsandbytes' fused CUDA kernels are faster; this is the portable path.

Merging (``merge_lora``) folds the adapters into the dequantised base, as QLoRA merges commonly
do (peft's ``merge_and_unload`` on a 4-bit model): the merged weights are the 4-bit rounded
base plus the scaled B·A, exactly what the adapters were trained on, not the original full
precision base plus B·A. The biases were never quantised and come back unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The 16 NF4 levels from the QLoRA paper (normal quantiles, exact zero included), ascending.
NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
])
BLOCK = 64
INT4_GROUP = 64  # weights per int4 scale: see the module docstring


def _pack_nibbles(codes: Tensor) -> Tensor:
    """Codes 0..15 (an even count, flat) two to a byte, the first in the high nibble."""
    return codes[0::2] << 4 | codes[1::2]


def _unpack_nibbles(packed: Tensor) -> Tensor:
    return torch.stack([packed >> 4, packed & 0x0F], dim=1).flatten()


def quantize_nf4(weight: Tensor, block: int = BLOCK) -> tuple[Tensor, Tensor]:
    """(packed uint8 codes, two per byte; per-block absmax scales) for a weight tensor."""
    flat = weight.detach().float().flatten()
    pad = (-flat.numel()) % block
    flat = F.pad(flat, (0, pad)).view(-1, block)
    absmax = flat.abs().amax(dim=1).clamp(min=1e-12)
    normalised = flat / absmax[:, None]
    levels = NF4_LEVELS.to(flat.device)
    midpoints = (levels[1:] + levels[:-1]) / 2
    codes = torch.bucketize(normalised, midpoints).to(torch.uint8).flatten()
    return _pack_nibbles(codes), absmax


def dequantize_nf4(packed: Tensor, absmax: Tensor, shape: torch.Size, block: int = BLOCK,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    codes = _unpack_nibbles(packed).long()
    values = NF4_LEVELS.to(packed.device)[codes].view(-1, block) * absmax[:, None]
    return values.flatten()[: shape.numel()].view(shape).to(dtype)


class NF4Linear(nn.Module):
    """A frozen linear layer held in NF4; the output dtype follows the input."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.shape = linear.weight.shape
        packed, absmax = quantize_nf4(linear.weight)
        self.packed: Tensor
        self.absmax: Tensor
        self.register_buffer("packed", packed)
        self.register_buffer("absmax", absmax)
        self.bias = linear.bias

    def stored_bytes(self) -> int:
        return self.packed.numel() + self.absmax.numel() * 4

    def dequantized(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return dequantize_nf4(self.packed, self.absmax, self.shape, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.dequantized(x.dtype), self.bias)

    def to_linear(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.packed.device)
        with torch.no_grad():
            linear.weight.copy_(self.dequantized())
            if self.bias is not None:  # Qwen2's q/k/v biases, kept in full precision
                linear.bias.copy_(self.bias)
        return linear



def _kernel_rows(x: Tensor) -> Tensor:
    """Activations as the packed CPU kernels take them: 2-D, contiguous, bfloat16."""
    return x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()


def _with_bias(out: Tensor, x: Tensor, bias: Tensor | None) -> Tensor:
    out = out.view(*x.shape[:-1], out.shape[-1]).to(x.dtype)
    return out if bias is None else out + bias


class Int8Linear(nn.Module):
    """A linear layer with per-output-channel int8 weights (weight-only quantisation); for
    inference only (the CPU kernel has no backward)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        # the kernel takes bfloat16 scales: the codes are chosen against the rounded scale
        scale = (weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0).bfloat16()
        codes = torch.round(weight / scale.float()[:, None]).clamp(-127, 127)
        self.weight_int8: Tensor
        self.scale: Tensor
        # contiguous, as the kernel needs: a fused layer's weight may be input-major
        self.register_buffer("weight_int8", codes.to(torch.int8).contiguous())
        self.register_buffer("scale", scale)
        self.bias = linear.bias
        # torch 2.13's CPU kernel reads past the row (a segfault) unless in_features % 16 == 0
        self.kernel_shape = self.in_features % 16 == 0

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and self.kernel_shape:
            out = torch.ops.aten._weight_int8pack_mm(_kernel_rows(x), self.weight_int8,
                                                     self.scale)
            return _with_bias(out, x, self.bias)
        out = F.linear(x, self.weight_int8.to(x.dtype)) * self.scale.to(x.dtype)
        return out + self.bias if self.bias is not None else out

    def stored_bytes(self) -> int:
        return self.weight_int8.numel() + self.scale.numel() * 2


def quantize_int4(weight: Tensor, group: int) -> tuple[Tensor, Tensor]:
    """(codes 0..15 as uint8 [out, in padded to a multiple of ``group``], bfloat16 scales and
    zeros [groups, out, 2]) with weight ≈ (code - 8) * scale + zero, the layout of torch's int4
    kernels. Asymmetric: each group's min..max is cut into 15 steps; scale and zero are rounded
    to bfloat16 first and the codes chosen against the rounded values."""
    w = weight.detach().float().contiguous()  # a fused layer's weight may be input-major
    rows, columns = w.shape
    w = F.pad(w, (0, (-columns) % group)).view(rows, -1, group)
    low, high = w.amin(dim=-1), w.amax(dim=-1)
    scale = ((high - low) / 15).clamp(min=1e-12).bfloat16().float()
    zero = (low + 8 * scale).bfloat16().float()
    codes = torch.round((w - zero[..., None]) / scale[..., None] + 8).clamp(0, 15)
    scale_zero = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().bfloat16()
    return codes.to(torch.uint8).view(rows, -1), scale_zero


def dequantize_int4(codes: Tensor, scale_zero: Tensor, in_features: int) -> Tensor:
    """The fp32 [out, in_features] weight of ``quantize_int4``'s codes (unpacked)."""
    rows, groups = codes.shape[0], scale_zero.shape[0]
    scale, zero = scale_zero.float().transpose(0, 1).unbind(dim=-1)
    w = (codes.view(rows, groups, -1).float() - 8) * scale[..., None] + zero[..., None]
    return w.view(rows, -1)[:, :in_features]


class Int4Linear(nn.Module):
    """A linear layer with group-wise asymmetric int4 weights (weight-only quantisation); for
    inference only. On the CPU, for shapes the kernel takes (out_features % 16 == 0,
    in_features % group == 0), the weights are held in the kernel's packed layout, which only
    that kernel reads: such a layer refuses input on another device (quantise there instead).
    Anywhere else the codes are held two to a byte and dequantised per call."""

    def __init__(self, linear: nn.Linear, group: int = INT4_GROUP) -> None:
        super().__init__()
        if group not in (32, 64, 128, 256):
            raise ValueError(f"group: expected 32, 64, 128 or 256 weights per scale, got {group}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.group = group
        codes, scale_zero = quantize_int4(linear.weight, group)
        self.cpu_packed = (linear.weight.device.type == "cpu" and self.out_features % 16 == 0
                           and self.in_features % group == 0)
        self.weight_int4: Tensor
        self.scale_zero: Tensor
        self.register_buffer("weight_int4", torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            codes.int(), 1) if self.cpu_packed else _pack_nibbles(codes.flatten()))
        self.register_buffer("scale_zero", scale_zero)
        self.bias = linear.bias

    def forward(self, x: Tensor) -> Tensor:
        if self.cpu_packed:
            if x.device.type != "cpu":
                raise RuntimeError(f"Int4Linear: weights packed for the CPU kernel, input on "
                                   f"{x.device}; quantise the model on the device it runs on")
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(
                _kernel_rows(x), self.weight_int4, self.group, self.scale_zero)
            return _with_bias(out, x, self.bias)
        codes = _unpack_nibbles(self.weight_int4).view(self.out_features, -1)
        weight = dequantize_int4(codes, self.scale_zero, self.in_features)
        return F.linear(x, weight.to(x.dtype), self.bias)

    def stored_bytes(self) -> int:
        return self.weight_int4.numel() + self.scale_zero.numel() * 2


QuantizedLinear = NF4Linear | Int8Linear | Int4Linear
KINDS: dict[str, Callable[[nn.Linear], QuantizedLinear]] = {
    "nf4": NF4Linear, "int8": Int8Linear, "int4": Int4Linear}


def replace_linears(model: nn.Module, build: Callable[[nn.Linear], QuantizedLinear]
                    ) -> tuple[int, int]:
    """Replace every linear layer but the output head (and MoE routers) with ``build(layer)``;
    returns the bytes of those weights before and after."""
    before = after = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or name == "lm_head" or name.endswith(".gate"):
            continue
        quantized = build(module)
        before += module.weight.numel() * module.weight.element_size()
        after += quantized.stored_bytes()
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, quantized)
    return before, after


def quantize_linears(model: nn.Module, kind: str = "nf4") -> tuple[int, int]:
    """Replace every linear layer but the output head (and MoE routers) with NF4 (QLoRA's
    base), int8 or int4 (serving); returns the bytes of those weights before and after."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    return replace_linears(model, KINDS[kind])
