"""What a variant costs. Parameters are counted on the model itself, built on the meta device (no
memory, so 7B is instant): exact for any component by construction. FLOPs follow a formula over
what was built.

Conventions, stated once:
- embedding parameters: the token embedding, a learned position table and an untied output head
  (every vocabulary- or position-sized table: Transformer.embedding_parameters); non-embedding
  parameters are all the others. This is the split of Gemma's Table 2 and of Kaplan et al.'s N.
- training FLOPs per token: 3 x forward (backward costs twice the forward). Forward = 2 x every
  matrix weight of the blocks' linear layers plus the output head (vocab x dim, tied or not), plus
  attention's QK^T and AV: 4 x n_heads x head_dim x (mean number of keys a query sees), per layer,
  at `seq_len`: (S + 1) / 2 for causal global layers, fewer under a sliding window (each layer's
  window from the layer plan). Norms, softmax and activations are not counted.
- KV-cache bytes per token: keys and values of every layer, n_kv_heads x head_dim each, at `dtype`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ablate.config import ModelConfig
from ablate.model.transformer import Transformer


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
    seq_len = seq_len or cfg.max_seq_len
    with torch.device("meta"):
        model = Transformer(cfg)
    params = model.num_parameters()
    embedding = sum(p.numel() for p in model.embedding_parameters())
    matmul = sum(m.weight.numel() for m in model.blocks.modules() if isinstance(m, nn.Linear))
    head = cfg.vocab_size * cfg.dim
    keys_seen = sum(_mean_keys(seq_len, layer.window) for layer in model.plan)
    forward = 2 * (matmul + head) + 4 * cfg.n_heads * cfg.head_dim * keys_seen
    kv_bytes = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * torch.finfo(dtype).bits // 8
    return ModelFacts(params, embedding, params - embedding, 3.0 * forward, kv_bytes, seq_len,
                      str(dtype).removeprefix("torch."))


def _mean_keys(seq_len: int, window: int | None) -> float:
    """Mean number of keys a causal query sees over positions 0 .. seq_len - 1."""
    w = seq_len if window is None else min(window, seq_len)
    # positions t < w see t + 1 keys; the rest see w
    return (w * (w + 1) / 2 + (seq_len - w) * w) / seq_len
