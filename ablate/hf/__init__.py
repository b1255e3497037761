"""Conversion to and from transformers' own models, the reference every preset is tested against.

    from_hf(hf_model) -> Transformer         GPT-2, BLOOM, Llama, Gemma, Gemma 2, Qwen 3, OLMo 2
    to_hf(model) -> PreTrainedModel          (hf/dense.py); Mixtral, OLMoE, Qwen2-MoE, DeepSeek-V3
                                             (hf/sparse.py)

Each family is data: the config fields it fixes (its architectural signature), the fields that map
one to one, and a weight map of (ours, theirs, transform) rows. `to_hf` picks the family whose
signature the model matches and otherwise says, family by family, what differs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from ablate.config import ModelConfig
from ablate.hf.dense import BLOOM, GEMMA, GEMMA2, GPT2, LLAMA, OLMO2, QWEN3
from ablate.hf.family import TRANSFORMS, Family, WeightRow, _value
from ablate.hf.sparse import DEEPSEEK_V3, MIXTRAL, OLMOE, QWEN2MOE
from ablate.model import Transformer, check_model
from ablate.registry import ConfigError

FAMILIES: dict[str, Family] = {f.name: f for f in (GPT2, BLOOM, LLAMA, GEMMA, GEMMA2, QWEN3, OLMO2, MIXTRAL, OLMOE,
                                                   QWEN2MOE, DEEPSEEK_V3)}


# ---- public API ---------------------------------------------------------------------------------
def family_of(cfg: ModelConfig) -> Family:
    """The transformers family that computes exactly what `cfg` does; ConfigError saying why not otherwise."""
    reasons = {}
    for family in FAMILIES.values():
        problems = family.mismatches(cfg)
        if not problems:
            return family
        reasons[family.name] = problems
    detail = "; ".join(f"{name}: {', '.join(p)}" for name, p in reasons.items())
    raise ConfigError("model", "this variant", f"no transformers class implements it ({detail})",
                      valid=list(FAMILIES))


def config_to_hf(cfg: ModelConfig) -> Any:
    """The transformers config of `cfg`'s family."""
    import transformers

    family = family_of(cfg)
    kwargs: dict[str, Any] = {}
    for ours, theirs in family.fields:
        value = _value(cfg, ours)
        if theirs in kwargs and kwargs[theirs] != value:
            raise ConfigError(f"model.{ours}", value, f"{family.name} has one {theirs} for it and another field")
        kwargs[theirs] = value
    kwargs.update(family.to_hf_extra(cfg))
    return getattr(transformers, family.hf_config)(**kwargs)


def config_from_hf(hf_config: Any) -> ModelConfig:
    """Our ModelConfig for a transformers config of a supported family."""
    family = _family_by_type(hf_config.model_type)
    flat: dict[str, Any] = dict(family.fixed)
    for ours, theirs in family.fields:
        value = getattr(hf_config, theirs)
        if ours in flat and flat[ours] != value and ours not in family.fixed:
            raise ConfigError(theirs, value, f"ablate has one {ours} for {theirs} and another attribute")
        flat[ours] = value
    flat.update(family.from_hf_extra(hf_config))
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return check_model(ModelConfig.from_dict(nested))


def from_hf(hf_model: Any) -> Transformer:
    """An ablate Transformer with the weights of a transformers causal LM (same dtype, same mode)."""
    cfg = config_from_hf(hf_model.config)
    family = _family_by_type(hf_model.config.model_type)
    dtype = next(hf_model.parameters()).dtype
    model = Transformer(cfg)
    theirs = family.prepare(dict(hf_model.state_dict()), hf_model.config)
    ours: dict[str, Tensor] = {}
    for o, t, how in _present_rows(family, cfg, model.state_dict(), theirs):
        joined = torch.cat([theirs[k] for k in t]) if len(t) > 1 else theirs[t[0]]
        ours[o] = TRANSFORMS[how][0](joined, cfg)
    model.load_state_dict(ours, strict=True)
    return model.to(dtype).train(hf_model.training)


def to_hf(model: Transformer) -> Any:
    """A transformers causal LM computing the same logits as `model` (same dtype, same mode)."""
    import transformers

    cfg = model.cfg
    family = family_of(cfg)
    hf_model = getattr(transformers, family.hf_model)(config_to_hf(cfg))
    ours = model.state_dict()
    target = hf_model.state_dict()
    theirs: dict[str, Tensor] = {}
    for o, t, how in _present_rows(family, cfg, ours, target):
        tensor = TRANSFORMS[how][1](ours[o], cfg)
        parts = tensor.split([target[k].shape[0] for k in t]) if len(t) > 1 else (tensor,)
        theirs.update(zip(t, parts))
    if cfg.tie_embeddings:
        target.pop("lm_head.weight", None)
    missing = sorted(set(target) - set(theirs) - set(family.ignored))
    if missing:
        raise RuntimeError(f"to_hf({family.name}): nothing maps to {missing}")
    hf_model.load_state_dict(theirs, strict=False)
    if cfg.tie_embeddings:
        hf_model.tie_weights()
    dtype = next(model.parameters()).dtype
    return hf_model.to(dtype).train(model.training)


def _family_by_type(model_type: str) -> Family:
    for family in FAMILIES.values():
        if family.model_type == model_type:
            return family
    raise ConfigError("model_type", model_type, "no ablate family converts it",
                      valid=[f.model_type for f in FAMILIES.values()])


def _present_rows(family: Family, cfg: ModelConfig, ours: dict[str, Tensor],
                  theirs: dict[str, Tensor]) -> Iterator[WeightRow]:
    """The weight rows present on both sides (biases, learned tables and untied heads are optional);
    a row on one side only, or a tensor of ours no row covers, is an error."""
    covered = set()
    for o, t, how in family.rows(cfg.n_layers):
        if o == "head.weight" and cfg.tie_embeddings:
            continue
        here, there = o in ours, all(k in theirs for k in t)
        if here != there:
            raise RuntimeError(f"{family.name} weight map: {o} <-> {t} exists on one side only")
        if here:
            covered.add(o)
            yield o, t, how
    uncovered = sorted(set(ours) - covered)
    if uncovered:
        raise RuntimeError(f"{family.name} weight map covers none of {uncovered}")
