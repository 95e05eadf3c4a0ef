"""Looking inside the LTM for one text: per-token trace, a static coloured rendering, and the probe widget.

* ``trace_document(model, tokens)``: surprisal, routed tokens, memory hits, occupancy/evictions per chunk
  and the top-5 next-token predictions with and without memory reads, as numpy arrays.
* ``static_token_html(...)``: tokens as ``<span class="revena-static-token" data-index=i>``
  coloured white -> red by surprisal, routed tokens underlined, hits outlined, details in ``title=``
  tooltips. Plain HTML: it survives in executed/exported notebooks with no kernel.
* ``probe_widget(model, tokenizer, documents)``: ipywidgets. Pick a document (or type text and press
  "Probe"); every token is a button (classes ``revena-token revena-widget-token revena-token-<i>``);
  clicking one fills the detail panel (class ``revena-detail``) with "Memory hits" and "Top predictions".
* ``threshold_sweep(model, tokens, thresholds)``: routed ratio and hit rate at other write thresholds.

    from revena_lib.analysis.probe import probe_widget
    probe_widget(model, get_tokenizer(), load_split("val"))   # last expression of a notebook cell
"""

from __future__ import annotations

import copy
import html

import numpy as np
import torch

from revena_lib.models.transformer import memory_rates
from revena_lib.evaluation.recall import model_device
from revena_lib.data.tokenizer import encode_text

TOP_K = 5
MAX_BITS = 12.0          # surprisal at which the colour is fully red
DEFAULT_MAX_TOKENS = 256
# Give widget buttons the contract's data-index attribute (ipywidgets cannot set attributes): copy it from
# their revena-token-<i> class whenever one appears in the page. Classes work without this script too.
DATA_INDEX_JS = """
(function () {
  function tag(root) {
    (root.querySelectorAll ? root.querySelectorAll('.revena-widget-token:not([data-index])') : []).forEach(function (el) {
      el.classList.forEach(function (c) {
        var m = /^revena-token-(\\d+)$/.exec(c);
        if (m) { el.setAttribute('data-index', m[1]); }
      });
    });
  }
  if (!window.__revenaTokenObserver) {
    window.__revenaTokenObserver = new MutationObserver(function () { tag(document); });
    window.__revenaTokenObserver.observe(document.body, {childList: true, subtree: true, attributes: true,
                                                         attributeFilter: ['class']});
  }
  tag(document);
})();
"""


# -----------------------------------------------------------------------------
# Computing the trace

def token_texts(tokenizer, tokens) -> list[str]:
    return [tokenizer.decode([int(t)]) for t in tokens]


