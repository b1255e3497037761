"""What each layer of a model does, decided once from the config, and the checks of a model config
that need the registries (which choices exist).

    layer  window  placement  positions
    0      128     post       yes          e.g. Gemma 2's alternating windows, Mix-LN's early post-norm,
    1      None    pre        no           rope_nope's layers without positions

A component asks its own plan, never the config's axis names: a per-layer variant is one registry
entry (a placement whose `for_layer` varies, a position scheme whose `acts_in` does) and one YAML.
"""

from __future__ import annotations

from dataclasses import dataclass

from ablate.config import ModelConfig
from ablate.model.attention import BACKENDS, WINDOW_PATTERNS
from ablate.model.block import PLACEMENTS, Placement
from ablate.model.mlp import MLPS
from ablate.model.norm import NORMS
from ablate.model.position import POSITIONS
from ablate.registry import ConfigError


@dataclass(frozen=True)
class LayerPlan:
    index: int
    window: int | None  # sliding window, or None for global attention
    placement: Placement  # where this layer's norms sit
    positions: bool  # whether the position scheme's rotation and score bias act here


def layer_plan(cfg: ModelConfig) -> list[LayerPlan]:
    local = WINDOW_PATTERNS.get(cfg.attention.window_pattern, "model.attention.window_pattern")
    placement = PLACEMENTS.get(cfg.placement, "model.placement")
    scheme = POSITIONS.get(cfg.position.kind, "model.position.kind")
    return [LayerPlan(i, cfg.attention.window if local(i) else None, placement.for_layer(i, cfg.n_layers),
                      scheme.acts_in(i, cfg)) for i in range(cfg.n_layers)]


def check_model(cfg: ModelConfig, prefix: str = "model") -> ModelConfig:
    """cfg.validate(), then every named choice against its registry and each choice's own checks;
    ConfigError at the first problem (the field, the value, the valid choices). Returns cfg."""
    cfg.validate(prefix)
    a = cfg.attention
    POSITIONS.get(cfg.position.kind, f"{prefix}.position.kind")
    NORMS.get(cfg.norm.kind, f"{prefix}.norm.kind")
    PLACEMENTS.get(cfg.placement, f"{prefix}.placement")
    MLPS.get(cfg.mlp.kind, f"{prefix}.mlp.kind")
    WINDOW_PATTERNS.get(a.window_pattern, f"{prefix}.attention.window_pattern")
    BACKENDS.get(a.backend, f"{prefix}.attention.backend")
    if a.window is not None and a.window_pattern == "global":
        raise ConfigError(f"{prefix}.attention.window_pattern", "global", f"a window of {a.window} would be unused",
                          valid=WINDOW_PATTERNS.names())
    if a.softcap is not None and a.backend == "sdpa":
        raise ConfigError(f"{prefix}.attention.backend", "sdpa", "SDPA cannot soft-cap attention logits",
                          valid=[n for n in BACKENDS.names() if n != "sdpa"])
    POSITIONS.get(cfg.position.kind).check(cfg, prefix)
    return cfg
