"""The model: `Transformer(ModelConfig(...))`; see transformer.py for the wiring."""

from ablate.model.attention import KVCache
from ablate.model.facts import ModelFacts, model_facts
from ablate.model.plan import LayerPlan, check_model, layer_plan
from ablate.model.transformer import Transformer

__all__ = ["KVCache", "LayerPlan", "ModelFacts", "Transformer", "check_model", "layer_plan", "model_facts"]
