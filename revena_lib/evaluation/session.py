"""Stateful sessions: a trained run that keeps its state (STM cache, LTM entries, reservoir state, recursive carry)
from one call to the next until ``reset()``.

A session holds the model's state at the last chunk boundary (``model.new_state`` / ``model(idx, state=...)``,
see ``revena_lib/models/__init__.py``) and the tokens after it, the *pending* partial chunk. Each call runs the
pending tokens plus the new ones from that boundary state, commits the full chunks, and keeps the rest pending.
So feeding a text in pieces gives the same surprisal as feeding it in one call (tests/test_session.py checks it
for every family), and generation costs one partial chunk per token, never the whole history.

A new document (``feed(text, start_document=True)``) means what it means in training and evaluation: the session
forgets everything first (no context, an empty LTM, fresh reservoir states and recursive carry, as ``reset()``),
then reads the end-of-text token that opens every document, then the text. Without ``start_document`` a call
continues the current document, whatever it holds; ``reset()`` clears the state without starting a document.
Text is always ordinary text (``revena_lib.data.tokenizer.encode_text``): "<|endoftext|>" typed in it is read as
characters, never as a document boundary.

    run = load_run("trained/with_ltm/cpu/seed-1337"); chat = run.session()
    chat.feed("The pass key is 48213."); chat.generate(" The pass key is", max_new_tokens=3); chat.reset()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from revena_lib.data.tokenizer import encode_text, run_tokenizer
from revena_lib.training.checkpoint import CHECKPOINT_FILE, load_model

LN2 = float(np.log(2.0))


class SessionError(ValueError):
    pass


@dataclass
class FeedResult:
    """What one call did, per new token (lists of equal length)."""
    tokens: list[int]
    texts: list[str]                      # each token decoded on its own
    surprisal_bits: list[float]           # -log2 p(token | everything before it in the session); 0.0 at position 0
    greedy: list[int]                     # the model's argmax guess for each position before seeing it (-1 at 0)
    positions: list[int]                  # stream positions of the tokens
    ltm: dict | None = None               # with an LTM: per token routed (bool), hits (int), top hit positions
    summary: dict = field(default_factory=dict)   # state_summary() after the call


@dataclass
class LoadedRun:
    """A trained run: its model (eval mode), tokenizer, config and where it came from."""
    model: torch.nn.Module
    tokenizer: object
    config: dict
    path: Path
    use_carry: bool = True

    def session(self, use_carry: bool | None = None) -> "Session":
        """A new session over this model: its own state, shared with no other session."""
        return Session(self.model, self.tokenizer, self.use_carry if use_carry is None else use_carry)


def load_run(run_dir, device="cpu", use_carry: bool = True) -> LoadedRun:
    """A finished run directory (trained/<arm>/<preset>/seed-N), or its checkpoint.pt, ready for sessions."""
    path = Path(run_dir)
    if path.name == CHECKPOINT_FILE:
        path = path.parent
    if not (path / CHECKPOINT_FILE).exists():
        raise SessionError(f"{path} is not a finished run (no {CHECKPOINT_FILE}): train one with "
                           "`python -m revena_lib.train --preset smoke --arm with_ltm`")
    model, config = load_model(path, device=device)
    return LoadedRun(model, run_tokenizer(config), config, path, use_carry)


def from_checkpoint(path, use_carry: bool = True, device="cpu") -> LoadedRun:
    """The seed's name for ``load_run``: sessions of the result keep state across calls unless use_carry=False."""
    return load_run(path, device=device, use_carry=use_carry)


