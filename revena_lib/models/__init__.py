"""Model families: one file per family, one class per file, all with the same call signature.

Every family's model is built from a ``ModelConfig`` (its ``family`` field names the file) and is called as
``model(idx, targets=None, introspect=False, memory_read=True) -> ModelOutput``; ``num_parameters()`` counts
what the optimizer trains. Arms (``revena_lib/arms.py``) pick a family and config overrides.

    from revena_lib.models import build_model
    model = build_model(get_preset("smoke").model)     # ModelConfig.family = "transformer" -> RevenaLM
"""

from __future__ import annotations

from revena_lib.config import ModelConfig
from revena_lib.models.reservoir import ReservoirLM
from revena_lib.models.transformer import ModelOutput, RevenaLM

# family name (ModelConfig.family, stored in every run's config.json) -> model class
FAMILIES = {
    "transformer": RevenaLM,
    "reservoir": ReservoirLM,      # the Reservoir-Augmented Transformer (seed 000)
}


def build_model(cfg: ModelConfig):
    """The model of ``cfg.family`` (an unknown family names the ones that exist)."""
    if cfg.family not in FAMILIES:
        raise ValueError(f"ModelConfig.family={cfg.family!r} is not a model family: choose one of {', '.join(FAMILIES)}")
    return FAMILIES[cfg.family](cfg)


__all__ = ["FAMILIES", "ModelOutput", "ReservoirLM", "RevenaLM", "build_model"]
