"""What the arms of a sweep hold equal, what they match, and every difference nobody asked for.

An ablation changes one thing. `check(jobs)` compares the resolved configs of a sweep's arms (its
jobs without the replicate seeds) and what follows from them:

    config       every field that differs beyond the axes (the swept overrides, or a field the
                 experiment declares part of its axis in `fairness.axis`)
    parameters   non-embedding parameters: a spread above fairness.param_tolerance is a confound,
                 unless a size (model.dim, n_layers, hidden_dim, ...) is an axis, or `params` is
                 declared; within it, the arms are reported as matched
    optimizer    the treatment of each parameter role (weight decay, LR scale; ablate.train.optimizer):
                 an untied head against a tied one is compared as "the output matrix"
    init         the RMS of each parameter role at init (models up to 100M parameters are built
                 on the CPU to measure it)
    derived      FLOPs/token and KV bytes/token: shown when they differ, never a confound (they
                 follow from the axis or from a difference already flagged)

A swept config group's axis is its `kind` field when its options have one (model/norm is
model.norm.kind: the norms' eps and bias are settings that must match or be declared), else every
field its options set (model/attention: n_kv_heads; +model/softcap: both caps); a preset (model=...)
is its whole package. Each unasked difference is one line that starts with `confound:`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablate import naming
from ablate.config import DERIVED, IDENTITY, OPERATIONAL, REPLICATE, RunConfig
from ablate.run.rundir import flatten

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# an axis over one of these changes the parameter count on purpose
SIZE_FIELDS = ("model.", "model.dim", "model.n_layers", "model.mlp.hidden_dim", "model.attention.head_dim",
               "model.attention.n_heads", "model.vocab_size", "model.max_seq_len")
# fields the optimizer treatment and the init scales follow from: when one differs between arms,
# their differences are the axis's (or a confound already named), not a new one
OPTIMIZER_FIELDS = ("optim.", "model.parametrization", "model.mup_base_dim")
INIT_FIELDS = ("model.init_std", "model.n_layers", "model.placement", "model.norm.unit_offset",
               "model.parametrization", "model.mup_base_dim")
INIT_BUILD_LIMIT = 100_000_000  # parameters: larger arms are not built at plan time to measure init
NOT_ARMS = (*REPLICATE, *OPERATIONAL, *IDENTITY, *DERIVED)


# ---- naming arms by what differs ------------------------------------------------------------------
def varying(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Flattened config fields whose values differ between runs: what the experiment varies. The
    seeds are replicates, kept apart; fields that change nothing computed (operational), name the
    run (identity) or are set by ablate itself (derived) are never an axis."""
    configs = list(configs)
    keys = sorted({k for c in configs for k in c if not k.startswith(NOT_ARMS)})
    differ = [k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs}) > 1]
    if "ladder.size" in differ:  # a ladder: the rung's size names what follows from it
        from ablate.run.lifecycle import RUNG_FIELDS

        differ = [k for k in differ if k == "ladder.size" or k not in RUNG_FIELDS]
    return differ


def variant_name(cfg: dict[str, Any], axes: Sequence[str]) -> str:
    """A short label of an arm, from the fields that differ between arms (ablate.naming)."""
    return naming.variant(cfg, axes)


# ---- the axes -------------------------------------------------------------------------------------
def override_key(override: str) -> tuple[str, str]:
    """`+model/softcap=on` -> ("model/softcap", "on")."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def swept(job_overrides: Sequence[Sequence[str]]) -> dict[str, list[str]]:
    """Override key -> its values, for the keys that take more than one value across the jobs,
    replicate seeds left out."""
    values: dict[str, list[str]] = {}
    for overrides in job_overrides:
        for item in overrides:
            key, value = override_key(item)
            if value not in values.setdefault(key, []):
                values[key].append(value)
    return {k: v for k, v in values.items() if len(v) > 1 and k not in REPLICATE}


def axis_fields(key: str, values: Sequence[str], conf_dir: Path = CONF_DIR) -> list[str]:
    """The config fields an override key sweeps (a field, or `prefix.` for a whole package)."""
    if not (conf_dir / key).is_dir():
        return [key]
    import yaml

    fields: set[str] = set()
    for option in values:
        path = conf_dir / key / f"{option}.yaml"
        if not path.exists():
            continue
        text = path.read_text()
        package = key.replace("/", ".")
        for line in text.splitlines():
            if line.startswith("# @package"):
                package = line.split()[-1]
        package = "" if package == "_global_" else package
        data = yaml.safe_load(text) or {}
        prefix = f"{package}." if package else ""
        if "defaults" in data:  # a preset: its whole package
            return [prefix]
        flat = _flatten({k: v for k, v in data.items() if k != "hydra"})
        fields |= {f"{prefix}kind"} if "kind" in flat else {prefix + k for k in flat}
    return sorted(fields)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _covered(name: str, axes: Sequence[str]) -> bool:
    return any(name == a or (a.endswith(".") and name.startswith(a)) or name.startswith(a + ".") for a in axes)


# ---- the check --------------------------------------------------------------------------------------
@dataclass
class Arm:
    name: str
    config: RunConfig
    flat: dict[str, Any]


@dataclass
class Fairness:
    axes: list[str]  # the fields the sweep varies on purpose
    arms: list[str]
    confounds: list[str] = field(default_factory=list)  # each starts with "confound:"
    notes: list[str] = field(default_factory=list)  # what is matched, what differs by design

    def lines(self) -> list[str]:
        return [*self.notes, *self.confounds]

    def to_dict(self) -> dict[str, Any]:
        return {"axes": self.axes, "arms": self.arms, "confounds": self.confounds, "notes": self.notes}


def arms_of(configs: Sequence[RunConfig]) -> list[Arm]:
    """The distinct arms among the jobs' configs (replicates of one arm collapse), in sweep order."""
    names = arm_names(configs)
    arms: dict[str, Arm] = {}
    for name, cfg in zip(names, configs):
        if name not in arms:
            arms[name] = Arm(name, cfg, flatten(cfg.to_dict()))
    return list(arms.values())


