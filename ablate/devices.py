"""What a device can do at most: the dense bf16 peak of known GPUs, for model FLOPs utilisation.

MFU = training FLOPs per token (ablate.model.facts) x tokens per second / the peak FLOP/s of the
devices that ran them. The peaks are the vendors' dense (not 2:4-sparse) bf16 tensor figures,
matched against torch.cuda.get_device_name; `train.peak_tflops` overrides the table (a device it
lacks, a clock-limited part, or a measured ceiling instead of the datasheet's). None on a CPU
unless given: a CPU's peak depends on its cores, clocks and ISA, and a datasheet figure would
mislead.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("ablate.devices")

# (substring of the device name, dense bf16 TFLOP/s); the first match wins, so specific names first
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("GH200", 989.4), ("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4),
    ("H800", 989.4), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L4", 121.0),
    ("A6000", 154.8),
]


def peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    """The peak bf16 TFLOP/s of one `device` (override first; None where unknown)."""
    if override is not None:
        return float(override)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    found = lookup(name)
    if found is None:
        log.warning("no peak FLOP/s known for %r: MFU is not reported (train.peak_tflops=... sets one)", name)
    return found


def lookup(name: str) -> float | None:
    """The table's peak for a device name, e.g. 'NVIDIA H100 80GB HBM3' -> 989.4."""
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS if key in name), None)


def mfu(flops_per_token: float, tokens_per_s: float, peak: float | None, world_size: int = 1) -> float | None:
    """Model FLOPs utilisation of `world_size` devices of `peak` TFLOP/s each (None without a peak)."""
    if peak is None or not peak > 0:
        return None
    return flops_per_token * tokens_per_s / (peak * 1e12 * world_size)
