"""Training throughput: ablate's llama2 preset against transformers' LlamaForCausalLM with the same
config, batch and threads, in fp32 and under bf16 autocast, measured side by side in one run, plus
the GFLOP/s each achieves against a plain fp32 matmul measured in the same run.

    python bench/train_throughput.py [--dim 256 --layers 4 --seq 256 --batch 8 --steps 20 --threads 2]
                                     [--precision fp32,bf16]

Prints tokens/s for each model and precision, the ratio ablate / transformers per precision, and
bf16 / fp32 per model. The four (model, precision) cases take turns, the order reversing every
step, so drift and allocator state hit them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from ablate.cli import compose_model
from ablate.hf import to_hf
from ablate.model import Transformer, model_facts


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def step_time(model: torch.nn.Module, opt: torch.optim.Optimizer, tokens: torch.Tensor, hf: bool,
              precision: str) -> float:
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    start = time.perf_counter()
    with autocast:
        logits = model(tokens[:, :-1]).logits if hf else model(tokens[:, :-1])
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="fp32,bf16", help="comma list of fp32, bf16")
    args = parser.parse_args()
    precisions = args.precision.split(",")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = compose_model(["model=llama2", f"model.dim={args.dim}", f"model.n_layers={args.layers}",
                         f"model.attention.n_heads={args.heads}", f"model.vocab_size={args.vocab}",
                         f"model.max_seq_len={args.seq + 1}"])
    ours = Transformer(cfg).train()
    theirs = to_hf(ours).train()  # same weights, same architecture
    theirs.config.use_cache = False
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in (("ablate", ours),
                                                                              ("transformers", theirs))}
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1))
    gflops = max(matmul_gflops() for _ in range(3))
    cases = [(name, model, p) for p in precisions for name, model in (("ablate", ours), ("transformers", theirs))]
    times: dict[tuple[str, str], list[float]] = {(name, p): [] for name, _, p in cases}
    for i in range(args.steps + 3):  # 3 warm-up steps each, not counted; the order alternates
        for name, model, p in cases if i % 2 else cases[::-1]:
            t = step_time(model, opts[name], tokens, name == "transformers", p)
            if i >= 3:
                times[name, p].append(t)

    flops_per_token = model_facts(cfg, seq_len=args.seq).flops_per_token
    n_tokens = args.batch * args.seq
    print(f"llama2 preset: dim {args.dim}, {args.layers} layers, {args.heads} heads, vocab {args.vocab}, "
          f"seq {args.seq}, batch {args.batch}, {args.threads} threads, {ours.num_parameters():,} parameters")
    print(f"matmul (1024^3, fp32): {gflops:.1f} GFLOP/s")
    rates = {}
    for (name, p), ts in times.items():
        median = statistics.median(ts)
        rates[name, p] = n_tokens / median
        achieved = rates[name, p] * flops_per_token / 1e9
        print(f"{name:>12} {p}: {rates[name, p]:9.0f} tokens/s  (median step {median * 1e3:.1f} ms)  "
              f"{achieved:6.1f} GFLOP/s = {achieved / gflops:.2f} x fp32 matmul")
    for p in precisions:
        print(f"ratio ablate / transformers, {p}: {rates['ablate', p] / rates['transformers', p]:.2f}x")
    if "fp32" in precisions and "bf16" in precisions:
        for name in ("ablate", "transformers"):
            print(f"ratio bf16 / fp32, {name}: {rates[name, 'bf16'] / rates[name, 'fp32']:.2f}x")


if __name__ == "__main__":
    main()
