"""Reference loss traces: a few variants, one per axis family, train 30 steps of a tiny config on
the CPU in fp32 and must give the losses committed in tests/traces.json. Any change to the numerics
(init, optimizer, a kernel, the data order) shows here, and is made on purpose.

The file records the machine it was made on (ablate.machine.numerics_kind: CPU model, the ISA flags
the kernels dispatch on, torch's CPU capability, the torch version, the thread count). On a machine
of that kind the losses must be equal to the last digit. Elsewhere a kernel's reduction order rounds
differently, so they must agree within TRACE_RTOL, a tolerance measured as below: the largest
deviation the other kernels and thread counts give, times a safety factor, and still well under what
a 1% change of the learning rate or the init scale does.

    python tests/test_traces.py --regenerate     # rewrite tests/traces.json, then review its diff
    python tests/test_traces.py --measure        # deviations: other kernels and threads vs real changes
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablate.train.devices import numerics_kind, same_numerics

from conftest import ROOT

TRACES = ROOT / "tests" / "traces.json"
STEPS = 30
THREADS = 2
COMMON = ["model.dim=64", "model.n_layers=2", "model.max_seq_len=32", "model.attention.n_heads=4",
          "data.synthetic_words=60000", "data.vocab_size=512", "data.val_tokens=2048", "train.batch_tokens=512",
          f"train.tokens={512 * STEPS}", "train.micro_batch=8", "train.log_every=1", "train.eval_every=0",
          "train.checkpoint_every=1000", "train.progress=lines", "train.precision=fp32", f"train.threads={THREADS}",
          "optim.warmup_steps=5"]
# one variant per axis family
VARIANTS = {
    "positions-attention: alibi, mqa": ["model/position=alibi", "model/attention=mqa"],
    "norms: layernorm, post, learned positions": ["model/norm=layernorm", "model/placement=post",
                                                  "model/position=learned"],
    "mlp and sandwich: geglu, sinusoidal": ["model/mlp=geglu", "model/placement=sandwich",
                                            "model/position=sinusoidal"],
    "gemma2: soft-caps, windows, unit offset, embedding scale": ["model=gemma2", "model.attention.head_dim=16",
                                                                 "model.attention.window=16"],
    "bloom untied: embedding norm, biases": ["model=bloom", "model.tie_embeddings=false"],
    "qk-norm per head: reordered norm, muP": ["model.attention.qk_norm=head", "model/placement=reordered",
                                             "model.parametrization=mup", "model.mup_base_dim=32"],
    "qk-norm across heads: gqa": ["model.attention.qk_norm=all", "model/attention=gqa"],
    "moe aux loss: renormalised top 2 of 4": ["model/mlp=moe", "model.mlp.moe.n_experts=4",
                                                    "model.mlp.moe.router=topk_softmax"],
    "latent attention: a query latent": ["model/attention=mla", "model.attention.kv_lora_rank=16",
                                         "model.attention.q_lora_rank=24", "model.attention.rope_head_dim=8"],
    "moe bias balancer: gated shared expert": ["model/mlp=moe", "model.mlp.moe.n_experts=4",
                                                    "model.mlp.moe.balance=bias", "model.mlp.moe.bias_rate=0.01",
                                                    "model.mlp.moe.n_shared_experts=1",
                                                    "model.mlp.moe.shared_gate=true"],
}
# Measured with `--measure` on an AMD EPYC with avx512_bf16 (torch 2.13.0): the largest relative
# deviation of any step's loss from the recorded trace, over the first five variants, is
#   - 1.1e-7 with 1 or 4 threads, 2.0e-7 with the AVX2 kernels of ATen, oneDNN and MKL (as on a CPU
#     without AVX-512), with 1 or 2 threads: about one fp32 rounding of the loss;
#   - 1.3e-3 to 3.0e-3 for the learning rate x 1.01, 2.9e-4 to 6.1e-4 for the init std x 1.01.
# The tolerance is 100x the largest kernel deviation (rounding grows over the steps, more on some
# CPUs than here), and still 14x below the smallest real change.
TRACE_RTOL = 2e-5
# the environment that makes ATen, oneDNN and MKL take their AVX2 kernels, as on a CPU without AVX-512
AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def trace(overrides: list[str], cache: Path, results: Path) -> list[float]:
    """The training losses of a run of `overrides`, step by step."""
    from ablate.cli import compose_root
    from ablate.config import RunConfig
    from ablate.run.lifecycle import for_train as check_run
    from ablate.train import train

    cfg = check_run(RunConfig.from_dict(compose_root([*COMMON, *overrides, f"data.cache_dir={cache}",
                                                      f"results_dir={results}"])))
    cfg.run_name = "trace"
    train(cfg)
    lines = (results / "default" / "trace" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def deviation(found: list[float], recorded: list[float]) -> float:
    """The largest relative difference of any step's loss."""
    return max(abs(a - b) / abs(b) for a, b in zip(found, recorded, strict=True))


