"""The reservoir's inner life, for ``notebooks/07_reservoir.ipynb``: states on a real document, the spectrum of W,
the echo-state property, Jaeger's memory capacity, harmonic (FFT) analysis and what the readout leans on.

Computations return numpy arrays and dicts; the ``*_figure`` functions draw them with plotly.

    from revena_lib.analysis.reservoir_analysis import reservoir_run, trace_layer, echo_state_distances
    run = reservoir_run("smoke", train_steps_if_missing=30); model, _ = load_model(run)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from revena_lib.models.reservoir import EchoReservoir, ReservoirLM, leaky_esn


# ----------------------------------------------------------------------------------------------- the run

def reservoir_run(preset: str, seed: int = 0, train_steps_if_missing: int = 0, arm: str = "reservoir") -> Path:
    """A finished run of the reservoir arm under trained/<arm>/<preset>/ (``seed`` 0: the first one). Without one,
    trains ``train_steps_if_missing`` steps of it (needs prepared data: notebook 01), or says how to make one. A run
    it started and that was interrupted (Ctrl-C, a killed pipeline) it resumes exactly."""
    from revena_lib.training.loop import train
    from revena_lib.training.runs import find_runs

    runs = [r for r in find_runs(arm, preset=preset) if not seed or r.name == f"seed-{seed}"]
    if runs:
        return runs[0]
    if train_steps_if_missing <= 0:
        raise FileNotFoundError(f"no finished {preset} run in trained/{arm}/{preset}/: train one with "
                                f"`python -m revena_lib.train --preset {preset} --arm {arm}` (or notebook 03 with "
                                f"arms='{arm}'), or set train_steps_if_missing > 0 here")
    print(f"no trained {arm} run for preset {preset}: training one for {train_steps_if_missing} steps")
    # started_by: a run this function started is resumed by it after an interruption (a re-run of the notebook or
    # the pipeline); one started by hand is only reused when finished
    return train(preset, arm=arm, seed=seed or None, steps=train_steps_if_missing, progress=False,
                 started_by="reservoir_run")


def check_model(model) -> None:
    if not isinstance(model, ReservoirLM):
        raise TypeError(f"reservoir analysis needs a model of family 'reservoir', got {type(model).__name__} "
                        f"(family {getattr(getattr(model, 'cfg', None), 'family', '?')!r})")


@torch.no_grad()
def trace_layer(model: ReservoirLM, tokens, layer: int) -> dict:
    """One document (token ids) through the model from a zero state; layer ``layer``'s reservoir input u (T, C),
    states x (T, N), readout output (T, C), and the model's surprisal (T,) in bits."""
    check_model(model)
    device = next(model.parameters()).device
    idx = torch.tensor(np.asarray(tokens), dtype=torch.long, device=device)[None]
    out = model.eval()(idx, introspect=True)
    t = out.trace
    layer = layer % model.cfg.n_layer
    return {"layer": layer, "inputs": t.inputs[layer][0].numpy(), "states": t.states[layer][0].numpy(),
            "readout": t.readouts[layer][0].numpy(), "surprisal_bits": out.surprisal_bits[0].cpu().numpy()}


def reservoir_of(model: ReservoirLM, layer: int) -> EchoReservoir:
    check_model(model)
    return model.blocks[layer % model.cfg.n_layer].mlp.reservoir


# ----------------------------------------------------------------------------------------------- analyses

