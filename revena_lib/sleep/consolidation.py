"""Sleep: a day's experiences replayed into the weights, then what is kept (closed-book recall) and what is lost.

A **day** is a few documents no run trained on (validation documents: training only reads ``train.bin``) with facts
planted in them that can be asked later without their context, e.g. "The access code of the Birch Lane account is
48213." is asked as "The access code of the Birch Lane account is" -> " 48213". **Wake**: a session reads each of
the day's documents with its memory on (from an empty state, as training and evaluation read documents); we keep
the surprisal of every token, what the LTM wrote, and what was recalled awake (the question asked 16 tokens after
the fact, inside the window, and again after the fact has left the window). **Sleep**: a strategy turns the day's
experiences into training rows and takes ``steps`` AdamW steps at ``lr``; the slept model goes to a new run
directory, and the source run is only ever read. After sleep a fresh session (empty memory) is asked every fact
closed-book: the question alone.

Strategies (``STRATEGIES``):
    none          no sleep: the control lineage (the model never changes)
    text          replay the day's text (every token a target)
    ltm           replay only what the LTM stored: each written token is a target, with ``ltm_context`` tokens of
                  context before it (the cue) that are read but not trained
    text+dreams   text, with ``dream_share`` of every batch's rows being dreams
    ltm+dreams    ltm, likewise
Dreams (``dream_source``): ``generated``, text the pre-sleep model samples itself, or ``train``, earlier training text.

    days = make_days(load_split("val"), DayConfig(n_days=3, facts_per_day=8))
    slept = sleep(load_run("trained/with_ltm/cpu/seed-1337"), wake(run, days[0]), SleepConfig(strategy="ltm"), out)
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from revena_lib.data.tokenizer import encode_text
from revena_lib.evaluation.recall import RecallItem, score_recall_items
from revena_lib.evaluation.session import LoadedRun
from revena_lib.paths import file_sha256
from revena_lib.training import checkpoint as ckpt
from revena_lib.training.device import DTYPES, autocast

STRATEGIES = ("none", "text", "ltm", "text+dreams", "ltm+dreams")
DREAM_SOURCES = ("generated", "train")
# Awake questions: 16 tokens after the fact (inside every preset's 128-token window), and window + 32 after it.
AWAKE_IN_WINDOW_GAP = 16
AWAKE_PAST_WINDOW_MARGIN = 32
# Phrasings and entities of the day's facts: disjoint from the training mix's (data/recall_mix.py) and evaluation's
# ("The pass key is"), so what is recalled after sleep was learnt from the day.
FACT_TEMPLATES = (("The access code of the {} account is", 5), ("The safe in the {} office opens with", 4),
                  ("The ferry for {} leaves from pier", 2), ("The {} archive is stored in vault", 3))
FACT_ENTITIES = ("Birch Lane", "Copper Hill", "Fenwick", "Glassmoor", "Hollow Creek", "Ironbridge", "Juniper Bay",
                 "Kestrel Point", "Larkfield", "Marrow Gate", "Northwick", "Orchard Row", "Pinecastle", "Quarry End")


class SleepError(ValueError):
    pass


@dataclass
class DayConfig:
    n_days: int = 3
    docs_per_day: int = 2
    facts_per_day: int = 8
    tokens_per_doc: int = 1024     # each day document is its validation document's first tokens (facts added)
    seed: int = 7                  # which documents, facts, positions


@dataclass
class SleepConfig:
    strategy: str = "text"         # one of STRATEGIES
    steps: int = 60                # optimizer steps per sleep
    lr: float = 1e-3               # constant (a sleep is short; no schedule to tune)
    batch_size: int = 4
    seq_len: int = 256             # longest replayed row (tokens of input); longer spans are cut with overlap
    ltm_context: int = 32          # replay (b): tokens before each stored token, read but not trained
    dream_share: float = 0.5       # "+dreams": share of every batch's rows that are dreams
    dream_source: str = "generated"   # "generated" (the pre-sleep model's samples) or "train" (training text)
    dream_rows: int = 8            # distinct dreams per sleep (cycled)
    dream_temperature: float = 1.0
    weight_decay: float = 0.0      # consolidation should not shrink what it does not replay
    grad_clip: float = 1.0
    seed: int = 0

    def check(self) -> None:
        if self.strategy not in STRATEGIES:
            raise SleepError(f"strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.dream_source not in DREAM_SOURCES:
            raise SleepError(f"dream_source {self.dream_source!r} is not one of {', '.join(DREAM_SOURCES)}")
        if self.steps < 0 or self.lr < 0 or self.batch_size < 1 or self.seq_len < 8 or self.ltm_context < 0:
            raise SleepError("steps and lr must be >= 0, batch_size >= 1, seq_len >= 8, ltm_context >= 0 "
                             f"(got steps={self.steps}, lr={self.lr}, batch_size={self.batch_size}, "
                             f"seq_len={self.seq_len}, ltm_context={self.ltm_context})")
        if self.ltm_context >= self.seq_len:
            raise SleepError(f"ltm_context ({self.ltm_context}) must be shorter than seq_len ({self.seq_len}): "
                             "a replayed row holds the context and the tokens it cues")
        if not 0.0 <= self.dream_share < 1.0:
            raise SleepError(f"dream_share must lie in [0, 1) (got {self.dream_share})")


# -----------------------------------------------------------------------------
# Days: held-out documents with facts planted in them

@dataclass
class Fact:
    cue: str                       # the question: "The access code of the Birch Lane account is"
    answer: str                    # " 48213"
    day: int = 0                   # 1-based
    document: int = 0              # which of the day's documents holds the statement
    start: int = -1                # token span of the statement in that document
    end: int = -1

    @property
    def id(self) -> str:
        return f"d{self.day}:{self.cue}"


@dataclass
class Day:
    index: int                      # 1-based
    documents: list[list[int]]      # token ids, each opening with the end-of-text token
    facts: list[Fact]
    source_documents: list[int] = field(default_factory=list)   # validation document indices (-1: given text)

    def to_dict(self, tokenizer=None) -> dict:
        out = {"index": self.index, "source_documents": self.source_documents,
               "tokens": [len(d) for d in self.documents], "facts": [dataclasses.asdict(f) for f in self.facts]}
        if tokenizer is not None:
            out["texts"] = [tokenizer.decode(d[1:]) for d in self.documents]
        return out


def _fact_pool(rng: np.random.Generator, n: int) -> list[tuple[str, int]]:
    pool = [(template.format(entity), digits) for template, digits in FACT_TEMPLATES for entity in FACT_ENTITIES]
    if n > len(pool):
        raise SleepError(f"{n} facts asked for, but only {len(pool)} distinct cues exist: lower facts_per_day or n_days")
    return [pool[i] for i in rng.permutation(len(pool))[:n]]


def _plant(doc: list[int], statements: list[list[int]], rng: np.random.Generator, tail: int) -> tuple[list, list]:
    """Insert the statements into the document's tokens at random positions that leave ``tail`` tokens after each;
    returns (new tokens, [(start, end)] per statement, in the given order)."""
    body_end = len(doc) - tail
    if body_end <= 8:
        raise SleepError(f"a day document of {len(doc)} tokens is too short to leave {tail} tokens after a fact: "
                         "raise tokens_per_doc")
    points = sorted(rng.choice(np.arange(8, body_end), size=len(statements), replace=False).tolist())
    out, spans, last = [], [None] * len(statements), 0
    for k, point in enumerate(points):
        out += doc[last:point]
        spans[k] = (len(out), len(out) + len(statements[k]))
        out += statements[k]
        last = point
    out += doc[last:]
    return out, spans


def make_days(split, cfg: DayConfig, window: int = 128, tokenizer=None) -> list[Day]:
    """``cfg.n_days`` days from the validation split: distinct documents, distinct facts, deterministic per seed.

    Worked example (smoke data, DayConfig(n_days=1, docs_per_day=1, facts_per_day=1, tokens_per_doc=320)):
        day.documents[0] = [EOT] + 8..(320 - window - 48) tokens of a State of the Union address
                           + " The ferry for Larkfield leaves from pier 42." + the rest of its first 320 tokens
        day.facts[0] = Fact(cue="The ferry for Larkfield leaves from pier", answer=" 42", day=1, document=0,
                            start=<where the statement begins>, end=<start + its length>)
    """
    enc = tokenizer or split.tokenizer
    need = cfg.n_days * cfg.docs_per_day
    tail = window + AWAKE_PAST_WINDOW_MARGIN + 16
    usable = [i for i in range(split.num_docs) if len(split.document(i)) >= min(cfg.tokens_per_doc, tail + 64)]
    if len(usable) < need:
        raise SleepError(f"{need} day documents asked for (n_days x docs_per_day), but the validation split has "
                         f"{len(usable)} long enough: lower n_days or docs_per_day, or prepare more data")
    rng = np.random.default_rng(cfg.seed)
    chosen = rng.choice(usable, size=need, replace=False).tolist()
    pool = _fact_pool(rng, cfg.n_days * cfg.facts_per_day)
    days = []
    for d in range(cfg.n_days):
        docs_ids = chosen[d * cfg.docs_per_day:(d + 1) * cfg.docs_per_day]
        facts_here = pool[d * cfg.facts_per_day:(d + 1) * cfg.facts_per_day]
        documents, facts = [], []
        for j, doc_id in enumerate(docs_ids):
            mine = [(k, f) for k, f in enumerate(facts_here) if k % cfg.docs_per_day == j]
            made = []
            for _, (cue, digits) in mine:
                number = "".join(str(int(x)) for x in rng.integers(0, 10, digits))
                made.append(Fact(cue=cue, answer=f" {number}", day=d + 1, document=j))
            statements = [encode_text(enc, " " + f.cue) + encode_text(enc, f.answer) + encode_text(enc, ".")
                          for f in made]
            tokens = np.asarray(split.document(doc_id)[:cfg.tokens_per_doc]).tolist()
            tokens, spans = _plant(tokens, statements, rng, tail)
            for f, (s, e) in zip(made, spans):
                f.start, f.end = s, e
            documents.append(tokens)
            facts += made
        days.append(Day(d + 1, documents, facts, [int(i) for i in docs_ids]))
    return days


def _token_index(tokens: list[int], byte_pos: int, tokenizer) -> int:
    """Index in ``tokens`` (which open with the end-of-text token) of the token holding byte ``byte_pos`` of the
    text after it."""
    total = 0
    for i, t in enumerate(tokens[1:], 1):
        total += len(tokenizer.decode_bytes([t]))
        if total > byte_pos:
            return i
    return len(tokens)


def day_from_texts(texts: list[str], facts: list[tuple[str, str]], tokenizer, index: int = 1) -> Day:
    """A day of your own: documents as text, facts as (cue, answer) pairs whose ``cue + answer`` appears verbatim in
    one of the texts (e.g. ("The boiler room code is", " 7731") for "... The boiler room code is 7731. ...").
    The question is asked as the cue after a space, as the statement reads mid-text; whitespace at the end of a cue
    belongs to the answer."""
    documents = [[tokenizer.eot_token] + encode_text(tokenizer, t) for t in texts]
    made = []
    for cue, answer in facts:
        statement = cue + answer
        where = [j for j, t in enumerate(texts) if statement in t]
        if not where or not answer.strip() or not cue.strip():
            raise SleepError(f"fact {statement!r} does not appear in any of the day's texts (or its cue or answer is "
                             "empty): a fact is only usable if its cue and answer were read (check spacing: the "
                             "answer usually starts with a space)")
        j = where[0]
        at = texts[j].index(statement)
        stripped = cue.rstrip()
        cue, answer = stripped.strip(), cue[len(stripped):] + answer
        first = len(texts[j][:at + len(stripped) - len(stripped.lstrip())].encode())
        last = len(texts[j][:at + len(statement)].encode()) - 1
        made.append(Fact(cue=cue, answer=answer, day=index, document=j,
                         start=_token_index(documents[j], first, tokenizer),
                         end=_token_index(documents[j], last, tokenizer) + 1))
    return Day(index, documents, made, [-1] * len(texts))


def question_tokens(fact: Fact, tokenizer) -> tuple[list[int], list[int]]:
    """(cue tokens, answer tokens) of the question, as the statement was tokenised."""
    return encode_text(tokenizer, " " + fact.cue), encode_text(tokenizer, fact.answer)


def closed_book_items(facts: list[Fact], tokenizer) -> list[RecallItem]:
    """The question alone after an end-of-text token: nothing of the day is in context."""
    items = []
    for f in facts:
        cue, answer = question_tokens(f, tokenizer)
        items.append(RecallItem([tokenizer.eot_token] + cue + answer, 1 + len(cue), len(answer), distance=-1,
                                kind="closed_book", answer_text=f.answer))
    return items


def recall_scores(model, items: list[RecallItem], tokenizer) -> list[dict]:
    """exact (greedy reproduces every answer token) and log2p (the answer's mean log2-probability per token)."""
    rows = score_recall_items(model, items, batch_size=16, tokenizer=tokenizer)
    return [{"exact": r["exact_match"], "log2p": r["answer_logprob_bits"], "said": r["predicted_text"]} for r in rows]


# -----------------------------------------------------------------------------
# Wake

@dataclass
class Wake:
    day: Day
    surprisal_bits: list[list[float]]     # per document, per token (0.0 at the opening EOT)
    stored: list[list[int]]               # per document, positions the LTM wrote (empty without an LTM)
    awake: list[dict]                     # per fact: in_window / past_window {exact, log2p}
    has_ltm: bool


def _awake_items(day: Day, tokenizer, window: int) -> list[RecallItem]:
    items = []
    for f in day.facts:
        cue, answer = question_tokens(f, tokenizer)
        for gap in (AWAKE_IN_WINDOW_GAP, window + AWAKE_PAST_WINDOW_MARGIN):
            prefix = day.documents[f.document][:f.end + gap]
            items.append(RecallItem(prefix + cue + answer, len(prefix) + len(cue), len(answer), distance=gap,
                                    kind="awake", answer_text=f.answer, fact_start=f.start, fact_end=f.end))
    return items


def wake(run: LoadedRun, day: Day) -> Wake:
    """A session reads each of the day's documents (memory on, empty at each document's start, as in training);
    the awake questions are the session's continuation after the fact, asked inside and past the window."""
    session = run.session()
    surprisal, stored = [], []
    for tokens in day.documents:
        session.reset()
        result = session.feed(tokens)
        surprisal.append(result.surprisal_bits)
        stored.append([p for p, routed in enumerate(result.ltm["routed"]) if routed] if result.ltm else [])
    scores = recall_scores(run.model, _awake_items(day, run.tokenizer, run.model.cfg.window), run.tokenizer)
    awake = [{"in_window": scores[2 * k], "past_window": scores[2 * k + 1]} for k in range(len(day.facts))]
    return Wake(day, surprisal, stored, awake, bool(getattr(run.model.cfg, "use_ltm", False)))


# -----------------------------------------------------------------------------
# Experiences: what a strategy replays

@dataclass
class Experience:
    """One replayed row: tokens, and which of them are training targets (index 0 never is: it has no prediction)."""
    tokens: list[int]
    targets: list[bool]
    document: int = -1              # day document it came from (-1: a dream)
    start: int = 0                  # position of tokens[0] in that document


def _pieces(doc: list[int], targets: np.ndarray, a: int, b: int, seq_len: int, overlap: int, document: int):
    """Rows covering doc[a:b] of at most seq_len + 1 tokens; consecutive rows overlap by ``overlap`` tokens of
    context and every target position is a target in exactly one row."""
    out, start, first_target = [], a, a + 1
    while first_target < b:
        end = min(b, start + seq_len + 1)
        mask = np.zeros(end - start, dtype=bool)
        lo = first_target - start
        mask[lo:] = targets[first_target:end]
        if mask.any():
            out.append(Experience(doc[start:end], mask.tolist(), document, start))
        first_target = end
        start = max(start + 1, end - overlap)
    return out


def replay_text(wake_: Wake, cfg: SleepConfig) -> list[Experience]:
    """Strategy (a): the day's documents, every token after the first a target."""
    rows = []
    for j, doc in enumerate(wake_.day.documents):
        targets = np.ones(len(doc), dtype=bool)
        rows += _pieces(doc, targets, 0, len(doc), cfg.seq_len, cfg.ltm_context, j)
    return rows


def replay_ltm(wake_: Wake, cfg: SleepConfig) -> list[Experience]:
    """Strategy (b): only the tokens the LTM wrote are targets, each read after its ``ltm_context`` tokens of context
    (overlapping contexts merge into one row)."""
    if not wake_.has_ltm:
        raise SleepError("strategy 'ltm' replays what the LTM stored, and this run's arm has no LTM: use an arm with "
                         "a memory (with_ltm) or the 'text' strategy")
    rows = []
    for j, (doc, stored) in enumerate(zip(wake_.day.documents, wake_.stored)):
        targets = np.zeros(len(doc), dtype=bool)
        targets[stored] = True
        spans = []
        for p in stored:
            lo = max(0, p - max(1, cfg.ltm_context))     # at least the token that predicts it
            if spans and lo <= spans[-1][1]:
                spans[-1][1] = p + 1
            else:
                spans.append([lo, p + 1])
        for a, b in spans:
            rows += _pieces(doc, targets, a, b, cfg.seq_len, cfg.ltm_context, j)
    return rows


@torch.no_grad()
def generate_dreams(model, n_rows: int, length: int, temperature: float, seed: int, eot: int) -> list[list[int]]:
    """``n_rows`` samples of ``length`` tokens from the model, each from an end-of-text token, batched; the state is
    committed at chunk boundaries (models/__init__.py), so each new token costs at most one chunk."""
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    chunk = model.cfg.chunk_size
    state = model.new_state(n_rows, device)
    rows = torch.full((n_rows, 1), eot, dtype=torch.long)
    pending = rows.clone()                                            # (B, p) tokens after the committed boundary
    for _ in range(length):
        out = model(pending.to(device), state=state)
        logits = out.logits[:, -1].float().cpu() / max(temperature, 1e-6)   # (B, V)
        nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)   # (B, 1)
        if pending.shape[1] == chunk:
            state, pending = out.state, nxt
        else:
            pending = torch.cat([pending, nxt], 1)
        rows = torch.cat([rows, nxt], 1)
    return rows.tolist()


