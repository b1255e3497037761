"""Position schemes: one class each, three hooks, none of which the attention asks about.

    embed(x, pos)        absolute schemes add a vector per position to the token embeddings
    rotate(q, k, pos)    rotary schemes turn queries and keys (before they enter the KV cache)
    bias(q_pos, k_pos)   relative schemes add a (n_heads, Tq, Tk) bias to attention scores

The base class makes all three no-ops, which is exactly NoPE. `acts_in(layer)` says in which
layers rotate and bias act (every layer, unless a scheme says otherwise: rope_nope). A new scheme
is one subclass plus one YAML file under conf/model/position/.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ablate.config import ModelConfig
from ablate.registry import ConfigError, Registry

POSITIONS: Registry[type[PositionScheme]] = Registry("position scheme")


@POSITIONS.register("nope")
class PositionScheme(nn.Module):
    """No positional information at all (NoPE): causal masking is the only order signal."""

    max_len: int | None = None  # longest context the scheme can represent; None: unbounded

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> PositionScheme:
        return cls()

    @classmethod
    def check(cls, cfg: ModelConfig, prefix: str) -> None:
        """Raise ConfigError if this scheme cannot work with `cfg`."""

    @classmethod
    def acts_in(cls, layer: int, cfg: ModelConfig) -> bool:
        """Whether rotate and bias act in layer `layer` (0-based)."""
        return True

    def init_weights(self) -> None:
        """Schemes with parameters initialise them here."""

    def embedding_parameters(self) -> list[nn.Parameter]:
        """Parameters that are a table over positions (counted as embedding parameters)."""
        return []

    def embed(self, x: Tensor, pos: Tensor) -> Tensor:
        """x: (B, T, dim); pos: (T,) absolute positions."""
        return x

    def rotate(self, q: Tensor, k: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        """q: (B, H, T, hd), k: (B, Hkv, T, hd) at positions pos (T,)."""
        return q, k

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        """Additive score bias of shape (H, Tq, Tk), or None."""
        return None


@POSITIONS.register("learned")
class LearnedPositions(PositionScheme):
    """A trained vector per position (GPT-2, BERT); undefined beyond `max_seq_len`."""

    def __init__(self, max_len: int, dim: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.max_len, self.init_std = max_len, init_std
        self.table = nn.Embedding(max_len, dim)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> LearnedPositions:
        return cls(cfg.max_seq_len, cfg.dim, cfg.init_std)

    def init_weights(self) -> None:
        nn.init.normal_(self.table.weight, 0.0, self.init_std)

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [self.table.weight]

    def embed(self, x: Tensor, pos: Tensor) -> Tensor:
        last = int(pos[-1])
        if last >= self.max_len:
            raise ValueError(f"learned positions cover 0..{self.max_len - 1}; position {last} has no embedding")
        return x + self.table(pos)  # (B, T, dim) + (T, dim)


@POSITIONS.register("sinusoidal")
class SinusoidalPositions(PositionScheme):
    """Fixed sines and cosines (Vaswani et al.): PE[p, 2i] = sin(p w_i), PE[p, 2i+1] = cos(p w_i),
    times `scale`. Vaswani et al. multiplied the embeddings by sqrt(dim) to meet this unit-amplitude
    table; here the table comes down to the token embeddings' scale instead: RMS init_std, or 1 when
    embedding_scale multiplies the tokens by sqrt(dim). (At unit amplitude against embeddings of
    std 0.02, the positions drown the tokens and the model does not learn.)"""

    def __init__(self, dim: int, base: float = 10_000.0, scale: float = 1.0) -> None:
        super().__init__()
        inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.scale = scale

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> SinusoidalPositions:
        scale = cfg.init_std * cfg.dim**0.5 if cfg.embedding_scale else cfg.init_std
        return cls(cfg.dim, scale=scale * 2**0.5)  # the table's RMS is 1 / sqrt(2)

    @classmethod
    def check(cls, cfg: ModelConfig, prefix: str) -> None:
        if cfg.dim % 2:
            raise ConfigError(f"{prefix}.dim", cfg.dim, "sinusoidal positions need an even dim")

    def embed(self, x: Tensor, pos: Tensor) -> Tensor:
        angles = pos.float()[:, None] * self.inv_freq  # (T, dim/2)
        table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # (T, dim), interleaved
        return x + (self.scale * table).to(x.dtype)


@POSITIONS.register("rope")
class RotaryPositions(PositionScheme):
    """Rotary embeddings (Su et al.) in the rotate-half layout of GPT-NeoX and Llama.

    Only the first `rot_dim` = rotary_fraction * head_dim channels of each head are rotated.
    """

    def __init__(self, head_dim: int, theta: float, rotary_fraction: float = 1.0) -> None:
        super().__init__()
        self.rot_dim = round(head_dim * rotary_fraction)
        exponents = torch.arange(0, self.rot_dim, 2, dtype=torch.int64).float() / self.rot_dim
        self.register_buffer("inv_freq", 1.0 / (theta**exponents), persistent=False)
        self._tables: tuple[Tensor, torch.dtype, Tensor, Tensor] | None = None  # the last forward's cos / sin

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> RotaryPositions:
        return cls(cfg.head_dim, cfg.position.theta, cfg.position.rotary_fraction)

    @classmethod
    def check(cls, cfg: ModelConfig, prefix: str) -> None:
        fraction = cfg.position.rotary_fraction
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"{prefix}.position.rotary_fraction", fraction, "must be in (0, 1]")
        rot_dim = cfg.head_dim * fraction
        if rot_dim != round(rot_dim) or round(rot_dim) % 2:
            raise ConfigError(f"{prefix}.attention.head_dim", cfg.head_dim,
                              f"rope rotates pairs of channels: head_dim * rotary_fraction = {rot_dim:g} must be "
                              "an even integer")
        if cfg.position.theta <= 0:
            raise ConfigError(f"{prefix}.position.theta", cfg.position.theta, "must be positive")

    def rotate(self, q: Tensor, k: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        # q (B, H, T, hd), k (B, Hkv, T, hd), pos (T,): the first rot_dim channels of each turned
        cos, sin = self._cos_sin(pos, q.dtype)  # (T, rot) each, broadcast over batch and heads
        return self._turn(q, cos, sin), self._turn(k, cos, sin)

    def _cos_sin(self, pos: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(T, rot) tables, computed once per forward and reused by every layer: every layer of a
        forward receives the same `pos` tensor, so identity is the key (no device sync to read it)."""
        if self._tables is None or self._tables[0] is not pos or self._tables[1] != dtype:
            freqs = pos.float()[:, None] * self.inv_freq  # (T, rot/2)
            angles = torch.cat((freqs, freqs), dim=-1)  # (T, rot)
            self._tables = (pos, dtype, angles.cos().to(dtype), angles.sin().to(dtype))
        return self._tables[2], self._tables[3]

    def _turn(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        rot, rest = x[..., : self.rot_dim], x[..., self.rot_dim :]  # (..., T, rot), (..., T, hd - rot)
        half = self.rot_dim // 2
        rotated_half = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)  # (..., T, rot)
        rot = rot * cos + rotated_half * sin
        return torch.cat((rot, rest), dim=-1) if rest.shape[-1] else rot


