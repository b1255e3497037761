"""What a run's choices are called: one function, `choice`, names a single choice, and the run
name (a directory), the axes a run logs and the variant label of a report are all built from it.

    choice(key, value, cfg)   alibi, mqa, gqa2, no embedding_norm, dim=512, paths=jsonl~3f2a1c
    run_name(choices, overrides, seed)
                              default-rope-mha-rmsnorm-pre-swiglu-dim=512-s1: the Hydra preset and
                              group choices, then the other overrides, within NAME_LIMIT, no path,
                              glob or bracket character
    variant(cfg, fields)      rope, mqa: the label of an arm in a report
    AXES                      the fields every run logs as its axes (summary.json, trackers)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ablate.config import IDENTITY, OPERATIONAL, attention_family

NAME_LIMIT = 92  # characters of a run name before its seed: a name fits on a line (config.yaml holds the rest)
_PLAIN_VALUE = re.compile(r"^[A-Za-z0-9_.+-]{1,24}$")
# the architectural choices every run logs by a short name: its axes in summary.json and trackers
AXES = {
    "position": "model.position.kind", "attention": "model.attention.n_kv_heads", "norm": "model.norm.kind",
    "placement": "model.placement", "mlp": "model.mlp.kind", "embedding_norm": "model.embedding_norm",
    "embedding_scale": "model.embedding_scale", "unit_offset": "model.norm.unit_offset",
    "attn_softcap": "model.attention.softcap", "logit_softcap": "model.logit_softcap",
    "window": "model.attention.window", "window_pattern": "model.attention.window_pattern",
}
_GROUPS = ("model/position", "model/attention", "model/norm", "model/placement", "model/mlp")


def choice(key: str, value: Any, cfg: Mapping[str, Any] | None = None) -> str:
    """The name of one choice: a config field (`model.position.kind`) or a Hydra group
    (`model/position`) and its value; `cfg`, the flattened config, supplies what a name needs
    besides the value (the number of query heads that makes n_kv_heads an attention family).
    A group's option and a named kind are themselves (alibi, sandwich); kv heads are the family
    (mha, gqa2, mqa, or mla under a latent rank, which a label gives beside it); a flag is its
    name or `no <name>`; anything else is last-part=value, the value shortened when it is long or
    holds a path (name_value)."""
    last = key.rsplit(".", 1)[-1]
    if "/" in key or "." not in key:  # a Hydra group (model, model/position): every field is dotted
        return str(value)
    if last == "n_kv_heads" and (cfg or {}).get("model.attention.n_heads") is not None:
        latent = cfg.get("model.attention.kv_lora_rank") is not None
        return "mla" if latent else attention_family(cfg["model.attention.n_heads"], value)
    if last == "kv_lora_rank" and (cfg or {}).get("model.attention.n_heads") is not None:  # in a label
        family = choice("model.attention.n_kv_heads", cfg.get("model.attention.n_kv_heads"), cfg)
        return family if value is None else f"{family}, kv_lora_rank={value}"
    if last in ("kind", "placement") and isinstance(value, str):
        return value
    if key.endswith("moe.n_experts") and isinstance(value, int):
        return f"moe{value}" if value else "dense"
    if isinstance(value, bool) or value is None:  # a flag, or a feature that is off (qk_norm: null)
        return last if value else f"no {last}"
    if last == "seed":  # -s<seed> names the run's seed; data.seed=1 names the data order's
        last = key.replace(".", "_")
    return f"{last}={name_value(str(value))}"


def variant(cfg: Mapping[str, Any], fields: Iterable[str]) -> str:
    """The label of an arm: the names of the fields that differ between arms, joined, each said
    once (kv heads and a latent rank both name the attention family: mha, gqa2, mla)."""
    names = [part for k in fields for part in choice(k, cfg.get(k), cfg).split(", ")]
    return ", ".join(dict.fromkeys(names)) or "all"


def axes(cfg: Mapping[str, Any]) -> dict[str, str]:
    """A run's architectural choices by short name (position: rope, attention: gqa2, window: ...)."""
    return {name: choice(key, cfg.get(key), cfg) for name, key in AXES.items()}


def run_name(choices: Mapping[str, Any], overrides: list[str], seed: int) -> str:
    """A readable run name: the model preset and its group choices, the data set when not the
    built-in one, the other command-line overrides that change what is computed (each named by
    `choice`, the last value given), and the seed.
    E.g. default-rope-mha-rmsnorm-pre-swiglu-s0, gpt2-alibi-mqa-layernorm-pre-gelu_tanh-dim=512-s1."""
    extra = sorted(g for g in choices if g.startswith("model/") and g not in _GROUPS)  # e.g. model/softcap
    head = [choice(g, choices[g]) for g in ("model", *_GROUPS, *extra) if choices.get(g) is not None]
    if choices.get("data") not in (None, "synthetic"):
        head.append(choice("data", choices["data"]))
    named: dict[str, str] = {}
    for item in overrides:
        key, _, value = item.partition("=")
        key = key.lstrip("+~")
        # group choices are named above, the seed at the end; identity and operational fields name nothing
        if key in choices or key == "seed" or key.startswith(("hydra.", *IDENTITY, *OPERATIONAL)):
            continue
        named[key] = value  # a key given twice keeps its first place and its last value
    tail = [choice(k, _yaml_flag(v)).replace(" ", "_") for k, v in named.items()]
    return f"{_fit(head, tail)}-s{seed}"


def _yaml_flag(value: str) -> Any:
    """A command-line value as YAML reads a flag (true, False) or nothing (null); else text."""
    return {"true": True, "false": False, "null": None}.get(value.lower(), value)


def _fit(head: list[str], tail: list[str]) -> str:
    """head-tail joined by '-', within NAME_LIMIT bytes: when too long, the earliest named
    overrides give way to a hash of the whole (~1a2b3c4d), so that the preset and axes, and the
    overrides given last (the LR a tuning sets), still read."""
    full = "-".join([*head, *tail])
    if len(full.encode()) <= NAME_LIMIT:
        return full
    tag, tail = f"~{_short_hash(full, 8)}", list(tail)
    while tail and len("-".join([*head, tag, *tail]).encode()) > NAME_LIMIT:
        tail.pop(0)
    return "-".join([*head, tag, *tail]).encode()[:NAME_LIMIT].decode(errors="ignore")


def _short_hash(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def name_value(value: str) -> str:
    """A value as it appears in a name: as it is when short and plain (512, 3e-4, rope); else a
    readable stem and a short hash of the whole value, so that a name holds no path, glob or
    bracket character (data.paths=[/data/*.jsonl] -> paths=jsonl~3f2a1c)."""
    if _PLAIN_VALUE.match(value):
        return value
    first = Path(value.strip("[]{}()'\" ").split(",")[0].strip("'\" ")).name  # a file name, a word
    stem = re.sub(r"[^A-Za-z0-9_.+-]+", "_", first).strip("_.")
    base, dot, _ = stem.rpartition(".")
    stem = (base.strip("_.") if dot and base.strip("_.") else stem.replace(".", "_")) or "value"
    return f"{stem[:16]}~{_short_hash(value, 6)}"
