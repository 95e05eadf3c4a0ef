"""Export a trained run to the Hugging Face Hub layout, load it back, and push it to the hub.

The folder holds ``model.safetensors`` (weights; the tied embedding stored once), ``config.json`` (the model
config with its family and arm, the tokenizer, the run's recipe), the tokenizer files (``tokenizer.json`` for a
custom BPE, ``gpt2.tiktoken`` for GPT-2) and a ``README.md`` model card with the run's results. Any family of
``revena_lib/models`` loads back with ``from_pretrained(folder)`` to identical logits.

    python -m revena_lib.export trained/with_ltm/cpu/seed-1337 --out exported/with_ltm-cpu-1337 [--push user/repo]
    model, tokenizer = from_pretrained("exported/with_ltm-cpu-1337")
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from revena_lib.config import ModelConfig
from revena_lib.training.checkpoint import CheckpointError, load_model, read_config, write_json, write_text

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
FORMAT = "revena-workbook"


class ExportError(RuntimeError):
    pass


def _results_for(config: dict, results_dir: Path | None) -> dict | None:
    """The arm's entry of results.json when that file exists and evaluated this run's preset."""
    from revena_lib.paths import RESULTS_FILE, results_dir as default_results_dir

    path = Path(results_dir or default_results_dir()) / RESULTS_FILE
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    entry = results.get(config.get("arm"))
    if not entry or entry.get("run", {}).get("preset") != config.get("preset"):
        return None
    return {"entry": entry, "comparison": results.get("comparisons", {}).get(config.get("arm"))}


def schedule_change_lines(config: dict) -> list[str]:
    """Model-card lines for a run resumed with another --steps (config.json ``schedule_changes``); none otherwise."""
    return [f"- schedule changed on resume at step {c['at_step']}: {c['from_steps']} -> {c['to_steps']} steps (the "
            f"learning rate followed the {c['from_steps']}-step cosine until then, so these weights differ from a "
            f"fresh {c['to_steps']}-step run's)" for c in config.get("schedule_changes") or []]


def init_lines(config: dict) -> list[str]:
    """The model-card line saying where the run's weights started (config.json ``init``; runs from before it: none)."""
    init = config.get("init")
    if not init:
        return []
    if init.get("started_from") == "trunk":
        fresh = init.get("kept_fresh") or []
        return [f"- started from the pretrained trunk `{init.get('source')}` (sha256 {init.get('trunk_sha256')}, "
                f"{init.get('trunk_steps')} steps; rebuilt by `{init.get('trunk_command')}`): {init.get('loaded')} "
                "tensors loaded" + (f", kept fresh: {', '.join(fresh)}" if fresh else "")
                + (f"; left out (no place in this family): {', '.join(init['left_out'])}" if init.get("left_out") else "")]
    return [f"- started from random initialisation ({init.get('reason') or 'init_from empty'})"]


