"""ablate: architecture ablations for decoder-only language models."""

from ablate.config import AttentionConfig, MlpConfig, ModelConfig, NormConfig, PositionConfig
from ablate.registry import ConfigError

__all__ = ["AttentionConfig", "ConfigError", "MlpConfig", "ModelConfig", "NormConfig", "PositionConfig"]
__version__ = "0.1.0"