class Session:
    """One conversation's state over a model. ``use_carry=False``: every call starts from an empty state."""

    def __init__(self, model, tokenizer, use_carry: bool = True):
        if not hasattr(model, "new_state"):
            raise SessionError(f"{type(model).__name__} has no new_state(): its family does not support sessions")
        self.model, self.tokenizer, self.use_carry = model, tokenizer, use_carry
        self.device = next(model.parameters()).device
        self.chunk = model.cfg.chunk_size
        self.reset()

    # ------------------------------------------------------------------------------------------ state

    def reset(self) -> None:
        """Clear everything: caches, memory entries, reservoir states, carries, the token history."""
        self._state = self.model.new_state(1, self.device)     # at the last chunk boundary
        self._pending: list[int] = []                          # tokens after that boundary
        self._next_log_probs = None                            # (V,) prediction for the next token
        self.history: list[int] = []                           # every token since the last reset

    reset_carry = reset   # the TRM seed's name

    def state_summary(self) -> dict:
        """What the session holds now: the model state's summary at the boundary, plus the pending tokens."""
        out = dict(self._state.summary())
        out["tokens_seen"] = len(self.history)
        if "stm_cached_tokens" in out:   # the STM cache covers the pending tokens too
            window = self.model.cfg.window
            out["stm_cached_tokens"] = min(len(self.history), window)
        out["pending_tokens"] = len(self._pending)
        return out

    def ltm_entries(self) -> list[dict]:
        """The LTM's entries now, oldest first: position and token (empty without an LTM)."""
        memory = getattr(self._state, "memory", None)
        if memory is None:
            return []
        return [{"position": p, "token": self.history[p], "text": self.tokenizer.decode([self.history[p]])}
                for p in memory.entries(0)]

    # ------------------------------------------------------------------------------------------ calls

    def _encode(self, text_or_tokens) -> list[int]:
        if isinstance(text_or_tokens, str):
            tokens = encode_text(self.tokenizer, text_or_tokens)   # "<|endoftext|>" in it is text
        else:
            tokens = [int(t) for t in text_or_tokens]
        vocab = self.model.cfg.vocab_size
        if any(not 0 <= t < vocab for t in tokens):
            raise SessionError(f"token ids must lie in 0..{vocab - 1} (this model's vocabulary)")
        return tokens

    @torch.no_grad()
    def feed(self, text_or_tokens, start_document: bool = False) -> FeedResult:
        """Read text (or token ids) as the continuation of the session; returns each new token's surprisal.

        ``start_document``: the text is a new document, as in training and evaluation: the session is reset first
        (no context, empty memory: nothing of the previous document is kept, positions restart at 0), then reads
        the end-of-text token every document opens with, then the text."""
        new = self._encode(text_or_tokens)    # before any reset: bad input leaves the session as it was
        if start_document or not self.use_carry:
            self.reset()
        if start_document:
            new = [self.tokenizer.eot_token] + new
        if not new:
            return FeedResult([], [], [], [], [], None, self.state_summary())
        run = self._pending + new
        n_commit = len(run) // self.chunk * self.chunk
        outs = []
        if n_commit:
            out = self._forward(run[:n_commit], self._state)
            self._state = out.state
            outs.append(out)
        if len(run) > n_commit:
            outs.append(self._forward(run[n_commit:], self._state))
        self._pending = run[n_commit:]
        start = len(self.history)
        self.history += new
        return self._result(outs, new, start)

    def _forward(self, tokens: list[int], state):
        idx = torch.tensor([tokens], dtype=torch.long, device=self.device)
        introspect = bool(getattr(self.model.cfg, "use_ltm", False))
        return self.model(idx, introspect=introspect, state=state)

    def _result(self, outs, new: list[int], start: int) -> FeedResult:
        """Per-token results of the new tokens (the last len(new) positions of the runs)."""
        surprisal = torch.cat([o.surprisal_bits[0] for o in outs])           # (n_run,)
        logits = torch.cat([o.logits[0] for o in outs]).float()              # (n_run, V)
        n = len(new)
        greedy_prev = logits.argmax(-1)                                       # guess for the next position
        # the run's first token was predicted before this call (only used when nothing was pending)
        first = -1 if self._next_log_probs is None else int(self._next_log_probs.argmax())
        greedy = torch.cat([torch.tensor([first]), greedy_prev[:-1]])
        self._next_log_probs = outs[-1].state.last_log_probs[0]              # (V,) the model computed it
        ltm = None
        traces = [o.trace for o in outs if o.trace is not None]
        if traces:
            ltm = {"routed": torch.cat([t.routed[0] for t in traces])[-n:].tolist(),
                   "hits": torch.cat([t.hit_count[0] for t in traces])[-n:].tolist(),
                   "top_hit_positions": torch.cat([t.top_hit_positions[0] for t in traces])[-n:].tolist()}
        return FeedResult(new, [self.tokenizer.decode([t]) for t in new], surprisal[-n:].tolist(),
                          greedy[-n:].tolist(), list(range(start, start + n)), ltm, self.state_summary())

    @torch.no_grad()
    def generate(self, prompt="", max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0,
                 seed: int | None = None, stop_at_end_of_text: bool = True) -> str:
        """Continue the session from ``prompt`` (fed first); greedy at temperature 0, else sampling (top_k > 0
        keeps the k likeliest) from a generator seeded by ``seed``. The generated tokens join the session."""
        if max_new_tokens < 0 or temperature < 0 or top_k < 0:
            raise SessionError("max_new_tokens, temperature and top_k must be >= 0")
        if prompt:
            self.feed(prompt)
        elif not self.use_carry:
            self.reset()
        if self._next_log_probs is None:   # nothing read yet: start a document
            self.feed([self.tokenizer.eot_token])
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        out, carry = [], self.use_carry
        self.use_carry = True   # the generated tokens continue this call's state even without a carry
        try:
            for _ in range(max_new_tokens):
                token = self._pick(self._next_log_probs, temperature, top_k, generator)
                if stop_at_end_of_text and token == self.tokenizer.eot_token:
                    break
                out.append(token)
                self.feed([token])
        finally:
            self.use_carry = carry
        return self.tokenizer.decode(out)

    @staticmethod
    def _pick(log_probs: torch.Tensor, temperature: float, top_k: int, generator) -> int:
        if temperature == 0:
            return int(log_probs.argmax())
        scores = log_probs.float() / temperature
        if top_k:
            kth = scores.topk(min(top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth, -torch.inf)
        return int(torch.multinomial(torch.softmax(scores, -1), 1, generator=generator))