def model_card(config: dict, num_parameters: int, results: dict | None) -> str:
    """The README.md of an exported run: what it is, how it was trained, what it scored, how to load it."""
    model, tok, data = config["model"], config.get("tokenizer") or {"name": "gpt2"}, config.get("data_meta") or {}
    lines = [
        "---", "library_name: pytorch", "license: mit", "tags: [revena-workbook, long-term-memory, language-model]",
        "---", "",
        f"# Revena workbook: `{config['arm']}` ({config.get('preset')} preset, seed {config.get('seed')})", "",
        f"{config.get('arm_description', '')}", "",
        "A small research language model from the Revena workbook, which asks which kind of memory helps a small "
        "language model compress text and recall facts from beyond its attention window.", "",
        "## Architecture", "",
        f"- family `{model.get('family', 'transformer')}`, {model['n_layer']} layers, width {model['n_embd']}, "
        f"{model['n_head']} heads, sliding-window attention of {model['window']} tokens in chunks of {model['chunk_size']}",
        f"- long-term memory: {'yes' if model.get('use_ltm') else 'no'}"
        + (f" (capacity {model['ltm_capacity']}, write above {model['ltm_write_threshold_bits']} bits "
           f"({model.get('ltm_write_rule', 'surprisal')} rule), read above cosine {model['ltm_similarity_threshold']})"
           if model.get("use_ltm") else ""),
        f"- trainable parameters: {num_parameters:,}; vocabulary: {tok.get('name')} ({model['vocab_size']:,} tokens)", "",
        "## Training", "",
        f"- corpus: {data.get('corpus')} ({data.get('train_tokens')} training tokens)"
        + (f"; fallback: {data['fallback_reason']}" if data.get("fallback_reason") else ""),
        f"- {config.get('steps_done')} steps of {config['train']['batch_size']} x {config['train']['seq_len']} tokens, "
        f"AdamW lr {config['train']['lr']}, device {config.get('device')} ({config.get('dtype')})",
        *init_lines(config), *schedule_change_lines(config), "",
        "## Results", "",
    ]
    if results:
        e = results["entry"]
        ci = e.get("ci95", {})
        lines += [f"Evaluated with the workbook's `05_evaluate` ({e['run'].get('corpus')} validation split, preset "
                  f"{e['run'].get('preset')}, seeds {e['run'].get('seeds')}; 95% intervals over seeds and documents/items):", "",
                  "| metric | value | 95% interval |", "|---|---|---|"]
        for key in ("bpc", "bits_per_byte", "long_range_recall", "memory_hit_rate", "tokens_per_sec"):
            lo_hi = ci.get(key)
            lines.append(f"| {key} | {e.get(key):.4g} | {'' if not lo_hi else f'[{lo_hi[0]:.4g}, {lo_hi[1]:.4g}]'} |")
        if results.get("comparison"):
            lines += ["", f"Against the baseline: {results['comparison']['summary']}."]
    else:
        lines.append("No evaluation of this preset was found when exporting (run `python -m revena_lib.evaluate`).")
    lines += ["", "## Intended use and limitations", "",
              "For research on memory in small language models, and for teaching. It is a small model trained on "
              "little text: it is not a general-purpose language model, its text is not reliable, and its numbers "
              "describe this corpus and budget only.", "",
              "## How to load", "", "```python", "from revena_lib.training.export import from_pretrained",
              "model, tokenizer = from_pretrained('path/to/this/folder')   # or a hub repo id (huggingface_hub)",
              "from revena_lib.data.tokenizer import encode_text   # text is always ordinary text, '<|endoftext|>' too",
              "out = model(torch.tensor([[tokenizer.eot_token] + encode_text(tokenizer, 'Fellow citizens')]))", "```", ""]
    return "\n".join(lines)


def export_run(run_dir, out_dir, results_dir=None, force: bool = False) -> Path:
    """Write the hub layout of a finished run to ``out_dir``; returns it. Refuses a non-empty folder unless forced."""
    from safetensors.torch import save_model

    from revena_lib.paths import data_dir
    from revena_lib.data.tokenizer import VOCAB_FILE, TOKENIZER_FILE

    run_dir, out = Path(run_dir), Path(out_dir)
    model, config = load_model(run_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} is not empty: choose another --out, or pass --force to overwrite it")
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, str(out / WEIGHTS_FILE))             # keeps one copy of the tied embedding
    tokenizer = config.get("tokenizer") or {"name": "gpt2"}
    if tokenizer["name"] == "gpt2":
        shutil.copyfile(VOCAB_FILE, out / VOCAB_FILE.name)
    else:
        source = data_dir() / tokenizer.get("file", TOKENIZER_FILE)
        from revena_lib.data.tokenizer import load_bpe
        load_bpe(source, tokenizer["name"], tokenizer.get("sha256"))   # verifies it is the run's tokenizer
        shutil.copyfile(source, out / TOKENIZER_FILE)
    write_json(out / CONFIG_FILE, {"format": FORMAT, "arm": config["arm"], "family": config["model"].get("family"),
                                   "model": config["model"], "tokenizer": tokenizer, "preset": config.get("preset"),
                                   "seed": config.get("seed"), "train": config.get("train"),
                                   "data_meta": config.get("data_meta"), "num_parameters": model.num_parameters(),
                                   "schedule_changes": config.get("schedule_changes") or [],
                                   "init": config.get("init")})
    write_text(out / CARD_FILE, model_card(config, model.num_parameters(), _results_for(config, results_dir)))
    return out


