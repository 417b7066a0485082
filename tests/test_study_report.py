"""The study report: savings matched on scratch's curve with bootstrap intervals, Fig. 2/3, byte-exact output."""

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from rbdc import recipe as recipes
from rbdc.errors import UserError
from rbdc.studies.spec import load_study
from rbdc.report.study import Point, build, saving_with_interval
from tests.test_report import make_run

REPO = Path(__file__).resolve().parents[1]
CI = REPO / "configs" / "recipes" / "ci"
SCRATCH = {1: (50.0, 1e12), 2: (60.0, 2e12), 4: (70.0, 4e12)}  # top-1 rises 10 points per doubling of FLOPs


def _study_file(tmp_path: Path, points: list[dict], report: dict) -> Path:
    """A study file named tiny, 3 seeds, with these points and report section."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "seeds": [0, 1, 2], "points": points, "report": report}))
    return path


def _write_recipes(study, runs: Path) -> None:
    """Each existing run's recipe.yaml as rbdc train writes it: the study's recipe for that run."""
    for r in study.runs:
        d = r.run_dir(runs)
        if d.is_dir():
            (d / "recipe.yaml").write_text(
                recipes.dump(recipes.resolve(r.recipe, list(r.overrides), seed=r.seed, name=r.name))
            )


def _fake_study(tmp_path: Path, rbdc_top1=(64.0, 65.0, 66.0), rbdc_set=None) -> tuple:
    study_file = _study_file(
        tmp_path,
        [
            {"id": "scratch", "recipe": str(CI / "scratch.yaml"), "budgets": [1, 2, 4]},
            {"id": "rbdc", "recipe": str(CI / "rbdc.yaml"), "budgets": [2], "set": rbdc_set or {}},
            {
                "id": "rbdc-r{rbdc.ratio}",
                "recipe": str(CI / "rbdc.yaml"),
                "budgets": [2],
                "grid": {"rbdc.ratio": [1.0, 3.0]},
            },
        ],
        {
            "title": "tiny study",
            "panels": [{"title": "ViT", "baseline": "scratch", "series": ["rbdc"]}],
            "ratio": {"key": "rbdc.ratio", "budget": 2, "points": ["rbdc-r1", "rbdc", "rbdc-r3"]},
            "compare": [{"title": "Ablation", "reference": "rbdc", "budget": 2, "points": ["rbdc-r1"]}],
        },
    )
    root = tmp_path / "runs" / "tiny"
    for b, (top1, flops) in SCRATCH.items():
        for s in range(3):
            make_run(root.parent, f"tiny/scratch/b{b}", "scratch", s, top1 + (s - 1) * 0.1, flops)
    for point, _ratio, tops in (
        ("rbdc", 2.0, rbdc_top1),
        ("rbdc-r1", 1.0, (60.0, 61.0, 62.0)),
        ("rbdc-r3", 3.0, (63.0, 63.5, 64.0)),
    ):
        for s, t in enumerate(tops):
            make_run(root.parent, f"tiny/{point}/b2", "rbdc", s, t, 2e12)
    study = load_study(study_file)
    _write_recipes(study, root.parent)
    return study, root


def test_the_saving_is_matched_on_scratchs_log_linear_curve():
    scratch = [Point("s", b, "scratch", [t] * 3, [f] * 3, [0, 1, 2], [], 3) for b, (t, f) in SCRATCH.items()]
    p = Point("r", 2, "rbdc", [65.0] * 3, [2e12] * 3, [0, 1, 2], [], 3)
    s = saving_with_interval(scratch, p)
    # 65 lies half way (in log FLOPs) between 2e12 and 4e12: scratch needs 2e12 * sqrt(2)
    assert s["saving"] == pytest.approx(1 - 1 / np.sqrt(2)) and s["status"] == "matched"
    assert s["lo"] == pytest.approx(s["saving"]) and s["hi"] == pytest.approx(s["saving"])  # no seed spread
    p_worse = Point("r", 2, "rbdc", [55.0] * 3, [2e12] * 3, [0, 1, 2], [], 3)
    assert saving_with_interval(scratch, p_worse)["saving"] < 0
    beyond = Point("r", 2, "rbdc", [75.0] * 3, [2e12] * 3, [0, 1, 2], [], 3)
    assert saving_with_interval(scratch, beyond)["status"] == "above_range"


def test_the_curve_models_agree_where_scratch_is_linear_in_log_flops_and_the_report_shows_them(tmp_path):
    """Issue 31 item 5: the curve model's spread beside the interval. Scratch's means lie on one line in log FLOPs,
    so the monotone cubic through them is that line and gives the log-linear saving; the report prints both curves."""
    scratch = [Point("s", b, "scratch", [t - 1, t, t + 1], [f] * 3, [0, 1, 2], [], 3) for b, (t, f) in SCRATCH.items()]
    p = Point("r", 2, "rbdc", [64.0, 65.0, 66.0], [2e12] * 3, [0, 1, 2], [], 3)
    s = saving_with_interval(scratch, p)
    assert s["spread"]["loglinear"] == pytest.approx(s["saving"])
    assert s["spread"]["pchip"] == pytest.approx(s["saving"])
    assert s["spread"]["power"] is not None and abs(s["spread"]["power"] - s["saving"]) < 0.2
    study, root = _fake_study(tmp_path)
    md = build(study, root, tmp_path / "out" / "tiny")["md"].read_text()
    assert "other curves: PCHIP / power" in md
    assert f"| {100 * s['spread']['pchip']:+.1f}% / {100 * s['spread']['power']:+.1f}% |" in md


def test_the_interval_widens_with_seed_spread():
    scratch = [Point("s", b, "scratch", [t - 1, t, t + 1], [f] * 3, [0, 1, 2], [], 3) for b, (t, f) in SCRATCH.items()]
    p = Point("r", 2, "rbdc", [63.0, 65.0, 67.0], [2e12] * 3, [0, 1, 2], [], 3)
    s = saving_with_interval(scratch, p)
    assert s["lo"] < s["saving"] < s["hi"] and s["hi"] - s["lo"] > 0.1


def test_the_report_has_both_figures_savings_and_a_verdict_and_regenerates_byte_for_byte(tmp_path):
    study, root = _fake_study(tmp_path)
    paths = build(study, root, tmp_path / "out" / "tiny")
    md = paths["md"].read_text()
    assert set(paths) == {"md", "fig2", "fig3", "saving"}
    assert "| rbdc | 2 | 3 | 65.00 ± 2.48 |" in md  # t(2) * 1 / sqrt(3) = 2.48
    assert "29.3%" in md and "saves FLOPs" in md
    assert "The paper's 30% lies inside the interval at budget(s) 2" in md
    assert (
        "**In short**: the paper's 30% saving lies inside the 95% interval of rbdc b2. Saving FLOPs beyond "
        "seed noise: rbdc b2 (+29.3%)"
    ) in md
    assert "| rbdc-r1 | 1 | 3 |" in md and "| rbdc-r3 | 3 | 3 |" in md  # Fig. 3 rows sorted by ratio
    assert "| rbdc-r1 | 3 | 61.00 ± 2.48 | -4.00 ± " in md
    first = {k: p.read_bytes() for k, p in paths.items()}
    again = build(study, root, tmp_path / "out" / "tiny")
    assert {k: p.read_bytes() for k, p in again.items()} == first


def test_a_rewrite_that_fails_midway_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    study, root = _fake_study(tmp_path)
    paths = build(study, root, tmp_path / "out" / "tiny")
    before = {k: p.read_bytes() for k, p in paths.items()}

    def full_disk(self, fname, **kwargs):
        (fname if hasattr(fname, "write") else open(fname, "wb")).write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    with pytest.raises((OSError, UserError), match="disk is full|No space"):
        build(study, root, tmp_path / "out" / "tiny")
    assert {k: p.read_bytes() for k, p in paths.items()} == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths.values())


def test_an_unfinished_study_says_what_is_missing_and_skips_failed_runs(tmp_path):
    """A point below 3 finished seeds (the fewest whose interval coverage is tested) is listed as unfinished and
    counted nowhere else: no table row, no interval, no place on scratch's curve."""
    study, root = _fake_study(tmp_path)
    (root / "rbdc" / "b2" / "seed2" / "failed.json").write_text(json.dumps({"reason": "diverged"}))
    md = build(study, root, tmp_path / "out" / "tiny")["md"].read_text()
    assert "**Incomplete**: 1 runs not finished yet: rbdc b2 (1; its 2 finished not counted yet)" in md
    assert "| rbdc | rbdc | 2 |" not in md and "| scratch | scratch | 2 | 3 |" in md
    assert "| rbdc | 2 | 2 | 10.0 |" in md  # the cost section counts what was spent


