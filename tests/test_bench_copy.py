"""benchmarks/bench_copy.py end to end on the smoke preset: probes at intervals, the table, and a second call that
continues the runs instead of training them again. CPU, about half a minute."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_copy  # noqa: E402


def test_bench_copy_probes_tabulates_and_continues(smoke_data, tmp_path, capsys):
    args = ["--preset", "smoke", "--recipes", "landed,sparse_facts", "--steps", "4", "--every", "2", "--items", "2",
            "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "rows.json"), "--threads", "1"]
    bench_copy.main(args)
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["recipe"], r["step"]) for r in rows] == [("landed", 2), ("landed", 4), ("sparse_facts", 2),
                                                        ("sparse_facts", 4)]
    assert rows[1]["tokens"] == 4 * 2 * 1024 and rows[1]["train_minutes"] > 0
    assert all(0.0 <= r["passkey_exact_32"] <= 1.0 and r["no_fact_log2p_32"] < 0 for r in rows)
    assert "| landed | 1337 | not reached by 0.01 M tokens (4 steps" in out
    assert (tmp_path / "runs" / "landed-seed-1337" / "config.json").exists()
    # again, to 6 steps: the probes taken are read back, only steps 5-6 are trained
    bench_copy.main([a if a != "4" else "6" for a in args])
    again = json.loads((tmp_path / "rows.json").read_text())
    assert [r["step"] for r in again if r["recipe"] == "landed"] == [2, 4, 6]
    assert again[:2] == rows[:2]


def test_bench_copy_refuses_an_unknown_recipe(smoke_data, tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="unknown recipe 'nope'"):
        bench_copy.main(["--preset", "smoke", "--recipes", "nope", "--out", str(tmp_path)])


def test_bench_copy_stops_once_copying_unless_to_end(smoke_data, tmp_path, monkeypatch):
    # Smoke models never copy, so let every probe count as copying: a run stops at its first probe, unless --to-end
    # (a fine-tune from a copying trunk, where what counts is whether the copying is kept).
    monkeypatch.setattr(bench_copy, "copies", lambda row: True)
    base = ["--preset", "smoke", "--recipes", "landed", "--steps", "4", "--every", "2", "--items", "2", "--threads", "1"]
    bench_copy.main(base + ["--out", str(tmp_path / "stop"), "--json", str(tmp_path / "stop.json")])
    bench_copy.main(base + ["--out", str(tmp_path / "end"), "--json", str(tmp_path / "end.json"), "--to-end"])
    assert [r["step"] for r in json.loads((tmp_path / "stop.json").read_text())] == [2]
    assert [r["step"] for r in json.loads((tmp_path / "end.json").read_text())] == [2, 4]
