"""ablate-coord-check: does a parametrization keep activations the same size as the model widens?

    ablate-coord-check [widths=1,2,4,8] [placements=pre,post,sandwich,mix] [parametrizations=sp,mup]
                       [base=64] [head_dim=16] [steps=5] [lr=0.01] [batch=8] [seeds=3]
                       [out=results/coord_check]
                       [Hydra overrides: model=..., data=..., model.n_layers=...]

For each placement and parametrization, models of width base x each multiplier (head size fixed, so
the heads multiply; depth fixed) train `steps` steps of Adam at one constant LR on the same batches
of the configured data, and the RMS of five activations is measured at every step: the token
embedding, the attention and MLP outputs (before they join the stream), the stream after each block
(averaged over layers) and the logits, each averaged over `seeds` initialisations (a width's
batches are the same for every seed). Under muP these stay flat across widths; under SP the
sublayer outputs and the logits grow with width once Adam has moved the weights (each update moves
a fan-in-wide matrix's output by LR x fan-in).

The verdict per activation is the slope of log RMS against log width at the last step: `flat` when
it is within +-FLAT_SLOPE (a doubling of the width changes the RMS by under 2^0.25 = 19%), `grows`
or `shrinks` otherwise. Printed as a table; written to <out>/coord_check.csv and coord_check.png.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ablate.cli import command, compose_root

OWN = ("widths", "placements", "parametrizations", "base", "head_dim", "steps", "lr", "batch", "out", "seeds")
DEFAULTS = {"widths": "1,2,4,8", "placements": "pre,post,sandwich,mix", "parametrizations": "sp,mup", "base": "64",
            "head_dim": "16", "steps": "5", "lr": "0.01", "batch": "8", "out": "results/coord_check", "seeds": "3"}
ACTIVATIONS = ("embedding", "attention", "mlp", "stream", "logits")
FLAT_SLOPE = 0.25  # |d log RMS / d log width| below this is flat


def widened(model: Any, width: int, base: int, head_dim: int, placement: str, parametrization: str) -> Any:
    """The model config at `width` (a multiple of base), with its heads, placement and parametrization."""
    from ablate.registry import ConfigError

    if width % head_dim:
        raise ConfigError("head_dim", head_dim, f"must divide every width (base x multiplier; {width} is one)")
    attention = dataclasses.replace(model.attention, n_heads=width // head_dim, head_dim=None, n_kv_heads=None)
    return dataclasses.replace(model, dim=width, attention=attention, placement=placement,
                               parametrization=parametrization, mup_base_dim=base).validate()


def measure(model_cfg: Any, optim: Any, batches: Any, steps: int, lr: float, batch: int, seed: int) -> list[dict]:
    """RMS of each activation at steps 0 .. steps (step 0: at initialisation), training at `lr`
    with the optimizer's per-role treatment (muP's LR / m included)."""
    import torch

    from ablate.model import Transformer
    from ablate.train.optimizer import build_optimizer

    torch.manual_seed(seed)
    model = Transformer(model_cfg)
    opt = build_optimizer(model, optim)
    for group in opt.param_groups:
        group["lr"] = lr * group["lr_scale"]
    found: dict[str, list[float]] = {}

    def keep(name: str):
        def hook(_module, _inputs, output):
            found.setdefault(name, []).append(float(output.detach().float().pow(2).mean().sqrt()))
        return hook

    model.tok_embed.register_forward_hook(keep("embedding"))
    for block in model.blocks:
        block.attn.register_forward_hook(keep("attention"))
        block.mlp.register_forward_hook(keep("mlp"))
        block.register_forward_hook(keep("stream"))
    rows = []
    for step in range(steps + 1):
        found.clear()
        x, y = batches.sequences(step * batch, batch)
        logits = model(x)  # (B, T, vocab)
        found["logits"] = [float(logits.detach().float().pow(2).mean().sqrt())]
        rows.append({"step": step, **{k: sum(v) / len(v) for k, v in found.items()}})
        if step < steps:
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return rows


def slope(widths: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of log value against log width."""
    xs, ys = [math.log(w) for w in widths], [math.log(max(v, 1e-30)) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def verdict(s: float) -> str:
    return "flat" if abs(s) <= FLAT_SLOPE else ("grows" if s > 0 else "shrinks")


def coord_check(overrides: Sequence[str] = (), widths: Sequence[int] = (1, 2, 4, 8),
                placements: Sequence[str] = ("pre", "post", "sandwich", "mix"),
                parametrizations: Sequence[str] = ("sp", "mup"), base: int = 64, head_dim: int = 16, steps: int = 5,
                lr: float = 0.01, batch: int = 8, seeds: int = 3) -> Any:
    """A DataFrame with one row per placement, parametrization, width multiplier and step, a
    column per activation (its RMS, the mean over `seeds` initialisations)."""
    import pandas as pd
    import torch

    from ablate.config import RunConfig
    from ablate.data.batches import Batches
    from ablate.data.tokens import prepare
    from ablate.run.lifecycle import for_train
    from ablate.train import padded_vocab

    cfg = for_train(RunConfig.from_dict(compose_root(list(overrides))))
    data = prepare(cfg.data)
    batches = Batches(data.train, cfg.seq_len, cfg.data.seed)
    model = dataclasses.replace(cfg.model, vocab_size=padded_vocab(data.vocab_size))
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    rows = []
    for placement in placements:
        for parametrization in parametrizations:
            for mult in widths:
                wide = widened(model, base * mult, base, head_dim, placement, parametrization)
                runs = [measure(wide, cfg.optim, batches, steps, lr, batch, seed) for seed in range(seeds)]
                for step, measured in enumerate(zip(*runs)):
                    mean = {k: sum(r[k] for r in measured) / seeds for k in ACTIVATIONS}
                    rows.append({"placement": placement, "parametrization": parametrization, "width_mult": mult,
                                 "dim": base * mult, "step": step, **mean})
    return pd.DataFrame(rows)


def summary(table: Any) -> Any:
    """Per placement, parametrization and activation: the RMS at the last step for each width, the
    slope of log RMS against log width, and the verdict."""
    import pandas as pd

    last = table[table.step == table.step.max()]
    rows = []
    for (placement, param), part in last.groupby(["placement", "parametrization"], sort=False):
        part = part.sort_values("width_mult")
        for act in ACTIVATIONS:
            s = slope(part.width_mult.tolist(), part[act].tolist())
            rows.append({"placement": placement, "parametrization": param, "activation": act,
                         **{f"{m}x": v for m, v in zip(part.width_mult, part[act])}, "slope": s, "verdict": verdict(s)})
    return pd.DataFrame(rows)


def plot(table: Any, path: Path) -> None:
    """RMS at the last step against width, one panel per placement and parametrization."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = table[table.step == table.step.max()]
    placements, params = list(dict.fromkeys(last.placement)), list(dict.fromkeys(last.parametrization))
    fig, axes = plt.subplots(len(params), len(placements), figsize=(3.2 * len(placements), 2.8 * len(params)),
                             squeeze=False, sharey=True)
    for i, param in enumerate(params):
        for j, placement in enumerate(placements):
            ax = axes[i, j]
            part = last[(last.placement == placement) & (last.parametrization == param)].sort_values("dim")
            for act in ACTIVATIONS:
                ax.plot(part.dim, part[act], marker="o", label=act)
            ax.set(xscale="log", yscale="log", title=f"{placement}, {param}", xlabel="width")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, dpi=120, format="png")
        os.replace(tmp, path)  # a reader never sees half a figure
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    return command(__doc__, argv, _run, needs_args=False)


def arguments(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The command's own settings (DEFAULTS, then key=value for the keys in OWN) and the rest, the
    Hydra overrides; ConfigError when a number is not one."""
    from ablate.registry import ConfigError

    own, overrides = {**DEFAULTS}, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in OWN:
            own[key] = value
        else:
            overrides.append(arg)
    try:
        settings: dict[str, Any] = {k: int(own[k]) for k in ("base", "head_dim", "steps", "batch", "seeds")}
        settings.update(widths=[int(w) for w in own["widths"].split(",")], lr=float(own["lr"]))
    except ValueError as err:
        raise ConfigError("argument", str(err).split(": ")[-1], "widths, base, head_dim, steps, batch and seeds are "
                          "integers, lr a number") from None
    settings.update(placements=own["placements"].split(","), parametrizations=own["parametrizations"].split(","),
                    out=Path(own["out"]))
    return settings, overrides


def _run(argv: list[str]) -> int:
    from ablate.files import write_text

    settings, overrides = arguments(argv)
    out = settings.pop("out")
    table = coord_check(overrides, **settings)
    found = summary(table)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "coord_check.csv", table.to_csv(index=False))
    write_text(out / "summary.csv", found.to_csv(index=False))
    plot(table, out / "coord_check.png")
    print(f"RMS at step {settings['steps']} by width multiple; slope of log RMS on log width "
          f"(flat: |slope| <= {FLAT_SLOPE})")
    print(found.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"wrote {out / 'coord_check.csv'}, {out / 'summary.csv'} and {out / 'coord_check.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