def test_a_report_naming_an_unknown_point_is_refused(tmp_path):
    study, root = _fake_study(tmp_path)
    data = yaml.safe_load(study.path.read_text())
    data["report"]["panels"][0]["series"].append("nope")
    study.path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="report names point"):
        build(load_study(study.path), root, tmp_path / "out" / "tiny")


def test_the_cost_section_sums_the_measured_walls_into_cpu_hours(tmp_path):
    study, root = _fake_study(tmp_path)
    for i, results in enumerate(sorted(root.rglob("results.json"))):  # walls and recorded threads of our choosing
        (results.parent / "command.txt").write_text(f'rbdc train ...\n{{\n "threads": {1 + i % 2}\n}}\n')
        results.write_text(json.dumps({**json.loads(results.read_text()), "wall_s": 360.0 * (1 + i % 2)}))
    n = len(list(root.rglob("results.json")))
    run_h = sum(360.0 * (1 + i % 2) for i in range(n)) / 3600
    cpu_h = sum(360.0 * (1 + i % 2) ** 2 for i in range(n)) / 3600
    md = build(study, root, tmp_path / "out" / "tiny")["md"].read_text()
    assert f"In all: {run_h:.1f} run-hours, {cpu_h:.1f} CPU-hours (wall x threads)" in md
    (next(root.rglob("command.txt"))).unlink()
    md = build(study, root, tmp_path / "out" / "tiny")["md"].read_text()
    assert "1 run(s) recorded no thread count and are left out" in md


def test_the_report_says_which_cpu_and_bf16_matmul_path_each_run_recorded(tmp_path):
    """Runs of one study may come from CPUs with and without bf16 kernels: the report counts them per recorded path,
    and leaves the section out while no run recorded its CPU."""
    from rbdc.runs import rundir

    study, root = _fake_study(tmp_path, rbdc_set={"amp": "bf16"})
    assert "## Where the runs ran" not in build(study, root, tmp_path / "out" / "a")["md"].read_text()
    for d in sorted((root / "rbdc" / "b2").iterdir()):
        rundir.append_command(
            d,
            "rbdc train ...",
            {"cpu": {"capability": "AVX2", "bf16_fast": False, "bf16_matmul": "fp32-rounded"}, "threads": 1},
        )
    first = root / "scratch" / "b1" / "seed0"  # an fp32 run that ran on two CPUs (resumed elsewhere)
    rundir.append_command(first, "rbdc train ...", {"cpu": {"capability": "AVX2", "bf16_fast": False}})
    rundir.append_command(first, "rbdc train ...", {"cpu": {"capability": "AVX512", "bf16_fast": True}})
    assert [e["cpu"]["capability"] for e in rundir.recorded_envs(first)] == ["AVX2", "AVX512"]
    md = build(study, root, tmp_path / "out" / "b")["md"].read_text()
    assert "## Where the runs ran" in md and "2 run(s) at a time" in md
    assert "| AVX2 | fp32-rounded | 3 | 1,500 |" in md  # make_run logs 1500 img/s per epoch
    assert "| AVX2 + AVX512 | - (fp32 run) | 1 | 1,500 |" in md
    assert "| not recorded |  | 14 | 1,500 |" in md


