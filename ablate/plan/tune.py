"""Every arm at its own learning rate: `ablate-train -m +experiment=NAME +tune=lr`.

    1. each arm (a sweep job without its replicate seeds) trains once per LR of the grid
       base LR x tune.lr_multipliers, at init seed tune.seed and data order tune.data_seed (which
       no reported run may use: check_disjoint), for tune.tokens (null: the full budget), scored
       on the tuning split (data.holdout=tuning: held out before the validation split, and not
       trained on), into <experiment>/tune/;
    2. each arm's LR is the one with the lowest final loss on the tuning split (a diverged run
       counts as infinitely bad); an optimum at either end of the grid is flagged, since the true
       optimum may lie beyond it;
    3. the experiment's jobs run at their arm's LR (the run names say `lr=`).

<experiment>/tune.json keeps the grid, every tuning run's loss and status, each arm's choice, and
the largest LR that did not diverge; ablate-report draws the LR-sensitivity plot from it and says
whether the arms rank the same at the shared base LR.

On a ladder under muP (model.parametrization=mup: the LR is meant to hold across widths), step 1
runs at the smallest rung only and its LR serves every rung; a check stage runs the same grid at one
larger rung (tune.check_size; null: the largest), and tune.json says per arm whether the optimum
there is within one grid step of the transferred LR ("LR transfers") or not. Under SP every rung
is an arm of its own and is tuned on its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ablate.config import TuneConfig
from ablate.plan.fairness import override_key


def lr_grid(base_lr: float, tune: TuneConfig) -> list[float]:
    """The LRs each arm is tried at, ascending."""
    return sorted({float(f"{base_lr * m:.6g}") for m in tune.lr_multipliers})


def tuning_overrides(overrides: Sequence[str], tune: TuneConfig, lr: float) -> list[str]:
    """A job's overrides turned into its arm's tuning run at `lr`: the init seed and data order
    replaced by the tuning's own, scored on the tuning split, the budget tune.tokens, no evaluation
    at the end."""
    replaced = {"seed", "data.seed", "data.holdout", "train.eval_at_end", "optim.lr",
                *(["train.tokens"] if tune.tokens else [])}
    keep = [o for o in overrides if override_key(o)[0] not in replaced]
    budget = [f"train.tokens={tune.tokens}"] if tune.tokens else []
    return [*keep, f"seed={tune.seed}", f"data.seed={tune.data_seed}", "data.holdout=tuning", *budget,
            "train.eval_at_end=false", f"optim.lr={lr:.6g}"]


def check_disjoint(reported: Sequence[Any], tune: TuneConfig) -> None:
    """ConfigError if a reported run would share the tuning runs' init seed or data order: the
    run that chose an LR must never be the one reported at it (its loss is the minimum of a search,
    biased low)."""
    from ablate.registry import ConfigError

    for cfg in reported:
        if cfg.seed == tune.seed or cfg.data.seed == tune.data_seed:
            raise ConfigError("tune.seed" if cfg.seed == tune.seed else "tune.data_seed",
                              tune.seed if cfg.seed == tune.seed else tune.data_seed,
                              f"is also a reported run's ({cfg.run_name}: seed {cfg.seed}, data.seed {cfg.data.seed}); "
                              "the tuning runs need an init seed and a data order of their own")


@dataclass
class Choice:
    arm: str
    lrs: list[float]
    val_loss: list[float]  # per LR; inf for a run that diverged
    status: list[str]
    runs: list[str]
    lr: float  # the chosen LR
    edge: str | None  # "lowest" or "highest" when the optimum is at the grid's end
    max_stable_lr: float | None  # the largest LR whose run did not diverge

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Choice:
        d = dict(d)
        d["val_loss"] = [math.inf if v is None else float(v) for v in d["val_loss"]]
        return cls(**d)


def choose(arm: str, results: Sequence[tuple[float, str, float, str]]) -> Choice:
    """The best LR of one arm from its tuning runs: (lr, status, final val loss, run name) each."""
    results = sorted(results)
    lrs = [r[0] for r in results]
    losses = [r[2] if r[1] == "completed" and math.isfinite(r[2]) else math.inf for r in results]
    if all(math.isinf(v) for v in losses):
        best = min(lrs)
    else:
        best = lrs[losses.index(min(losses))]
    edge = None
    if len(lrs) > 1 and best == lrs[0]:
        edge = "lowest"
    elif len(lrs) > 1 and best == lrs[-1]:
        edge = "highest"
    stable = [lr for lr, r in zip(lrs, results) if r[1] != "diverged" and math.isfinite(r[2])]
    return Choice(arm, lrs, losses, [r[1] for r in results], [r[3] for r in results], best, edge,
                  max(stable) if stable else None)


@dataclass
class Transfer:
    """Whether an arm's LR, tuned at the smallest rung, is still the best at a larger one."""

    arm: str
    tuned_at: int  # ladder.size of the tuning stage
    checked_at: int  # ladder.size of the check stage
    tuned_lr: float
    check_lr: float  # the best LR of the check stage's grid
    grid_steps: int  # how many grid steps apart the two optima are
    check_edge: str | None  # the check's optimum at an end of its grid

    @property
    def transfers(self) -> bool:
        return self.grid_steps <= 1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "transfers": self.transfers}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Transfer:
        return cls(**{k: v for k, v in d.items() if k != "transfers"})


def transfer(tuned: Choice, check: Choice, tuned_at: int, checked_at: int) -> Transfer:
    """The check stage's verdict on one arm: its optimum's distance in grid steps from the tuned LR."""
    steps = abs(check.lrs.index(check.lr) - check.lrs.index(tuned.lr)) if tuned.lr in check.lrs else len(check.lrs)
    return Transfer(tuned.arm, tuned_at, checked_at, tuned.lr, check.lr, steps, check.edge)


def describe_transfer(t: Transfer) -> str:
    """One line: `rope: LR transfers ...` or `LR does not transfer for sandwich ...`."""
    where = (f"best {t.tuned_lr:g} at size={t.tuned_at}, {t.check_lr:g} at size={t.checked_at}: "
             f"{t.grid_steps} grid step{'s' if t.grid_steps != 1 else ''} apart")
    edge = f"; at size={t.checked_at} the optimum is at the {t.check_edge} end of the grid" if t.check_edge else ""
    if t.transfers:
        return f"{t.arm}: LR transfers ({where}{edge})"
    return f"LR does not transfer for {t.arm} ({where}{edge})"


def describe(choice: Choice) -> str:
    """One line: the arm, its LR, and why to doubt it if there is a reason."""
    losses = ", ".join(f"{lr:g}: {'diverged' if math.isinf(v) else f'{v:.4f}'}" for lr, v in zip(choice.lrs,
                                                                                                  choice.val_loss))
    edge = f" -- at the {choice.edge} LR tried: the optimum may lie beyond the grid" if choice.edge else ""
    return f"{choice.arm}: lr {choice.lr:g} (val loss {losses}){edge}"
