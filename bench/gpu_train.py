"""Training speed on one GPU: ablate's llama2 preset against transformers' LlamaForCausalLM with the
same config and weights (ablate.hf.to_hf), both under bf16 autocast with fused AdamW and compiled,
measured side by side in one run, at about 125M and 350M parameters.

    python bench/gpu_train.py                                   both sizes, on the GPU
    python bench/gpu_train.py --sizes 350m --steps 30 --micro-batch 16
    python bench/gpu_train.py --device cpu --sizes tiny --steps 2 --no-compile    the code path on a CPU

Both models take the step ablate's training loop takes (ablate.train): forward under autocast, fp32
cross-entropy, backward, gradient clipping, an update the fused optimizer skips on the device when
the loss is not finite, no host-device sync inside the step. ablate compiles each block, as
train.compile=auto does; transformers' model is compiled whole (torch.compile(model), its usual
recipe). The models take turns in rounds of --steps steps, the order reversing every round; the
device is synchronised only at the ends of a round.

Prints, per size and model: tokens/s (median over rounds), model FLOPs utilisation (the FLOPs/token
of ablate.model.facts against the GPU's dense bf16 peak, ablate.train.devices; --peak-tflops overrides)
and peak memory; then the ratio ablate / transformers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from ablate.cli import compose_model
from ablate.hf import to_hf
from ablate.model import Transformer, model_facts
from ablate.train.devices import compile_blocks, mfu, peak_tflops
from ablate.train.optimizer import step_unless_not_finite

# (dim, layers, heads): GPT-3's 125M and 350M shapes, as Llama blocks with a 32,000-token vocabulary
SIZES = {"125m": (768, 12, 12), "350m": (1024, 24, 16), "tiny": (64, 2, 4)}


def build(size: str, seq: int, vocab: int, device: torch.device, compiled: bool):
    dim, layers, heads = SIZES[size]
    cfg = compose_model(["model=llama2", "model/attention=mha", f"model.dim={dim}", f"model.n_layers={layers}",
                         f"model.attention.n_heads={heads}", f"model.vocab_size={vocab}", f"model.max_seq_len={seq}"])
    torch.manual_seed(0)
    ours = Transformer(cfg).train()
    theirs = to_hf(ours).train()  # the same weights and architecture
    theirs.config.use_cache = False
    ours, theirs = ours.to(device), theirs.to(device)
    models = {"ablate": ours, "transformers": theirs}
    if compiled:
        compile_blocks(ours, True, device)
        models["transformers"] = torch.compile(theirs)
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True) for name, m in models.items()}
    return cfg, models, opts


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, hf: bool,
               autocast) -> None:
    with autocast:
        out = model(x)
    logits = out.logits if hf else out
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    step_unless_not_finite(opt, torch.isfinite(loss) & torch.isfinite(grad_norm))
    opt.zero_grad(set_to_none=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="125m,350m", help=f"comma list of {', '.join(SIZES)}")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--steps", type=int, default=20, help="steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="steps per model before timing (compilation)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on a CPU")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--peak-tflops", type=float, default=None, help="one device's peak; default: train/devices.py")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device is visible (--device cpu runs the code path on a CPU)")
    unknown = [s for s in args.sizes.split(",") if s not in SIZES]
    if unknown:
        parser.error(f"unknown size {unknown[0]!r}; valid: {', '.join(SIZES)}")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    peak = peak_tflops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}; peak {peak or 'unknown'} TFLOP/s (dense bf16); torch {torch.__version__}; "
          f"compiled: {args.compile}; {args.micro_batch} x {args.seq} tokens per step")
    print(f"{'size':<6} {'model':<13} {'params':>8} {'tokens/s':>11} {'MFU':>7} {'peak mem GiB':>13}")
    for size in args.sizes.split(","):
        cfg, models, opts = build(size, args.seq, args.vocab, device, args.compile)
        facts = model_facts(cfg, args.seq)
        x = torch.randint(0, args.vocab, (args.micro_batch, args.seq + 1), device=device)
        inputs, targets = x[:, :-1].contiguous(), x[:, 1:].contiguous()
        rates: dict[str, list[float]] = {n: [] for n in models}
        memory = {}
        for n, model in models.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(args.warmup):
                train_step(model, opts[n], inputs, targets, n == "transformers", autocast)
            sync(device)
            memory[n] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        order = list(models)
        for r in range(args.rounds):
            for n in order if r % 2 == 0 else order[::-1]:
                sync(device)
                start = time.perf_counter()
                for _ in range(args.steps):
                    train_step(models[n], opts[n], inputs, targets, n == "transformers", autocast)
                sync(device)
                rates[n].append(args.steps * args.micro_batch * args.seq / (time.perf_counter() - start))
        for n in models:
            rate = statistics.median(rates[n])
            used = mfu(facts.flops_per_token, rate, peak)
            print(f"{size:<6} {n:<13} {facts.params / 1e6:>7.1f}M {rate:>11,.0f} "
                  f"{'n/a' if used is None else f'{used:.1%}':>7} {memory[n]:>13.2f}")
        ratio = statistics.median(rates["ablate"]) / statistics.median(rates["transformers"])
        print(f"{size:<6} ablate / transformers: {ratio:.2f}x")
        del models, opts
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
