"""Stage 5, analysis: looking at what the runs did (figures and widgets for the notebooks; nothing here is scored).

    plots.py               results.json -> results.png / results.html, and notebook 04's figures
    plots_train.py         training curves and the LTM's routing over training, from metrics.jsonl
    probe.py               one text through a model: per-token surprisal, writes, hits; static HTML; the detail panel
    probe_widget.py        the probe widget: click a token, see the entries it hit and the predictions
    chat_widget.py         a chat-like widget over a session: feed, generate, watch the state, reset
    reservoir_analysis.py  the reservoir's inner life: states, eigenvalues, echo-state property, memory capacity

    from revena_lib.analysis.plots import save_results_plots
    from revena_lib.evaluation.results import load_results
    save_results_plots(load_results())          # results/results.png and results/results.html
"""