def dream_experiences(run: LoadedRun, cfg: SleepConfig, seed: int) -> list[Experience]:
    """The dreams of one sleep: the pre-sleep model's own samples, or windows of the training split."""
    n, length = cfg.dream_rows, cfg.seq_len
    if cfg.dream_source == "generated":
        rows = generate_dreams(run.model, n, length, cfg.dream_temperature, seed, run.tokenizer.eot_token)
    else:
        from revena_lib.data.splits import load_split
        from revena_lib.training.batches import batch_for_step
        x, y = batch_for_step(load_split("train"), seed, 0, n, length)
        rows = torch.cat([x, y[:, -1:]], 1).tolist()
    return [Experience(r, [False] + [True] * (len(r) - 1)) for r in rows]


def experiences(run: LoadedRun, wake_: Wake, cfg: SleepConfig, seed: int) -> tuple[list, list]:
    """(the day's replayed rows, dream rows) of ``cfg.strategy``."""
    base = cfg.strategy.split("+")[0]
    if base == "none":
        return [], []
    day_rows = replay_text(wake_, cfg) if base == "text" else replay_ltm(wake_, cfg)
    dreams = dream_experiences(run, cfg, seed) if cfg.strategy.endswith("+dreams") else []
    return day_rows, dreams


# -----------------------------------------------------------------------------
# Sleep: training on the experiences, into a new run directory