def _row(md: str, start: str) -> str:
    rows = [line for line in md.splitlines() if line.startswith(start)]
    assert len(rows) == 1, rows
    return rows[0]


def test_the_flops_saving_is_counted_over_the_whole_pipeline_and_over_the_target_stage_only(tmp_path):
    """rbdc's coupled stage is half its 2e12 FLOPs: against the same matched scratch FLOPs (2e12 * sqrt 2), the whole
    pipeline saves 1 - 1/sqrt 2 = 29.3%, the target stage alone 1 - 0.5/sqrt 2 = 64.6%."""
    study, root = _fake_study(tmp_path)
    md = build(study, root, tmp_path / "out" / "tiny")["md"].read_text()
    assert "## Cost in both currencies" in md
    row = _row(md, "| rbdc | scratch | 2 | +")
    assert "| +29.3% [" in row and "| +64.6% [" in row and row.endswith("| 50% |")


def _record_cpu(root: Path, pattern: str, **cpu) -> None:
    from rbdc.runs import rundir

    for d in sorted(root.glob(pattern)):
        rundir.append_command(d, "rbdc train ...", {"cpu": {"bf16_fast": True, **cpu}})


def test_the_wall_clock_saving_at_equal_top1_comes_from_the_runs_own_walls(tmp_path):
    """Every run took 600 s, each of rbdc's 3 stages 200 s. Scratch's runs: 21e12 FLOPs in 5400 s; rbdc's: 2e12 in
    600 s, so rho = 1.1667 and the wall saving is 1 - (1 - 0.2929) * 1.1667 = +17.5%. At the full model's speed
    inside the same run (its L1: 1e12 FLOPs in 200 s), rho = 1.5: 1 - 0.7071 * 1.5 = -6.1%. Its narrow stages ran
    at 0.5 x the coupled stage's FLOP/s."""
    study, root = _fake_study(tmp_path)
    _record_cpu(root, "*/b*/seed*", capability="AVX512", model="AMD EPYC (26-2)")
    md = build(study, root, tmp_path / "out" / "tiny")["md"].read_text()
    row = _row(md, "| rbdc | scratch | 2 | AMD EPYC (26-2) AVX512 |")
    assert "| 10.0 (10.0–10.0) | 0.50 | 1.50 (1.50–1.50) | -6.1% [" in row
    assert "| 1.17 (1.17–1.17) | +17.5% [" in row
    _record_cpu(root, "rbdc/b2/seed*", capability="AVX512", model="Intel Xeon (6-207)")  # resumed on another CPU
    md = build(study, root, tmp_path / "out" / "tiny")["md"].read_text()
    row = _row(md, "| rbdc | scratch | 2 | AMD EPYC (26-2) AVX512 + Intel Xeon (6-207) AVX512 |")
    assert row.endswith("| – | – (no scratch run on AMD EPYC (26-2) AVX512 + Intel Xeon (6-207) AVX512) |")


def test_walls_are_compared_with_scratchs_runs_only_where_both_recorded_the_cpu_model(tmp_path):
    """One capability spans machines up to 3x apart (Zen 4, Zen 5 and an AMX Xeon all read AVX512): runs that
    recorded only the capability, or no CPU, get no comparison with scratch's runs; the one inside each run stays."""
    study, root = _fake_study(tmp_path)
    md = build(study, root, tmp_path / "out" / "tiny")["md"].read_text()
    row = _row(md, "| rbdc | scratch | 2 | not recorded |")
    assert "| -6.1% [" in row and row.endswith(
        "| – | – (CPU model not recorded, so scratch's runs may have run on another machine) |"
    )
    _record_cpu(root, "*/b*/seed*", capability="AVX512")
    md = build(study, root, tmp_path / "out" / "tiny")["md"].read_text()
    row = _row(md, "| rbdc | scratch | 2 | AVX512 |")
    assert "| -6.1% [" in row and "+17.5%" not in row and "CPU model not recorded" in row


def test_the_coupled_models_parts_are_its_parents_in_the_manifest(tmp_path):
    """Not the stages whose id looks like the previous level: here the manifest says L1 was built from L0.1 alone
    (final top-1 = top-1 - 14), so its parts' top-1 is that stage's, not the mean with L0.0's (top-1 - 15)."""
    study, root = _fake_study(tmp_path)
    for d in sorted((root / "rbdc" / "b2").iterdir()):
        res = json.loads((d / "results.json").read_text())
        (d / "results.json").write_text(json.dumps({**res, "coupled_top1_before_training": {"L1": 40.0}}))
        man = json.loads((d / "manifest.json").read_text())
        man["stages"]["L1"]["parents"] = [{"stage": "L0.1"}]
        (d / "manifest.json").write_text(json.dumps(man))
    md = build(study, root, tmp_path / "out" / "tiny")["md"].read_text()
    assert "| rbdc | 2 | L1 | 3 | 51.00 | 40.00 |" in md  # mean of 64, 65, 66 minus 14


