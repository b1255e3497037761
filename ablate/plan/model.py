"""`ablate-model [OVERRIDES...] [micro_batch=N] [seq_len=N] [gpus=N]`: compose a model from conf/ and
print its axes, what it costs, which transformers class (if any) computes it, and the memory per GPU
training it takes under DDP and FSDP (micro_batch sequences per GPU, default 8, of seq_len tokens,
default model.max_seq_len, on gpus processes, default 8).

    ablate-model model=gemma2 model/position=alibi
    ablate-model model=llama2 model.dim=2048 model.n_layers=24 micro_batch=4 seq_len=2048 gpus=8"""

from __future__ import annotations

import sys

from ablate.cli import command, compose_model, key_values
from ablate.config import ModelConfig
from ablate.model.facts import model_facts, training_memory
from ablate.model.mlp import mlp_hidden_dim
from ablate.model.moe import expert_hidden_dim
from ablate.registry import ConfigError

MEMORY_ARGS = ("micro_batch", "seq_len", "gpus")


def describe(cfg: ModelConfig, micro_batch: int = 8, seq_len: int | None = None, gpus: int = 8) -> str:
    from ablate.hf import family_of

    a = cfg.attention
    windows = "global" if a.window is None else f"{a.window_pattern} window {a.window}"
    rope = f" (theta {cfg.position.theta:g}, fraction {cfg.position.rotary_fraction:g})"
    lines = [
        f"position    {cfg.position.kind}" + (rope if cfg.position.kind.startswith("rope") else ""),
        (f"attention   {cfg.n_heads} heads, {cfg.n_kv_heads} kv heads, head_dim {cfg.head_dim}, {windows}"
         if not cfg.latent else
         f"attention   latent: {cfg.n_heads} heads of {cfg.head_dim} + {a.rope_head_dim} rotary channels (values "
         f"{cfg.v_head_dim}), kv latent {a.kv_lora_rank}, q latent {a.q_lora_rank or 'none'}")
        + (f", soft-cap {a.softcap:g}" if a.softcap else ""),
        f"norm        {cfg.norm.kind} ({cfg.placement})" + (", unit offset" if cfg.norm.unit_offset else "")
        + (", embedding norm" if cfg.embedding_norm else ""),
        f"mlp         {cfg.mlp.kind}, hidden {mlp_hidden_dim(cfg)}" if not cfg.mlp.moe.n_experts else
        f"mlp         {cfg.mlp.moe.n_experts} experts ({cfg.mlp.kind}, hidden {expert_hidden_dim(cfg)}), top "
        f"{cfg.mlp.moe.top_k} ({cfg.mlp.moe.router}), {cfg.mlp.moe.n_shared_experts} shared, balance "
        f"{cfg.mlp.moe.balance}",
        f"embedding   {'tied' if cfg.tie_embeddings else 'untied'}" + (", scaled by sqrt(dim)" if cfg.embedding_scale
                                                                       else "")
        + (f", logit soft-cap {cfg.logit_softcap:g}" if cfg.logit_softcap else ""),
        "parametrization sp" if cfg.parametrization == "sp" else
        f"parametrization mup, width x{cfg.width_mult:g} of {cfg.mup_base_dim}: hidden init std "
        f"{cfg.matrix_std:.3g}, hidden Adam LR x{1 / cfg.width_mult:.3g}, logits x{1 / cfg.width_mult:.3g}, "
        f"attention 1/d",
    ]
    f = model_facts(cfg)
    lines += [
        f"parameters  {f.params:,} ({f.non_embedding_params:,} non-embedding, {f.embedding_params:,} embedding)"
        + (f"; active per token {f.active_params:,} ({f.active_non_embedding_params:,} non-embedding)"
           if f.active_params != f.params else ""),
        f"FLOPs/token {f.flops_per_token:.4g} (training, at {f.seq_len} tokens)",
        f"KV cache    {f.kv_bytes_per_token:,} bytes/token ({f.dtype})",
    ]
    try:
        lines.append(f"transformers {family_of(cfg).hf_model}")
    except ConfigError:
        lines.append("transformers no class implements this variant")
    return "\n".join(lines + memory_table(cfg, micro_batch, seq_len or cfg.max_seq_len, gpus))


def memory_table(cfg: ModelConfig, micro_batch: int, seq_len: int, gpus: int) -> list[str]:
    """Memory per GPU under DDP and FSDP (ablate.model.facts.training_memory), in GiB."""
    gib = 2**30
    lines = [f"memory/GPU  GiB, training with AdamW at micro_batch {micro_batch} x {seq_len} tokens on {gpus} GPUs "
             "(estimate; CUDA context and workspace not counted)",
             f"            {'params':>8} {'grads':>8} {'AdamW':>8} {'buffers':>8} {'activ.':>8} {'total':>8}"]
    for parallel in ("ddp", "fsdp"):
        m = training_memory(cfg, micro_batch, seq_len, gpus, parallel)
        cells = (m.parameters, m.gradients, m.optimizer, m.buffers, m.activations, m.total)
        lines.append(f"  {parallel:<9} " + " ".join(f"{c / gib:>8.2f}" for c in cells))
    return lines


def main(argv: list[str] | None = None) -> int:
    def body(argv: list[str]) -> int:
        memory = key_values([a for a in argv if a.split("=")[0] in MEMORY_ARGS], MEMORY_ARGS)
        for key, value in memory.items():
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(key, value, "must be a positive integer")
        sizes = {k: int(v) for k, v in memory.items()}
        print(describe(compose_model([a for a in argv if a.split("=")[0] not in MEMORY_ARGS]), **sizes))
        return 0

    return command(__doc__, argv, body, needs_args=False)


if __name__ == "__main__":
    sys.exit(main())