def _top_k(logits: torch.Tensor, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    probs = torch.softmax(logits.float(), dim=-1)            # (T, V)
    p, ids = probs.topk(k, dim=-1)                           # (T, k)
    return ids.cpu().numpy(), p.cpu().numpy()


@torch.inference_mode()
def trace_document(model, tokens, device=None) -> dict:
    """One text through the model (memory empty at its start). All arrays are numpy, indexed by position.

    Keys: ``tokens`` (T,), ``surprisal_bits`` (T,), ``routed`` (T,) bool, ``hit_count`` (T,),
    ``top_hit_positions``/``top_hit_tokens``/``top_hit_cosines`` (T, K), ``occupancy``/``evictions``
    (n_chunks,), ``top_ids_with``/``top_probs_with`` and ``..._without`` (T, 5): next-token predictions at
    each position with memory reads on and off, plus ``use_ltm``, ``threshold_bits``,
    ``similarity_threshold``, ``capacity``, ``chunk_size``. For the baseline the memory fields are zeros.
    """
    device = torch.device(device) if device is not None else model_device(model)
    cfg = model.cfg
    tokens = np.asarray(tokens, dtype=np.int64)
    idx = torch.as_tensor(tokens, device=device)[None]                       # (1, T)
    T = idx.shape[1]
    out = model(idx, introspect=bool(cfg.use_ltm))
    with_ids, with_probs = _top_k(out.logits[0])
    if cfg.use_ltm:
        without = model(idx, memory_read=False)
        without_ids, without_probs = _top_k(without.logits[0])
    else:
        without_ids, without_probs = with_ids, with_probs
    n_chunks = -(-T // cfg.chunk_size)
    trace = out.trace
    result = {
        "tokens": tokens,
        "surprisal_bits": out.surprisal_bits[0].float().cpu().numpy(),
        "routed": np.zeros(T, bool), "hit_count": np.zeros(T, np.int64),
        "top_hit_positions": np.full((T, 1), -1, np.int64), "top_hit_tokens": np.full((T, 1), -1, np.int64),
        "top_hit_cosines": np.zeros((T, 1), np.float32),
        "occupancy": np.zeros(n_chunks, np.int64), "evictions": np.zeros(n_chunks, np.int64),
        "top_ids_with": with_ids, "top_probs_with": with_probs,
        "top_ids_without": without_ids, "top_probs_without": without_probs,
        "use_ltm": bool(cfg.use_ltm), "threshold_bits": float(cfg.ltm_write_threshold_bits),
        "similarity_threshold": float(cfg.ltm_similarity_threshold), "capacity": int(cfg.ltm_capacity),
        "chunk_size": int(cfg.chunk_size), "stats": memory_rates(out.stats),
    }
    if trace is not None:
        for key in ("routed", "hit_count", "top_hit_positions", "top_hit_tokens", "top_hit_cosines",
                    "occupancy", "evictions"):
            result[key] = getattr(trace, key)[0].cpu().numpy()
        result["routed"] = result["routed"].astype(bool)
    return result


def hits_per_chunk(trace: dict) -> np.ndarray:
    """Tokens with at least one memory hit, per chunk."""
    hits = (np.asarray(trace["hit_count"]) > 0).astype(np.int64)
    n_chunks = len(trace["occupancy"])
    padded = np.zeros(n_chunks * trace["chunk_size"], np.int64)
    padded[:len(hits)] = hits
    return padded.reshape(n_chunks, trace["chunk_size"]).sum(1)


@torch.inference_mode()
def threshold_sweep(model, tokens, thresholds, device=None) -> list[dict]:
    """Routed ratio and hit rate of one text at each write threshold (same weights, cfg changed).

    The model is copied with ``ltm_write_threshold_bits`` replaced, so this works whether the model reads
    its config at forward time or at construction. Returns one dict per threshold.
    """
    from revena_lib.models.transformer import RevenaLM

    device = torch.device(device) if device is not None else model_device(model)
    idx = torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=device)[None]     # (1, T)
    rows = []
    for threshold in thresholds:
        cfg = copy.deepcopy(model.cfg)
        cfg.ltm_write_threshold_bits = float(threshold)
        variant = RevenaLM(cfg).to(device).eval()
        variant.load_state_dict(model.state_dict())
        out = variant(idx)
        rates = memory_rates(out.stats)
        rows.append({"write_threshold_bits": float(threshold),
                     "routed_token_ratio": rates["routed_token_ratio"], "ltm_hit_rate": rates["ltm_hit_rate"],
                     "bits_per_token": float(out.surprisal_bits[0, 1:].double().mean())})
        del variant
    return rows


# -----------------------------------------------------------------------------
# Rendering

def surprisal_colour(bits: float, max_bits: float = MAX_BITS) -> str:
    """White (0 bits) -> red (max_bits and above), as #rrggbb."""
    x = 0.0 if not np.isfinite(bits) else min(max(bits / max_bits, 0.0), 1.0)
    g = round(255 * (1 - 0.85 * x))
    return f"#ff{g:02x}{g:02x}"


def _visible(text: str) -> str:
    """Token text for a button label: whitespace made visible."""
    if text == "":
        return "∅"
    shown = text.replace("\n", "↵").replace("\t", "⇥")
    return "␣" if shown.strip() == "" and " " in shown else shown


def _hit_list(trace_or_arrays, i: int, texts: list[str]) -> list[tuple[int, str, float]]:
    positions = trace_or_arrays.get("top_hit_positions")
    if positions is None:
        return []
    cosines = trace_or_arrays.get("top_hit_cosines")
    out = []
    for k, pos in enumerate(np.asarray(positions[i]).tolist()):
        if pos < 0:
            continue
        text = texts[pos] if pos < len(texts) else "?"
        out.append((int(pos), text, float(cosines[i][k]) if cosines is not None else float("nan")))
    return out


def static_token_html(token_texts, surprisal_bits, routed=None, hit_count=None, top_hit_positions=None,
                      top_hit_cosines=None, threshold_bits: float = 4.5, max_bits: float = MAX_BITS) -> str:
    """Tokens coloured by surprisal as plain HTML spans (one ``.revena-token`` per token, ``data-index`` = position).

    Routed tokens (written to the LTM) are underlined in blue; tokens whose query hit the memory are
    outlined in green; hover shows position, surprisal, routed, and the entries hit (text@position, cosine).
    Inputs are plain sequences of equal length (``top_hit_*``: (T, K), -1 = no hit).
    """
    texts = list(token_texts)
    T = len(texts)
    s = np.asarray(surprisal_bits, float)
    routed = np.zeros(T, bool) if routed is None else np.asarray(routed, bool)
    hit_count = np.zeros(T, np.int64) if hit_count is None else np.asarray(hit_count)
    arrays = {"top_hit_positions": top_hit_positions, "top_hit_cosines": top_hit_cosines}
    spans = []
    for i, text in enumerate(texts):
        style = [f"background:{surprisal_colour(s[i], max_bits)}"]
        if routed[i]:
            style.append("border-bottom:3px solid #1f4e9c")
        if hit_count[i] > 0:
            style.append("outline:2px dotted #2ca02c")
        hits = _hit_list(arrays, i, texts) if top_hit_positions is not None else []
        tip = f"#{i} {text!r}: {s[i]:.2f} bits" + (" · routed to LTM" if routed[i] else "")
        if hit_count[i] > 0:
            tip += f" · {int(hit_count[i])} memory hit(s)"
            if hits:
                tip += ": " + ", ".join(f"{t!r}@{p} ({c:.2f})" for p, t, c in hits)
        spans.append(f'<span class="revena-static-token" data-index="{i}" '
                     f'data-surprisal="{s[i]:.3f}" data-routed="{int(routed[i])}" '
                     f'title="{html.escape(tip, quote=True)}" style="{";".join(style)}">{html.escape(text)}</span>')
    legend = (f'<div style="font-size:85%;color:#555;margin-bottom:4px">colour: surprisal 0 → {max_bits:g}+ bits '
              f'(white → red) · <span style="border-bottom:3px solid #1f4e9c">underlined</span>: above '
              f'{threshold_bits:g} bits, written to the LTM · <span style="outline:2px dotted #2ca02c">outlined</span>: '
              f'read a memory entry · hover a token for details · {int(routed.sum())}/{T} routed, '
              f'{int((hit_count > 0).sum())}/{T} with hits</div>')
    return (f'<div class="revena-static">{legend}<div style="font-family:monospace;white-space:pre-wrap;'
            f'line-height:1.9;padding:6px;border:1px solid #ddd">{"".join(spans)}</div></div>')


def static_trace_html(trace: dict, tokenizer, max_bits: float = MAX_BITS) -> str:
    """``static_token_html`` of a ``trace_document`` result."""
    return static_token_html(token_texts(tokenizer, trace["tokens"]), trace["surprisal_bits"], trace["routed"],
                             trace["hit_count"], trace["top_hit_positions"], trace["top_hit_cosines"],
                             threshold_bits=trace["threshold_bits"], max_bits=max_bits)


def detail_html(trace: dict, texts: list[str], i: int, tokenizer) -> str:
    """The detail panel for token i: its memory hits and the top-5 predictions with/without memory."""
    s = float(trace["surprisal_bits"][i])
    routed = bool(trace["routed"][i])
    head = (f"<div><b>Token #{i}</b> <code>{html.escape(repr(texts[i]))}</code> · surprisal {s:.2f} bits "
            f"(write threshold {trace['threshold_bits']:g}) · "
            f"{'<b>routed</b>: written to the LTM' if routed else 'not routed'}</div>")
    hits = _hit_list(trace, i, texts)
    if not trace["use_ltm"]:
        hit_rows = "<tr><td colspan=3><i>the baseline has no memory</i></td></tr>"
    elif not hits:
        hit_rows = (f"<tr><td colspan=3><i>no entry above cosine {trace['similarity_threshold']:g} "
                    f"({int(trace['hit_count'][i])} hits)</i></td></tr>")
    else:
        hit_rows = "".join(f"<tr><td><code>{html.escape(repr(t))}</code></td><td>{p}</td><td>{c:.3f}</td></tr>"
                           for p, t, c in hits)
    hits_table = (f"<h4 style='margin:6px 0 2px'>Memory hits ({int(trace['hit_count'][i])})</h4>"
                  f"<table><tr><th>earlier token</th><th>position</th><th>cosine</th></tr>{hit_rows}</table>")
    tokens = trace["tokens"]
    actual = (f"actual next token: <code>{html.escape(repr(texts[i + 1]))}</code>" if i + 1 < len(tokens)
              else "end of text")
    rows = []
    for k in range(trace["top_ids_with"].shape[1]):
        w_id, w_p = int(trace["top_ids_with"][i, k]), float(trace["top_probs_with"][i, k])
        o_id, o_p = int(trace["top_ids_without"][i, k]), float(trace["top_probs_without"][i, k])
        rows.append(f"<tr><td>{k + 1}</td><td><code>{html.escape(repr(tokenizer.decode([w_id])))}</code> {w_p:.3g}</td>"
                    f"<td><code>{html.escape(repr(tokenizer.decode([o_id])))}</code> {o_p:.3g}</td></tr>")
    without_label = "without memory reads" if trace["use_ltm"] else "without memory (same: baseline)"
    predictions = (f"<h4 style='margin:6px 0 2px'>Top predictions</h4><div>{actual}</div>"
                   f"<table><tr><th>#</th><th>with memory</th><th>{without_label}</th></tr>{''.join(rows)}</table>")
    return f"<div style='font-size:90%'>{head}{hits_table}{predictions}</div>"


# -----------------------------------------------------------------------------
# The widget

def _document_choices(documents, tokenizer, limit: int = 50) -> list[tuple[str, np.ndarray]]:
    """(label, tokens) pairs from a TokenSplit, a list of token arrays / strings, or a {label: tokens|str} dict."""
    if hasattr(documents, "document") and hasattr(documents, "num_docs"):
        items = [(f"validation document {i}", np.asarray(documents.document(i)))
                 for i in range(min(documents.num_docs, limit))]
    elif isinstance(documents, dict):
        items = list(documents.items())
    else:
        items = [(f"document {i}", d) for i, d in enumerate(documents)]
    choices = []
    for label, doc in items:
        if isinstance(doc, str):
            doc = np.array([tokenizer.eot_token] + encode_text(tokenizer, doc), dtype=np.int64)
        doc = np.asarray(doc, dtype=np.int64)
        preview = tokenizer.decode(doc[1:13].tolist()).strip().replace("\n", " ")
        choices.append((f"{label}: {preview[:50]}…", doc))
    return choices


def _make_widget_class():
    import ipywidgets as widgets

    class ProbeWidget(widgets.VBox):
        """Document picker / text box, clickable tokens, and a detail panel. ``select_token(i)`` = clicking token i."""

        def __init__(self, model, tokenizer, documents, max_tokens: int = DEFAULT_MAX_TOKENS, device=None):
            self.model, self.tokenizer, self.max_tokens, self.device = model, tokenizer, max_tokens, device
            self.choices = _document_choices(documents, tokenizer) if documents is not None else []
            self.dropdown = widgets.Dropdown(options=[(label, k) for k, (label, _) in enumerate(self.choices)],
                                             description="Document", layout=widgets.Layout(width="70%"))
            self.text = widgets.Textarea(placeholder="...or type any text here and press Probe",
                                         layout=widgets.Layout(width="70%", height="60px"))
            self.probe_button = widgets.Button(description="Probe", button_style="primary",
                                               tooltip="run the model on the typed text")
            self.status = widgets.HTML()
            self.tokens_box = widgets.Box(layout=widgets.Layout(display="flex", flex_flow="row wrap",
                                                                align_items="flex-start", width="100%"))
            self.tokens_box.add_class("revena-tokens")
            self.detail = widgets.HTML(value="<i>Click a token to inspect it.</i>",
                                       layout=widgets.Layout(border="1px solid #ccc", padding="6px",
                                                             min_height="80px", width="100%"))
            self.detail.add_class("revena-detail")
            self.token_buttons: list = []
            self.trace: dict | None = None
            self.texts: list[str] = []
            self.selected: int | None = None
            self.dropdown.observe(lambda change: self.probe_document(change["new"]), names="value")
            self.probe_button.on_click(lambda _: self.probe_text(self.text.value))
            super().__init__([self.dropdown, widgets.HBox([self.text, self.probe_button]), self.status,
                              self.tokens_box, self.detail])
            self.add_class("revena-probe")
            if self.choices:
                self.probe_document(0)

        def probe_document(self, k: int) -> None:
            self.probe_tokens(self.choices[k][1])

        def probe_text(self, text: str) -> None:
            if not text.strip():
                self.status.value = "<i>type some text first</i>"
                return
            self.probe_tokens([self.tokenizer.eot_token] + encode_text(self.tokenizer, text))

        def probe_tokens(self, tokens) -> None:
            tokens = np.asarray(tokens, dtype=np.int64)[:self.max_tokens]
            self.trace = trace_document(self.model, tokens, self.device)
            self.texts = token_texts(self.tokenizer, tokens)
            s = self.trace["surprisal_bits"]
            buttons = []
            for i, text in enumerate(self.texts):
                tip = f"#{i} {s[i]:.2f} bits" + (" · routed" if self.trace["routed"][i] else "")
                if self.trace["hit_count"][i] > 0:
                    tip += f" · {int(self.trace['hit_count'][i])} memory hit(s)"
                button = widgets.Button(description=_visible(text), tooltip=tip,
                                        layout=widgets.Layout(width="auto", height="auto", margin="1px",
                                                              padding="0px 3px",
                                                              border=("2px solid #1f4e9c" if self.trace["routed"][i]
                                                                      else "1px solid #e0e0e0")))
                button.style.button_color = surprisal_colour(s[i])
                if self.trace["hit_count"][i] > 0:
                    button.style.text_decoration = "underline"
                    button.style.font_weight = "bold"
                for cls in ("revena-token", "revena-widget-token", f"revena-token-{i}"):
                    button.add_class(cls)
                if self.trace["routed"][i]:
                    button.add_class("revena-routed")
                button.on_click(lambda _, i=i: self.select_token(i))
                buttons.append(button)
            self.token_buttons = buttons
            self.tokens_box.children = buttons
            self.selected = None
            self.detail.value = "<i>Click a token to inspect it.</i>"
            stats = self.trace["stats"]
            self.status.value = (f"{len(tokens)} tokens · routed {int(self.trace['routed'].sum())} · tokens with hits "
                                 f"{int((self.trace['hit_count'] > 0).sum())} · routed ratio "
                                 f"{stats.get('routed_token_ratio', 0.0):.3f} · hit rate {stats.get('ltm_hit_rate', 0.0):.3f}"
                                 f" · blue border = routed, bold underlined = memory hit")

        def select_token(self, i: int) -> None:
            if self.selected is not None and self.selected < len(self.token_buttons):
                self.token_buttons[self.selected].remove_class("revena-selected")
                self.token_buttons[self.selected].style.font_style = "normal"
            self.selected = i
            self.token_buttons[i].add_class("revena-selected")
            self.token_buttons[i].style.font_style = "italic"
            self.detail.value = detail_html(self.trace, self.texts, i, self.tokenizer)

    return ProbeWidget


def probe_widget(model, tokenizer, documents, max_tokens: int = DEFAULT_MAX_TOKENS, device=None):
    """The interactive probe (ipywidgets VBox subclass). Also installs the tiny script giving buttons ``data-index``."""
    try:
        from IPython import get_ipython
        from IPython.display import Javascript, display

        if get_ipython() is not None:
            display(Javascript(DATA_INDEX_JS))
    except ImportError:
        pass
    return _make_widget_class()(model, tokenizer, documents, max_tokens=max_tokens, device=device)