def test_series_of_one_protocol_get_distinct_colours_from_the_registry():
    from rbdc import protocols
    from rbdc.report.colors import series_colors

    c = series_colors([("scratch", "scratch"), ("d1", "rbdc"), ("d2", "rbdc"), ("n2n", "net2net"), ("x", "other")])
    assert c["d1"][0] == protocols.get("rbdc").color and c["scratch"][0] == protocols.get("scratch").color
    assert len({color for color, _ in c.values()}) == 5 and len({m for _, m in c.values()}) == 5
    assert (
        not {color for color, _ in c.values()}
        - {c["d2"][0], c["x"][0]}
        - {p.color for p in protocols.registry().values()}
    )


def test_the_headline_is_written_by_the_report_and_copied_into_a_readme(tmp_path):
    from rbdc.report import headline

    study, root = _fake_study(tmp_path)
    md = build(study, root, tmp_path / "out" / "tiny")["md"].read_text()
    lines = headline.extract(md)
    assert len(lines) == 3 and "not distinguishable from zero" not in lines[0]
    assert "above zero at 1 and below zero at 0 of its 1 point (95%" in lines[0] and "+29.3%" in lines[0]
    assert "lies outside 0 of the 1 interval." in lines[0]
    assert "+64.6%" in lines[1] and lines[2].startswith("![saving vs budget](tiny-saving.png)")
    block = headline.readme_block(lines, "reports/", "reports/tiny.md", "Source: tiny.")
    assert "](reports/tiny-saving.png)" in block and block.rstrip().endswith(headline.END)
    readme = f"# x\n\n{headline.START.format(source='old')}\nold\n{headline.END}\n\nrest\n"
    assert headline.fill(readme, block) == f"# x\n\n{block}\n\nrest\n"
    with pytest.raises(UserError, match="no headline markers"):
        headline.fill("# x\n", block)


def test_rbdc_study_report_is_dispatched_by_the_cli_and_trains_nothing(tmp_path, capsys):
    from rbdc.cli import main

    study, root = _fake_study(tmp_path)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert (
        main(
            ["study", str(study.path), "-o", str(root.parent), "--report", "--report-to", str(tmp_path / "r" / "tiny")]
        )
        == 0
    )
    assert (tmp_path / "r" / "tiny.md").is_file() and "tiny.md" in capsys.readouterr().out
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_the_study_modules_never_import_their_reports():
    """The report package reads the study definitions; the reverse would be an import cycle."""
    import ast

    for mod in ("rbdc/studies/study.py", "rbdc/detection/study.py"):
        tree = ast.parse((REPO / mod).read_text())
        names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [n for n in names if "report" in n], (mod, names)


def test_a_series_keeps_its_colour_across_panels_and_a_colour_names_one_series_per_figure():
    """The fair study shows RBDC d1 in its ViT panel (beside d2) and again in the ablation panel (beside the copies
    ablation, also protocol rbdc): d1 looks the same in both, and the copies do not take d2's colour."""
    from rbdc import protocols
    from rbdc.report.colors import figure_colors, series_colors

    vit = [("scratch", "scratch"), ("d1", "rbdc"), ("d2", "rbdc")]
    resnet = [("r-scratch", "scratch"), ("r-d1", "rbdc")]
    ablation = [("scratch", "scratch"), ("d1", "rbdc"), ("copies", "rbdc"), ("hc", "hypercloning")]
    a, b, c = figure_colors([vit, resnet, ablation])
    assert a == series_colors(vit)  # the first panel as before
    assert b["r-d1"][0] == protocols.get("rbdc").color  # another model's d1 is RBDC's colour in its own panel
    assert c["d1"] == a["d1"] and c["scratch"] == a["scratch"]
    assert c["copies"][0] not in {a["d2"][0], c["d1"][0], c["hc"][0]}
    assert len({m for _, m in c.values()}) == len(c)  # no two series of a panel share a marker
    # the ablation panel (on ViT's scratch again): its new series take markers no series of the figure has
    assert c["copies"][1] != a["d2"][1] and c["hc"][1] not in {m for _, m in (*a.values(), *b.values())}
    assert [m for _, m in b.values()] == [a["scratch"][1], a["d1"][1]]  # another model's panel mirrors the first


def test_markers_run_out_gracefully_in_a_crowded_figure():
    """Four ablation panels on one reference, 13 series for 8 markers: past them a new series still differs from
    the others of its own panel."""
    from rbdc.report.colors import MARKERS, figure_colors

    panels = [[("ref", "scratch"), *[(f"p{j}s{i}", "rbdc") for i in range(3)]] for j in range(4)]
    styles = figure_colors(panels)
    assert all(len({m for _, m in panel.values()}) == 4 for panel in styles)
    assert {m for panel in styles for _, m in panel.values()} == set(MARKERS)


def _two_panel_study(tmp_path, **kw):
    """The tiny study with a second panel on the same scratch that shows rbdc again beside rbdc-r1 (as the fair
    study's ablation panel shows RBDC d1 again)."""
    study, root = _fake_study(tmp_path, **kw)
    data = yaml.safe_load(study.path.read_text())
    data["report"]["panels"].append({"title": "Ablation", "baseline": "scratch", "series": ["rbdc", "rbdc-r1"]})
    study.path.write_text(yaml.safe_dump(data))
    return load_study(study.path), root


def test_a_series_shown_in_two_panels_is_counted_once_in_the_verdict_and_the_headline(tmp_path):
    from rbdc.report import headline

    study, root = _two_panel_study(tmp_path)
    md = build(study, root, tmp_path / "out" / "tiny")["md"].read_text()
    verdict = md.split("## Verdict")[1]
    assert verdict.count("- **rbdc** (") == 1 and verdict.count("rbdc b2 (+29.3%)") == 1
    assert "the paper's 30% saving lies inside the 95% interval of rbdc b2. Saving FLOPs" in verdict
    first = headline.extract(md)[0]
    # rbdc b2 once (not twice), and not rbdc-r1 b2: shown only in the ablation panel, it is not one of the method's
    # points (the fair study's copies ablation, protocol rbdc, beside RBDC d1 on the same scratch)
    assert "of its 1 point " in first
    assert "(Imagenette, ViT, budgets" in first  # the ablation panel is not another model


