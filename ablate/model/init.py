"""How weights start. Each component initialises its own parameters (`init_weights`), so a new
component brings its own init and nothing overwrites it; these are the pieces they share."""

from __future__ import annotations

from torch import nn


def init_linear(module: nn.Linear | nn.Embedding, std: float) -> None:
    """Normal(0, std) weights, zero bias."""
    nn.init.normal_(module.weight, 0.0, std)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
