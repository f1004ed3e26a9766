"""What one device can do: peak matmul rate, memory, memory bandwidth and the link to its
neighbours, for the GPUs people train on and for this machine's CPU, measured on the spot.

Figures are the vendors' dense (no 2:4 sparsity) bf16 tensor-core peaks and their memory and
link bandwidths, checked against these pages:
- H100 SXM5 and H200: NVIDIA's datasheets as tabulated by glennklockwood.com/garden/processors/h100
  (BF16 989.4 TFLOPS dense, 3.35 TB/s HBM3, NVLink 4 900 GB/s both directions together) and
  the H200 product page (same compute and NVLink, 141 GB HBM3e at 4.8 TB/s);
- A100 80GB SXM4: NVIDIA's A100 datasheet (312 TFLOPS bf16, 2,039 GB/s, NVLink 3 600 GB/s);
- L40S: NVIDIA's L40S datasheet (362.05 TFLOPS bf16 dense, 733 with sparsity; 864 GB/s GDDR6;
  PCIe 4.0 x16, 64 GB/s both directions, of which ~25 GB/s per direction is what NCCL reaches);
- RTX 4090: NVIDIA's Ada Lovelace whitepaper (165.2 TFLOPS bf16 with fp32 accumulate, the
  GeForce rate, half the fp16-accumulate one; 1,008 GB/s GDDR6X; PCIe 4.0, no NVLink).
Link figures are per direction, the rate a ring collective moves data at. ``memory`` is what
``torch.cuda`` reports as the device's total (a little under the marketed size: ECC and
firmware reserve some), not what is free after the CUDA context.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

GIB = 2**30
# One 400 Gb/s InfiniBand NIC per GPU (DGX H100/H200): what a ring crosses between nodes.
NETWORK_BANDWIDTH = 50e9
GPUS_PER_NODE = 8


@dataclass(frozen=True)
class Hardware:
    key: str  # the --gpu name
    name: str
    kind: Literal["cuda", "cpu"]
    peak_flops: float  # dense bf16 tensor-core FLOP/s (cpu: fp32 matmul, measured)
    memory: float  # bytes one device holds
    memory_bandwidth: float  # bytes/s to and from that memory
    link_bandwidth: float  # bytes/s per direction to the next device in the node
    link: str


GPUS: dict[str, Hardware] = {h.key: h for h in (
    Hardware("h100", "NVIDIA H100 SXM 80GB", "cuda", 989e12, 79.1 * GIB, 3.35e12, 450e9,
             "NVLink 4"),
    Hardware("h200", "NVIDIA H200 SXM 141GB", "cuda", 989e12, 139.8 * GIB, 4.8e12, 450e9,
             "NVLink 4"),
    Hardware("a100", "NVIDIA A100 SXM 80GB", "cuda", 312e12, 79.2 * GIB, 2.039e12, 300e9,
             "NVLink 3"),
    Hardware("l40s", "NVIDIA L40S", "cuda", 362e12, 44.5 * GIB, 864e9, 25e9, "PCIe 4.0 x16"),
    Hardware("4090", "NVIDIA GeForce RTX 4090", "cuda", 165e12, 23.6 * GIB, 1008e9, 25e9,
             "PCIe 4.0 x16"),
)}
# what torch.cuda.get_device_name() contains for each (the PCIe H100 and 40 GB A100 differ)
DEVICE_NAMES = {"h100": ("H100 80GB HBM3", "H100 SXM"), "h200": ("H200",),
                "a100": ("A100-SXM4-80GB", "A100 80GB"), "l40s": ("L40S",),
                "4090": ("RTX 4090",)}
CHOICES = (*GPUS, "cpu")


def _timed(run: Callable[[], object], budget: float) -> tuple[int, float]:
    """(calls, seconds) of calling ``run`` until ``budget`` seconds have passed (after one
    warm-up call, so first-touch page faults and kernel selection are not timed)."""
    run()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < budget:
        run()
        calls += 1
    return calls, elapsed


def _total_ram() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return float(line.split()[1]) * 1024
    raise OSError("no MemTotal in /proc/meminfo")


@functools.cache
def measure_cpu() -> Hardware:
    """This machine's CPU, measured once per process in about a second: fp32 matmul FLOP/s
    (1024^3 matmuls: large enough for the BLAS to reach its rate), copy bandwidth (a 256 MB
    copy reads and writes 512 MB) and total RAM."""
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    calls, seconds = _timed(lambda: a @ b, 0.5)
    flops = 2 * n**3 * calls / seconds
    src = torch.ones(64 * 2**20)
    dst = torch.empty_like(src)
    copies, copy_seconds = _timed(lambda: dst.copy_(src), 0.3)
    bandwidth = 2 * src.nbytes * copies / copy_seconds
    return Hardware("cpu", f"this machine's CPU ({torch.get_num_threads()} threads)", "cpu",
                    flops, _total_ram(), bandwidth, bandwidth, "shared memory")


def hardware(key: str) -> Hardware:
    """The device named on the command line (``h100`` ... ``cpu``)."""
    if key == "cpu":
        return measure_cpu()
    if key not in GPUS:
        raise ValueError(f"gpu: expected one of {', '.join(CHOICES)}, got {key!r}")
    return GPUS[key]


def hardware_for(device: torch.device | str) -> Hardware | None:
    """The table's entry for a torch device (``cuda:0`` by its name); None for a GPU the table
    does not hold, whose peak rate is unknown."""
    device = torch.device(device)
    if device.type == "cpu":
        return measure_cpu()
    name = torch.cuda.get_device_name(device)
    for key, names in DEVICE_NAMES.items():
        if any(n in name for n in names):
            return GPUS[key]
    return None


def resolve(device: Hardware | torch.device | str) -> Hardware:
    """A table key (``h100`` ... ``cpu``), a torch device, or a Hardware, as a Hardware; a
    GPU the table lacks is described by what torch reports: its memory, its rates unknown
    (0)."""
    if isinstance(device, Hardware):
        return device
    if isinstance(device, str) and device in CHOICES:
        return hardware(device)
    found = hardware_for(device)
    if found is not None:
        return found
    props = torch.cuda.get_device_properties(torch.device(device))
    return Hardware("cuda", props.name, "cuda", 0.0, float(props.total_memory), 0.0, 0.0,
                    "unknown")


def peak_flops(device: torch.device | str) -> float | None:
    """The denominator of MFU for ``device``: the table's bf16 peak for a known GPU, the
    measured fp32 matmul rate for the CPU, None for a GPU not in the table."""
    found = hardware_for(device)
    return found.peak_flops if found else None


def ring_bandwidth(device: Hardware, world: int) -> float:
    """Bytes/s per direction a ring over ``world`` devices moves: the slowest link it crosses
    (NVLink/PCIe inside a node of 8, the network between nodes)."""
    if world > GPUS_PER_NODE and device.kind == "cuda":
        return min(device.link_bandwidth, NETWORK_BANDWIDTH)
    return device.link_bandwidth
