"""Which of torch's CPU attention kernels to use: the flash kernel against the math kernel, forward
and backward under bf16 autocast, at the shapes ablate's CPU runs have, side by side in one run; and
the kernel ablate's sdpa backend picks at each (ablate.model.attention.SMALL_CPU_ATTENTION).

    python bench/cpu_attention.py [--threads 2 --repeats 10]

Prints milliseconds per forward + backward for each kernel, the ratio flash / math, and ablate's choice.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ablate.model.attention import SMALL_CPU_ATTENTION

SHAPES = [  # (batch, heads, keys, head dim): the quickstart, the default model, longer contexts
    (64, 4, 128, 32), (32, 4, 256, 64), (16, 8, 512, 64), (128, 4, 64, 16)]


def timed(kernel: SDPBackend, q, k, v) -> float:
    with sdpa_kernel(kernel):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out.float().sum().backward()
    start = time.perf_counter()
    with sdpa_kernel(kernel):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out.float().sum().backward()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'batch x heads x keys x head dim':>32}  {'flash ms':>9}  {'math ms':>8}  {'flash/math':>10}  ablate uses")
    for b, h, t, d in SHAPES:
        q, k, v = (torch.randn(b, h, t, d, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        times: dict[SDPBackend, list[float]] = {SDPBackend.FLASH_ATTENTION: [], SDPBackend.MATH: []}
        for i in range(args.repeats):  # alternate, the order reversing, so drift hits both alike
            for kernel in (list(times) if i % 2 == 0 else list(times)[::-1]):
                times[kernel].append(timed(kernel, q, k, v))
        flash, math_ = (statistics.median(times[k]) for k in times)
        choice = "math" if t * d <= SMALL_CPU_ATTENTION else "flash"
        print(f"{f'{b} x {h} x {t} x {d}':>32}  {flash:9.1f}  {math_:8.1f}  {flash / math_:10.2f}  {choice}")


if __name__ == "__main__":
    main()
