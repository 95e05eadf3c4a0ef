"""A small chat-like widget over a session (``evaluation/session.py``): type text, feed it or generate from it,
watch the state summary and the LTM's entries change, reset.

The conversation log shows every token the session read, shaded by its surprisal (hover for the bits); generated
tokens are underlined. CSS classes (``revena-chat-*``) are what tests/test_browser.py drives.

    from revena_lib.analysis.chat_widget import chat_widget
    display(chat_widget(load_run(run_dir).session()))
"""

from __future__ import annotations

import html

import ipywidgets as widgets

MAX_BITS = 16.0          # surprisal at which the shading saturates
MAX_LOG_TOKENS = 600     # the log shows the latest tokens only (a long session stays responsive)


def _token_html(text: str, bits: float, generated: bool) -> str:
    alpha = min(max(bits, 0.0), MAX_BITS) / MAX_BITS
    style = f"background: rgba(214, 39, 40, {alpha * 0.6:.2f});" + (" text-decoration: underline;" if generated else "")
    return (f'<span class="revena-chat-token" style="{style}" title="{bits:.1f} bits">'
            f"{html.escape(text).replace(chr(10), '↵<br>')}</span>")


def _summary_html(summary: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td><b>{html.escape(str(v))}</b></td></tr>"
                   for k, v in summary.items())
    return f'<table class="revena-chat-summary-table">{rows}</table>'


def _ltm_html(entries: list[dict], limit: int = 40) -> str:
    if not entries:
        return "<i>no LTM entries (this arm has no long-term memory, or nothing surprising was read yet)</i>"
    shown = entries[-limit:]
    cells = " ".join(f'<code title="position {e["position"]}">{html.escape(e["text"])}</code>' for e in shown)
    return f"<b>{len(entries)} LTM entries</b> (latest {len(shown)}, oldest first): {cells}"


def _controls(max_new_tokens: int):
    """The widget's parts, each with its CSS class: the text box, the Feed / Generate / Reset buttons, the log, the
    state summary, the LTM entries and a status line."""
    text = widgets.Textarea(placeholder="Type text, then Feed (read it) or Generate (read it, then continue)",
                            layout=widgets.Layout(width="100%", height="70px"))
    text.add_class("revena-chat-input")
    buttons = {name: widgets.Button(description=name, tooltip=tip) for name, tip in (
        ("Feed", "the session reads the text (its state keeps it)"),
        ("Generate", f"read the text, then continue it by up to {max_new_tokens} tokens"),
        ("Reset", "clear every state: caches, LTM entries, reservoir states, carries"))}
    for name, button in buttons.items():
        button.add_class(f"revena-chat-{name.lower()}")
    log = widgets.HTML(layout=widgets.Layout(max_height="260px", overflow="auto", border="1px solid #ddd",
                                             padding="4px"))
    log.add_class("revena-chat-log")
    summary, ltm, status = widgets.HTML(), widgets.HTML(), widgets.HTML()
    summary.add_class("revena-chat-summary")
    ltm.add_class("revena-chat-ltm")
    status.add_class("revena-chat-status")
    return text, buttons, log, summary, ltm, status


def chat_widget(session, max_new_tokens: int = 24, temperature: float = 0.0, seed: int = 0) -> widgets.VBox:
    """The widget: a text box, Feed / Generate / Reset buttons, the log, the state summary and the LTM entries."""
    text, buttons, log, summary, ltm, status = _controls(max_new_tokens)
    pieces: list[str] = []

    def refresh(message: str = "") -> None:
        log.value = ('<div style="font-family: monospace; white-space: pre-wrap;">'
                     + ("".join(pieces[-MAX_LOG_TOKENS:]) or "<i>nothing read yet</i>") + "</div>")
        summary.value = _summary_html(session.state_summary())
        ltm.value = _ltm_html(session.ltm_entries())
        status.value = html.escape(message)

    def add(result, generated: bool) -> None:
        pieces.extend(_token_html(t, b, generated) for t, b in zip(result.texts, result.surprisal_bits))

    def on_feed(_):
        try:
            if text.value:
                add(session.feed(text.value, start_document=not session.history), generated=False)
            text.value = ""
            refresh("read")
        except Exception as exc:   # shown in the widget: a click handler's exception is otherwise invisible
            refresh(f"error: {exc}")

    def on_generate(_):
        try:
            if text.value or not session.history:
                add(session.feed(text.value, start_document=not session.history), generated=False)
            text.value = ""
            before = len(session.history)
            session.generate("", max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
            new = session.history[before:]
            pieces.extend(_token_html(session.tokenizer.decode([t]), 0.0, True) for t in new)
            refresh(f"generated {len(new)} tokens")
        except Exception as exc:
            refresh(f"error: {exc}")

    def on_reset(_):
        session.reset()
        pieces.clear()
        refresh("reset: the session holds nothing")

    buttons["Feed"].on_click(on_feed)
    buttons["Generate"].on_click(on_generate)
    buttons["Reset"].on_click(on_reset)
    refresh()
    return widgets.VBox([text, widgets.HBox(list(buttons.values()) + [status]), log,
                         widgets.HBox([summary, ltm])])
