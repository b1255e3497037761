"""What training measures of a model beside its training loss: the token cross-entropy, the
loss over the whole held-out split, the held-out text's bytes per token (for bits per byte), and
the largest attention logit."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ablate.config import RunConfig
from ablate.data.batches import validation_batches
from ablate.data.tokens import TokenData
from ablate.model import Transformer


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


@torch.no_grad()
def validation_loss(model: Transformer, data: TokenData, cfg: RunConfig, device: torch.device, autocast) -> float:
    """Mean token loss over the whole held-out split."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in validation_batches(data.val, cfg.seq_len, cfg.train.micro_batch):
        with autocast:
            logits = model(x.to(device))
        total += float(F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.to(device).reshape(-1),
                                       reduction="sum"))
        count += y.numel()
    model.train(was_training)
    return total / count


def validation_bytes_per_token(data: TokenData, seq_len: int) -> float:
    """UTF-8 bytes per token of the held-out tokens validation_loss scores (the targets), so that
    val_bpb = val_loss / ln 2 / this is comparable across tokenizers (end-of-text counts no bytes)."""
    n = (len(data.val) - 1) // seq_len * seq_len
    scored = np.asarray(data.val[1:n + 1]).tolist()
    return len(data.tokenizer.decode(scored).encode("utf-8")) / n


@torch.no_grad()
def max_attention_logit(model: Transformer, data: TokenData, cfg: RunConfig, device: torch.device, autocast) -> float:
    """The largest attention logit of the model on the first validation batch (Attention.max_logit)."""
    was_training = model.training
    model.eval()
    found: list[float] = []
    hooks = [m.register_forward_hook(lambda m, args, out: found.append(m.max_logit(*args)))
             for m in model.modules() if hasattr(m, "max_logit")]
    try:
        x, _ = next(iter(validation_batches(data.val, cfg.seq_len, cfg.train.micro_batch)))
        with autocast:
            model(x.to(device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return max(found)
