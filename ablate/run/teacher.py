"""A distillation teacher as a run's config names it (`train.distill.teacher`), without its
weights: what it is (an ablate run or a transformers model directory), its config hash, its size
and forward FLOPs per token; or a ConfigError saying why it cannot teach (not there, not finished,
neither kind). Planning and training check it; loading a finished student never does."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ablate.config import DistillConfig, RunConfig
from ablate.registry import ConfigError


@dataclass
class TeacherInfo:
    """What a teacher is, without its weights: for the plan's cost and the refusals."""

    path: str
    kind: str  # ablate | transformers
    config_hash: str
    forward_flops_per_token: float
    params: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "config_hash": self.config_hash, "params": self.params,
                "forward_flops_per_token": self.forward_flops_per_token}


def teacher_info(cfg: DistillConfig, seq_len: int) -> TeacherInfo | None:
    """The teacher of `cfg` (None when not distilling), or ConfigError saying what is wrong with it."""
    if not cfg.weight or not cfg.teacher:
        return None
    from ablate.model import model_facts
    from ablate.run.rundir import RunDir, config_hash

    path = Path(cfg.teacher)
    run = RunDir(path)
    if run.is_run():
        if run.final_checkpoint() is None:
            raise ConfigError("train.distill.teacher", cfg.teacher,
                              f"the teacher run has not completed (status: {run.status()}); train it first")
        stored = run.read_config()
        teacher_cfg = RunConfig.from_dict(stored)
        f = model_facts(teacher_cfg.model, seq_len)
        return TeacherInfo(str(path), "ablate", config_hash(stored), f.flops_per_token / 3, f.params)
    if (path / "config.json").is_file():
        text = (path / "config.json").read_text()
        params, flops = _hf_size(path, seq_len)
        return TeacherInfo(str(path), "transformers", hashlib.sha256(text.encode()).hexdigest()[:16], flops, params)
    raise ConfigError("train.distill.teacher", cfg.teacher,
                      "is neither an ablate run directory (config.yaml) nor a transformers model directory "
                      "(config.json)")


def _hf_size(path: Path, seq_len: int) -> tuple[int, float]:
    """Parameters and forward FLOPs per token of a transformers model: exact where ablate computes
    the family (its facts), else 2 x parameters (attention's own FLOPs not counted)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.from_pretrained(path, local_files_only=True)
    try:
        from ablate.hf import config_from_hf
        from ablate.model import model_facts

        f = model_facts(config_from_hf(hf_config), seq_len)
        return f.params, f.flops_per_token / 3
    except (ConfigError, ValueError, KeyError):
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)
        params = sum(p.numel() for p in model.parameters())
        return params, 2.0 * params
