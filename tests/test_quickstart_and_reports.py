"""The README's main command and the committed reports."""

import csv
import filecmp

import pytest

from benchmarks import make_reports
from rbdc import train_flops_per_image
from rbdc.cli import main


def test_quickstart_runs_end_to_end_on_digits(tmp_path, capsys):
    assert main(["quickstart", "--data", "digits", "-o", str(tmp_path), "--set", "budget_epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "rbdc top-1" in out
    r, s = _results(tmp_path, "rbdc-d1"), _results(tmp_path, "scratch")
    assert abs(s["total_train_flops"] / r["total_train_flops"] - 1) < 0.01  # scratch matched to the rbdc run
    with open(tmp_path / "quickstart-report.csv", newline="") as f:
        rows = {row["group"]: row for row in csv.DictReader(f) if row["group"]}  # measured: quoted rows have none
    assert sorted(rows) == ["quickstart/rbdc-d1", "quickstart/scratch"]
    for group, res in (("quickstart/rbdc-d1", r), ("quickstart/scratch", s)):
        assert float(rows[group]["top1_mean"]) == pytest.approx(res["eval_top1"], abs=1e-4)
        assert f"| {group} |" in (tmp_path / "quickstart-report.md").read_text()
    assert "quickstart/rbdc-d1" in (tmp_path / "quickstart-report.tex").read_text()
    assert (tmp_path / "quickstart-report.png").read_bytes().startswith(b"\x89PNG")


def _results(root, protocol):
    import json

    return json.loads((root / "quickstart" / protocol / "seed0" / "results.json").read_text())


def test_quickstart_trains_both_runs_side_by_side_on_equal_flops(tmp_path, capsys):
    assert (
        main(["quickstart", "--data", "digits", "-o", str(tmp_path), "--set", "budget_epochs=1", "--progress", "0.5"])
        == 0
    )
    out = capsys.readouterr().out
    assert "side by side, 1 thread each" in out and "  [" in out  # progress lines (their words: below)
    r, s = _results(tmp_path, "rbdc-d1"), _results(tmp_path, "scratch")
    step = 64 * train_flops_per_image("rbdc_vit_nano_patch4_32", 32, num_classes=10)  # one optimizer step of scratch
    assert abs(r["total_train_flops"] - s["total_train_flops"]) <= step
    for p in ("rbdc-d1", "scratch"):  # each run trained in its own one-thread process
        assert '"threads": 1' in (tmp_path / "quickstart" / p / "seed0" / "command.txt").read_text()


def test_the_quickstart_progress_gives_each_runs_share_and_the_time_left_at_the_slowest_pace(tmp_path, capsys):
    """A tick before any run has finished an epoch says when the time left will be known; later ticks give each
    run's share of its planned FLOPs and the time left at the slowest run's pace. (The quickstart's own runs are too
    short for this: scratch finishes its one epoch at its end.)"""
    import threading

    from rbdc.quickstart import _report_progress
    from rbdc.runs.summary import write_summary

    dirs = {"rbdc-d1": tmp_path / "r", "scratch": tmp_path / "s"}
    for d in dirs.values():
        d.mkdir()
    stop, ticks = threading.Event(), []

    def at_second_tick(every):  # 2 ticks, no sleeping; both runs have finished an epoch by the second
        if len(ticks) == 1:
            write_summary(dirs["rbdc-d1"] / "summary.csv", [{"stage": "a", "cum_train_flops": 30.0}])
            write_summary(dirs["scratch"] / "summary.csv", [{"stage": "s", "cum_train_flops": 50.0}])
        ticks.append(every)
        return len(ticks) > 2

    stop.wait = at_second_tick
    _report_progress(dirs, {"rbdc-d1": 100.0, "scratch": 100.0}, stop, every=0.5)
    first, second = capsys.readouterr().out.splitlines()
    assert "rbdc-d1 0%, scratch 0% | time left: after 1 epoch" in first
    assert "rbdc-d1 30%, scratch 50% | ~" in second and second.endswith(" left")


def test_warm_cache_decodes_once_then_reads_the_cache(tmp_path, monkeypatch):
    import torch

    from rbdc import data
    from rbdc.quickstart import RECIPES, warm_cache

    monkeypatch.setenv("RBDC_CACHE", str(tmp_path))
    decoded = []
    real = data.cache._decode_all
    monkeypatch.setattr(data.cache, "_decode_all", lambda ds, *a, **k: decoded.append(ds.split) or real(ds, *a, **k))
    images = torch.randint(0, 255, (80, 8, 8, 3), dtype=torch.uint8).numpy()
    ds = data.ArrayDataset(
        images, [i % 4 for i in range(80)], ["a", "b", "c", "d"], source="toy", root=None, split="train", out_size=32
    )
    monkeypatch.setattr("rbdc.quickstart.recipe_datasets", lambda rec: (ds, ds))
    warm_cache(str(RECIPES / "rbdc.yaml"), [], seed=0)
    assert len(decoded) == 1 and list((tmp_path / "memory").glob("toy-train-32px-*.pt"))  # val = same images
    warm_cache(str(RECIPES / "rbdc.yaml"), [], seed=0)
    assert len(decoded) == 1  # the second quickstart starts training at once


@pytest.mark.parametrize("name", sorted(make_reports.REPORTS))
def test_committed_report_regenerates_byte_for_byte(name, tmp_path):
    folders, _ = make_reports.REPORTS[name]
    if not all((make_reports.RUNS / f).is_dir() for f in folders):
        pytest.skip(f"no committed runs for {name} under reports/runs")
    import shutil

    committed = make_reports.REPO / "reports"
    # regenerate from a copy of the committed runs laid out as in the repo, so relative run paths are the same
    shutil.copytree(make_reports.RUNS, tmp_path / "reports" / "runs")
    written = make_reports.make(out_dir=tmp_path / "reports", runs=tmp_path / "reports" / "runs")
    for suffix in ("md", "tex", "csv"):
        assert filecmp.cmp(written[name][suffix], committed / f"{name}.{suffix}", shallow=False), suffix


@pytest.mark.parametrize("name", sorted([*make_reports.STUDIES, *make_reports.DET_STUDIES]))
def test_committed_study_report_regenerates_byte_for_byte(name, tmp_path):
    if not (make_reports.RUNS / name).is_dir():
        pytest.skip(f"no committed runs of study {name} under reports/runs")
    import shutil

    shutil.copytree(make_reports.RUNS, tmp_path / "reports" / "runs")
    written = make_reports.make(out_dir=tmp_path / "reports", runs=tmp_path / "reports" / "runs")
    if name in make_reports.DET_STUDIES and name not in written:
        pytest.skip(f"no finished fine-tuning of {name} under reports/runs (its backbones only)")
    for kind, path in written[name].items():
        committed = make_reports.REPO / "reports" / path.relative_to(tmp_path / "reports")
        assert filecmp.cmp(path, committed, shallow=False), kind


def test_the_readme_headline_is_the_committed_reports():
    """The README's headline block is what make_reports writes from the committed study report (which itself
    regenerates byte for byte from the committed runs, above): the README's numbers are the report's."""
    from rbdc.report import headline

    readme = (make_reports.REPO / "README.md").read_text(encoding="utf-8")
    block = make_reports.readme_headline()
    assert block in readme, "README.md's headline is stale: run python -m benchmarks.make_reports"
    name = make_reports.HEADLINE[0]
    md = (make_reports.REPO / "reports" / f"{name}.md").read_text(encoding="utf-8")
    import re

    for number in re.findall(r"[+-]?\d+\.\d+%?", "\n".join(headline.extract(md))):
        assert number in block
    assert readme.index(block) < readme.index("## Layout")  # right under the set-up commands


def test_the_readme_states_the_detection_verdict_of_the_committed_report():
    """The README's Results line on detection says what balloon-r18's generated verdict says (claim and why)."""
    import re

    readme = (make_reports.REPO / "README.md").read_text(encoding="utf-8")
    md = (make_reports.REPO / "reports" / "detection" / "balloon-r18.md").read_text(encoding="utf-8")
    line = re.search(r"- Detection \(the backbone claim\):(.*?)\n- ", readme, re.S)
    assert line, "README.md's Results has no '- Detection (the backbone claim):' line"
    said = " ".join(line.group(1).split())  # the README wraps its lines
    claim = re.search(r"is \*\*(supported|refuted|still open)\*\* at this scale", md)
    assert claim, "balloon-r18.md has no verdict on the claim"
    assert f"Its verdict: {claim.group(1)}" in said
    measured = "**Backbones are being measured**" in md
    assert ("do not beat the random-init control" in said) == (not measured)