def _batch(rows: list[Experience], eot: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (x, y) with y = -1 (ignored) wherever a token is not a target."""
    T = max(len(r.tokens) for r in rows) - 1
    x = torch.full((len(rows), T), eot, dtype=torch.long)
    y = torch.full((len(rows), T), -1, dtype=torch.long)
    for b, r in enumerate(rows):
        t = torch.tensor(r.tokens, dtype=torch.long)
        keep = torch.tensor(r.targets[1:], dtype=torch.bool)
        x[b, :len(t) - 1] = t[:-1]
        y[b, :len(t) - 1] = torch.where(keep, t[1:], -1)
    return x, y


def _schedule(n_rows: int, n_needed: int, rng: np.random.Generator) -> list[int]:
    """Row order for a sleep: shuffled epochs over the rows, so every experience is replayed equally often."""
    order = []
    while len(order) < n_needed:
        order += rng.permutation(n_rows).tolist()
    return order[:n_needed]


def _train(run: LoadedRun, day_rows: list, dreams: list, cfg: SleepConfig, seed: int) -> dict:
    model, eot = run.model, run.tokenizer.eot_token
    n_dream = int(round(cfg.batch_size * cfg.dream_share)) if dreams else 0
    n_day = cfg.batch_size - n_dream
    rng = np.random.default_rng([cfg.seed, seed, 0x51EE9])
    day_order = _schedule(len(day_rows), n_day * cfg.steps, rng) if day_rows else []
    dream_order = _schedule(len(dreams), n_dream * cfg.steps, rng) if n_dream else []
    betas = tuple(run.config.get("train", {}).get(k, v) for k, v in (("beta1", 0.9), ("beta2", 0.95)))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, betas=betas,
                                  weight_decay=cfg.weight_decay)
    dtype = DTYPES.get(run.config.get("dtype", "fp32"))
    device = next(model.parameters()).device
    losses, tokens, started = [], 0, time.perf_counter()
    model.train()
    for step in range(cfg.steps if day_rows else 0):
        rows = [day_rows[i] for i in day_order[step * n_day:(step + 1) * n_day]]
        rows += [dreams[i] for i in dream_order[step * n_dream:(step + 1) * n_dream]]
        x, y = _batch(rows, eot)
        with autocast(device, dtype):
            loss = model(x.to(device), y.to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        tokens += int((y >= 0).sum())
    model.eval()
    return {"steps": len(losses), "seconds": time.perf_counter() - started, "target_tokens": tokens,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "losses": losses, "day_rows": len(day_rows), "dream_rows": len(dreams)}


def sleep(run: LoadedRun, wake_: Wake, cfg: SleepConfig, out_dir, seed: int = 0) -> tuple[LoadedRun, dict]:
    """One night: a copy of ``run``'s model trained on ``cfg.strategy``'s experiences of ``wake_``'s day, saved as a
    new run directory ``out_dir`` (config.json, checkpoint.pt, sleep.json), which ``load_run`` opens. ``run`` itself
    and its directory are never changed. Returns (the slept run, the night's record)."""
    cfg.check()
    out_dir = Path(out_dir)
    if out_dir.resolve() == Path(run.path).resolve():
        raise SleepError(f"sleep would write into its source run {run.path}: choose another out_dir")
    slept = LoadedRun(copy.deepcopy(run.model), run.tokenizer, dict(run.config), out_dir)   # run.model untouched
    torch.manual_seed(cfg.seed * 1_000_003 + seed)
    day_rows, dreams = experiences(run, wake_, cfg, seed=cfg.seed * 7919 + seed)
    record = _train(slept, day_rows, dreams, cfg, seed)
    record.update({"strategy": cfg.strategy, "day": wake_.day.index, "config": dataclasses.asdict(cfg),
                   "dream_samples": [run.tokenizer.decode(d.tokens[1:65]) for d in dreams[:3]]})
    _write_slept_run(slept, run, cfg, record)
    return slept, record


def _write_slept_run(slept: LoadedRun, source: LoadedRun, cfg: SleepConfig, record: dict) -> None:
    out = Path(slept.path)
    out.mkdir(parents=True, exist_ok=True)
    source_ckpt = Path(source.path) / ckpt.CHECKPOINT_FILE
    lineage = list(source.config.get("sleep_lineage", [])) + [{
        "source_run": str(source.path), "source_checkpoint_sha256": file_sha256(source_ckpt),
        "day": record["day"], "strategy": cfg.strategy, "steps": record["steps"], "lr": cfg.lr}]
    config = {**source.config, "sleep_lineage": lineage, "finished": True}
    slept.config = config
    ckpt.save_checkpoint(out / ckpt.CHECKPOINT_FILE, {
        "model": slept.model.state_dict(), "step": record["steps"], "seed": config.get("seed"),
        "arm": config.get("arm"), "dtype": config.get("dtype"),
        "config": {k: config.get(k) for k in ("model", "train", "data", "tokenizer")}})
    ckpt.write_json(out / "sleep.json", {k: v for k, v in record.items()})
    ckpt.write_json(out / ckpt.CONFIG_FILE, config)   # last: a directory with config.json is complete
