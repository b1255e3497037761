"""Causal self-attention with grouped KV heads, soft-capping, sliding windows, a KV cache and
interchangeable backends.

A backend turns what the position scheme and the window say into something its kernel takes
(`prepare`, once per forward and window size), then runs the kernel (`attend`, once per layer):

    auto   the default: picks one of the three below per device and need (see AutoBackend)
    sdpa   torch's scaled_dot_product_attention: is_causal when nothing else applies, else a boolean
           or additive mask (ALiBi, windows, cached prefixes). The CPU default.
    eager  explicit matmul / softmax; the path for attention-logit soft-capping on CPU.
    flex   flex_attention with a score_mod (soft-cap, any position bias) and a block mask (causal,
           window); compiled on GPU. Forward only on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ablate.model.init import init_linear
from ablate.model.norm import build_norm
from ablate.registry import Registry

if TYPE_CHECKING:
    from ablate.config import ModelConfig
    from ablate.model.plan import LayerPlan

WINDOW_PATTERNS: Registry[Callable[[int], bool]] = Registry("window pattern")
WINDOW_PATTERNS.add("global", lambda layer: False)
WINDOW_PATTERNS.add("local", lambda layer: True)
WINDOW_PATTERNS.add("alternating", lambda layer: layer % 2 == 0)  # local first, as Gemma 2


def visible(q_pos: Tensor, k_pos: Tensor, window: int | None) -> Tensor:
    """(Tq, Tk) bool: key j is visible to query i when k_pos[j] <= q_pos[i] (and within the window)."""
    seen = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        seen = seen & (k_pos[None, :] > q_pos[:, None] - window)
    return seen


# ---- backends ---------------------------------------------------------------------------------
class Backend:
    """Prepare once per forward and window; attend once per layer. Shapes: q (B, H, Tq, hd),
    k and v (B, Hkv, Tk, hd), result (B, H, Tq, hd)."""

    def prepare(self, bias: Tensor | None, q_pos: Tensor, k_pos: Tensor, window: int | None) -> Any:
        raise NotImplementedError

    def attend(self, q: Tensor, k: Tensor, v: Tensor, plan: Any, scale: float, softcap: float | None,
               dropout: float) -> Tensor:
        raise NotImplementedError


BACKENDS: Registry[type[Backend]] = Registry("attention backend")


@BACKENDS.register("sdpa")
class SdpaBackend(Backend):
    def prepare(self, bias, q_pos, k_pos, window):
        aligned = len(q_pos) == len(k_pos) and bool(q_pos[0] == k_pos[0])
        if bias is None and window is None and aligned:
            return "causal"
        seen = visible(q_pos, k_pos, window)
        if bias is None:
            return None if bool(seen.all()) else seen
        return bias.masked_fill(~seen, float("-inf"))

    def attend(self, q, k, v, plan, scale, softcap, dropout):
        # q (B, H, Tq, hd), k and v (B, Hkv, Tk, hd) -> (B, H, Tq, hd); plan: "causal", None, or a
        # (Tq, Tk) / (H, Tq, Tk) boolean mask or additive bias
        if softcap is not None:
            raise ValueError("the sdpa backend cannot soft-cap attention logits; use eager or flex")
        mask = None if plan in (None, "causal") else plan
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)
        args = dict(attn_mask=mask, dropout_p=dropout, is_causal=plan == "causal", scale=scale,
                    enable_gqa=k.shape[1] != q.shape[1])
        if q.device.type == "cpu" and k.shape[-2] * q.shape[-1] <= SMALL_CPU_ATTENTION:
            with sdpa_kernel(SDPBackend.MATH):
                return F.scaled_dot_product_attention(q, k, v, **args)
        return F.scaled_dot_product_attention(q, k, v, **args)


# On CPU, torch's flash kernel is slower than its math kernel for short rows of small heads and
# faster beyond (2 cores, bf16, forward + backward: 128 keys x head dim 32, math 11.7 ms, flash 20.2;
# 256 x 64, math 32.9, flash 26.5; 512 x 64, math 191, flash 94): the math kernel up to this many
# key x head-dim elements per row.
SMALL_CPU_ATTENTION = 128 * 32


@BACKENDS.register("eager")
class EagerBackend(Backend):
    def prepare(self, bias, q_pos, k_pos, window):
        seen = visible(q_pos, k_pos, window)
        base = torch.zeros(seen.shape, device=seen.device) if bias is None else bias
        return base.masked_fill(~seen, float("-inf"))  # (H or 1, Tq, Tk) after broadcasting below

    def attend(self, q, k, v, plan, scale, softcap, dropout):
        B, H, Tq, hd = q.shape
        Hkv, Tk = k.shape[1], k.shape[2]
        q = q.view(B, Hkv, H // Hkv, Tq, hd)  # query heads grouped by their shared kv head
        scores = (q @ k.unsqueeze(2).transpose(-1, -2)).float() * scale  # (B, Hkv, G, Tq, Tk)
        if softcap is not None:
            scores = softcap * torch.tanh(scores / softcap)
        plan = plan.float()
        scores = scores + (plan.view(Hkv, H // Hkv, Tq, Tk) if plan.dim() == 3 else plan)
        probs = F.dropout(scores.softmax(dim=-1).to(q.dtype), p=dropout)  # (B, Hkv, G, Tq, Tk)
        return (probs @ v.unsqueeze(2)).view(B, H, Tq, v.shape[-1])  # (B, Hkv, G, Tq, hd_v) -> (B, H, Tq, hd_v)


SMALL_FLEX_TILES = {"BLOCK_M": 64, "BLOCK_N": 64, "num_stages": 2}


@BACKENDS.register("flex")
class FlexBackend(Backend):
    def __init__(self, compile: bool | None = None, kernel_options: dict | None = None) -> None:
        from torch.nn.attention.flex_attention import flex_attention

        self.compile = torch.cuda.is_available() if compile is None else compile
        self.kernel_options = kernel_options  # e.g. smaller BLOCK_M / BLOCK_N where shared memory runs out
        self.kernel = torch.compile(flex_attention, dynamic=False) if self.compile else flex_attention

    def prepare(self, bias, q_pos, k_pos, window):
        from torch.nn.attention.flex_attention import create_block_mask

        def mask_mod(b, h, q_idx, kv_idx):
            qp, kp = q_pos[q_idx], k_pos[kv_idx]
            seen = kp <= qp
            if window is not None:
                seen = seen & (kp > qp - window)
            return seen

        block_mask = create_block_mask(mask_mod, B=None, H=None, Q_LEN=len(q_pos), KV_LEN=len(k_pos),
                                       device=q_pos.device)
        return block_mask, bias

    def attend(self, q, k, v, plan, scale, softcap, dropout):
        if dropout:
            raise ValueError("the flex backend has no attention dropout; use sdpa or eager when training with it")
        block_mask, bias = plan

        def score_mod(score, b, h, q_idx, kv_idx):
            if softcap is not None:
                score = softcap * torch.tanh(score / softcap)
            if bias is not None:
                score = score + bias[h, q_idx, kv_idx]
            return score

        def run() -> Tensor:
            return self.kernel(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                               enable_gqa=k.shape[1] != q.shape[1], kernel_options=self.kernel_options)

        try:
            return run()
        except Exception as err:  # inductor raises its own error types; only this one is retried
            if self.kernel_options is not None or "out of resource" not in str(err):
                raise
            # seen on H100 (torch 2.11, GQA with a captured bias): the default tiles need more
            # shared memory than the chip has; smaller tiles compile and run
            self.kernel_options = SMALL_FLEX_TILES
            return run()


@BACKENDS.register("auto")
class AutoBackend(Backend):
    """Picks per forward, by device and need (measured on an H100, forward + backward, bf16: with
    ALiBi and windows flex took 31 ms, sdpa 58, eager 47; with Gemma 2's soft-caps flex 36, eager 73;
    plain causal attention sdpa 13, flex 21):
    CUDA: flex where a position bias, a window or a soft-cap is needed (eager under dropout), else sdpa.
    CPU: sdpa, or eager where soft-capping needs it (flex has no backward on CPU)."""

    def __init__(self, softcap: float | None = None, dropout: float = 0.0) -> None:
        self.softcap, self.dropout = softcap, dropout
        self.backends: dict[str, Backend] = {}

    def pick(self, device: torch.device, bias: Tensor | None, window: int | None) -> Backend:
        special = bias is not None or window is not None or self.softcap is not None
        if device.type == "cuda" and special and not self.dropout:
            name = "flex"
        else:
            name = "eager" if self.softcap is not None else "sdpa"
        if name not in self.backends:
            self.backends[name] = BACKENDS.get(name)()
        return self.backends[name]

    def prepare(self, bias, q_pos, k_pos, window):
        backend = self.pick(q_pos.device, bias, window)
        return backend, backend.prepare(bias, q_pos, k_pos, window)

    def attend(self, q, k, v, plan, scale, softcap, dropout):
        backend, inner = plan
        return backend.attend(q, k, v, inner, scale, softcap, dropout)


def resolve_backend(name: str, softcap: float | None = None, dropout: float = 0.0) -> Backend:
    """An instance of backend `name` (sdpa, eager, flex, or auto: see AutoBackend)."""
    cls = BACKENDS.get(name, "model.attention.backend")
    return AutoBackend(softcap, dropout) if cls is AutoBackend else cls()


# ---- KV cache ---------------------------------------------------------------------------------
@dataclass
class KVCache:
    """Rotated keys and values of every layer for positions 0 .. length - 1."""

    n_layers: int
    length: int = 0
    keys: list[Tensor | None] = field(default_factory=list)
    values: list[Tensor | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.keys = [None] * self.n_layers
        self.values = [None] * self.n_layers

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append this step's (B, Hkv, T, hd) keys and values; return all of them so far."""
        if self.keys[layer] is not None:
            k = torch.cat((self.keys[layer], k), dim=2)  # (B, Hkv, T_cached + T, hd)
            v = torch.cat((self.values[layer], v), dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


@dataclass
class Step:
    """What every layer of one forward shares: positions, the backend and its plans, the cache."""

    pos: Tensor  # (T,) positions of the new tokens
    backend: Backend
    plans: dict[tuple[int | None, bool], Any]  # (window, positions used) -> backend plan
    rotate: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
    cache: KVCache | None = None


# ---- the module -------------------------------------------------------------------------------
class Attention(nn.Module):
    """wqkv projects to [q heads | k heads | v heads] in one matmul; wo maps heads back to dim.
    The layer's window and whether the position scheme's rotation and score bias act in it come
    from its plan. QK-norm (`attention.qk_norm`) normalises queries and keys before the rotation:
    `head` over each head's head_dim (Qwen 3, Gemma 3), `all` over all heads' n_heads x head_dim at
    once (OLMo 2), with the norm kind of model.norm."""

    def __init__(self, cfg: ModelConfig, plan: LayerPlan) -> None:
        super().__init__()
        a = cfg.attention
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.scale, self.softcap, self.window, self.dropout = cfg.attn_scale, a.softcap, plan.window, cfg.dropout
        self.layer, self.positions = plan.index, plan.positions
        self.init_std, self.n_layers = cfg.matrix_std, cfg.n_layers
        H, Hkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        self.wqkv = nn.Linear(cfg.dim, (H + 2 * Hkv) * hd, bias=a.qkv_bias)
        self.wo = nn.Linear(H * hd, cfg.dim, bias=a.out_bias)
        self.qk_norm = a.qk_norm
        q_size, k_size = (hd, hd) if a.qk_norm == "head" else (H * hd, Hkv * hd)
        self.q_norm = build_norm(cfg.norm, q_size) if a.qk_norm else None
        self.k_norm = build_norm(cfg.norm, k_size) if a.qk_norm else None

    def init_weights(self) -> None:
        """Normal(0, init_std); the output projection scaled by 1/sqrt(2 n_layers) (GPT-2); zero biases."""
        init_linear(self.wqkv, self.init_std)
        init_linear(self.wo, self.init_std / math.sqrt(2 * self.n_layers))

    @torch.no_grad()
    def max_logit(self, x: Tensor, step: Step) -> float:
        """The largest |q.k x scale| over the pairs this layer attends (before any position bias
        and soft-cap): the attention-logit growth that precedes a loss spike. Not for a cache."""
        H, Hkv = self.n_heads, self.n_kv_heads
        q, k, _ = self.heads(x, step)  # (B, H, T, hd), (B, Hkv, T, hd)
        k = k.repeat_interleave(H // Hkv, dim=1)  # (B, H, T, hd): each kv head beside its query heads
        scores = (q.float() @ k.float().transpose(-1, -2)).abs() * self.scale  # (B, H, T, T)
        return float(scores.masked_fill(~visible(step.pos, step.pos, self.window), 0.0).max())

    def heads(self, x: Tensor, step: Step) -> tuple[Tensor, Tensor, Tensor]:
        """x: (B, T, dim) -> q (B, H, T, hd), k and v (B, Hkv, T, hd): projected, QK-normed, rotated."""
        B, T, _ = x.shape
        H, Hkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = self.wqkv(x).split((H * hd, Hkv * hd, Hkv * hd), dim=-1)  # (B, T, H*hd), (B, T, Hkv*hd) x 2
        if self.qk_norm == "all":  # over every head at once
            q, k = self.q_norm(q), self.k_norm(k)  # shapes kept
        q, k, v = q.view(B, T, H, hd), k.view(B, T, Hkv, hd), v.view(B, T, Hkv, hd)
        if self.qk_norm == "head":  # over each head's own hd
            q, k = self.q_norm(q), self.k_norm(k)  # shapes kept
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, hd), (B, Hkv, T, hd) x 2
        if self.positions:
            q, k = step.rotate(q, k, step.pos)  # shapes kept
        return q, k, v

    def forward(self, x: Tensor, step: Step) -> Tensor:
        B, T, _ = x.shape  # x: (B, T, dim)
        q, k, v = self.heads(x, step)  # (B, H, T, hd), (B, Hkv, T, hd) x 2
        H, hd = self.n_heads, self.head_dim
        if step.cache is not None:
            k, v = step.cache.update(self.layer, k, v)  # (B, Hkv, Tk, hd), Tk = cached + T
        y = step.backend.attend(q, k, v, step.plans[self.window, self.positions], self.scale, self.softcap,
                                self.dropout if self.training else 0.0)  # (B, H, T, hd)
        return self.wo(y.transpose(1, 2).reshape(B, T, H * hd))  # (B, T, H*hd) -> (B, T, dim)
