"""Figures from a results dict (``results/results.json``); training curves are in ``plots_train.py``.

``results_figure`` is matplotlib (PNG export works offline, no kaleido); ``results_plotly`` is the same
content as an interactive plotly figure, written as a self-contained HTML file (plotly.js inlined).
The notebook-04 figures (surprisal per token, memory over a document, the threshold explorer) are here too.

    from revena_lib.analysis.plots import save_results_plots
    save_results_plots(load_results())   # writes results/results.png and results/results.html
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from revena_lib.arms import arm_style
from revena_lib.paths import results_dir as default_results_dir

BARS = (("bpc", "BPC (lower is better)"), ("long_range_recall", "long-range recall"),
        ("tokens_per_sec", "tokens / sec"))
FOREST = (("bpc", "BPC difference vs baseline (< 0 is better)"),
          ("long_range_recall", "recall difference vs baseline (> 0 is better)"))
VERDICT_MARK = {"better": "better", "worse": "worse", "no detectable difference": "n.s.",
                "cannot tell": "cannot tell"}


def _arms(results: dict) -> list[str]:
    return [k for k in results if k not in ("comparisons", "reference")]


def _label(arm: str) -> str:
    return arm_style(arm)[0]


def _colour(arm: str) -> str:
    return arm_style(arm)[1]


def _comparisons(results: dict, key: str) -> list[tuple[str, dict]]:
    """(arm, comparison of key) for every arm compared with the baseline, in results order."""
    cmp = results.get("comparisons", {})
    return [(arm, cmp[arm][key]) for arm in _arms(results) if arm in cmp and key in cmp[arm]]


def _ci(results: dict, arm: str, key: str) -> tuple[float, float]:
    lo, hi = results[arm].get("ci95", {}).get(key, [math.nan, math.nan])
    return (math.nan if lo is None else lo), (math.nan if hi is None else hi)


def _error(value: float, lo: float, hi: float) -> tuple[float, float]:
    """Distances below/above the value for error bars (0 where unknown)."""
    below, above = value - lo, hi - value
    return (0.0 if not np.isfinite(below) else max(below, 0.0)), (0.0 if not np.isfinite(above) else max(above, 0.0))


def _diff_text(results: dict, key: str, fmt: str = "{:+.3g}") -> str:
    """The headline pair's difference in a panel title: with_ltm - baseline, interval, verdict."""
    diff = results.get("comparisons", {}).get("with_ltm", {}).get(key)
    if not diff:
        return ""
    lo, hi = diff["ci95"]
    return f"LTM - base {fmt.format(diff['diff'])} [{fmt.format(lo)}, {fmt.format(hi)}]: {diff['verdict']}"


def _window(results: dict) -> int:
    for arm in _arms(results):
        window = results[arm].get("run", {}).get("window")
        if window:
            return int(window)
    return 128


def _by_distance(results: dict, arm: str, key: str) -> tuple[list[int], list[float]]:
    rows = results[arm].get("recall_by_distance", {})
    distances = sorted(int(d) for d in rows)
    return distances, [rows[str(d)].get(key, math.nan) for d in distances]


def _receptive_field(results: dict) -> int | None:
    return results.get("baseline", {}).get("run", {}).get("receptive_field")


def _subtitle(results: dict) -> str:
    run = results.get("baseline", {}).get("run", {})
    seeds = run.get("seeds") or []
    return (f"corpus {run.get('corpus', '?')} · preset {run.get('preset', '?')} · device {run.get('device', '?')} "
            f"{run.get('dtype', '')} · seeds {', '.join(str(s) for s in seeds) or '?'} · "
            f"95% intervals over seeds and documents/items")


def _forest(ax, results: dict, key: str, title: str) -> None:
    """Each arm's difference from the baseline with its interval and verdict (matplotlib)."""
    rows = _comparisons(results, key)
    for i, (arm, c) in enumerate(rows):
        lo, hi = (math.nan if v is None else v for v in c["ci95"])
        ax.errorbar([c["diff"]], [i], xerr=[[max(c["diff"] - lo, 0)], [max(hi - c["diff"], 0)]], fmt="o",
                    color=_colour(arm), capsize=4)
        ax.annotate(VERDICT_MARK.get(c["verdict"], c["verdict"]), (c["diff"], i), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=8)
    ax.axvline(0, color="#999999", lw=1)
    ax.set_yticks(range(len(rows)), [_label(a) for a, _ in rows])
    ax.set_ylim(-0.7, max(len(rows), 1) - 0.3)
    ax.set_title(title, fontsize=10)


