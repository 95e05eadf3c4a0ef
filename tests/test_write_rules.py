"""The top-k write rule (an evaluation-time alternative to the brief's threshold) and old checkpoints staying
loadable after ModelConfig gains a field."""

import dataclasses

import pytest
import torch

from revena_lib.training import checkpoint
from revena_lib.config import ModelConfig, get_preset
from revena_lib.models.ltm import write_mask
from revena_lib.models.transformer import RevenaLM


def test_topk_writes_the_k_most_surprising_tokens_of_each_chunk_never_position_0():
    cfg = dataclasses.replace(get_preset("smoke").model, use_ltm=True, ltm_write_rule="topk", ltm_write_topk=2)
    surprisal = torch.tensor([[9.0, 1.0, 7.0, 3.0, 8.0], [0.1, 0.2, 0.3, 0.4, 0.5]])
    positions = torch.tensor([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
    mask = write_mask(surprisal, positions, cfg)
    assert mask.tolist() == [[False, False, True, False, True], [False, False, False, True, True]]
    # the threshold plays no part: low-surprisal tokens are written too (row 2)
    wide = write_mask(surprisal, positions, dataclasses.replace(cfg, ltm_write_topk=10))
    assert wide.sum().item() == 9 and not wide[0, 0]


def test_topk_routes_k_per_chunk_in_the_model():
    torch.manual_seed(0)
    cfg = dataclasses.replace(get_preset("smoke").model, use_ltm=True, ltm_write_rule="topk", ltm_write_topk=3)
    model = RevenaLM(cfg).eval()
    with torch.no_grad():
        trace = model(torch.randint(1, cfg.vocab_size, (2, 3 * cfg.chunk_size)), introspect=True).trace
    per_chunk = trace.routed.view(2, 3, cfg.chunk_size).sum(-1)
    assert (per_chunk == 3).all()
    with pytest.raises(ValueError, match="ltm_write_topk"):
        ModelConfig(ltm_write_topk=0)


def test_a_checkpoint_saved_before_a_new_field_still_loads(tmp_path):
    expected = dataclasses.asdict(ModelConfig(use_ltm=True))
    saved = {k: v for k, v in expected.items() if k != "ltm_write_topk"}     # as written before the field existed
    checkpoint.check_model_config(tmp_path / "c.pt", saved, expected)
    with pytest.raises(checkpoint.CheckpointError, match="ltm_write_topk"):
        checkpoint.check_model_config(tmp_path / "c.pt", saved, {**expected, "ltm_write_topk": 3})
