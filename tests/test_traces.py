"""Reference loss traces: a few variants, one per axis family, train 30 steps of a tiny config on
the CPU and must give exactly the losses committed in tests/traces.json. Any change to the numerics
(init, optimizer, a kernel, the data order) shows here, and is made on purpose:

    python tests/test_traces.py --regenerate     # rewrite tests/traces.json, then review its diff
"""

import json
import sys
import tempfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ROOT

TRACES = ROOT / "tests" / "traces.json"
STEPS = 30
COMMON = ["model.dim=64", "model.n_layers=2", "model.max_seq_len=32", "model.attention.n_heads=4",
          "data.synthetic_words=60000", "data.vocab_size=512", "data.val_tokens=2048", "train.batch_tokens=512",
          f"train.tokens={512 * STEPS}", "train.micro_batch=8", "train.log_every=1", "train.eval_every=0",
          "train.checkpoint_every=1000", "train.progress=lines", "train.precision=fp32", "train.threads=2",
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
}


def trace(overrides: list[str], cache: Path, results: Path) -> list[float]:
    """The training losses of a run of `overrides`, step by step."""
    from ablate.cli import check_run, compose_root
    from ablate.config import RunConfig
    from ablate.train import train

    cfg = check_run(RunConfig.from_dict(compose_root([*overrides, *COMMON, f"data.cache_dir={cache}",
                                                      f"results_dir={results}"])))
    cfg.run_name = "trace"
    train(cfg)
    lines = (results / "default" / "trace" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_loss_trace_is_reproduced_exactly(name, cache_dir, tmp_path):
    expected = json.loads(TRACES.read_text())[name]
    losses = trace(VARIANTS[name], cache_dir, tmp_path)
    assert len(losses) == STEPS
    assert losses == expected, ("the numerics changed; if on purpose, run `python tests/test_traces.py "
                                "--regenerate` and commit tests/traces.json")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit(__doc__)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        found = {}
        for name, overrides in VARIANTS.items():
            torch.manual_seed(0)
            found[name] = trace(overrides, Path(tmp) / "cache", Path(tmp) / name.split(":")[0])
            print(f"{name}: {found[name][0]:.4f} -> {found[name][-1]:.4f}")
    TRACES.write_text(json.dumps(found, indent=1) + "\n")
    print(f"wrote {TRACES}")
