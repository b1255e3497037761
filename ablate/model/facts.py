"""What a variant costs, computed from its config alone (no weights are built, so 7B is instant).

Conventions, stated once:
- embedding parameters: the token embedding, a learned position table and an untied output head
  (every vocabulary- or position-sized table); non-embedding parameters are all the others. This is
  the split of Gemma's Table 2 and of Kaplan et al.'s N.
- training FLOPs per token: 3 x forward (backward costs twice the forward). Forward = 2 x every
  matmul weight, the output head included whether tied or not, plus attention's QK^T and AV:
  4 x n_heads x head_dim x (mean number of keys a query sees), per layer, at `seq_len`: (S + 1) / 2
  for causal global layers, fewer under a sliding window. Norms, softmax and activations are not counted.
- KV-cache bytes per token: keys and values of every layer, n_kv_heads x head_dim each, at `dtype`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ablate.config import ModelConfig
from ablate.model.block import PLACEMENTS
from ablate.model.mlp import MLPS


@dataclass(frozen=True)
class ModelFacts:
    params: int
    embedding_params: int
    non_embedding_params: int
    flops_per_token: float  # training (forward + backward), at seq_len
    kv_bytes_per_token: int  # at dtype
    seq_len: int
    dtype: str

    def to_dict(self) -> dict:
        return asdict(self)


def model_facts(cfg: ModelConfig, seq_len: int | None = None, dtype: torch.dtype = torch.bfloat16) -> ModelFacts:
    """Parameters, training FLOPs per token and KV-cache bytes per token of `cfg` (see module doc)."""
    cfg.validate()
    seq_len = seq_len or cfg.max_seq_len
    d, H, Hkv, hd = cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    a, m = cfg.attention, cfg.mlp
    placement = PLACEMENTS.get(cfg.placement)
    norm = d * (2 if cfg.norm.bias else 1)
    n_in = (2 if MLPS.get(m.kind).gated else 1) * cfg.mlp_hidden_dim  # gate and input matrices

    qkv = d * (H + 2 * Hkv) * hd
    out = H * hd * d
    mlp = d * n_in + cfg.mlp_hidden_dim * d
    block_matmul = qkv + out + mlp
    block_other = ((H + 2 * Hkv) * hd if a.qkv_bias else 0) + (d if a.out_bias else 0)
    block_other += (n_in + d) if m.bias else 0
    block_other += norm * 2 * (placement.norm_in + placement.norm_out)

    embedding = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    embedding += cfg.max_seq_len * d if cfg.position.kind == "learned" else 0
    outer_norms = norm * (cfg.embedding_norm + placement.final_norm)
    non_embedding = cfg.n_layers * (block_matmul + block_other) + outer_norms

    head = cfg.vocab_size * d
    keys_seen = sum(_mean_keys(seq_len, cfg.layer_window(i)) for i in range(cfg.n_layers))
    forward = 2 * (cfg.n_layers * block_matmul + head) + 4 * H * hd * keys_seen
    kv_bytes = 2 * cfg.n_layers * Hkv * hd * torch.finfo(dtype).bits // 8
    return ModelFacts(embedding + non_embedding, embedding, non_embedding, 3.0 * forward, kv_bytes, seq_len,
                      str(dtype).removeprefix("torch."))


def _mean_keys(seq_len: int, window: int | None) -> float:
    """Mean number of keys a causal query sees over positions 0 .. seq_len - 1."""
    w = seq_len if window is None else min(window, seq_len)
    # positions t < w see t + 1 keys; the rest see w
    return (w * (w + 1) / 2 + (seq_len - w) * w) / seq_len
