"""ablate: architecture ablations for decoder-only language models."""

from ablate.config import AttentionConfig, MlpConfig, ModelConfig, NormConfig, PositionConfig
from ablate.registry import ConfigError
from ablate.signals import forked_children_take_default_signals

# Workers forked by ablate or by the libraries it calls (lm-eval's bootstrap pool) must die on
# SIGTERM whatever handler a launcher installed in this process (see ablate/signals.py).
forked_children_take_default_signals()

__all__ = ["AttentionConfig", "ConfigError", "MlpConfig", "ModelConfig", "NormConfig", "PositionConfig"]
__version__ = "0.1.0"
