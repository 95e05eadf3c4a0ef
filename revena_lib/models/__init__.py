"""Model families: one file per family, one class per file, all with the same call signature.

Every family's model is built from a ``ModelConfig`` (its ``family`` field names the file) and is called as
``model(idx, targets=None, introspect=False, memory_read=True) -> ModelOutput``; ``num_parameters()`` counts
what the optimizer trains. ``logits=False`` skips the (B, T, V) logits where nothing needs them (evaluation's
surprisal; training with targets never builds them); introspection and state calls always have them. Arms (``revena_lib/arms.py``) pick a family and config overrides.

State (sessions, ``revena_lib/evaluation/session.py``): every family also offers
``state = model.new_state(batch_size, device)``, an empty state at stream position 0, and
``out = model(idx, state=state)``, which runs ``idx`` as the continuation of that stream and returns the state after
it in ``out.state`` (a new object: the state passed in is never changed, so a caller can keep it and retry).
A continuation must start at a chunk boundary (``state.position % cfg.chunk_size == 0``; the session keeps the
partial last chunk pending). ``model(idx)`` without a state is the same as starting from ``new_state``.
Each state has ``position`` (tokens seen) and ``summary() -> dict`` (what it holds now, for display).

    from revena_lib.models import build_model
    model = build_model(get_preset("smoke").model)     # ModelConfig.family = "transformer" -> RevenaLM
"""

from __future__ import annotations

from revena_lib.config import ModelConfig
from revena_lib.models.recursive import RecursiveLM
from revena_lib.models.reservoir import ReservoirLM
from revena_lib.models.transformer import ModelOutput, RevenaLM

# family name (ModelConfig.family, stored in every run's config.json) -> model class
FAMILIES = {
    "transformer": RevenaLM,
    "reservoir": ReservoirLM,      # the Reservoir-Augmented Transformer (seed 000)
    "recursive": RecursiveLM,      # the Tiny Recursive Model with a carry between chunks (seed 001)
}


def build_model(cfg: ModelConfig):
    """The model of ``cfg.family`` (an unknown family names the ones that exist)."""
    if cfg.family not in FAMILIES:
        raise ValueError(f"ModelConfig.family={cfg.family!r} is not a model family: choose one of {', '.join(FAMILIES)}")
    return FAMILIES[cfg.family](cfg)


__all__ = ["FAMILIES", "ModelOutput", "RecursiveLM", "ReservoirLM", "RevenaLM", "build_model"]
