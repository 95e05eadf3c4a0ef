"""Training figures and tables for ``notebooks/03_train.ipynb``, read from each run's ``metrics.jsonl``.

    from revena_lib.analysis.plots_train import plot_losses
    plot_losses({"baseline": "trained/baseline/cpu/seed-1337", "with_ltm": "trained/with_ltm/cpu/seed-1337"}).show()
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from revena_lib.arms import arm_style
from revena_lib.training.checkpoint import read_config
from revena_lib.training.runs import read_metrics


def training_summary(runs: dict) -> pd.DataFrame:
    """One row per arm: steps, final train/val loss, val BPC (estimate) next to the unigram BPC, speed."""
    rows = []
    for arm, run in runs.items():
        config = read_config(run)
        metrics = read_metrics(run)
        evaluated = metrics.dropna(subset=["val_bpc"]) if "val_bpc" in metrics else metrics.iloc[0:0]
        rows.append({
            "arm": arm,
            "parameters": config.get("num_parameters"),
            "steps": config.get("steps_done"),
            "finished": config.get("finished"),
            "train_loss": float(metrics["loss"].iloc[-1]),
            "val_loss": float(evaluated["val_loss"].iloc[-1]) if len(evaluated) else None,
            "val_bpc": float(evaluated["val_bpc"].iloc[-1]) if len(evaluated) else None,
            "unigram_bpc": config.get("unigram_bpc"),
            "median_tok_per_sec": float(metrics["tok_per_sec"].median()),
            "train_minutes": config.get("train_seconds", 0.0) / 60,
            "device": f"{config.get('device')} {config.get('dtype')}",
        })
    return pd.DataFrame(rows).set_index("arm")


def plot_losses(runs: dict) -> go.Figure:
    """Training loss (lines) and validation loss (markers) of each run, in nats per token, against step.

    ``runs``: {label: run_dir}; a label starting with the arm name ("with_ltm seed 7") takes that arm's colour."""
    fig = go.Figure()
    for arm, run in runs.items():
        metrics = read_metrics(run)
        colour = arm_style(str(arm).split()[0])[1]
        fig.add_trace(go.Scatter(x=metrics["step"], y=metrics["loss"], mode="lines", name=f"{arm} train",
                                 line={"color": colour}))
        if "val_loss" in metrics:
            evaluated = metrics.dropna(subset=["val_loss"])
            fig.add_trace(go.Scatter(x=evaluated["step"], y=evaluated["val_loss"], mode="lines+markers",
                                     name=f"{arm} validation", line={"color": colour, "dash": "dot"}))
    fig.update_layout(title="Loss during training (same batches for every arm)", xaxis_title="step",
                      yaxis_title="cross-entropy (nats/token)", hovermode="x unified")
    return fig


def plot_ltm_routing(run) -> go.Figure:
    """The LTM arm's memory traffic over training: share of tokens routed (written), share of tokens with a hit,
    and the mean surprisal of routed tokens (right axis)."""
    metrics = read_metrics(run)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=metrics["step"], y=metrics["routed_token_ratio"], name="routed token ratio"),
                  secondary_y=False)
    fig.add_trace(go.Scatter(x=metrics["step"], y=metrics["ltm_hit_rate"], name="LTM hit rate"), secondary_y=False)
    fig.add_trace(go.Scatter(x=metrics["step"], y=metrics["avg_surprisal_routed"], name="mean surprisal of routed (bits)",
                             line={"dash": "dot"}), secondary_y=True)
    fig.update_layout(title="LTM routing during training", xaxis_title="step", hovermode="x unified")
    fig.update_yaxes(title_text="share of tokens", rangemode="tozero", secondary_y=False)
    fig.update_yaxes(title_text="bits", rangemode="tozero", secondary_y=True)
    return fig