def from_pretrained(folder, device="cpu"):
    """(model in eval mode, tokenizer) from an exported folder, or a hub repo id (downloaded by huggingface_hub)."""
    from safetensors.torch import load_model as load_weights

    from revena_lib.models import build_model
    from revena_lib.data.tokenizer import TOKENIZER_FILE, gpt2_tokenizer, load_bpe

    folder = Path(folder)
    if not folder.exists():
        from huggingface_hub import snapshot_download
        folder = Path(snapshot_download(str(folder)))
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"{folder / CONFIG_FILE} is missing or corrupt ({e}): export the run again "
                          "(python -m revena_lib.export RUN_DIR --out DIR)") from None
    if config.get("format") != FORMAT:
        raise ExportError(f"{folder} is not a Revena workbook export (config.json format {config.get('format')!r})")
    model = build_model(ModelConfig(**config["model"]))
    load_weights(model, str(folder / WEIGHTS_FILE))
    tok = config["tokenizer"]
    tokenizer = gpt2_tokenizer() if tok["name"] == "gpt2" else load_bpe(folder / TOKENIZER_FILE, tok["name"], tok.get("sha256"))
    return model.to(device).eval(), tokenizer


def push(folder, repo_id: str, private: bool = False) -> str:
    """Upload an exported folder to the Hugging Face Hub (one real call). Offline, one clear error at once."""
    from revena_lib.data.corpus import hub_unreachable_reason

    reason = hub_unreachable_reason()
    if reason:
        raise ExportError(f"cannot push to the Hugging Face Hub: {reason}. The export in {folder} is complete; push it "
                          f"later with `python -m revena_lib.export --push-only {folder} --push {repo_id}`")
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True, private=private)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Revena workbook export")
    except Exception as e:   # auth, permissions, network: one line with the hub's own reason
        raise ExportError(f"pushing {folder} to {repo_id} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                          " (log in with `huggingface-cli login` or set HF_TOKEN)") from None
    return str(getattr(info, "commit_url", info))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m revena_lib.export", description=(
        "Export a trained run (trained/<arm>/<preset>/seed-<N>) to the Hugging Face Hub layout: model.safetensors, "
        "config.json, tokenizer files and a README.md model card with the run's results; optionally push it."))
    parser.add_argument("run_dir", help="a finished run directory, or with --push-only an exported folder")
    parser.add_argument("--out", default=None, help="the folder to write (default: exported/<arm>-<preset>-<seed>)")
    parser.add_argument("--force", action="store_true", help="overwrite a non-empty --out folder")
    parser.add_argument("--push", metavar="REPO_ID", default=None, help="also upload to this hub repo (needs network and a token)")
    parser.add_argument("--push-only", action="store_true", help="run_dir is an exported folder: only push it")
    parser.add_argument("--private", action="store_true", help="create the hub repo as private")
    args = parser.parse_args(argv)
    try:
        if args.push_only:
            folder = Path(args.run_dir)
        else:
            config = read_config(args.run_dir)
            folder = Path(args.out or Path("exported") / f"{config['arm']}-{config.get('preset')}-{config.get('seed')}")
            export_run(args.run_dir, folder, force=args.force)
            print(f"revena: exported {args.run_dir} to {folder}", file=sys.stderr)
        if args.push:
            print(f"revena: pushed to {push(folder, args.push, args.private)}", file=sys.stderr)
    except (ExportError, CheckpointError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
