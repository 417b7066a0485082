"""The README's main command and the committed reports."""
import filecmp

import pytest

from benchmarks import make_reports
from rbdc.cli import main


def test_quickstart_runs_end_to_end_on_digits(tmp_path, capsys):
    assert main(["quickstart", "--data", "digits", "-o", str(tmp_path), "--set", "budget_epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "rbdc top-1" in out
    for suffix in ("md", "tex", "csv", "png"):
        assert (tmp_path / f"quickstart-report.{suffix}").is_file()
    assert (tmp_path / "quickstart" / "scratch" / "seed0" / "results.json").is_file()


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


@pytest.mark.parametrize("name", sorted(make_reports.STUDIES))
def test_committed_study_report_regenerates_byte_for_byte(name, tmp_path):
    if not (make_reports.RUNS / name).is_dir():
        pytest.skip(f"no committed runs of study {name} under reports/runs")
    import shutil
    shutil.copytree(make_reports.RUNS, tmp_path / "reports" / "runs")
    written = make_reports.make(out_dir=tmp_path / "reports", runs=tmp_path / "reports" / "runs")
    for kind, path in written[name].items():
        assert filecmp.cmp(path, make_reports.REPO / "reports" / path.name, shallow=False), kind
