"""Mixture of experts in place of a block's dense MLP (model.mlp.moe.n_experts > 0).

    router      logits = x W_r (E experts); probabilities p = softmax(logits) over all E
    choice      the top_k experts by p (plus a per-expert bias under balance=bias, which only
                chooses: the weights stay p's); weights = their p (softmax_topk: OLMoE, Qwen2-MoE),
                or renormalised to sum to 1 (topk_softmax: the softmax of the chosen logits, Mixtral)
    experts     each an MLP of model.mlp.kind, stored as one tensor per projection: w_gate_in
                (E, 2 hidden, dim: gate rows, then input rows), w_out (E, dim, hidden)
    shared      n_shared_experts as one MLP every token passes through, its output optionally
                scaled by sigmoid(x w) (Qwen2-MoE's shared-expert gate)
    balancing   aux_loss: Switch's E x sum_i f_i P_i (f_i the share of assignments to expert i,
                P_i its mean probability: 1 when balanced), added to the loss with
                aux_loss_weight; bias: no loss, a bias on the choosing scores moved by bias_rate
                toward equal load after every optimizer step (DeepSeek-V3); none

No capacity limit: no token is ever dropped. Every expert runs on every forward, on the tokens it
was given (possibly none), so every parameter has a gradient and DDP needs no unused-parameter search.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ablate.config import ModelConfig
from ablate.model.init import init_linear
from ablate.model.mlp import MLPS, Mlp, mlp_hidden_dim


def expert_hidden_dim(cfg: ModelConfig) -> int:
    """An expert's hidden size: mlp.moe.expert_hidden_dim, else the dense MLP's."""
    return cfg.mlp.moe.expert_hidden_dim or mlp_hidden_dim(cfg)


def shared_hidden_dim(cfg: ModelConfig) -> int:
    """The shared experts' hidden size, as one MLP: mlp.moe.shared_hidden_dim, else
    n_shared_experts x an expert's (0: no shared experts)."""
    m = cfg.mlp.moe
    if not m.n_shared_experts:
        return 0
    return m.shared_hidden_dim or m.n_shared_experts * expert_hidden_dim(cfg)


class Moe(nn.Module):
    """Routed experts (and shared ones) for one block; see the module doc."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        m = cfg.mlp.moe
        spec = MLPS.get(cfg.mlp.kind, "model.mlp.kind")
        self.act, self.gated = spec.act, spec.gated
        self.n_experts, self.top_k, self.router_kind, self.balance = m.n_experts, m.top_k, m.router, m.balance
        self.init_std, self.n_layers = cfg.matrix_std, cfg.n_layers
        hidden = expert_hidden_dim(cfg)
        self.router = nn.Linear(cfg.dim, m.n_experts, bias=False)
        self.w_gate_in = nn.Parameter(torch.empty(m.n_experts, (2 if self.gated else 1) * hidden, cfg.dim))
        self.w_out = nn.Parameter(torch.empty(m.n_experts, cfg.dim, hidden))
        self.shared = (Mlp(cfg.dim, shared_hidden_dim(cfg), cfg.mlp.kind, False, cfg.matrix_std, cfg.n_layers)
                       if m.n_shared_experts else None)
        self.shared_gate = nn.Linear(cfg.dim, 1, bias=False) if self.shared is not None and m.shared_gate else None
        # balance=bias: chooses, never weighs; a buffer (in checkpoints), not a parameter (no gradient)
        self.register_buffer("choice_bias", torch.zeros(m.n_experts) if m.balance == "bias" else None,
                             persistent=True)
        self.aux_loss: Tensor | None = None  # the last forward's balancing loss (balance=aux_loss)
        self.load = torch.zeros(m.n_experts)  # assignments per expert since the last optimizer step

    def init_weights(self) -> None:
        """Router and expert input matrices Normal(0, init_std); expert outputs scaled by
        1/sqrt(2 n_layers) (GPT-2), as a dense MLP's; the shared experts initialise themselves."""
        init_linear(self.router, self.init_std)
        nn.init.normal_(self.w_gate_in, 0.0, self.init_std)
        nn.init.normal_(self.w_out, 0.0, self.init_std / math.sqrt(2 * self.n_layers))
        if self.shared_gate is not None:
            init_linear(self.shared_gate, self.init_std)
        if self.choice_bias is not None:
            self.choice_bias.zero_()

    def route(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """h: (N, dim) -> the chosen experts (N, k), their weights (N, k) and the probabilities (N, E)."""
        probs = F.softmax(self.router(h).float(), dim=-1)  # (N, E), fp32 as the references
        scores = probs + self.choice_bias if self.choice_bias is not None else probs
        chosen = torch.topk(scores, self.top_k, dim=-1).indices  # (N, k)
        weights = probs.gather(-1, chosen)  # (N, k)
        if self.router_kind == "topk_softmax":
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return chosen, weights, probs

    def forward(self, x: Tensor) -> Tensor:  # (B, T, dim) -> (B, T, dim)
        B, T, D = x.shape
        h = x.reshape(B * T, D)  # (N, dim)
        chosen, weights, probs = self.route(h)
        out = torch.zeros_like(h)  # (N, dim)
        for e in range(self.n_experts):  # every expert, with or without tokens: all get a gradient
            rows, slot = torch.where(chosen == e)  # (n_e,) tokens and which of their k choices
            y = F.linear(h[rows], self.w_gate_in[e])  # (n_e, 2 hidden) or (n_e, hidden)
            y = self.act(y[:, :y.shape[1] // 2]) * y[:, y.shape[1] // 2:] if self.gated else self.act(y)
            y = F.linear(y, self.w_out[e]) * weights[rows, slot, None]  # (n_e, dim)
            out.index_add_(0, rows, y.to(out.dtype))
        if self.shared is not None:
            s = self.shared(h)  # (N, dim)
            out = out + (torch.sigmoid(self.shared_gate(h)) * s if self.shared_gate is not None else s)
        counts = torch.bincount(chosen.flatten(), minlength=self.n_experts).float()  # (E,)
        if self.training:
            self.load = self.load.to(counts.device) + counts.detach()
        if self.balance == "aux_loss":
            share = counts / chosen.numel()  # f_i
            self.aux_loss = self.n_experts * (share * probs.mean(dim=0)).sum()
        return out.view(B, T, D)

    @torch.no_grad()
    def update_bias(self, rate: float, load: Tensor) -> None:
        """balance=bias, after an optimizer step: move each expert's choosing bias toward equal
        load (`load`: its assignments over the step, summed over every process)."""
        self.choice_bias += rate * torch.sign(load.mean() - load).to(self.choice_bias)


def load_entropy(counts: Tensor) -> float:
    """The entropy of the experts' share of assignments over log(E): 1 when every expert gets the
    same share, 0 when one gets all."""
    share = counts / counts.sum().clamp(min=1)
    entropy = -(share * share.clamp(min=1e-12).log()).sum()
    return float(entropy / math.log(len(counts))) if len(counts) > 1 else 1.0
