"""`ablate-model [OVERRIDES...]`: compose a model from conf/ and print its axes, what it costs and
which transformers class (if any) computes it. Example: ablate-model model=gemma2 model/position=alibi"""

from __future__ import annotations

import sys

from ablate.cli import command, compose_model
from ablate.config import ModelConfig
from ablate.model.facts import model_facts
from ablate.model.mlp import mlp_hidden_dim
from ablate.registry import ConfigError


def describe(cfg: ModelConfig) -> str:
    from ablate.hf import family_of

    a = cfg.attention
    windows = "global" if a.window is None else f"{a.window_pattern} window {a.window}"
    rope = f" (theta {cfg.position.theta:g}, fraction {cfg.position.rotary_fraction:g})"
    lines = [
        f"position    {cfg.position.kind}" + (rope if cfg.position.kind.startswith("rope") else ""),
        f"attention   {cfg.n_heads} heads, {cfg.n_kv_heads} kv heads, head_dim {cfg.head_dim}, {windows}"
        + (f", soft-cap {a.softcap:g}" if a.softcap else ""),
        f"norm        {cfg.norm.kind} ({cfg.placement})" + (", unit offset" if cfg.norm.unit_offset else "")
        + (", embedding norm" if cfg.embedding_norm else ""),
        f"mlp         {cfg.mlp.kind}, hidden {mlp_hidden_dim(cfg)}",
        f"embedding   {'tied' if cfg.tie_embeddings else 'untied'}" + (", scaled by sqrt(dim)" if cfg.embedding_scale
                                                                       else "")
        + (f", logit soft-cap {cfg.logit_softcap:g}" if cfg.logit_softcap else ""),
    ]
    f = model_facts(cfg)
    lines += [
        f"parameters  {f.params:,} ({f.non_embedding_params:,} non-embedding, {f.embedding_params:,} embedding)",
        f"FLOPs/token {f.flops_per_token:.4g} (training, at {f.seq_len} tokens)",
        f"KV cache    {f.kv_bytes_per_token:,} bytes/token ({f.dtype})",
    ]
    try:
        lines.append(f"transformers {family_of(cfg).hf_model}")
    except ConfigError:
        lines.append("transformers no class implements this variant")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    def body(argv: list[str]) -> int:
        print(describe(compose_model(argv)))
        return 0

    return command(__doc__, argv, body, needs_args=False)


if __name__ == "__main__":
    sys.exit(main())
