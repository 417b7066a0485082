"""The parity table (benchmarks/parity/table.py): ours against the official DiffusionBlocks per budget, with the
Welch interval of the difference, generated from results.json files alone; the committed table regenerates."""

import json

import pytest

from benchmarks.parity import table


def _write(root, budget, seed, top1, commit=None):
    d = root / f"b{budget}" / f"seed{seed}"
    d.mkdir(parents=True)
    res = {"eval_top1": top1, "total_train_flops": 6.79e12, **({"official": {"commit": commit}} if commit else {})}
    (d / "results.json").write_text(json.dumps(res))


def test_the_table_reports_each_budget_with_both_sides_and_the_welch_difference(tmp_path):
    ours, official = tmp_path / "ours", tmp_path / "official"
    for s, t in enumerate((34.0, 29.0, 29.0)):
        _write(ours, 8, s, t)
    for s, t in enumerate((31.0, 33.0, 32.0)):
        _write(official, 8, s, t, commit="42d667cb8aa422318c7544ae345d80b9fb20ec0d")
    _write(ours, 16, 0, 40.0)  # no official run at 16: no row
    md = table.build(ours, official, tmp_path / "t.md").read_text()
    assert "42d667cb8aa4" in md and "| 16 |" not in md
    row = next(line for line in md.splitlines() if line.startswith("| 8 |"))
    # ours 30.67 (sd 2.89), official 32.00 (sd 1.00): Welch dof 2.5 -> t 3.7..., half width about 6.6
    assert "| 8 | 3 | 30.67 ± 7.17 | 3 | 32.00 ± 2.48 | -1.33 ±" in row and "no difference beyond noise" in row


def test_the_committed_table_regenerates_byte_for_byte(tmp_path):
    if not table.OUT.is_file():
        pytest.skip("no committed parity table yet (python -m benchmarks.parity.table writes it)")
    assert table.build(out=tmp_path / "t.md").read_bytes() == table.OUT.read_bytes()