def test_the_headline_counts_tuning_runs_apart_and_writes_a_bound_as_one(tmp_path):
    """Seeds, budgets and runs of the headline are the reported points'; a saving that is a bound (the point lies
    above scratch's whole curve) reads '≥', never '+inf%'."""
    from types import SimpleNamespace

    from rbdc.report import headline

    run = SimpleNamespace(results={"dataset": "imagenette", "img_size": 32})
    points = {
        ("s", 8): Point("s", 8, "scratch", [1.0] * 5, [1.0] * 5, list(range(5)), [run] * 5, 5),
        ("tune/s/t1", 32): Point("tune/s/t1", 32, "scratch", [1.0] * 2, [1.0] * 2, [0, 1], [run] * 2, 2),
    }
    spec = {"panels": [{"title": "ViT", "baseline": "s", "series": ["r"]}]}
    assert headline._scale(spec, points, {"r": []}) == (
        "Imagenette at 32 px, ViT, budgets of 8 to 8 target epochs, 5 seeds a point, 5 runs on CPUs after 2 tuning runs"
    )
    study, root = _fake_study(tmp_path, rbdc_top1=(74.0, 75.0, 76.0))
    first = headline.extract(build(study, root, tmp_path / "out" / "tiny")["md"].read_text())[0]
    assert "the closest to a demonstrated saving is rbdc at budget 2: ≥ +50.0% (≥ " in first
    assert "above scratch's whole curve" in first and "inf" not in first


def _fig2_axes(tmp_path, monkeypatch, study, root) -> list:
    from rbdc.report import study_figures

    saved = {}
    real = study_figures.save_png
    monkeypatch.setattr(
        study_figures, "save_png", lambda fig, path: saved.setdefault(path.name, fig) and real(fig, path)
    )
    build(study, root, tmp_path / "out" / "tiny")
    fig = saved["tiny-fig2.png"]
    fig.canvas.draw()
    return fig.axes


def test_fig2s_markers_at_one_budget_stand_a_marker_apart_and_a_long_title_stays_over_its_panel(tmp_path, monkeypatch):
    """Every series at one budget side by side, however wide the panel's FLOPs range (a fixed log2 dodge left 4
    pixels between markers on the fair study's 16x-wide ViT panel); a long panel title is wrapped over its panel."""
    from rbdc.report.colors import MARKERS

    study, root = _two_panel_study(tmp_path)
    data = yaml.safe_load(study.path.read_text())
    data["points"].append({"id": "wide", "recipe": str(CI / "scratch.yaml"), "budgets": [1, 4]})
    panel = data["report"]["panels"][1]
    panel["title"] = "Independent parts vs one source: RBDC d1, its copies ablation, HyperCloning"
    panel["series"].append("wide")  # the panel now spans 1e12 to 4e12 FLOPs
    study.path.write_text(yaml.safe_dump(data))
    for b in (1, 4):
        for s in range(3):
            make_run(root.parent, f"tiny/wide/b{b}", "scratch", s, SCRATCH[b][0] + 0.5, SCRATCH[b][1])
    study = load_study(study.path)
    for r in study.runs:
        if r.point == "wide":
            (r.run_dir(root.parent) / "recipe.yaml").write_text(
                recipes.dump(recipes.resolve(r.recipe, list(r.overrides), seed=r.seed, name=r.name))
            )
    ax = _fig2_axes(tmp_path, monkeypatch, study, root)[1]
    for b, (_, flops) in SCRATCH.items():
        xs = sorted(
            ax.transData.transform((x, y))[0]
            for line in ax.lines
            if line.get_marker() in MARKERS
            for x, y in line.get_xydata()
            if flops / 1.3 < x < flops * 1.3
        )
        assert len(xs) == {1: 2, 2: 3, 4: 2}[b] and min(np.diff(xs)) > 5.5 * ax.figure.dpi / 72, (b, xs)
    title, box = ax.title.get_window_extent(), ax.get_window_extent()
    assert "\n" in ax.get_title() and box.x0 - 20 <= title.x0 and title.x1 <= box.x1 + 20