def arm_names(configs: Sequence[RunConfig], across_rungs: bool = False) -> list[str]:
    """The arm of each config: named by the fields that differ between arms (seeds and operational
    fields are not arms). `across_rungs`: a ladder's rungs are one arm (a rung's size and what
    follows from it name nothing)."""
    from ablate.run.lifecycle import RUNG_FIELDS

    rung = ("ladder.size", *RUNG_FIELDS) if across_rungs else ()
    flats = [{k: v for k, v in flatten(c.to_dict()).items() if not k.startswith(NOT_ARMS) and k not in rung}
             for c in configs]
    differ = varying(flats)
    return [variant_name(f, differ) for f in flats]


TOKENIZER_FIELDS = ("data.tokenizer", "data.vocab_size", "data.tokenizer_documents")


def check(job_overrides: Sequence[Sequence[str]], configs: Sequence[RunConfig], conf_dir: Path = CONF_DIR) -> Fairness:
    """Compare the arms of a sweep (see the module doc)."""
    arms = arms_of(configs)
    sweep = swept(job_overrides)
    axes = sorted({f for key, values in sweep.items() for f in axis_fields(key, values, conf_dir)}
                  | set(configs[0].fairness.axis))
    result = Fairness(axes, [a.name for a in arms])
    if len(arms) < 2:
        return result
    from ablate.model import model_facts

    facts = {a.name: model_facts(a.config.model, a.config.seq_len) for a in arms}
    tolerance = configs[0].fairness.param_tolerance
    sizes = list(dict.fromkeys(a.config.ladder.size for a in arms))
    _config_differences(arms, axes, result)  # a ladder's rungs differ in what follows from ladder.size
    tokenizers = [f for f in varying([a.flat for a in arms]) if f in TOKENIZER_FIELDS]
    if tokenizers:
        result.notes.append(f"differs by design: the tokenizer ({', '.join(tokenizers)}): per-token losses are not "
                            "comparable across tokenizers, so the report compares bits per byte")
    if len(sizes) > 1 and None not in sizes:  # a ladder: arms are compared within each rung
        result.notes.append("differs by design: each rung's shape and budget (model.dim, model.n_layers, "
                            "model.attention.n_heads and train.tokens follow from ladder.size)")
        for size in sizes:
            rung = [a for a in arms if a.config.ladder.size == size]
            if len(rung) > 1:
                _parameters(rung, facts, axes, tolerance, result, f"rung size={size}: ")
                _treatment(rung, facts, result)
    else:
        _parameters(arms, facts, axes, tolerance, result)
        _treatment(arms, facts, result)
    return result


def _treatment(arms: Sequence[Arm], facts: dict[str, Any], result: Fairness) -> None:
    """The optimizer's treatment of each parameter and the init scales, where nothing the arms
    differ in explains a difference."""
    differ = varying([a.flat for a in arms])
    if _explained(differ, OPTIMIZER_FIELDS, "optimizer treatment", result):
        _optimizer(arms, result)
    if _explained(differ, INIT_FIELDS, "init scales", result):
        _init(arms, facts, result)


def _explained(differ: Sequence[str], fields: Sequence[str], what: str, result: Fairness) -> bool:
    """True when none of `fields` differs between the arms, so that `what` must be compared;
    otherwise a note says what it follows from."""
    causes = [d for d in differ if _covered(d, fields) or d in fields]
    if causes:
        result.notes.append(f"differs by design: {what} (follow from {', '.join(causes)})")
    return not causes


def _values(arms: Sequence[Arm], get) -> str:
    return ", ".join(f"{get(a)} ({a.name})" for a in arms)


def _config_differences(arms: Sequence[Arm], axes: Sequence[str], result: Fairness) -> None:
    for name in varying([a.flat for a in arms]):
        if not _covered(name, axes):
            result.confounds.append(f"confound: {name} differs: {_values(arms, lambda a, n=name: a.flat.get(n))}")


