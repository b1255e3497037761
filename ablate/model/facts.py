"""What a variant costs. Parameters are counted on the model itself, built on the meta device (no
memory, so 7B is instant): exact for any component by construction. FLOPs follow a formula over
what was built.

Conventions, stated once:
- embedding parameters: the token embedding, a learned position table and an untied output head
  (every vocabulary- or position-sized table: Transformer.embedding_parameters); non-embedding
  parameters are all the others. This is the split of Gemma's Table 2 and of Kaplan et al.'s N.
- training FLOPs per token: 3 x forward (backward costs twice the forward). Forward = 2 x every
  matrix weight of the blocks' linear layers plus the output head (vocab x dim, tied or not), plus
  attention's QK^T and AV: 2 x n_heads x (qk + v head sizes) x (mean number of keys a query sees), per layer,
  at `seq_len`: (S + 1) / 2 for causal global layers, fewer under a sliding window (each layer's
  window from the layer plan). Norms, softmax and activations are not counted.
- KV-cache bytes per token: keys and values of every layer, n_kv_heads x head_dim each, at `dtype`
  (latent attention: its latent and shared rope key, kv_lora_rank + rope_head_dim per layer).
- mixture of experts: a token passes through the router, its top_k routed experts and any shared
  ones; FLOPs count those, and the active parameters are all parameters less the routed experts a
  token skips ((n_experts - top_k) x an expert's, per layer). Dense models: active = all.
"""

from __future__ import annotations

import json
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
    active_params: int = 0  # what one token passes through: params less the routed experts it skips
    active_non_embedding_params: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def model_facts(cfg: ModelConfig, seq_len: int | None = None, dtype: torch.dtype = torch.bfloat16) -> ModelFacts:
    """Parameters, training FLOPs per token and KV-cache bytes per token of `cfg` (see module doc);
    remembered per distinct config (a plan asks again for every job of an arm)."""
    key = (json.dumps(asdict(cfg), sort_keys=True, default=str), seq_len or cfg.max_seq_len, str(dtype))
    if key not in _KNOWN:
        _KNOWN[key] = _measure(cfg, seq_len or cfg.max_seq_len, dtype)
    return _KNOWN[key]


_KNOWN: dict[tuple[str, int, str], ModelFacts] = {}


def _measure(cfg: ModelConfig, seq_len: int, dtype: torch.dtype) -> ModelFacts:
    with torch.device("meta"):
        model = Transformer(cfg)
    params = model.num_parameters()
    embedding = sum(p.numel() for p in model.embedding_parameters())
    matmul = sum(m.weight.numel() for m in model.blocks.modules() if isinstance(m, nn.Linear))
    skipped = 0  # routed experts' parameters a token does not pass through
    for moe in model.experts():
        per_expert = moe.w_gate_in[0].numel() + moe.w_out[0].numel()
        matmul += moe.top_k * per_expert  # a token's routed experts (the router is an nn.Linear)
        skipped += (moe.n_experts - moe.top_k) * per_expert
    head = cfg.vocab_size * cfg.dim
    keys_seen = sum(_mean_keys(seq_len, layer.window) for layer in model.plan)
    forward = 2 * (matmul + head) + 2 * cfg.n_heads * (cfg.qk_head_dim + cfg.v_head_dim) * keys_seen
    per_layer = (cfg.attention.kv_lora_rank + cfg.attention.rope_head_dim if cfg.latent  # the latent, the rope key
                 else 2 * cfg.n_kv_heads * cfg.head_dim)
    kv_bytes = cfg.n_layers * per_layer * torch.finfo(dtype).bits // 8
    return ModelFacts(params, embedding, params - embedding, 3.0 * forward, kv_bytes, seq_len,
                      str(dtype).removeprefix("torch."), params - skipped, params - embedding - skipped)


def _mean_keys(seq_len: int, window: int | None) -> float:
    """Mean number of keys a causal query sees over positions 0 .. seq_len - 1."""
    w = seq_len if window is None else min(window, seq_len)
    # positions t < w see t + 1 keys; the rest see w
    return (w * (w + 1) / 2 + (seq_len - w) * w) / seq_len


# ---- memory per GPU -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Memory:
    """Bytes one process holds while training, by what holds them (see `training_memory`)."""

    parallel: str
    processes: int
    parameters: float
    gradients: float
    optimizer: float
    buffers: float  # DDP's gradient buckets; FSDP's gathered blocks (parameters and gradients in flight)
    activations: float

    @property
    def total(self) -> float:
        return self.parameters + self.gradients + self.optimizer + self.buffers + self.activations


def activation_bytes_per_token(cfg: ModelConfig) -> float:
    """What autograd keeps per token for the backward pass under bf16 autocast, counted from the
    shapes: per layer, each norm's fp32 input; the bf16 inputs of the attention and MLP input
    projections; q, k, v and the attention output (a fused attention kernel: no seq x seq scores);
    rotary inputs; the MLP's hidden activations (up, gate, act, product for gated kinds; pre- and
    post-activation otherwise); then the final norm and the fp32 logits. It counts fused kernels,
    as on a GPU. Against what autograd keeps on a CPU (tests/test_model.py): the gpt2 preset within
    2%, llama2 about 16% below (the CPU's RMSNorm also keeps its normalised output). Attention with
    a score bias (ALiBi) or soft-capping keeps seq x seq scores on a CPU, not under flex on a GPU."""
    from ablate.model.mlp import MLPS, mlp_hidden_dim
    from ablate.model.norm import Norm

    with torch.device("meta"):
        block = Transformer(cfg).blocks[0]
    norms = sum(isinstance(m, Norm) for m in block.modules())
    d, hd, h = cfg.dim, cfg.head_dim, mlp_hidden_dim(cfg)
    q, kv = cfg.n_heads * hd, cfg.n_kv_heads * hd
    layer = (4 * d * norms + 2 * d + 2 * d  # norm inputs (fp32); attention and MLP inputs (bf16)
             + 2 * (q + 2 * kv) + 2 * q  # q, k, v; attention output (the output projection's input)
             + (2 * (q + kv) if cfg.position.kind.startswith("rope") else 0)
             + (8 if MLPS.get(cfg.mlp.kind).gated else 4) * h)
    return cfg.n_layers * layer + 4 * d + 4 * cfg.vocab_size


def training_memory(cfg: ModelConfig, micro_batch: int, seq_len: int | None = None, processes: int = 1,
                    parallel: str = "ddp") -> Memory:
    """Memory per process for training with AdamW: fp32 parameters (4 B each), fp32 gradients (4),
    AdamW's two moments (8), and activations at `micro_batch` sequences of `seq_len`. DDP holds all of
    it on every process, plus gradient buckets (4 B per parameter); FSDP divides parameters,
    gradients and moments by the process count and gathers about two blocks at a time (bf16
    parameters, fp32 gradients). Not counted: the CUDA context, the allocator's fragmentation and
    temporary workspace, typically 1-3 GiB."""
    seq_len = seq_len or cfg.max_seq_len
    f = model_facts(cfg, seq_len)
    n = f.params
    per_block = f.non_embedding_params / cfg.n_layers
    activations = activation_bytes_per_token(cfg) * micro_batch * seq_len
    if parallel == "fsdp" and processes > 1:
        return Memory(parallel, processes, 4 * n / processes, 4 * n / processes, 8 * n / processes,
                      2 * per_block * (2 + 4), activations)
    return Memory(parallel, processes, 4 * n, 4 * n, 8 * n, 4 * n if processes > 1 else 0, activations)
