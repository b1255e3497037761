"""The decoder-only transformer: embed -> blocks -> final norm -> head."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ablate.config import ModelConfig
from ablate.model.attention import KVCache, Step, resolve_backend
from ablate.model.block import Block
from ablate.model.norm import Norm, build_norm
from ablate.model.position import POSITIONS


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        self.tok_embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.position = POSITIONS.get(cfg.position.kind).from_config(cfg)
        self.embed_norm = build_norm(cfg.norm, cfg.dim) if cfg.embedding_norm else None
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.final_norm = build_norm(cfg.norm, cfg.dim) if self.blocks[0].placement.final_norm else None
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.windows = sorted({b.attn.window for b in self.blocks}, key=lambda w: w or 0)
        self.backend = resolve_backend(cfg.attention.backend, cfg.attention.softcap, cfg.dropout)
        self.reset_parameters()

    def set_backend(self, name: str) -> "Transformer":
        """Switch the attention backend (sdpa, eager, flex or auto) without touching the weights."""
        self.backend = resolve_backend(name, self.cfg.attention.softcap, self.cfg.dropout)
        return self

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; output projections scaled by 1/sqrt(2 n_layers) (GPT-2);
        zero biases; norm scales at 1 (0 under a unit offset)."""
        std = self.cfg.init_std
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                out_proj = name.endswith(("attn.wo", "mlp.w_out"))
                nn.init.normal_(module.weight, 0.0, std / math.sqrt(2 * self.cfg.n_layers) if out_proj else std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, Norm):
                module.weight.fill_(1.0 - module.offset)
                if module.bias is not None:
                    module.bias.zero_()

    def forward(self, tokens: Tensor, cache: KVCache | None = None) -> Tensor:
        """tokens: (B, T) ids -> logits (B, T, vocab_size). With a cache, tokens continue it."""
        start = cache.length if cache is not None else 0
        pos = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        x = self.embed(tokens, pos)
        step = self.plan(pos, cache)
        for block in self.blocks:
            x = block(x, step)
        if cache is not None:
            cache.length += tokens.shape[1]
        return self.logits(x)

    def embed(self, tokens: Tensor, pos: Tensor) -> Tensor:
        x = self.tok_embed(tokens)  # (B, T, dim)
        if self.cfg.embedding_scale:
            x = x * torch.tensor(self.cfg.dim**0.5, dtype=x.dtype)  # rounded to the weights' dtype, as Gemma
        x = self.position.embed(x, pos)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return self.embed_drop(x)

    def plan(self, pos: Tensor, cache: KVCache | None) -> Step:
        """Position bias and masks, prepared once per distinct window and shared by all layers."""
        k_pos = torch.arange(0, int(pos[-1]) + 1, device=pos.device) if cache is not None else pos
        bias = self.position.bias(pos, k_pos)
        plans = {w: self.backend.prepare(bias, pos, k_pos, w) for w in self.windows}
        return Step(pos, self.backend, plans, self.position.rotate, cache)

    def logits(self, x: Tensor) -> Tensor:
        if self.final_norm is not None:
            x = self.final_norm(x)
        weight = self.tok_embed.weight if self.head is None else self.head.weight
        logits = F.linear(x, weight)
        if self.cfg.logit_softcap is not None:
            cap = self.cfg.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits

    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.n_layers)

    @torch.no_grad()
    def generate(self, tokens: Tensor, max_new_tokens: int, stop: int | None = None) -> Tensor:
        """Greedy decoding with the KV cache. tokens: (B, T) -> (B, T + n), n <= max_new_tokens;
        ends early once every row has produced token `stop`."""
        cache = self.new_cache()
        out, logits = tokens, self(tokens, cache)
        done = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        for i in range(max_new_tokens):
            nxt = logits[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
            out = torch.cat((out, nxt), dim=1)
            if stop is not None:
                done |= nxt[:, 0] == stop
            if i + 1 == max_new_tokens or bool(done.all()):
                break
            logits = self(nxt, cache)
        return out

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