@POSITIONS.register("rope_nope")
class RotaryNoPositions(RotaryPositions):
    """RoPE in most layers, no positions at all in every k-th (model.position.nope_every; layers
    k-1, 2k-1, ... counting from 0), as SmolLM3 does with k = 4."""

    @classmethod
    def acts_in(cls, layer: int, cfg: ModelConfig) -> bool:
        return (layer + 1) % cfg.position.nope_every != 0


@POSITIONS.register("alibi")
class AlibiPositions(PositionScheme):
    """Attention with linear biases (Press et al.): head h adds -slope_h * distance to its scores."""

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> AlibiPositions:
        return cls(cfg.n_heads)

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        distance = (k_pos[None, :] - q_pos[:, None]).float()  # (Tq, Tk), <= 0 where visible
        return self.slopes[:, None, None] * distance  # (H, 1, 1) x (Tq, Tk) -> (H, Tq, Tk)


def alibi_slopes(n_heads: int) -> Tensor:
    """Geometric slopes 2^(-8/n), 2^(-16/n), ...; for n not a power of two, the paper's interleaving
    of the next power's odd-numbered slopes (the recipe BLOOM and the reference code use)."""
    closest = 2 ** math.floor(math.log2(n_heads))

    def geometric(n: int, step: int = 1) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (1 + i) for i in range(0, n, step)]

    slopes = geometric(closest)
    if closest != n_heads:
        slopes += geometric(2 * closest, step=2)[: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)
