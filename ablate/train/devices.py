"""What a device can do at most: the dense bf16 peak of known GPUs, for model FLOPs utilisation.

MFU = training FLOPs per token (ablate.model.facts) x tokens per second / the peak FLOP/s of the
devices that ran them. The peaks are the vendors' dense (not 2:4-sparse) bf16 tensor figures,
matched against torch.cuda.get_device_name; `train.peak_tflops` overrides the table (a device it
lacks, a clock-limited part, or a measured ceiling instead of the datasheet's). None on a CPU
unless given: a CPU's peak depends on its cores, clocks and ISA, and a datasheet figure would
mislead.

It also says what decides a CPU's float rounding (`numerics_kind`): numbers recorded on one CPU
reproduce to the last digit only on a CPU of the same kind with the same thread count; and how a
run takes its device: the device and precision (`pick_device`), the threads (`set_threads`), and
torch.compile per block (`compile_blocks`).
"""

from __future__ import annotations

import logging
import os
import platform
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ablate.config import RunConfig
    from ablate.model import Transformer
    from ablate.train.distributed import Dist

log = logging.getLogger("ablate.train.devices")

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


# ---- CPUs ---------------------------------------------------------------------------------------
# the ISA extensions that ATen, oneDNN and MKL pick kernels by (each kernel rounds in its own order)
KERNEL_ISA = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16",
              "avx512_fp16", "amx_tile", "amx_bf16", "asimd", "sve")


def cpu_info() -> tuple[str, set[str]]:
    """The CPU's model name and its feature flags, from /proc/cpuinfo (elsewhere: platform's
    processor name and no flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return platform.processor() or platform.machine(), set()
    name, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model name", "CPU part") and not name:
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return name or platform.machine(), flags


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): there, bf16 autocast trains
    about 2x faster than fp32; elsewhere it is emulated, and slower."""
    flags = cpu_info()[1]
    # ATEN_CPU_CAPABILITY=avx2 (as `tests/test_traces.py --measure` sets) takes the AVX-512 kernels away
    vector = torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "NO AVX", "AVX2", "ZVECTOR", "VSX")
    return ("avx512_bf16" in flags or "amx_bf16" in flags) and vector


def numerics_kind(threads: int) -> dict[str, Any]:
    """What decides the rounding of a CPU computation here: the CPU's model name, the ISA
    extensions the kernels dispatch on, ATen's CPU capability (ATEN_CPU_CAPABILITY can lower it),
    the torch version and the thread count (a reduction split over threads adds in another order)."""
    name, flags = cpu_info()
    return {"cpu": name, "isa": sorted(f for f in KERNEL_ISA if f in flags),
            "capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__.split("+")[0],
            "threads": threads}


def same_numerics(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two numerics kinds should give the same floats to the last digit."""
    keys = ("cpu", "isa", "capability", "torch", "threads")
    return all(a.get(k) == b.get(k) for k in keys)


def compile_blocks(model: Transformer, setting: bool | str, device: torch.device) -> bool:
    """torch.compile each block's forward (train.compile: auto = on CUDA). Hooks (FSDP's gathers)
    stay outside the compiled code and the state dict keeps its names. Returns whether compiled."""
    if not (setting is True or (setting == "auto" and device.type == "cuda")):
        return False
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            log.warning("train.compile: triton is not installed, so the blocks run uncompiled (slower); "
                        "install triton, or set train.compile=false to silence this")
            return False
    for block in model.blocks:
        block.forward = torch.compile(block.forward)
    return True


def uncompile_blocks(model: Transformer) -> None:
    for block in model.blocks:
        block.__dict__.pop("forward", None)


def is_compiled(model: Transformer) -> bool:
    return any("forward" in block.__dict__ for block in model.blocks)


def pick_device(cfg: RunConfig) -> tuple[torch.device, Any]:
    """The device, and the autocast context the precision asks for: train.precision=auto is bf16 on
    CUDA GPUs that support it and on CPUs with native bf16, fp32 elsewhere."""
    t = cfg.train
    cuda = torch.cuda.is_available() if t.device == "auto" else t.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    native = torch.cuda.is_bf16_supported() if cuda else cpu_has_native_bf16()
    bf16 = t.precision == "bf16" or (t.precision == "auto" and native)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    return device, autocast


def set_threads(cfg: RunConfig, dist: Dist) -> None:
    """Oversubscribed cores are catastrophic for CPU training: share them among local processes."""
    cores = int(os.environ.get("SLURM_CPUS_PER_TASK", 0)) * dist.local_world or os.cpu_count() or 1
    threads = cfg.train.threads or max(1, cores // dist.local_world)
    torch.set_num_threads(threads)