def test_fig2_reaches_scratchs_last_budget_when_a_point_lies_above_its_whole_curve(tmp_path, monkeypatch):
    """rbdc at 2e12 FLOPs beats scratch's best (70 at 4e12): its saving is a bound, and the panel shows scratch out
    to 4e12 so the reader sees why; a point whose top-1 (65) lies between scratch's b2 (60) and b4 (70) reaches b4
    too (its saving is read on that segment), and no further."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    study, root = _fake_study(tmp_path / "a", rbdc_top1=(74.0, 75.0, 76.0))
    ax = _fig2_axes(tmp_path / "a", monkeypatch, study, root)[0]
    assert ax.get_xlim()[1] > 4e12
    study, root = _fake_study(tmp_path / "b")
    ax = _fig2_axes(tmp_path / "b", monkeypatch, study, root)[0]
    assert ax.get_xlim()[1] == pytest.approx(4e12 * 1.2)


def test_fig2_says_so_where_a_panel_has_no_finished_run_yet(tmp_path, monkeypatch):
    """A study under way (the fair study's ResNet panel before its tuning ends): the panel says it has no finished
    run, instead of an empty frame with 0-1 axes."""
    study, root = _fake_study(tmp_path)
    data = yaml.safe_load(study.path.read_text())
    data["points"].append({"id": "later", "recipe": str(CI / "scratch.yaml"), "budgets": [1, 2]})
    data["report"]["panels"].append({"title": "Later", "baseline": "later", "series": ["rbdc-r3"]})
    study.path.write_text(yaml.safe_dump(data))
    for s in range(3):
        (root / "rbdc-r3" / "b2" / f"seed{s}" / "results.json").unlink()  # not finished
    first, later = _fig2_axes(tmp_path, monkeypatch, load_study(study.path), root)
    assert [t.get_text() for t in later.texts] == ["no finished runs yet"] and not later.get_xticks().size
    assert not first.texts and first.lines


def test_a_verdict_line_writes_a_bound_and_its_one_sided_interval_once_each():
    from rbdc.report.study_sections import _estimate_and_interval

    inside = {"status": "matched", "saving": 0.118, "text": "[-6.9%, +23.9%]"}
    assert _estimate_and_interval(inside) == "+11.8% [-6.9%, +23.9%]"
    below = {"status": "below_range", "saving": -2.999, "text": "≤ -247.7%"}
    assert _estimate_and_interval(below) == "≤ -299.9%, interval ≤ -247.7%"
    at_edge = {"status": "below_range", "saving": -1.0, "text": "≤ -100.0%"}
    assert _estimate_and_interval(at_edge) == "≤ -100.0%"  # was "≤ -100.0% ≤ -100.0%"


def test_in_short_places_the_papers_30_percent_among_the_methods_points_only():
    from types import SimpleNamespace

    from rbdc.report.study import in_short

    b8 = SimpleNamespace(budget=8)
    method = ("vit-rbdc-d1", b8, {"saving": 0.10, "lo": 0.02, "hi": 0.18})
    baseline = ("vit-hypercloning", b8, {"saving": 0.25, "lo": 0.05, "hi": 0.40})  # holds 30%: not the paper's claim
    savings = {"vit-rbdc-d1": [method[1:]], "vit-hypercloning": [baseline[1:]]}
    text = in_short(savings, [method])[0]
    assert "lies inside none of the method's 1 intervals" in text  # was: "the 95% interval of vit-hypercloning b8"
    assert "vit-rbdc-d1 b8 (+10.0%), vit-hypercloning b8 (+25.0%)" in text  # every series' savings still listed


def test_each_series_is_also_tested_over_its_budgets_as_one_contrast_in_its_panel_and_verdict(tmp_path):
    """Issue 31 item 5: the top-1 gap at equal FLOPs and the test of the paper's 30%, combined over a series' budgets
    (rbdc.report.saving.over_budgets: one contrast, exact for the shared scratch curve), in the panel and the
    verdict line."""
    from rbdc.report.saving import over_budgets

    study, root = _fake_study(tmp_path)
    md = build(study, root, tmp_path / "out" / "tiny")["md"].read_text()
    scratch = [(f, [t - 0.1, t, t + 0.1]) for t, f in SCRATCH.values()]
    gap = over_budgets(scratch, [([64.0, 65.0, 66.0], 2e12)], 0.0).gap
    p30 = over_budgets(scratch, [([64.0, 65.0, 66.0], 2e12)], 0.30)
    assert gap.gap == pytest.approx(5.0) and p30.gap.gap < 0  # 60 at 2e12; 65.15 at 2e12 / 0.7 on the curve
    said = (
        f"over budgets 2, top-1 +5.00 [{gap.lo:+.2f}, {gap.hi:+.2f}] against scratch at equal FLOPs; the paper's "
        f"30% at every budget (2): p = {p30.p:.3f} (the saving measured is smaller)"
    )
    assert f"- rbdc: {said}." in md and f"Taken together, {said}." in md
    assert "**Over each series' budgets**" in md


def test_a_p_value_reads_as_a_table_cell_or_as_a_sentence_says_it():
    from rbdc.report.fmt import DASH, p_value

    assert p_value(0.0042) == "0.004" and p_value(2e-5) == "< 0.001" and p_value(None) == DASH
    assert p_value(0.0042, stated=True) == "p = 0.004" and p_value(2e-5, stated=True) == "p < 0.001"


def test_two_series_head_to_head_over_their_shared_budgets_in_one_contrast():
    """The ablation panel asks "independent parts or one source?" over b8-b32 at once: beside each budget's Welch row,
    one row over the budgets both series ran (rbdc.report.saving.pair_over_budgets); a budget only one ran is left
    out, and a pair that shares one budget gets no such row."""
    from rbdc.report.fmt import pm
    from rbdc.report.saving import pair_over_budgets
    from rbdc.report.study_sections import _head_to_head

    def pt(name, b, tops):
        return Point(name, b, "rbdc", list(tops), [b * 1e12] * len(tops), list(range(len(tops))), [], len(tops))

    a = {8: (56.0, 57.0, 56.5), 16: (63.0, 62.5, 63.4), 32: (67.0, 67.5, 66.8)}
    b = {8: (57.5, 57.9, 57.0), 16: (63.1, 63.6, 63.0), 64: (70.0, 70.2, 69.9)}
    points = {("d1", k): pt("d1", k, v) for k, v in a.items()} | {("hc", k): pt("hc", k, v) for k, v in b.items()}
    md = "\n".join(_head_to_head(points, {"title": "T", "series": ["d1", "hc"]}))
    want = pair_over_budgets([(a[8], b[8]), (a[16], b[16])])
    g = want.gap
    assert f"| d1 | hc | mean over 8, 16 | 1.000 | {pm(g.gap, g.hi - g.gap)}, p = " in md
    assert g.gap == pytest.approx(((56.5 - 57.4667) + (62.9667 - 63.2333)) / 2, abs=1e-3)
    one = {("d1", 8): pt("d1", 8, a[8]), ("hc", 8): pt("hc", 8, b[8])}
    assert "mean over" not in "\n".join(_head_to_head(one, {"title": "T", "series": ["d1", "hc"]}))


ABLATION_TOPS = {
    ("rbdc", 1): (55.0, 56.0, 57.0),
    ("rbdc", 2): (64.0, 65.0, 66.0),
    ("alt", 1): (53.0, 53.5, 54.0),
    ("alt", 2): (62.0, 62.4, 63.1),
    ("one", 1): (55.2, 55.9, 56.4),
    ("one", 2): (64.2, 64.6, 65.7),
}


def _ablation_study(tmp_path, asks=None) -> tuple:
    """A model panel (scratch, rbdc) and an ablation panel of three series (rbdc, alt, one) at budgets 1 and 2, its
    ``asks`` as given; every run of ABLATION_TOPS finished."""
    ablation = {"title": "Ablation", "baseline": "scratch", "series": ["rbdc", "alt", "one"]}
    study_file = _study_file(
        tmp_path,
        [
            {"id": "scratch", "recipe": str(CI / "scratch.yaml"), "budgets": [1, 2, 4]},
            {"id": "rbdc", "recipe": str(CI / "rbdc.yaml"), "budgets": [1, 2]},
            {"id": "alt", "recipe": str(CI / "rbdc.yaml"), "budgets": [1, 2], "set": {"rbdc.ratio": 3.0}},
            {"id": "one", "recipe": str(CI / "rbdc.yaml"), "budgets": [1, 2], "set": {"rbdc.ratio": 1.0}},
        ],
        {
            "panels": [
                {"title": "ViT", "baseline": "scratch", "series": ["rbdc"]},
                ablation | ({"asks": asks} if asks is not None else {}),
            ]
        },
    )
    root = tmp_path / "runs" / "tiny"
    for b, (top1, flops) in SCRATCH.items():
        for s in range(3):
            make_run(root.parent, f"tiny/scratch/b{b}", "scratch", s, top1 + (s - 1) * 0.1, flops)
    for (point, b), values in ABLATION_TOPS.items():
        for s, t in enumerate(values):
            make_run(root.parent, f"tiny/{point}/b{b}", "rbdc", s, t, SCRATCH[b][1])
    study = load_study(study_file)
    _write_recipes(study, root.parent)
    return study, root


def _pair_text(a: str, b: str):
    """The words of a over b at budgets 1 and 2 from ABLATION_TOPS, up to the p-value, and its Welch contrast."""
    from rbdc.report.saving import pair_over_budgets

    g = pair_over_budgets([(ABLATION_TOPS[a, k], ABLATION_TOPS[b, k]) for k in (1, 2)])
    return f"{a} − {b} over budgets 1, 2: top-1 {g.gap.gap:+.2f} ± {g.gap.hi - g.gap.gap:.2f} at equal FLOPs, p ", g


def _short_words(a: str, b: str) -> str:
    """The headline's short form of a over b (who is ahead by how much, or the difference), up to the p-value."""
    g = _pair_text(a, b)[1].gap
    half = f"{g.hi - g.gap:.2f}"
    if g.lo > 0 or g.hi < 0:
        return f"{a if g.lo > 0 else b} ahead by {abs(g.gap):.2f} ± {half}, p "
    return f"not distinguishable ({a} − {b}: {g.gap:+.2f} ± {half}, p "


def test_an_ablation_panel_reads_as_one_head_to_head_contrast_in_verdict_and_headline(tmp_path):
    """The fair study's question "independent parts or one source?" is its ablation panel: RBDC d1 against the
    copies ablation and HyperCloning over b8-b32. Without ``asks``, its first series against each other one, over
    their shared budgets, is one verdict line and one headline sentence, with the interval of
    saving.pair_over_budgets."""
    from rbdc.report import headline

    study, root = _ablation_study(tmp_path)
    md = build(study, root, tmp_path / "out" / "tiny")["md"].read_text()
    text, g = _pair_text("rbdc", "alt")
    verdict = md.split("## Verdict")[1]
    assert g.gap.lo > 0 and f"- **Head to head** (Ablation): {text}" in verdict
    assert "(rbdc ahead beyond seed noise)" in verdict
    said = f"Head to head (Ablation): top-1 at equal FLOPs over budgets 1, 2: {_short_words('rbdc', 'alt')}"
    assert said in headline.extract(md)[0] and "rbdc ahead by" in said
    assert f"; {_pair_text('rbdc', 'one')[0]}" in verdict and _pair_text("alt", "one")[0] not in verdict
    assert "Head to head (ViT)" not in md  # a one-series model panel has no pair


def test_an_ablation_panel_that_asks_its_questions_answers_each_pair_in_words(tmp_path):
    """RBDC against HyperCloning differs in two ways at once; the copies ablation shares one with each. A panel's
    ``asks`` names the pairs that separate them (here alt − one, which first-against-others never tests) and the
    question each answers: the verdict and the headline give those pairs, in that order, after their words."""
    from rbdc.report import headline

    asks = [
        {"a": "alt", "b": "one", "question": "block-diagonal or symmetric"},
        {"a": "rbdc", "b": "alt", "question": "independent or copied"},
    ]
    study, root = _ablation_study(tmp_path, asks)
    md = build(study, root, tmp_path / "out" / "tiny")["md"].read_text()
    first, second = (_pair_text("alt", "one")[0], _pair_text("rbdc", "alt")[0])
    verdict = md.split("## Verdict")[1]
    assert f"- **Head to head** (Ablation): block-diagonal or symmetric: {first}" in verdict
    assert f"; independent or copied: {second}" in verdict
    assert _pair_text("rbdc", "one")[0] not in verdict  # not asked: only in the head-to-head table
    assert "| rbdc | one | mean over 1, 2 |" in md
    said = (
        "Head to head (Ablation): top-1 at equal FLOPs over budgets 1, 2: block-diagonal or symmetric: "
        f"{_short_words('alt', 'one')}"
    )
    assert said in headline.extract(md)[0] and f"; independent or copied: {_short_words('rbdc', 'alt')}" in md


@pytest.mark.parametrize(
    "asks, field",
    [
        ([{"a": "rbdc", "b": "scratch", "question": "q"}], r"report.panels\[1\].asks\[0\].b: 'scratch' is not one"),
        ([{"a": "rbdc", "b": "alt"}], r"report.panels\[1\].asks\[0\] must be \{a: SERIES"),
        ([{"a": "rbdc", "b": "alt", "question": " "}], r"report.panels\[1\].asks\[0\]: a and b must differ"),
        ([{"a": "one", "b": "one", "question": "q"}], r"report.panels\[1\].asks\[0\]: a and b must differ"),
    ],
)
def test_an_ask_outside_its_panel_or_without_its_question_is_refused_by_name(tmp_path, asks, field):
    study, root = _ablation_study(tmp_path, asks)
    with pytest.raises(UserError, match=field):
        build(study, root, tmp_path / "out" / "tiny")


@pytest.mark.parametrize(
    "edges, said",
    [
        ({}, ""),
        ({"x": ["largest lr_base tried"]}, ""),  # not a point the headline speaks of
        ({"r": ["largest lr_base tried"]}, " Tuning caveat: r ran at the largest lr_base tried; a value past"),
        (
            {"r": ["largest lr_base tried"], "c": ["largest lr_base tried"], "s": ["smallest lr_base tried"]},
            " Tuning caveat: s ran at the smallest lr_base tried; r and c ran at the largest lr_base tried; a value",
        ),
    ],
)
def test_the_headline_names_the_points_it_shows_that_were_tuned_at_their_grids_edge(edges, said):
    from rbdc.report import headline

    panels = [{"title": "ViT", "baseline": "s", "series": ["r"]}, {"title": "A", "baseline": "s", "series": ["r", "c"]}]
    caveat = headline._tuning_caveat(panels, edges)
    assert caveat.startswith(said) and bool(caveat) == bool(said)


def _pair(a: str, b: str, gap: float, half: float, p: float, budgets: tuple) -> dict:
    from types import SimpleNamespace as NS

    g = NS(gap=NS(gap=gap, lo=gap - half, hi=gap + half), p=p)
    return {"a": a, "b": b, "gap": g, "pairs": [(NS(budget=k), None) for k in budgets], "question": None}


@pytest.mark.parametrize(
    "pairs, said",
    [
        (  # shared budgets said once; the one ahead named with the size of its lead
            [_pair("r", "h", -0.69, 0.49, 0.009, (8, 16)), _pair("c", "h", 0.51, 0.53, 0.058, (8, 16))],
            "top-1 at equal FLOPs over budgets 8, 16: h ahead by 0.69 ± 0.49, p = 0.009; "
            "not distinguishable (c − h: +0.51 ± 0.53, p = 0.058)",
        ),
        (  # budgets that differ are said per pair
            [_pair("r", "h", 1.2, 0.5, 0.0001, (8, 16)), _pair("c", "h", 0.1, 0.5, 0.6, (8,))],
            "top-1 at equal FLOPs: r ahead by 1.20 ± 0.50, p < 0.001 over budgets 8, 16; "
            "not distinguishable (c − h: +0.10 ± 0.50, p = 0.600) over budgets 8",
        ),
    ],
)
def test_the_headline_says_each_pair_in_short_words_naming_who_is_ahead(pairs, said):
    """The README's first line holds the head-to-head pairs: the short form names the side ahead and by how much
    (the verdict's long form keeps the signed difference), the shared budgets once."""
    from rbdc.report import headline

    assert headline._pairs_text(pairs) == said


@pytest.mark.parametrize("v, said", [(0.118, "+11.8%"), (-0.0004, "+0.0%"), (0.0, "+0.0%"), (-0.25, "-25.0%")])
def test_a_percentage_that_rounds_to_zero_has_no_minus_sign(v, said):
    from rbdc.report.fmt import signed_pct

    assert signed_pct(v) == said


def test_fig2s_window_reaches_the_scratch_budgets_that_bracket_each_compared_point():
    """ResNet-18 d1 at b16 (71.3) lies between scratch's b16 (69.8) and b32 (72.2): its saving is read on the
    segment up to b32, so the zoomed panel must reach b32, not stop half a step past the compared points."""
    from rbdc.report.study_figures import _window

    def pt(b, flops, mean):
        return Point("x", b, "p", [mean - 0.1, mean, mean + 0.1], [flops] * 3, [0, 1, 2], [], 3)

    scratch = [pt(4, 8.3, 59.2), pt(8, 16.6, 64.9), pt(16, 33.2, 69.8), pt(32, 66.4, 72.2)]
    near = [("d1", [pt(8, 16.6, 66.9), pt(16, 33.2, 71.3)])]
    lo, hi = _window(scratch, near)
    assert hi >= 66.4 and lo <= 16.6 / 1.2 and lo > 8.3  # b32 inside; b4 (below every compared point) outside
    assert _window(scratch, [("d", [pt(16, 33.2, 80.0)])])[1] == pytest.approx(66.4 * 1.2)  # above the whole curve
