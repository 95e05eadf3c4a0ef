"""Multi-turn recall: a fact in one call, filler text in the calls after it, the question in the last call.

Each item is a recall item (``recall.py``) cut into turns: turn 1 is the document start and the fact,
turns 2 .. n-1 carry ``filler_tokens_per_turn`` tokens of real text each, turn n is the question and its answer.
Every arm is scored twice through its session: with its state carried from call to call, and with ``reset()``
between calls (the control: what is left when no state survives a call). Because a session's calls are exact
continuations (tests/test_session.py), "carried" is the one-call recall score at the same distance; "reset"
shows how much of it needed state that outlives a call.

    items = make_multiturn_items(load_split("val"), turn_counts=(3, 5), filler_tokens_per_turn=48,
                                 items_per_count=8, seed=2024)
    rows = score_multiturn({"baseline": [load_run(d)]}, items)    # one dict per (arm, seed, item, mode)

Worked example (3 turns, 48 filler tokens per turn): turn 1 = "<|endoftext|> ...real text... The pass key is
48213. Remember it.", turn 2 = 48 tokens of real text, turn 3 = " The pass key is 48213" with the answer " 48213"
scored teacher-forced (exact: greedy reproduces every answer token; graded: mean log2 p per answer token).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from revena_lib.evaluation.recall import make_recall_items
from revena_lib.evaluation.stats import hierarchical_ci, point

MODES = ("carried", "reset")


class MultiTurnError(ValueError):
    pass


@dataclass
class MultiTurnItem:
    turns: list[list[int]]        # token ids per call; the last call ends with the answer
    answer_len: int               # the last answer_len tokens of the last call are the answer
    filler_tokens_per_turn: int
    answer_text: str

    @property
    def n_turns(self) -> int:
        return len(self.turns)


def make_multiturn_items(filler, turn_counts, filler_tokens_per_turn: int, items_per_count: int, seed: int,
                         tokenizer=None) -> list[MultiTurnItem]:
    """Passkey items cut into calls; deterministic for a given (filler, seed). turn_counts: each >= 3."""
    counts = [int(n) for n in turn_counts]
    if not counts or min(counts) < 3 or filler_tokens_per_turn < 1 or items_per_count < 1:
        raise MultiTurnError(f"turn_counts={turn_counts} must each be >= 3 (fact, filler, question), "
                             f"filler_tokens_per_turn={filler_tokens_per_turn} and items_per_count="
                             f"{items_per_count} >= 1")
    distances = {(n - 2) * filler_tokens_per_turn: n for n in counts}
    items = make_recall_items(filler, sorted(distances), items_per_count, seed, tokenizer=tokenizer)
    out = []
    for item in items:
        if item.kind != "passkey":
            continue
        n, f = distances[item.distance], filler_tokens_per_turn
        fillers = [item.tokens[item.fact_end + k * f: item.fact_end + (k + 1) * f] for k in range(n - 2)]
        last = item.tokens[item.fact_end + (n - 2) * f:]
        out.append(MultiTurnItem([item.tokens[:item.fact_end]] + fillers + [last], item.answer_len, f,
                                 item.answer_text))
    return out


def score_item(session, item: MultiTurnItem, carried: bool) -> dict:
    """Feed the item's calls to a session (reset() between calls unless ``carried``); score the answer."""
    session.reset()
    for turn in item.turns[:-1]:
        session.feed(turn)
        if not carried:
            session.reset()
    result = session.feed(item.turns[-1])
    answer = slice(len(result.tokens) - item.answer_len, None)
    exact = all(g == t for g, t in zip(result.greedy[answer], result.tokens[answer]))
    return {"exact": float(exact), "answer_log2p": -float(np.mean(result.surprisal_bits[answer])),
            "state_after": result.summary}


def score_multiturn(runs: dict, items: list[MultiTurnItem], progress: bool = False) -> list[dict]:
    """runs: {arm: [LoadedRun, ...]} (one per seed). One row per (arm, seed, item, mode)."""
    from tqdm.auto import tqdm

    rows = []
    total = sum(len(v) for v in runs.values()) * len(items) * len(MODES)
    bar = tqdm(total=total, desc="multi-turn recall", disable=not progress)
    for arm, loaded in runs.items():
        for run in loaded:
            session = run.session(use_carry=True)   # reset() between calls is done explicitly for the control
            for i, item in enumerate(items):
                for mode in MODES:
                    score = score_item(session, item, carried=mode == "carried")
                    rows.append({"arm": arm, "seed": run.config.get("seed"), "item": i, "turns": item.n_turns,
                                 "distance": (item.n_turns - 2) * item.filler_tokens_per_turn, "mode": mode,
                                 "exact": score["exact"], "answer_log2p": score["answer_log2p"]})
                    bar.update()
    bar.close()
    return rows


def summarise(rows: list[dict], samples: int = 1000) -> list[dict]:
    """Per (arm, turns, mode): exact match and answer log2 p with 95% intervals (seeds, then items)."""
    out = []
    keys = sorted({(r["arm"], r["turns"], r["mode"]) for r in rows}, key=lambda k: (k[0], k[1], MODES.index(k[2])))
    for arm, turns, mode in keys:
        picked = [r for r in rows if (r["arm"], r["turns"], r["mode"]) == (arm, turns, mode)]
        seeds = sorted({r["seed"] for r in picked}, key=str)
        row = {"arm": arm, "turns": turns, "distance": picked[0]["distance"], "mode": mode,
               "seeds": len(seeds), "items": len(picked) // len(seeds)}
        for metric in ("exact", "answer_log2p"):
            values = np.array([[r[metric] for r in picked if r["seed"] == s] for s in seeds])   # (S, N)
            row[metric], row[metric + "_ci95"] = point(values), hierarchical_ci(values, samples=samples)
        out.append(row)
    return out


def multiturn_figure(summary: list[dict], metric: str = "answer_log2p"):
    """Plotly: the metric against turns, one line per arm, solid carried and dotted reset, with 95% intervals."""
    import plotly.graph_objects as go

    from revena_lib.arms import arm_style

    fig = go.Figure()
    for arm in dict.fromkeys(r["arm"] for r in summary):
        label, colour = arm_style(arm)
        for mode in MODES:
            rows = [r for r in summary if r["arm"] == arm and r["mode"] == mode]
            y = np.array([r[metric] for r in rows])
            lo, hi = (np.array([r[metric + "_ci95"][k] for r in rows]) for k in (0, 1))
            fig.add_trace(go.Scatter(
                x=[r["turns"] for r in rows], y=y, name=f"{label}, {mode}", mode="lines+markers",
                line={"color": colour, "dash": "solid" if mode == "carried" else "dot"},
                error_y={"type": "data", "symmetric": False, "array": hi - y, "arrayminus": y - lo}))
    title = {"answer_log2p": "answer log2 p per token (higher is better)", "exact": "exact match"}[metric]
    fig.update_layout(title=f"Multi-turn recall: {title}; dotted = reset() between calls",
                      xaxis_title="calls (fact first, question last)", yaxis_title=metric, height=420)
    return fig