def results_figure(results: dict) -> Figure:
    """Bars (BPC, long-range recall, tokens/sec, with 95% intervals) and curves by recall distance."""
    arms = _arms(results)
    window = _window(results)
    fig = Figure(figsize=(20, 8.5), layout="constrained")
    axes = fig.subplots(2, 4)
    _bar_panels(axes[0], results, arms, window)
    _recall_panels(axes[1][:2], results, arms)
    _hit_rate_panel(axes[1][2], results)
    for ax, (key, title) in zip(axes[:, 3], FOREST):
        _forest(ax, results, key, title)
    _distance_lines(axes[1][:3], results, arms, window)
    # one legend for the arms, below the panels: per-panel legends of up to 11 arms x 2 lines covered the curves
    handles = [Line2D([], [], color=_colour(a), marker="o", label=_label(a)) for a in arms]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(arms), 6), fontsize=8)
    fig.suptitle(f"Revena: which memory helps?  ({_subtitle(results)})", fontsize=11)
    return fig


def _bar_panels(axes, results: dict, arms: list[str], window: int) -> None:
    """The top row: one bar per arm for each of BARS, with its interval and the headline pair's difference."""
    for ax, (key, title) in zip(axes, BARS):
        values = [results[arm][key] for arm in arms]
        errors = np.array([_error(v, *_ci(results, arm, key)) for v, arm in zip(values, arms)]).T   # (2, arms)
        ax.bar([_label(a) for a in arms], values, yerr=errors, capsize=6, color=[_colour(a) for a in arms])
        many = len(arms) > 5   # then labels and values turn, so that neighbours do not overprint each other
        ax.tick_params(axis="x", labelrotation=(40 if many else 20) if len(arms) > 3 else 0, labelsize=8)
        if many:
            ax.set_xticks(range(len(arms)), [_label(a) for a in arms], ha="right", rotation_mode="anchor")
        for i, v in enumerate(values):
            ax.annotate(f"{v:,.0f}" if key == "tokens_per_sec" else f"{v:.3g}", (i, v), textcoords="offset points",
                        xytext=(0, 3), ha="center", va="bottom", rotation=90 if many else 0, fontsize=7 if many else 10)
        diff = _diff_text(results, key)
        ax.set_title(title + (f"\n{diff}" if diff else ""), fontsize=10)
    axes[1].set_ylim(0, 1.05)
    axes[1].set_ylabel(f"passkey exact match, distance > {window}")


def _recall_panels(axes, results: dict, arms: list[str]) -> None:
    """Recall by distance, exact and graded: every arm's passkey items (solid) and control items (dashed)."""
    recall_panels = (("exact", "recall by distance: exact match", "exact match"),
                     ("logprob_bits", "recall by distance: graded", "answer log2 p per token (higher is better)"))
    for ax, (key, title, ylabel) in zip(axes, recall_panels):
        for arm in arms:
            d, passkey = _by_distance(results, arm, key)
            _, control = _by_distance(results, arm, f"control_{key}")
            ax.plot(d, passkey, "o-", color=_colour(arm))
            ax.plot(d, control, "s--", color=_colour(arm), alpha=0.6)
        # colours are the arms (the figure's legend); here only what solid and dashed mean
        ax.plot([], [], "o-", color="#555555", label="pass key")
        ax.plot([], [], "s--", color="#555555", alpha=0.6, label="control: a colour word (low surprisal)")
        ax.set(title=title, xlabel="filler tokens between fact and question", ylabel=ylabel)
    axes[0].set_ylim(-0.03, 1.03)


def _hit_rate_panel(ax, results: dict) -> None:
    """The with_ltm arm's memory hits by recall distance: any hit, at the answer, in the fact, useful, still held."""
    if "with_ltm" in results:
        d, hit = _by_distance(results, "with_ltm", "memory_hit_rate")
        _, answer_hit = _by_distance(results, "with_ltm", "answer_hit")
        _, near = _by_distance(results, "with_ltm", "answer_hit_in_fact")
        _, useful = _by_distance(results, "with_ltm", "useful_hit")
        _, held = _by_distance(results, "with_ltm", "answer_in_memory")
        ax.plot(d, hit, "o-", color=_colour("with_ltm"), label="tokens with >= 1 hit")
        ax.plot(d, answer_hit, "^-", color="#ff7f0e", label="answer position hit")
        ax.plot(d, near, "v:", color="#98df8a", label="... anywhere in the fact")
        ax.plot(d, useful, "v-", color="#2ca02c", label="... on the answer's tokens (useful)")
        ax.plot(d, held, "s--", color="#7f7f7f", label="answer still in memory when asked")
        ax.axhline(results["with_ltm"].get("memory_hit_rate", math.nan), color="#999999", lw=1,
                   label="validation documents")
    ax.set(title="LTM hit rate by recall distance", xlabel="filler tokens between fact and question",
           ylabel="share", ylim=(-0.03, 1.03))


