"""Weight-only quantised linear layers: 4-bit NormalFloat (NF4), the frozen base of QLoRA, and
per-channel int8 for serving.

Int8: one scale per output channel (absmax / 127); the matmul runs on the int8 weights cast to
the activation dtype and the scale is applied to the output, so memory is a quarter of fp32.

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
    packed = codes[0::2] << 4 | codes[1::2]
    return packed, absmax


def dequantize_nf4(packed: Tensor, absmax: Tensor, shape: torch.Size, block: int = BLOCK,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    codes = torch.stack([packed >> 4, packed & 0x0F], dim=1).flatten().long()
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


class Int8Linear(nn.Module):
    """A linear layer with per-output-channel int8 weights (weight-only quantisation)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.weight_int8: Tensor
        self.scale: Tensor
        self.register_buffer("weight_int8", torch.round(weight / scale[:, None]).to(torch.int8))
        self.register_buffer("scale", scale)
        self.bias = linear.bias

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight_int8.to(x.dtype)) * self.scale.to(x.dtype)
        return out + self.bias if self.bias is not None else out

    def stored_bytes(self) -> int:
        return self.weight_int8.numel() + self.scale.numel() * 4


def _nf4_bytes(layer: NF4Linear) -> int:
    return layer.packed.numel() + layer.absmax.numel() * 4


def quantize_linears(model: nn.Module, kind: str = "nf4") -> tuple[int, int]:
    """Replace every linear layer but the output head (and MoE routers) with NF4 or int8;
    returns the bytes of those weights before and after."""
    before = after = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or name == "lm_head" or name.endswith(".gate"):
            continue
        quantized: NF4Linear | Int8Linear
        if kind == "int8":
            quantized = Int8Linear(module)
            after += quantized.stored_bytes()
        else:
            quantized = NF4Linear(module)
            after += _nf4_bytes(quantized)
        before += module.weight.numel() * module.weight.element_size()
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, quantized)
    return before, after