def pca_2d(states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trajectory (T, 2) on the first two principal components of the states (T, N), and the share of
    variance each explains."""
    centred = states - states.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    share = s ** 2 / max((s ** 2).sum(), 1e-30)
    return u[:, :2] * s[:2], share[:2]


def eigenvalues(reservoir: EchoReservoir) -> dict:
    """Eigenvalues of W (N,) complex, and of the leaky update linearised at x = 0: mu = (1 - lr) + lr * lambda
    (how a small state perturbation evolves per token; |mu| < 1 decays, arg(mu) rotates)."""
    lam = np.linalg.eigvals(reservoir.W.double().cpu().numpy())
    lr = reservoir.lr
    return {"W": lam, "leaky": (1 - lr) + lr * lam, "lr": lr, "spectral_radius": float(np.abs(lam).max())}


@torch.no_grad()
def echo_state_distances(reservoir: EchoReservoir, inputs: np.ndarray, pairs: int = 4, seed: int = 0) -> np.ndarray:
    """The echo-state property on a real input sequence (T, C): ``pairs`` pairs of random initial states (uniform
    in [-1, 1]^N), both driven by the same input. Returns the Euclidean distance between each pair's states
    over time, (pairs, T + 1) with column 0 the initial distance. Converging to 0: the state forgets where it
    started and depends on the input alone."""
    g = torch.Generator().manual_seed(seed)
    n = reservoir.W.shape[0]
    dtype = torch.float64
    w, w_in, b = reservoir.W.double().cpu(), reservoir.W_in.double().cpu(), reservoir.bias.double().cpu()
    u = torch.as_tensor(inputs, dtype=dtype)[None].expand(2 * pairs, -1, -1)        # (2P, T, C)
    pre = u @ w_in.t() + b
    s0 = torch.rand(2 * pairs, n, generator=g, dtype=dtype) * 2 - 1
    states = torch.cat([s0[:, None], leaky_esn(pre, w, reservoir.lr, s0)], dim=1)    # (2P, T+1, N)
    return (states[:pairs] - states[pairs:]).norm(dim=-1).numpy()


def contraction_rate(distances: np.ndarray, floor: float = 1e-12) -> float:
    """Mean per-token factor by which the distance shrinks (geometric mean over the pairs' fitted slopes)."""
    d = np.clip(distances, floor, None)
    t = np.arange(d.shape[1])
    keep = (d > floor * 10).all(axis=0)
    if keep.sum() < 3:
        keep[:3] = True
    slopes = [np.polyfit(t[keep], np.log(row[keep]), 1)[0] for row in d]
    return float(np.exp(np.mean(slopes)))


@torch.no_grad()
def memory_capacity(reservoir: EchoReservoir, max_delay: int = 60, length: int = 4000, washout: int = 200,
                    input_gain: float = 1.0, ridge: float = 1e-6, seed: int = 0) -> dict:
    """Jaeger's (2002) short-term memory capacity: drive the reservoir with i.i.d. s_t ~ U(-1, 1) along a fixed
    random +-1 direction of its C inputs (times ``input_gain``; a LayerNorm output has this scale), fit a ridge
    readout of s_{t-k} from x_t on the first half, score the squared correlation on the second half.
    MC = sum over k = 1..max_delay of MC_k (at most N). Returns {"delays", "mc_k", "mc", "units"}."""
    rng = np.random.default_rng(seed)
    n, c = reservoir.W_in.shape
    s = rng.uniform(-1, 1, size=length)
    direction = rng.choice([-1.0, 1.0], size=c) * input_gain
    w, w_in, b = reservoir.W.double().cpu(), reservoir.W_in.double().cpu(), reservoir.bias.double().cpu()
    pre = torch.as_tensor(np.outer(s, direction))[None] @ w_in.t() + b             # (1, L, N)
    x = leaky_esn(pre, w, reservoir.lr)[0].numpy()                                   # (L, N)
    x = np.hstack([x, np.ones((length, 1))])                                         # + intercept
    delays = np.arange(1, max_delay + 1)
    half = washout + (length - washout) // 2
    mc_k = []
    for k in delays:
        X, y = x[washout:], s[washout - k:length - k]                               # x_t against s_{t-k}
        ntr = half - washout
        A = X[:ntr]
        coef = np.linalg.solve(A.T @ A + ridge * np.eye(A.shape[1]), A.T @ y[:ntr])
        pred = X[ntr:] @ coef
        r = np.corrcoef(pred, y[ntr:])[0, 1]
        mc_k.append(0.0 if not np.isfinite(r) else r * r)
    mc_k = np.array(mc_k)
    return {"delays": delays, "mc_k": mc_k, "mc": float(mc_k.sum()), "units": int(n)}


def power_spectra(series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies (F,) in cycles per token (0 .. 0.5) and power (K, F) of each column of ``series`` (T, K),
    mean removed and Hann-windowed."""
    t = series.shape[0]
    x = (series - series.mean(0)) * np.hanning(t)[:, None]
    power = np.abs(np.fft.rfft(x, axis=0)) ** 2 / t                                  # (F, K)
    return np.fft.rfftfreq(t), power.T


def dominant_frequencies(freqs: np.ndarray, power: np.ndarray) -> np.ndarray:
    """Per series (rows of ``power``), the frequency with the most power, the DC bin excluded."""
    return freqs[1:][power[:, 1:].argmax(axis=1)]


def eigen_frequencies(mu: np.ndarray, min_modulus: float = 0.0) -> np.ndarray:
    """Rotation frequencies |arg mu| / 2 pi (cycles per token) of the linearised modes with |mu| >= min_modulus:
    a mode with angle theta oscillates with period 2 pi / theta tokens while it decays by |mu| per token."""
    keep = np.abs(mu) >= min_modulus
    return np.abs(np.angle(mu[keep])) / (2 * np.pi)


@torch.no_grad()
def noise_driven_states(reservoir: EchoReservoir, length: int, input_gain: float = 1.0, seed: int = 0) -> np.ndarray:
    """States (T, N) under white-noise input (i.i.d. normal, per input feature, times ``input_gain``): the
    reservoir's own filtering, without the text's structure."""
    g = torch.Generator().manual_seed(seed)
    c = reservoir.W_in.shape[1]
    u = torch.randn(1, length, c, generator=g, dtype=torch.float64) * input_gain
    w, w_in, b = reservoir.W.double().cpu(), reservoir.W_in.double().cpu(), reservoir.bias.double().cpu()
    return leaky_esn(u @ w_in.t() + b, w, reservoir.lr)[0].numpy()


def readout_reliance(model: ReservoirLM, layer: int, states: np.ndarray) -> np.ndarray:
    """How much the readout leans on each unit j: ||W_out[:, j]|| * std_t(x_j) (N,): the size of unit j's
    contribution to the readout's output on this document."""
    w_out = model.blocks[layer % model.cfg.n_layer].mlp.readout.weight.detach().float().cpu().numpy()   # (C, N)
    return np.linalg.norm(w_out, axis=0) * states.std(axis=0)


# ----------------------------------------------------------------------------------------------- figures

def states_figure(states: np.ndarray, texts: list[str], units: np.ndarray, title: str) -> go.Figure:
    """Heatmap of the chosen units' states over the document's tokens (hover: token text)."""
    z = states[:, units].T                                                            # (K, T)
    hover = [[f"unit {u} · #{t} {texts[t]!r} · {z[i, t]:+.3f}" for t in range(z.shape[1])] for i, u in enumerate(units)]
    fig = go.Figure(go.Heatmap(z=z, colorscale="RdBu", zmid=0, hoverinfo="text", text=hover,
                               colorbar={"title": "x"}))
    fig.update_layout(title=title, xaxis_title="token position", yaxis_title="unit (ranked)", height=420,
                      yaxis={"tickvals": list(range(len(units))), "ticktext": [str(u) for u in units]})
    return fig


def trajectory_figure(xy: np.ndarray, share: np.ndarray, texts: list[str]) -> go.Figure:
    fig = go.Figure(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="lines+markers",
                               marker={"color": np.arange(len(xy)), "colorscale": "Viridis", "size": 5,
                                       "colorbar": {"title": "position"}},
                               line={"color": "rgba(120,120,120,0.3)"},
                               text=[f"#{i} {t!r}" for i, t in enumerate(texts)], hoverinfo="text"))
    fig.update_layout(title="State trajectory on its first two principal components",
                      xaxis_title=f"PC 1 ({share[0]:.0%} of variance)", yaxis_title=f"PC 2 ({share[1]:.0%})",
                      height=450)
    return fig


def eigen_figure(eig: dict) -> go.Figure:
    theta = np.linspace(0, 2 * np.pi, 361)
    fig = go.Figure()
    fig.add_scatter(x=np.cos(theta), y=np.sin(theta), mode="lines", name="unit circle", line={"color": "black"})
    r = eig["spectral_radius"]
    fig.add_scatter(x=r * np.cos(theta), y=r * np.sin(theta), mode="lines", name=f"spectral radius {r:.2f}",
                    line={"color": "grey", "dash": "dash"})
    fig.add_scatter(x=eig["W"].real, y=eig["W"].imag, mode="markers", name="eigenvalues of W",
                    marker={"size": 5, "color": "#9467bd"})
    fig.add_scatter(x=eig["leaky"].real, y=eig["leaky"].imag, mode="markers",
                    name=f"leaky update (1-lr) + lr λ, lr={eig['lr']}", marker={"size": 4, "color": "#ff7f0e"})
    fig.update_layout(title="Eigenvalues of W against the unit circle", xaxis_title="Re", yaxis_title="Im",
                      yaxis={"scaleanchor": "x"}, height=520)
    return fig


def echo_state_figure(distances: np.ndarray, rate: float, bound: float) -> go.Figure:
    fig = go.Figure()
    for i, row in enumerate(distances):
        fig.add_scatter(y=np.clip(row, 1e-16, None), mode="lines", name=f"pair {i + 1}")
    t = np.arange(distances.shape[1])
    fig.add_scatter(y=distances[:, 0].mean() * bound ** t, mode="lines", name=f"bound (1-lr)+lr·sr = {bound:.3f}/token",
                    line={"dash": "dot", "color": "black"})
    fig.update_layout(title=f"Echo-state property: two initial states, same input (measured ×{rate:.3f} per token)",
                      xaxis_title="tokens", yaxis_title="‖x_a − x_b‖", yaxis_type="log", height=420)
    return fig


def memory_capacity_figure(mc: dict) -> go.Figure:
    fig = go.Figure(go.Bar(x=mc["delays"], y=mc["mc_k"], marker_color="#9467bd", name="MC_k"))
    fig.add_scatter(x=mc["delays"], y=np.cumsum(mc["mc_k"]), mode="lines", name="cumulative", yaxis="y2")
    fig.update_layout(title=f"Memory capacity MC = {mc['mc']:.1f} (of at most N = {mc['units']} units)",
                      xaxis_title="delay k (tokens)", yaxis_title="MC_k = r²(ŷ, s_{t−k})",
                      yaxis2={"overlaying": "y", "side": "right", "title": "Σ MC_k"}, height=420)
    return fig


def spectra_figure(spectra: dict, eig_freqs: np.ndarray, dominant: np.ndarray) -> go.Figure:
    """Mean power spectra (one line per source) on top; below, dominant unit frequencies against the rotation
    frequencies of the linearised modes (both as histograms over 0 .. 0.5 cycles/token)."""
    fig = make_subplots(rows=2, cols=1, subplot_titles=("Mean power spectrum (normalised)",
                                                        "Dominant unit frequencies vs eigenvalue angles of the update"),
                        vertical_spacing=0.14)
    for name, (freqs, power) in spectra.items():
        mean = power.mean(0)
        fig.add_scatter(x=freqs[1:], y=mean[1:] / mean[1:].sum(), mode="lines", name=name, row=1, col=1)
    bins = {"start": 0, "end": 0.5, "size": 0.01}
    fig.add_histogram(x=dominant, xbins=bins, name="dominant frequency of units (document)", opacity=0.6,
                      histnorm="probability", row=2, col=1)
    fig.add_histogram(x=eig_freqs, xbins=bins, name="|arg μ|/2π of slow modes", opacity=0.6,
                      histnorm="probability", row=2, col=1)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_xaxes(title_text="cycles per token", row=2, col=1)
    fig.update_layout(barmode="overlay", height=700)
    return fig


def reliance_figure(reliance: np.ndarray, top: int) -> go.Figure:
    order = np.argsort(-reliance)
    share = np.cumsum(reliance[order]) / reliance.sum()
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"Top {top} units", "Cumulative share, units ranked"))
    fig.add_bar(x=[str(u) for u in order[:top]], y=reliance[order[:top]], marker_color="#9467bd", row=1, col=1,
                name="‖W_out[:, j]‖·std(x_j)")
    fig.add_scatter(x=np.arange(1, len(order) + 1), y=share, mode="lines", row=1, col=2, name="cumulative share")
    fig.update_xaxes(title_text="unit", type="category", row=1, col=1)
    fig.update_xaxes(title_text="units (ranked)", row=1, col=2)
    fig.update_layout(height=400, showlegend=False)
    return fig
