"""The probe widget: pick a document (or type text), click a token, see the memory entries it hit and the top
predictions with and without memory reads (ipywidgets; the trace and the HTML come from ``probe.py``).

Every token is a button (classes ``revena-token revena-widget-token revena-token-<i>``); clicking one fills the
detail panel (class ``revena-detail``) with "Memory hits" and "Top predictions". tests/test_browser.py drives these
classes in a real JupyterLab.

    from revena_lib.analysis.probe_widget import probe_widget
    probe_widget(model, get_tokenizer(), load_split("val"))   # last expression of a notebook cell
"""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np

from revena_lib.analysis.probe import DEFAULT_MAX_TOKENS, detail_html, surprisal_colour, token_texts, trace_document
from revena_lib.data.tokenizer import encode_text

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


def _visible(text: str) -> str:
    """Token text for a button label: whitespace made visible."""
    if text == "":
        return "∅"
    shown = text.replace("\n", "↵").replace("\t", "⇥")
    return "␣" if shown.strip() == "" and " " in shown else shown


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


def probe_widget(model, tokenizer, documents, max_tokens: int = DEFAULT_MAX_TOKENS, device=None):
    """The interactive probe (ipywidgets VBox subclass). Also installs the tiny script giving buttons ``data-index``."""
    try:
        from IPython import get_ipython
        from IPython.display import Javascript, display

        if get_ipython() is not None:
            display(Javascript(DATA_INDEX_JS))
    except ImportError:
        pass
    return ProbeWidget(model, tokenizer, documents, max_tokens=max_tokens, device=device)
