"""Figures of the sleep experiment (results/sleep.json): the retention/forgetting frontier, retention over days,
general BPC over days. Error bars are 95% bootstrap intervals over seeds, then facts or documents.

    result = load_result(); frontier_figure(result).show(); retention_figure(result).show()
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

COLOURS = {"none": "#7f7f7f", "text": "#1f77b4", "ltm": "#d62728", "text+dreams": "#17becf", "ltm+dreams": "#ff7f0e"}
SYMBOLS = ("circle", "diamond", "square", "triangle-up", "x")
DASHES = ("solid", "dash", "dot", "dashdot")
METRIC_LABEL = {"exact": "exact recall (share of facts)", "log2p": "answer log2 p (bits per token; higher is better)"}


def _subtitle(result: dict) -> str:
    s = result["sleep_config"]
    return (f"{result['arm']} at {result['preset']} ({result['data']}, {result['tokenizer']}, {result['device']}, "
            f"{result['dtype']}), seeds {', '.join(map(str, result['seeds']))}; {len(result['days'])} days; "
            f"a night = {s['steps']} steps at lr {', '.join(f'{x:g}' for x in result.get('lrs', [s['lr']]))}, "
            f"dreams: {s['dream_source']}")


def _lr_index(result: dict, lr: float) -> int:
    lrs = result.get("lrs") or [lr]
    return lrs.index(lr) if lr in lrs else 0


def _bar(stat: dict, value: float) -> tuple[float, float]:
    lo, hi = stat["ci95"]
    return max(0.0, hi - value), max(0.0, value - lo)


def frontier_figure(result: dict, metric: str = "log2p") -> go.Figure:
    """Each variant at (forgetting, retention): general BPC after the last sleep minus before any (x; left is
    better), and recall of each day's facts right after its own sleep (y; up is better). A strategy's learning
    rates are joined by a line: its own trade-off."""
    fig = go.Figure()
    for strategy in result["strategies"]:
        rows = sorted((r for r in result["summary"] if r["strategy"] == strategy), key=lambda r: r["lr"])
        if len(rows) > 1:
            fig.add_trace(go.Scatter(x=[r["forgetting_bpc"]["diff"] for r in rows],
                                     y=[r[f"retention_{metric}"]["mean"] for r in rows], mode="lines",
                                     line=dict(color=COLOURS.get(strategy), width=1), hoverinfo="skip"))
    for row in result["summary"]:
        f, r = row["forgetting_bpc"], row[f"retention_{metric}"]
        x_plus, x_minus = _bar({"ci95": f["ci95"]}, f["diff"])
        y_plus, y_minus = _bar(r, r["mean"])
        fig.add_trace(go.Scatter(
            x=[f["diff"]], y=[r["mean"]], mode="markers+text", text=[row["variant"]], textposition="top center",
            name=row["variant"], marker=dict(size=12, color=COLOURS.get(row["strategy"]),
                                             symbol=SYMBOLS[_lr_index(result, row["lr"]) % len(SYMBOLS)]),
            error_x=dict(type="data", symmetric=False, array=[x_plus], arrayminus=[x_minus]),
            error_y=dict(type="data", symmetric=False, array=[y_plus], arrayminus=[y_minus])))
    fig.add_vline(x=0, line_dash="dot", line_color="#999")
    fig.update_layout(title=f"Retention against forgetting<br><sup>{_subtitle(result)}</sup>",
                      xaxis_title="forgetting: general BPC after the last sleep - before (lower is better)",
                      yaxis_title=f"retention: {METRIC_LABEL[metric]}", height=480, showlegend=False)
    return fig


def retention_figure(result: dict, metric: str = "log2p") -> go.Figure:
    """Day 1's facts asked closed-book before any sleep (0) and after each sleep; and the general BPC."""
    n = len(result["days"])
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"day-1 facts, closed-book: {METRIC_LABEL[metric]}",
                                                        "general BPC (held-out documents)"))
    x = ["before sleep"] + [f"after sleep {k}" for k in range(1, n + 1)]
    for row in result["summary"]:
        colour, dash = COLOURS.get(row["strategy"]), DASHES[_lr_index(result, row["lr"]) % len(DASHES)]
        for col, series in ((1, row[f"day1_curve_{metric}"]), (2, row["general_bpc"])):
            y = [s["mean"] for s in series]
            bars = [_bar(s, v) for s, v in zip(series, y)]
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=row["variant"], legendgroup=row["variant"],
                                     showlegend=col == 1, line=dict(color=colour, dash=dash),
                                     error_y=dict(type="data", symmetric=False, array=[b[0] for b in bars],
                                                  arrayminus=[b[1] for b in bars])), row=1, col=col)
    fig.update_layout(title=f"Retention over days<br><sup>{_subtitle(result)}</sup>", height=460)
    return fig


def save_sleep_figure(result: dict, path) -> None:
    """A static PNG of the frontier (graded retention against forgetting) and day 1's facts over the nights
    (matplotlib: for the README and for readers without a browser)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(result["days"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    markers = ("o", "D", "s", "^", "x")
    for row in result["summary"]:
        f, r = row["forgetting_bpc"], row["retention_log2p"]
        colour, marker = COLOURS.get(row["strategy"], "#333"), markers[_lr_index(result, row["lr"]) % len(markers)]
        ax1.errorbar(f["diff"], r["mean"], xerr=[[f["diff"] - f["ci95"][0]], [f["ci95"][1] - f["diff"]]],
                     yerr=[[r["mean"] - r["ci95"][0]], [r["ci95"][1] - r["mean"]]], fmt=marker, color=colour,
                     capsize=3, label=row["variant"])
        curve = row["day1_curve_log2p"]
        ax2.errorbar(range(n + 1), [c["mean"] for c in curve], fmt=marker, color=colour, capsize=2,
                     yerr=[[c["mean"] - c["ci95"][0] for c in curve], [c["ci95"][1] - c["mean"] for c in curve]],
                     linestyle="-" if _lr_index(result, row["lr"]) == 0 else "--", label=row["variant"])
    ax1.axvline(0, color="#999", linestyle=":")
    ax1.set_xlabel("forgetting: general BPC after the last sleep - before (lower is better)")
    ax1.set_ylabel("retention: answer log2 p after its own sleep (bits/token)")
    ax1.set_title("retention against forgetting")
    ax1.legend(fontsize=7)
    ax2.set_xticks(range(n + 1), ["before"] + [f"sleep {k}" for k in range(1, n + 1)])
    ax2.set_ylabel("day-1 facts, closed-book log2 p (bits/token)")
    ax2.set_title("day 1's facts over the nights")
    fig.suptitle(_subtitle(result), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
