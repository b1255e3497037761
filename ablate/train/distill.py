"""Distillation: a student learns from a teacher's next-token distribution as well as from the
next token (train.distill), as Gemma 2's small models were trained.

    loss = (1 - weight) x CE(student, next token) + weight x T^2 x KL(teacher_T || student_T)

where _T is a softmax at temperature T (the T^2 keeps the gradient's scale as T changes), over the
tokenizer's vocabulary (a padded model's extra rows left out), or over the teacher's top_k tokens
renormalised, with the student's log-probabilities taken at those tokens. weight 0 runs no teacher:
plain training, bit for bit.

The teacher is a completed ablate run (its final checkpoint) or a transformers causal LM in a local
directory. It must share the student's tokenizer (the same token -> id map): anything else is
refused before training, naming both. It runs in eval mode without gradients, under the student's
autocast, replicated on every process; its forward FLOPs count in the run's cost.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ablate.config import DistillConfig, RunConfig
from ablate.registry import ConfigError
from ablate.run.teacher import TeacherInfo, teacher_info


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
                      top_k: int | None = None) -> torch.Tensor:
    """T^2 x KL(teacher_T || student_T), the mean over positions; logits (..., vocab), fp32 inside.

    With `top_k`, both distributions are compared on the same k + 1 outcomes: the teacher's k most
    likely tokens, each with its own probability, and one "rest" bucket holding the mass of all the
    others, on both sides. The student is then asked for the teacher's top-k probabilities and the
    total it leaves to the rest, never to pile the rest's mass onto the top k (which renormalising
    the teacher alone would ask: a sharper target than the teacher's)."""
    log_t = F.log_softmax(teacher.float() / temperature, dim=-1)  # (..., vocab)
    log_s = F.log_softmax(student.float() / temperature, dim=-1)
    if top_k is not None and top_k < log_t.shape[-1]:
        ids = log_t.topk(top_k, dim=-1).indices  # (..., k)
        rest = torch.ones_like(log_t, dtype=torch.bool).scatter(-1, ids, False)
        t_rest = log_t.masked_fill(~rest, -math.inf).logsumexp(-1, keepdim=True)  # (..., 1)
        s_rest = log_s.masked_fill(~rest, -math.inf).logsumexp(-1, keepdim=True)
        log_t = torch.cat([log_t.gather(-1, ids), t_rest], dim=-1)  # (..., k + 1)
        log_s = torch.cat([log_s.gather(-1, ids), s_rest], dim=-1)
    p = log_t.exp()
    kl = torch.where(p > 0, p * (log_t - log_s), torch.zeros_like(p)).sum(-1)  # 0 log 0 = 0
    return kl.mean() * temperature**2


def objective(ce: torch.Tensor, kd: torch.Tensor | None, weight: float) -> torch.Tensor:
    """(1 - weight) x ce + weight x kd; ce itself when nothing is distilled."""
    return ce if kd is None else (1 - weight) * ce + weight * kd


class Teacher(nn.Module):
    """A frozen teacher: `teacher(x)` gives its logits for token ids `x` (B, T)."""

    def __init__(self, model: nn.Module, kind: str, vocab: dict[str, int], info: TeacherInfo) -> None:
        super().__init__()
        self.model, self.kind, self.vocab, self.info = model.eval().requires_grad_(False), kind, vocab, info

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out.logits if self.kind == "transformers" else out


def load_teacher(cfg: DistillConfig, seq_len: int, device: torch.device) -> Teacher | None:
    """The teacher of `cfg` on `device` (None when not distilling)."""
    info = teacher_info(cfg, seq_len)
    if info is None:
        return None
    if info.kind == "ablate":
        from ablate.evaluate.lm import load_run

        loaded = load_run(info.path)  # its final checkpoint, as evaluation and export load it
        model, vocab = loaded.model, loaded.tokenizer.inner.get_vocab()
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(info.path, local_files_only=True, torch_dtype=torch.float32)
        vocab = AutoTokenizer.from_pretrained(info.path, local_files_only=True).get_vocab()
    return Teacher(model.to(device), info.kind, vocab, info)


def check_same_tokenizer(teacher: Teacher, student_vocab: dict[str, int], student_name: str) -> None:
    """ConfigError unless the teacher's token -> id map is the student's."""
    if teacher.vocab == student_vocab:
        return
    differ = sum(student_vocab.get(token) != i for token, i in teacher.vocab.items())
    raise ConfigError("train.distill.teacher", teacher.info.path,
                      f"its tokenizer ({len(teacher.vocab)} tokens) is not the student's ({student_name}, "
                      f"{len(student_vocab)} tokens; {differ} of the teacher's tokens have another id or none): "
                      "a teacher must share the student's tokenizer (train the teacher on the same data.* settings, "
                      "or set data.tokenizer to the teacher's tokenizer.json)")


def identity(teacher: Teacher) -> dict[str, Any]:
    """What the summary records of the teacher, and what a resumed run must find again."""
    return {k: v for k, v in teacher.info.to_dict().items() if k in ("path", "kind", "config_hash")}


def flops_per_token(cfg: RunConfig, model: Any = None) -> float:
    """A run's training FLOPs per token: the student's (3 x forward; `model`, else cfg.model) plus
    its teacher's forward."""
    from ablate.model import model_facts

    info = teacher_info(cfg.train.distill, cfg.seq_len)
    student = model_facts(model or cfg.model, cfg.seq_len).flops_per_token
    return student + (info.forward_flops_per_token if info else 0.0)
