"""The probe: static HTML from plain arrays, the per-token trace, the threshold sweep, and the widget
(a simulated click fills the detail panel). Tiny untrained models, CPU, seconds."""

import re

import numpy as np
import pytest
import torch

from revena_lib.config import get_preset
from revena_lib.analysis.probe import (hits_per_chunk, static_token_html, static_trace_html, surprisal_colour,
                                       threshold_sweep, trace_document)
from revena_lib.analysis.probe_widget import probe_widget
from revena_lib.data.tokenizer import EOT_ID, get_tokenizer

TEXT = "Fellow-Citizens of the Senate and House of Representatives: the pass key is 48213. " * 6


def tiny_model(use_ltm=True):
    from revena_lib.models.transformer import RevenaLM

    torch.manual_seed(0)
    cfg = get_preset("smoke").model
    cfg.use_ltm = use_ltm
    return RevenaLM(cfg).eval()


def text_tokens(text=TEXT):
    return np.array([EOT_ID] + get_tokenizer().encode(text), dtype=np.int64)


def test_static_html_from_plain_arrays():
    texts = ["<|endoftext|>", "Hello", " <b>world</b>", "\n"]
    page = static_token_html(texts, [0.0, 3.0, 9.0, 20.0], routed=[False, False, True, True],
                             hit_count=[0, 0, 0, 2], top_hit_positions=[[-1], [-1], [-1], [2]],
                             top_hit_cosines=[[0], [0], [0], [0.93]])
    spans = re.findall(r'<span class="revena-static-token" data-index="(\d+)"', page)
    assert spans == ["0", "1", "2", "3"]                       # one element per token, in order
    assert "&lt;b&gt;world&lt;/b&gt;" in page and "<b>world" not in page   # token text is escaped
    assert page.count("border-bottom:3px solid") == 2 + 1       # two routed tokens (+ the legend)
    assert "0.93" in page and "9.00 bits" in page              # hits and surprisal in the tooltips
    assert surprisal_colour(0.0) == "#ffffff" and surprisal_colour(99.0) == surprisal_colour(12.0) != "#ffffff"


def test_trace_is_consistent_with_the_model_rules():
    model = tiny_model()
    tokens = text_tokens()
    trace = trace_document(model, tokens)
    T = len(tokens)
    assert trace["surprisal_bits"].shape == (T,) and trace["surprisal_bits"][0] == 0.0
    expected = (trace["surprisal_bits"] > trace["threshold_bits"]) & (np.arange(T) > 0)
    assert (trace["routed"] == expected).all()
    assert trace["top_ids_with"].shape == (T, 5) and trace["top_ids_without"].shape == (T, 5)
    assert len(trace["occupancy"]) == -(-T // model.cfg.chunk_size)
    assert hits_per_chunk(trace).sum() == (trace["hit_count"] > 0).sum()
    page = static_trace_html(trace, get_tokenizer())
    assert page.count('class="revena-static-token"') == T
    baseline = trace_document(tiny_model(use_ltm=False), tokens)
    assert not baseline["routed"].any() and (baseline["hit_count"] == 0).all()


def test_threshold_sweep_routes_less_as_the_threshold_rises():
    rows = threshold_sweep(tiny_model(), text_tokens(), [0.0, 4.5, 1000.0])
    ratios = [r["routed_token_ratio"] for r in rows]
    assert ratios[0] == pytest.approx(1.0) and ratios[-1] == 0.0 and ratios == sorted(ratios, reverse=True)
    assert rows[-1]["ltm_hit_rate"] == 0.0                      # nothing written, nothing to hit


@pytest.mark.parametrize("use_ltm", [True, False])
def test_widget_click_fills_the_detail_panel(use_ltm):
    widget = probe_widget(tiny_model(use_ltm), get_tokenizer(), {"speech": TEXT, "numbers": "1 2 3 4 5"},
                          max_tokens=48)
    assert "revena-detail" in widget.detail._dom_classes
    assert len(widget.token_buttons) == 48
    for i, button in enumerate(widget.token_buttons):
        assert {"revena-token", "revena-widget-token", f"revena-token-{i}"} <= set(button._dom_classes)
    assert "Memory hits" not in widget.detail.value               # nothing selected yet
    widget.token_buttons[17].click()                             # what a click in the browser triggers
    detail = widget.detail.value
    assert "Memory hits" in detail and "Top predictions" in detail and "Token #17" in detail
    if not use_ltm:
        assert "baseline has no memory" in detail
    widget.token_buttons[3].click()
    assert "Token #3" in widget.detail.value and "Token #17" not in widget.detail.value
    # another document from the dropdown, then typed text through the Probe button
    widget.dropdown.value = 1
    assert len(widget.token_buttons) == len(text_tokens("1 2 3 4 5"))
    widget.text.value = "The pass key is 48213."
    widget.probe_button.click()
    assert len(widget.token_buttons) == len(text_tokens("The pass key is 48213."))
    widget.token_buttons[2].click()
    assert "Top predictions" in widget.detail.value
