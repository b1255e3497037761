"""The decoder-only transformer: embed -> blocks -> final norm -> head."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ablate.config import ModelConfig
from ablate.model.attention import KVCache, Step, resolve_backend
from ablate.model.block import Block
from ablate.model.init import init_linear
from ablate.model.norm import build_norm
from ablate.model.plan import check_model, layer_plan
from ablate.model.position import POSITIONS


class TokenEmbedding(nn.Embedding):
    """The token table: Normal(0, init_std)."""

    def __init__(self, vocab_size: int, dim: int, init_std: float) -> None:
        super().__init__(vocab_size, dim)
        self.init_std = init_std

    def init_weights(self) -> None:
        init_linear(self, self.init_std)


class Head(nn.Linear):
    """An untied output head: Normal(0, init_std)."""

    def __init__(self, dim: int, vocab_size: int, init_std: float) -> None:
        super().__init__(dim, vocab_size, bias=False)
        self.init_std = init_std

    def init_weights(self) -> None:
        init_linear(self, self.init_std)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = check_model(cfg)
        self.plan = layer_plan(cfg)
        self.tok_embed = TokenEmbedding(cfg.vocab_size, cfg.dim, cfg.init_std)
        self.position = POSITIONS.get(cfg.position.kind).from_config(cfg)
        self.embed_norm = build_norm(cfg.norm, cfg.dim) if cfg.embedding_norm else None
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in self.plan)
        # the last layer's placement decides (pre and sandwich end with a norm, post does not)
        self.final_norm = build_norm(cfg.norm, cfg.dim) if self.plan[-1].placement.final_norm else None
        self.head = None if cfg.tie_embeddings else Head(cfg.dim, cfg.vocab_size, cfg.init_std)
        self.attention_kinds = sorted({(p.window, p.positions) for p in self.plan}, key=lambda k: (k[0] or 0, k[1]))
        self.backend = resolve_backend(cfg.attention.backend, cfg.attention.softcap, cfg.dropout)
        self.reset_parameters()

    def set_backend(self, name: str) -> Transformer:
        """Switch the attention backend (sdpa, eager, flex or auto) without touching the weights."""
        self.backend = resolve_backend(name, self.cfg.attention.softcap, self.cfg.dropout)
        return self

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Every component initialises its own parameters (init_weights), in module order."""
        for module in self.modules():
            if module is not self and hasattr(module, "init_weights"):
                module.init_weights()

    def experts(self) -> list[Any]:
        """The blocks' mixture-of-experts layers (none for a dense model)."""
        from ablate.model.moe import Moe

        return [b.mlp for b in self.blocks if isinstance(b.mlp, Moe)]

    def auxiliary_loss(self) -> Tensor | None:
        """The last forward's balancing loss, weighted, summed over layers (balance=aux_loss), else None."""
        losses = [m.aux_loss for m in self.experts() if m.balance == "aux_loss" and m.aux_loss is not None]
        return self.cfg.mlp.moe.aux_loss_weight * sum(losses) if losses else None

    def parameter_roles(self) -> dict[str, str]:
        """Parameter name -> what it does, for treating alike what does alike (the optimizer's
        decay, the fairness checks): embedding (token table; tied, it is the output matrix too),
        output (an untied head), position (a learned table), matrix (projections into a sublayer),
        out_projection (a sublayer's projection back to the stream), input_norm (a norm on a
        sublayer's input, or the embedding's), stream_norm (post-norm: on the residual sum),
        branch_norm (sandwich: on a sublayer's output), final_norm, bias."""
        roles = {"tok_embed.weight": "embedding"}
        if self.head is not None:
            roles["head.weight"] = "output"
        for name, _ in self.position.named_parameters(prefix="position"):
            roles[name] = "position"
        for prefix, norm in (("embed_norm", self.embed_norm), ("final_norm", self.final_norm)):
            if norm is not None:
                for name, _ in norm.named_parameters(prefix=prefix):
                    roles[name] = "input_norm" if prefix == "embed_norm" else "final_norm"
        for i, block in enumerate(self.blocks):
            out_norm = "stream_norm" if block.placement.out_on_stream else "branch_norm"
            for name, _ in block.named_parameters(prefix=f"blocks.{i}"):
                part = name.split(".")[2]
                if part in ("attn_norm", "mlp_norm"):
                    roles[name] = "input_norm"
                elif ".q_norm." in name or ".k_norm." in name or ".kv_norm." in name:
                    roles[name] = "qk_norm"
                elif part in ("attn_out_norm", "mlp_out_norm"):
                    roles[name] = out_norm
                elif name.endswith(".bias"):
                    roles[name] = "bias"
                elif name.endswith(("wo.weight", "w_out.weight", "mlp.w_out")):
                    roles[name] = "out_projection"
                else:
                    roles[name] = "matrix"
        return roles

    def embedding_parameters(self) -> list[nn.Parameter]:
        """Vocabulary- and position-sized tables: the token embedding, an untied head, a learned
        position table (Gemma's Table 2 split; the others are non-embedding parameters)."""
        head = [] if self.head is None else [self.head.weight]
        return [self.tok_embed.weight, *head, *self.position.embedding_parameters()]

    def forward(self, tokens: Tensor, cache: KVCache | None = None) -> Tensor:
        """tokens: (B, T) ids -> logits (B, T, vocab_size). With a cache, tokens continue it."""
        start = cache.length if cache is not None else 0
        pos = torch.arange(start, start + tokens.shape[1], device=tokens.device)  # (T,) absolute positions
        x = self.embed(tokens, pos)  # (B, T, dim)
        step = self.step(pos, cache)
        for block in self.blocks:
            x = block(x, step)  # (B, T, dim)
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

    def step(self, pos: Tensor, cache: KVCache | None) -> Step:
        """Position bias and masks, prepared once per distinct (window, positions used) and shared
        by the layers that have it."""
        k_pos = torch.arange(0, int(pos[-1]) + 1, device=pos.device) if cache is not None else pos  # (Tk,)
        bias = self.position.bias(pos, k_pos) if any(p for _, p in self.attention_kinds) else None
        plans = {(w, p): self.backend.prepare(bias if p else None, pos, k_pos, w) for w, p in self.attention_kinds}
        return Step(pos, self.backend, plans, self.position.rotate, cache)

    def logits(self, x: Tensor) -> Tensor:
        if self.final_norm is not None:
            x = self.final_norm(x)
        weight = self.tok_embed.weight if self.head is None else self.head.weight
        logits = F.linear(x, weight)  # (B, T, dim) @ (vocab, dim).T -> (B, T, vocab)
        if self.cfg.width_mult != 1:
            logits = logits / self.cfg.width_mult  # muP's output multiplier: the readout's update stays O(1)
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
            out = torch.cat((out, nxt), dim=1)  # (B, T + i + 1)
            if stop is not None:
                done |= nxt[:, 0] == stop
            if i + 1 == max_new_tokens or bool(done.all()):
                break
            logits = self(nxt, cache)
        return out

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
