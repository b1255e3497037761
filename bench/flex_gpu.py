"""The GPU path of attention: flex_attention under torch.compile against the eager backend, forward
and backward, on CUDA, for the variants that need masks and score mods (ALiBi, alternating sliding
windows, soft-caps), plus forward+backward times of each backend. Needs a CUDA GPU.

    python bench/flex_gpu.py [--seq 2048 --batch 8 --dim 512 --layers 4]
"""

from __future__ import annotations

import argparse
import time

import torch

from ablate.config import AttentionConfig, ModelConfig, PositionConfig
from ablate.model import Transformer


def step(model: Transformer, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(tokens)
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens.flatten())
    loss.backward()
    return logits.float(), {n: p.grad.float().clone() for n, p in model.named_parameters()}


def timed(model: Transformer, tokens: torch.Tensor, repeats: int = 10) -> float:
    for _ in range(3):
        step(model, tokens)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step(model, tokens)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    cases = {
        "alibi + alternating window 512": dict(position=PositionConfig(kind="alibi"),
                                               attention=AttentionConfig(n_heads=8, n_kv_heads=2, window=512,
                                                                         window_pattern="alternating")),
        "rope + soft-cap 50 + window 512 (gemma2-like)": dict(
            position=PositionConfig(kind="rope"), logit_softcap=30.0,
            attention=AttentionConfig(n_heads=8, n_kv_heads=4, softcap=50.0, window=512,
                                      window_pattern="alternating")),
        "rope, causal only": dict(position=PositionConfig(kind="rope"), attention=AttentionConfig(n_heads=8)),
    }
    tokens = torch.randint(0, 4096, (args.batch, args.seq), device="cuda")
    for name, parts in cases.items():
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=4096, dim=args.dim, n_layers=args.layers, max_seq_len=args.seq, **parts)
        model = Transformer(cfg).cuda()
        ref_logits, ref_grads = step(model.set_backend("eager"), tokens)
        model.set_backend("flex")  # compiled on CUDA
        logits, grads = step(model, tokens)
        worst = max(float((grads[n] - g).abs().max() / (g.abs().max() + 1e-12)) for n, g in ref_grads.items())
        print(f"{name}: max |logit diff| {float((logits - ref_logits).abs().max()):.3g} "
              f"(logits up to {float(ref_logits.abs().max()):.3g}), worst relative grad diff {worst:.3g}")
        times = {}
        for backend in ("eager", "flex") + (("sdpa",) if cfg.attention.softcap is None else ()):
            times[backend] = timed(model.set_backend(backend), tokens)
        print("   fwd+bwd ms: " + ", ".join(f"{b} {t * 1e3:.1f}" for b, t in times.items()))


if __name__ == "__main__":
    main()
