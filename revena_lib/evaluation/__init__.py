"""Stage 4, evaluation: trained runs -> measurements -> ``results/results.json`` (``python -m revena_lib.evaluate``).

    results.py       evaluate(): every arm's entry, the comparisons with the baseline, the file itself
    arm_runs.py      which runs are evaluated, and the check that their arms differ only in their row
    scoring.py       one arm's seeds scored: documents, recall items, diagnostics (and the reads-off ablations)
    bpc.py           the validation documents and their NLL in bits: BPC, BPC by position, the unigram bar
    recall.py        long-range recall: facts planted in real text, asked D tokens later, scored teacher-forced
    stats.py         intervals (seeds, then documents or items) and verdicts
    throughput.py    tokens/s of every arm on the same batches, arms interleaved
    induction.py     does a model copy? the loss on a repeated random span
    memory_stats.py  LTM diagnostics from the trace: entry lifetimes, was the answer still in memory when asked
    ltm_analysis.py  LTM diagnostics: query/key cosines, the write rule swept at evaluation time
    session.py       a trained run read in calls that keep its state (STM cache, LTM, reservoir, carry)
    multiturn.py     multi-turn recall through sessions: state carried vs reset between calls
    copying.py       the positive control: does a model copy inside its window?
    pretrain.py      a preset's pretrained trunks trained, their positive control measured, written with their
                     records (python -m revena_lib.pretrain)

    from revena_lib.evaluation.results import evaluate, verdict_lines
    print("\n".join(verdict_lines(evaluate("cpu"))))
"""


class EvalError(RuntimeError):
    """An evaluation that cannot run as asked (a missing or mismatched run, no distance beyond the window)."""