def _distance_lines(axes, results: dict, arms: list[str], window: int) -> None:
    """On the by-distance panels: the window, the receptive field and the LTM entry lifetime as vertical lines, the
    legends, and a log2 distance axis."""
    distances = sorted({d for arm in arms for d in _by_distance(results, arm, "exact")[0]})
    field = _receptive_field(results)
    for ax in axes:
        ax.axvline(window, color="#d62728", ls=":", lw=1.5, label=f"window ({window})")
        if field:
            ax.axvline(field, color="#9467bd", ls="-.", lw=1.5, label=f"receptive field ({field})")
        lifetime = (results.get("with_ltm", {}).get("ltm_entry_lifetime") or {}).get("median")
        if lifetime:
            ax.axvline(lifetime, color="#1f77b4", ls="--", lw=1, label=f"LTM entry lifetime, median ({lifetime:.0f})")
        ax.legend(fontsize=7)
        if distances and min(distances) > 0:
            ax.set_xscale("log", base=2)
            ax.set_xticks(distances, [str(d) for d in distances])
            ax.minorticks_off()


def results_plotly(results: dict):
    """The same panels as ``results_figure`` as an interactive plotly figure (vertical lines: window dotted,
    receptive field dash-dotted)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    arms = _arms(results)
    window = _window(results)
    titles = [title + (f"<br><sup>{_diff_text(results, key)}</sup>" if _diff_text(results, key) else "")
              for key, title in BARS]
    titles.insert(3, FOREST[0][1])
    titles += ["recall by distance: exact match", "recall by distance: answer log2 p (graded)",
               "LTM hit rate by recall distance", FOREST[1][1]]
    fig = make_subplots(rows=2, cols=4, subplot_titles=titles, vertical_spacing=0.16)
    for col, (key, _) in enumerate(BARS, start=1):
        values = [results[arm][key] for arm in arms]
        errors = np.array([_error(v, *_ci(results, arm, key)) for v, arm in zip(values, arms)])
        fig.add_trace(go.Bar(x=[_label(a) for a in arms], y=values, marker_color=[_colour(a) for a in arms],
                             error_y=dict(type="data", symmetric=False, array=errors[:, 1], arrayminus=errors[:, 0]),
                             text=[f"{v:.3g}" for v in values], showlegend=False), row=1, col=col)
    for col, (key, control_key) in enumerate((("exact", "control_exact"), ("logprob_bits", "control_logprob_bits")),
                                             start=1):
        for arm in arms:
            d, y = _by_distance(results, arm, key)
            _, c = _by_distance(results, arm, control_key)
            fig.add_trace(go.Scatter(x=d, y=y, mode="lines+markers", name=f"{_label(arm)} passkey",
                                     line=dict(color=_colour(arm)), legendgroup=arm, showlegend=col == 1),
                          row=2, col=col)
            fig.add_trace(go.Scatter(x=d, y=c, mode="lines+markers", name=f"{_label(arm)} control",
                                     line=dict(color=_colour(arm), dash="dash"), legendgroup=arm + "c",
                                     showlegend=col == 1), row=2, col=col)
    if "with_ltm" in results:
        for key, name, colour in (("memory_hit_rate", "tokens with >= 1 hit", _colour("with_ltm")),
                                  ("answer_hit", "answer position hit", "#ff7f0e"),
                                  ("answer_hit_in_fact", "... anywhere in the fact", "#98df8a"),
                                  ("useful_hit", "... on the answer's tokens (useful)", "#2ca02c"),
                                  ("answer_in_memory", "answer still in memory when asked", "#7f7f7f")):
            d, y = _by_distance(results, "with_ltm", key)
            fig.add_trace(go.Scatter(x=d, y=y, mode="lines+markers", name=name, line=dict(color=colour)),
                          row=2, col=3)
    for row, (key, _) in enumerate(FOREST, start=1):
        rows = _comparisons(results, key)
        fig.add_trace(go.Scatter(
            x=[c["diff"] for _, c in rows], y=[_label(a) for a, _ in rows], mode="markers+text",
            text=[VERDICT_MARK.get(c["verdict"], c["verdict"]) for _, c in rows], textposition="top center",
            marker=dict(color=[_colour(a) for a, _ in rows], size=10), showlegend=False,
            error_x=dict(type="data", symmetric=False, array=[(c["ci95"][1] or 0) - c["diff"] for _, c in rows],
                         arrayminus=[c["diff"] - (c["ci95"][0] or 0) for _, c in rows])), row=row, col=4)
        fig.add_vline(x=0, line_color="#999999", row=row, col=4)
    field = _receptive_field(results)
    for col in (1, 2, 3):
        fig.add_vline(x=window, line_dash="dot", line_color="#d62728", row=2, col=col)
        if field:
            fig.add_vline(x=field, line_dash="dashdot", line_color="#9467bd", row=2, col=col)
        fig.update_xaxes(title_text="filler tokens between fact and question", type="log", row=2, col=col)
    fig.update_layout(height=800, title=f"Revena: which memory helps?<br><sup>{_subtitle(results)}</sup>",
                      template="plotly_white")
    return fig


def save_results_plots(results: dict, out_dir=None) -> dict:
    """Write ``results.png`` (matplotlib) and ``results.html`` (plotly, works offline); returns their paths."""
    out_dir = Path(out_dir) if out_dir else default_results_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    png, html = out_dir / "results.png", out_dir / "results.html"
    tmp_png, tmp_html = out_dir / ".results.png.tmp", out_dir / ".results.html.tmp"
    results_figure(results).savefig(tmp_png, format="png", dpi=110)
    tmp_png.replace(png)
    results_plotly(results).write_html(tmp_html, include_plotlyjs=True, full_html=True)
    tmp_html.replace(html)
    return {"png": png, "html": html}


# -----------------------------------------------------------------------------
# Notebook 04: one document through the LTM model

def surprisal_figure(token_texts, surprisal_bits, routed, hit_count=None, threshold_bits: float = 4.5):
    """Plotly: surprisal per token with the write threshold; routed tokens and memory hits marked."""
    import plotly.graph_objects as go

    s = np.asarray(surprisal_bits, float)
    routed = np.asarray(routed, bool)
    positions = np.arange(len(s))
    labels = [repr(t) for t in token_texts]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=positions, y=s, mode="lines", name="surprisal (bits)", line=dict(color="#999999"),
                             text=labels, hovertemplate="#%{x} %{text}<br>%{y:.2f} bits<extra></extra>"))
    fig.add_trace(go.Scatter(x=positions[routed], y=s[routed], mode="markers", name="routed to LTM",
                             marker=dict(color="#d62728", size=6), text=[labels[i] for i in positions[routed]],
                             hovertemplate="#%{x} %{text}<br>%{y:.2f} bits, written<extra></extra>"))
    if hit_count is not None:
        hits = np.asarray(hit_count) > 0
        fig.add_trace(go.Scatter(x=positions[hits], y=s[hits], mode="markers", name="memory hit",
                                 marker=dict(symbol="circle-open", color="#2ca02c", size=10, line=dict(width=2)),
                                 text=[labels[i] for i in positions[hits]],
                                 hovertemplate="#%{x} %{text}<br>read from memory<extra></extra>"))
    fig.add_hline(y=threshold_bits, line_dash="dash", line_color="#d62728",
                  annotation_text=f"write threshold {threshold_bits} bits")
    fig.update_layout(height=380, template="plotly_white", xaxis_title="token position",
                      yaxis_title="surprisal (bits)", title="Which tokens the LTM writes")
    return fig


def memory_figure(occupancy, evictions, hits_per_chunk=None, capacity: int | None = None):
    """Plotly: entries in memory and evictions after each chunk (and hits per chunk)."""
    import plotly.graph_objects as go

    chunks = np.arange(len(occupancy))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=chunks, y=list(occupancy), mode="lines+markers", name="entries in memory"))
    fig.add_trace(go.Bar(x=chunks, y=list(evictions), name="evicted (FIFO)", marker_color="#d62728", opacity=0.6))
    if hits_per_chunk is not None:
        fig.add_trace(go.Bar(x=chunks, y=list(hits_per_chunk), name="tokens with a hit", marker_color="#2ca02c",
                             opacity=0.6))
    if capacity:
        fig.add_hline(y=capacity, line_dash="dot", annotation_text=f"capacity {capacity}")
    fig.update_layout(height=340, template="plotly_white", xaxis_title="chunk", yaxis_title="count",
                      barmode="group", title="Memory over the document")
    return fig


def threshold_figure(rows: list[dict]):
    """Plotly: routed ratio and hit rate as a function of the write threshold. rows: dicts with those keys."""
    import plotly.graph_objects as go

    x = [r["write_threshold_bits"] for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=[r["routed_token_ratio"] for r in rows], mode="lines+markers",
                             name="routed token ratio"))
    fig.add_trace(go.Scatter(x=x, y=[r["ltm_hit_rate"] for r in rows], mode="lines+markers", name="LTM hit rate"))
    if rows and "bpc" in rows[0]:
        fig.add_trace(go.Scatter(x=x, y=[r["bpc"] for r in rows], mode="lines+markers", name="BPC of the document",
                                 yaxis="y2"))
        fig.update_layout(yaxis2=dict(title="BPC", overlaying="y", side="right"))
    fig.update_layout(height=340, template="plotly_white", xaxis_title="write threshold (bits)",
                      yaxis_title="share of tokens", title="Threshold explorer")
    return fig