def compare(found: list[float], recorded: dict, name: str) -> None:
    """Exact on a machine of the recording's numerics kind, within TRACE_RTOL on any other; the
    message gives both numbers."""
    expected = recorded["traces"][name]
    assert len(found) == len(expected) == STEPS
    here, there = numerics_kind(THREADS), recorded["machine"]
    dev = deviation(found, expected)
    at = max(range(STEPS), key=lambda i: abs(found[i] - expected[i]) / abs(expected[i]))
    both = f"step {at + 1} loss {found[at]!r} here vs {expected[at]!r} recorded"
    hint = "if the change is meant, run `python tests/test_traces.py --regenerate` and commit tests/traces.json"
    if same_numerics(here, there):
        assert found == expected, (f"{name}: the numerics changed on the machine kind that recorded the traces "
                                   f"(largest relative deviation {dev:.2e}: {both}); {hint}")
    else:
        assert dev <= TRACE_RTOL, (f"{name}: largest relative deviation {dev:.2e} > {TRACE_RTOL:.1e} ({both} "
                                   f"on {there}); {hint}")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_loss_trace_is_reproduced(name, cache_dir, tmp_path):
    compare(trace(VARIANTS[name], cache_dir, tmp_path), json.loads(TRACES.read_text()), name)


def test_the_tolerance_tells_a_real_change_from_rounding(cache_dir, tmp_path):
    """A 1% change of the learning rate is outside the cross-machine tolerance on every variant kind
    (here the first), and so is a 1% change of the init scale: the loose comparison still catches a
    numerics change."""
    recorded = json.loads(TRACES.read_text())
    name = next(iter(VARIANTS))
    for i, change in enumerate(["optim.lr=0.00303", "model.init_std=0.0202"]):
        found = trace([*VARIANTS[name], change], cache_dir, tmp_path / str(i))
        assert deviation(found, recorded["traces"][name]) > 5 * TRACE_RTOL, change
        with pytest.raises(AssertionError, match="relative deviation"):
            compare(found, {**recorded, "machine": {"cpu": "another"}}, name)


def test_machines_of_one_kind_are_told_apart_from_others():
    here = numerics_kind(THREADS)
    assert same_numerics(here, dict(here))
    assert not same_numerics(here, {**here, "threads": 1})
    assert not same_numerics(here, {**here, "isa": [f for f in here["isa"] if f != "avx512_bf16"]})
    assert not same_numerics(here, {**here, "torch": "0.0"})


def _measure() -> None:
    """Print each variant's largest deviation from the recorded trace under other kernels, thread
    counts, and real 1% changes, each in a fresh interpreter (the ISA is chosen at import)."""
    recorded = json.loads(TRACES.read_text())
    cases = {"same machine": ({}, []), "1 thread": ({}, ["train.threads=1"]),
             "4 threads": ({}, ["train.threads=4"]), "AVX2 kernels": (AVX2_ONLY, []),
             "AVX2 kernels, 1 thread": (AVX2_ONLY, ["train.threads=1"]),
             "lr x 1.01": ({}, ["optim.lr=0.00303"]), "init std x 1.01": ({}, ["model.init_std=0.0202"])}
    print(f"recorded on {recorded['machine']}\nhere: {numerics_kind(THREADS)}")
    for label, (env, extra) in cases.items():
        out = subprocess.run([sys.executable, __file__, "--print", *extra], env={**os.environ, **env},
                             capture_output=True, text=True, check=True).stdout
        found = json.loads(out.strip().splitlines()[-1])
        devs = [deviation(found[n], recorded["traces"][n]) for n in VARIANTS]
        print(f"{label:24s} largest {max(devs):.2e}  smallest {min(devs):.2e}  per variant "
              + " ".join(f"{d:.1e}" for d in devs))


def _traces(extra: list[str]) -> dict[str, list[float]]:
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        found = {}
        for name, overrides in VARIANTS.items():
            torch.manual_seed(0)
            found[name] = trace([*overrides, *extra], Path(tmp) / "cache", Path(tmp) / name.split(":")[0])
    return found


if __name__ == "__main__":
    import logging

    logging.disable(logging.INFO)
    if sys.argv[1:] == ["--regenerate"]:
        found = _traces([])
        TRACES.write_text(json.dumps({"machine": numerics_kind(THREADS), "traces": found}, indent=1) + "\n")
        for name, losses in found.items():
            print(f"{name}: {losses[0]:.4f} -> {losses[-1]:.4f}")
        print(f"wrote {TRACES}")
    elif sys.argv[1:] == ["--measure"]:
        _measure()
    elif sys.argv[1:2] == ["--print"]:
        print(json.dumps(_traces(sys.argv[2:])))
    else:
        sys.exit(__doc__)
