"""The model: `Transformer(ModelConfig(...))`; see transformer.py for the wiring."""

from ablate.model.attention import KVCache
from ablate.model.facts import ModelFacts, model_facts
from ablate.model.transformer import Transformer

__all__ = ["KVCache", "ModelFacts", "Transformer", "model_facts"]
