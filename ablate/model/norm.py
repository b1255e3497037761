"""Normalisation layers. Statistics and the affine scale are computed in fp32 and cast back, as
Gemma does; with unit_offset the scale is (1 + w) with w starting at 0."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ablate.config import NormConfig
from ablate.registry import Registry

NORMS: Registry[type[Norm]] = Registry("norm")


class Norm(nn.Module):
    """Shared parameters: a scale (optionally unit-offset) and an optional bias over the last dim."""

    def __init__(self, dim: int, eps: float, unit_offset: bool = False, bias: bool = False,
                 init_scale: float = 1.0) -> None:
        super().__init__()
        self.eps, self.init_scale = eps, init_scale
        self.offset = 1.0 if unit_offset else 0.0
        self.weight = nn.Parameter(torch.full((dim,), 1.0 - self.offset))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    @classmethod
    def from_config(cls, cfg: NormConfig, dim: int, init_scale: float = 1.0) -> Norm:
        return cls(dim, cfg.eps, cfg.unit_offset, cfg.bias, init_scale)

    def init_weights(self) -> None:
        """Scale init_scale (1 unless the placement's init rule says otherwise; under a unit
        offset the scale is 1 + w, so w starts at init_scale - 1), bias 0."""
        self.weight.fill_(self.init_scale - self.offset)
        if self.bias is not None:
            self.bias.zero_()

    def scale(self) -> Tensor:
        return self.weight.float() + self.offset if self.offset else self.weight.float()

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, unit_offset={bool(self.offset)}"


@NORMS.register("layernorm")
class LayerNorm(Norm):
    """(x - mean) / std * scale + bias."""

    def forward(self, x: Tensor) -> Tensor:  # (..., dim) -> (..., dim), statistics over dim in fp32
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), x.shape[-1:], self.scale(), bias, self.eps).to(x.dtype)


@NORMS.register("rmsnorm")
class RMSNorm(Norm):
    """x / rms(x) * scale (+ bias): no centring (Zhang and Sennrich)."""

    def forward(self, x: Tensor) -> Tensor:  # (..., dim) -> (..., dim), statistics over dim in fp32
        y = F.rms_norm(x.float(), x.shape[-1:], self.scale(), self.eps)
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype)


def build_norm(cfg: NormConfig, dim: int, init_scale: float = 1.0) -> Norm:
    return NORMS.get(cfg.kind, "model.norm.kind").from_config(cfg, dim, init_scale)
