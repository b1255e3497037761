"""`ablate-model [OVERRIDES...]`: compose a model from conf/ and print its axes, what it costs and
which transformers class (if any) computes it. Example: ablate-model model=gemma2 model/position=alibi"""

from __future__ import annotations

import sys

from ablate.config import ModelConfig, compose_model
from ablate.model.facts import model_facts
from ablate.registry import ConfigError


def describe(cfg: ModelConfig) -> str:
    from ablate.hf import family_of

    a = cfg.attention
    windows = "global" if a.window is None else f"{a.window_pattern} window {a.window}"
    lines = [
        f"position    {cfg.position.kind}" + (f" (theta {cfg.position.theta:g}, fraction {cfg.position.rotary_fraction:g})"
                                                if cfg.position.kind == "rope" else ""),
        f"attention   {cfg.n_heads} heads, {cfg.n_kv_heads} kv heads, head_dim {cfg.head_dim}, {windows}"
        + (f", soft-cap {a.softcap:g}" if a.softcap else ""),
        f"norm        {cfg.norm.kind} ({cfg.placement})" + (", unit offset" if cfg.norm.unit_offset else "")
        + (", embedding norm" if cfg.embedding_norm else ""),
        f"mlp         {cfg.mlp.kind}, hidden {cfg.mlp_hidden_dim}",
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
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        cfg = compose_model(argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(describe(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