def _parameters(arms: Sequence[Arm], facts: dict[str, Any], axes: Sequence[str], tolerance: float,
                result: Fairness, where: str = "") -> None:
    if any(a.config.model.mlp.moe.n_experts for a in arms):  # experts: compared by what a token uses
        _experts(arms, facts, where, result)
        counts = [facts[a.name].active_non_embedding_params for a in arms]
        what = "active non-embedding parameters"
        listing = _values(arms, lambda a: f"{facts[a.name].active_non_embedding_params / 1e6:.3f}M")
    else:
        counts = [facts[a.name].non_embedding_params for a in arms]
        what = "non-embedding parameters"
        listing = _values(arms, lambda a: f"{facts[a.name].non_embedding_params / 1e6:.3f}M")
    spread = (max(counts) - min(counts)) / max(counts)
    sized = "params" in axes or any(a in SIZE_FIELDS or _covered(a, SIZE_FIELDS[1:]) for a in axes)
    if spread <= tolerance:
        how = " (model.match_mha_params=true)" if any(a.config.model.match_mha_params for a in arms) else ""
        result.notes.append(f"{where}matched: {what} within {spread:.1%}{how}: {listing}")
    elif sized:
        result.notes.append(f"{where}differs by design: {what} ({spread:.1%}): {listing}")
    else:
        hint = ("; model.match_mha_params=true matches them" if any(_covered("model.attention.n_kv_heads", [a])
                                                                    for a in axes) else "")
        result.confounds.append(f"confound: {where}{what} differ by {spread:.1%} "
                                f"(over fairness.param_tolerance={tolerance:g}): {listing}{hint}")
    for key, label in (("flops_per_token", "FLOPs/token"), ("kv_bytes_per_token", "KV bytes/token")):
        values = [getattr(facts[a.name], key) for a in arms]
        if (max(values) - min(values)) / max(values) > 0.005:
            result.notes.append(f"{where}differs by design: {label}: "
                                f"{_values(arms, lambda a, k=key: f'{getattr(facts[a.name], k):.3g}')}")


def _experts(arms: Sequence[Arm], facts: dict[str, Any], where: str, result: Fairness) -> None:
    """Mixture of experts against dense (or other experts): the arms are compared at their active
    parameters; their total parameters differ by design, and are said."""
    totals = [facts[a.name].non_embedding_params for a in arms]
    if max(totals) != min(totals):
        listing = _values(arms, lambda a: f"{facts[a.name].non_embedding_params / 1e6:.3f}M")
        result.notes.append(f"{where}differs by design: total non-embedding parameters (with the routed experts a "
                            f"token does not use): {listing}")


def _roles(arm: Arm) -> tuple[Any, dict[str, str]]:
    import torch

    from ablate.model import Transformer

    with torch.device("meta"):
        model = Transformer(arm.config.model)
    return model, model.parameter_roles()


def _optimizer(arms: Sequence[Arm], result: Fairness) -> None:
    from ablate.train.optimizer import treatment

    per_arm = {}
    for arm in arms:
        _, roles = _roles(arm)
        treated = {role: str(treatment(role, arm.config.optim, arm.config.model.width_mult)) for role in roles.values()}
        if arm.config.model.tie_embeddings:  # the token table is the output matrix too
            treated["output"] = treated["embedding"]
        per_arm[arm.name] = treated
    for role in sorted({r for t in per_arm.values() for r in t}):
        having = [a for a in arms if role in per_arm[a.name]]
        if len(having) > 1 and len({per_arm[a.name][role] for a in having}) > 1:
            result.confounds.append(f"confound: the optimizer treats {role} parameters differently: "
                                    f"{_values(having, lambda a, r=role: per_arm[a.name][r])}")


def _init(arms: Sequence[Arm], facts: dict[str, Any], result: Fairness) -> None:
    import torch

    from ablate.model import Transformer

    if any(facts[a.name].params > INIT_BUILD_LIMIT for a in arms):
        result.notes.append(f"not compared: init scales (arms over {INIT_BUILD_LIMIT / 1e6:.0f}M parameters are "
                            "not built at plan time)")
        return
    per_arm = {}
    for arm in arms:
        with torch.random.fork_rng():
            torch.manual_seed(arm.config.seed)
            model = Transformer(arm.config.model)
        roles = model.parameter_roles()
        squares: dict[str, list[float]] = {}
        for name, p in model.named_parameters():
            role = roles[name] + (" bias" if name.endswith(".bias") else "")
            squares.setdefault(role, [0.0, 0.0])
            squares[role][0] += float(p.detach().double().pow(2).sum())
            squares[role][1] += p.numel()
        rms = {r: math.sqrt(s / n) for r, (s, n) in squares.items()}
        if arm.config.model.tie_embeddings:
            rms["output"] = rms["embedding"]
        per_arm[arm.name] = rms
    for role in sorted({r for t in per_arm.values() for r in t}):
        having = [a for a in arms if role in per_arm[a.name]]
        values = [per_arm[a.name][role] for a in having]
        if len(having) > 1 and max(values) > 1.1 * min(values) + 1e-12:
            result.confounds.append(f"confound: {role} parameters start at other scales (RMS at init): "
                                    f"{_values(having, lambda a, r=role: f'{per_arm[a.name][r]:.3g}')}")
