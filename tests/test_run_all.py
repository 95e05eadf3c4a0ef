"""run_all.py: the headless pipeline, end to end on the smoke preset, and how it reports a failure."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_all(*args, home: Path, timeout=900):
    env = {**os.environ, "REVENA_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(REPO_ROOT / "run_all.py"), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def write_notebook(path: Path, *sources: str):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('preset = "smoke"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)


def test_help_explains_presets():
    result = subprocess.run([sys.executable, str(REPO_ROOT / "run_all.py"), "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0
    for word in ("--preset", "smoke", "cpu", "paper", "--only", "--arms", "--seeds"):
        assert word in result.stdout


def test_unknown_preset_is_refused(tmp_path):
    result = run_all("--preset", "huge", home=tmp_path)
    assert result.returncode != 0
    assert "invalid choice: 'huge'" in result.stderr


def test_unknown_arm_is_refused_before_any_notebook_runs(tmp_path):
    result = run_all("--preset", "smoke", "--arms", "baseline,nope", home=tmp_path)
    assert result.returncode != 0 and "--arms: unknown arm 'nope'" in result.stderr
    assert not (tmp_path / "data").exists()


def test_stops_at_first_failing_notebook_and_names_it(tmp_path):
    notebooks = tmp_path / "nbs"
    notebooks.mkdir()
    write_notebook(notebooks / "01_fine.ipynb", "print('fine', preset)")
    write_notebook(notebooks / "02_broken.ipynb", "x = 1", "raise ValueError('planted failure')")
    write_notebook(notebooks / "03_never.ipynb", "open('ran.txt', 'w').write('oops')")
    out = tmp_path / "executed"
    result = run_all("--preset", "smoke", "--notebooks-dir", str(notebooks), "--output-dir", str(out),
                     home=tmp_path, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ok     01_fine.ipynb" in result.stdout
    assert "FAILED 02_broken.ipynb" in result.stdout
    assert "ValueError: planted failure" in result.stdout
    assert "03_never" not in result.stdout
    assert not (REPO_ROOT / "ran.txt").exists()
    # The parameter reached the notebook, and the executed copy (not the source) holds the output.
    executed = nbformat.read(out / "01_fine.ipynb", as_version=4)
    assert "fine smoke" in json.dumps(executed.cells[-1].outputs)
    source = nbformat.read(notebooks / "01_fine.ipynb", as_version=4)
    assert not source.cells[-1].outputs


@pytest.mark.slow
def test_smoke_pipeline_end_to_end(tmp_path):
    out = tmp_path / "executed"
    result = run_all("--preset", "smoke", "--output-dir", str(out), home=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    notebooks = sorted(p.name for p in (REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert notebooks, "no notebooks to run"
    for name in notebooks:
        assert f"ok     {name}" in result.stdout
        assert (out / name).exists()
    # What the pipeline leaves behind, with the brief's schema.
    assert (tmp_path / "data" / "train.bin").exists() and (tmp_path / "data" / "meta.json").exists()
    if any(n.startswith("05_") for n in notebooks):
        results = json.loads((tmp_path / "results" / "results.json").read_text())
        assert set(results) == {"baseline", "with_ltm", "with_ltm_reads_off", "comparisons", "reference"}
        for name in ("baseline", "with_ltm", "with_ltm_reads_off"):
            for key in ("bpc", "long_range_recall", "memory_hit_rate", "tokens_per_sec"):
                assert isinstance(results[name][key], float)
        assert results["baseline"]["memory_hit_rate"] == 0.0
        assert results["comparisons"]["with_ltm"]["bpc"]["verdict"] in ("better", "worse", "no detectable difference")
    if any(n.startswith("06_") for n in notebooks):
        assert (tmp_path / "results" / "results.png").stat().st_size > 10_000


def test_sleep_notebook_is_opt_in_above_smoke():
    sys.path.insert(0, str(REPO_ROOT))
    import run_all as runner

    names = lambda *a: [p.name[:2] for p in runner.select_notebooks(REPO_ROOT / "notebooks", *a)]   # noqa: E731
    assert "09" in names("", "smoke", False)
    assert "09" not in names("", "cpu", False) and "08" in names("", "cpu", False)
    assert "09" in names("", "cpu", True)
    assert names("09", "cpu", False) == ["09"]


def test_every_notebook_has_a_parameters_cell_papermill_can_read():
    """papermill silently skips a parameter line it cannot parse (an '=' or quote in a comment does it), and
    run_all.py passes only declared names: so every line of every parameters cell must parse."""
    from papermill.translators import PythonTranslator

    for path in sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(cells) == 1, f"{path.name}: exactly one cell tagged 'parameters'"
        lines = [l for l in cells[0].source.splitlines() if l.strip() and not l.lstrip().startswith("#")]
        names = [p.name for p in PythonTranslator.inspect(cells[0])]
        assert len(names) == len(lines), f"{path.name}: papermill read {names} from {lines}"
        assert names[0] == "preset"
