"""Specification of `rbdc report`: tables and figure regenerated from run directories alone.

Run directories are small fakes written by :func:`make_run` following the engine's contract (recipe.yaml,
summary.csv, results.json); no training runs here.
"""

import argparse
import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from rbdc import report
from rbdc.errors import UserError
from rbdc.runs.summary import SUMMARY_COLUMNS, write_summary

TINY, HALF = "deit_tiny_patch16_224", "rbdc_deit_tiny_half"
IMAGES = 9469  # Imagenette train split


def make_run(
    root,
    group,
    protocol,
    seed,
    top1,
    flops,
    *,
    top5=None,
    model=TINY,
    dataset="imagenette",
    epochs=4,
    wall_s=600.0,
    peak_mem_mb=2048.0,
    device="NVIDIA H100 80GB HBM3",
):
    """Writes a realistic fake run directory ``root/group/seed<seed>`` and returns it.

    rbdc runs train two narrow models (L0.0, L0.1, a quarter of the FLOPs each) and then the coupled model (L1);
    other protocols train one stage. Top-1 rises over epochs and ends exactly at ``top1``; the last row's
    cum_train_flops equals ``flops``.
    """
    run_dir = Path(root, *group.split("/"), f"seed{seed}")
    run_dir.mkdir(parents=True)
    if protocol == "rbdc":
        stages = [("L0.0", HALF, 0.25, top1 - 15), ("L0.1", HALF, 0.25, top1 - 14), ("L1", model, 0.5, top1)]
    else:
        stages = [(protocol, model, 1.0, top1)]
    rows, cum, epoch = [], 0.0, 0
    for stage, stage_model, share, final in stages:
        per_epoch = flops * share / epochs
        for e in range(epochs):
            cum += per_epoch
            epoch += 1
            acc = final - 12.0 * (epochs - 1 - e) / epochs
            rows.append(
                {
                    "stage": stage,
                    "model": stage_model,
                    "epoch": epoch,
                    "train_loss": f"{2.5 - 0.1 * e:.4f}",
                    "eval_loss": f"{2.4 - 0.1 * e:.4f}",
                    "eval_top1": f"{acc:.4f}",
                    "eval_top5": f"{min(acc + 20, 100):.4f}",
                    "lr": "0.0005",
                    "images_seen": IMAGES * epoch,
                    "train_flops": f"{per_epoch:.6e}",
                    # wall_s counts within a stage (rbdc.training.engine), each stage a 1/len(stages) share of the wall
                    "cum_train_flops": repr(cum),
                    "wall_s": f"{wall_s * (e + 1) / (epochs * len(stages)):.2f}",
                    "img_per_s": "1500.0",
                    "peak_mem_mb": f"{peak_mem_mb:.1f}",
                    "mfu": "0.31",
                }
            )
    rows[-1]["cum_train_flops"] = repr(float(flops))
    write_summary(run_dir / "summary.csv", rows)  # the engine's writer: its columns, in its order
    name = f"{group.replace('/', '-')}-s{seed}"
    (run_dir / "recipe.yaml").write_text(
        yaml.safe_dump(
            {"name": name, "protocol": protocol, "model": model, "dataset": dataset, "seed": seed, "epochs": epochs}
        )
    )
    results = {
        "name": name,
        "protocol": protocol,
        "group": group,
        "seed": seed,
        "model": model,
        "dataset": dataset,
        "eval_top1": top1,
        "eval_top5": top5 if top5 is not None else min(top1 + 20, 100.0),
        "total_train_flops": float(flops),
        "wall_s": wall_s,
        "peak_mem_mb": peak_mem_mb,
        "device": device,
        "stages": [{"stage": s, "model": m, "epochs": epochs, "train_flops": flops * sh} for s, m, sh, _ in stages],
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    # the manifest records each stage's parents (the coupled L1 is built from L0.0 and L0.1), as rbdc train does
    parents = {"L1": ["L0.0", "L0.1"]}
    (run_dir / "manifest.json").write_text(
        json.dumps(
            {
                "stages": {
                    s: {"model": m, "parents": [{"stage": p} for p in parents.get(s, [])]} for s, m, _, _ in stages
                }
            },
            indent=1,
        )
    )
    return run_dir


def make_study(root):
    """Two scratch budgets, a 3-seed RBDC group and a one-seed Net2Net group on Imagenette/DeiT-Ti."""
    root = Path(root)
    for seed, acc in enumerate((60.0, 60.5, 59.5)):
        make_run(root, "imagenette-deit-tiny/scratch-e2", "scratch", seed, acc, 1e15)
    for seed, acc in enumerate((70.0, 70.4, 69.6)):
        make_run(root, "imagenette-deit-tiny/scratch-e20", "scratch", seed, acc, 1e16)
    for seed, acc in enumerate((65.0, 65.2, 64.8)):
        make_run(root, "imagenette-deit-tiny/rbdc-d1", "rbdc", seed, acc, 2e15)
    make_run(root, "imagenette-deit-tiny/net2net", "net2net", 0, 66.0, 3e15)
    return root


def read(paths, ext):
    return Path(paths[ext]).read_bytes()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return make_study(tmp_path_factory.mktemp("study") / "runs")


@pytest.fixture(scope="module")
def study_report(study):
    paths = report.generate_report([study], study.parent / "reports" / "study", title="Imagenette, DeiT-Ti")
    return paths, Path(paths["md"]).read_text(encoding="utf-8")


def table_row(md, group):
    lines = [line for line in md.splitlines() if line.startswith(f"| {group} |")]
    assert len(lines) == 1, f"expected one table row for {group}, got {lines}"
    return [c.strip() for c in lines[0].strip("|").split("|")]


def header(md):
    line = next(line for line in md.splitlines() if line.startswith("| Group |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_writes_all_outputs(study_report):
    paths, _ = study_report
    assert set(paths) == {"md", "tex", "csv", "png"}
    for path in paths.values():
        assert Path(path).stat().st_size > 0, path
    assert Path(paths["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_regenerates_byte_for_byte(study, tmp_path):
    a = report.generate_report([study], tmp_path / "a" / "rep")
    b = report.generate_report([study], tmp_path / "b" / "rep")
    for ext in ("md", "tex", "csv"):
        assert read(a, ext) == read(b, ext), ext


def test_png_is_stable(study, tmp_path):
    a = report.generate_report([study], tmp_path / "a" / "rep")
    b = report.generate_report([study], tmp_path / "b" / "rep")
    assert read(a, "png") == read(b, "png")


def test_copied_run_dirs_give_identical_report(tmp_path):
    first = make_study(tmp_path / "one" / "runs")
    second = tmp_path / "elsewhere" / "deeper" / "runs"
    shutil.copytree(first, second)
    a = report.generate_report([first], tmp_path / "one" / "reports" / "study")
    b = report.generate_report([second], second.parent / "reports" / "study")
    for ext in ("md", "tex", "csv"):
        assert read(a, ext) == read(b, ext), ext
        assert str(tmp_path).encode() not in read(a, ext), f"absolute path leaked into the .{ext}"
    assert b"../runs/imagenette-deit-tiny/rbdc-d1/seed0" in read(a, "md")


def test_input_order_does_not_matter(study, tmp_path):
    # the same runs passed one by one in reverse order, not as a parent folder
    run_dirs = sorted(p.parent for p in study.rglob("results.json"))
    a = report.generate_report(run_dirs, tmp_path / "rep")
    b = report.generate_report(run_dirs[::-1] + [study], tmp_path / "again" / ".." / "rep2")
    assert read(a, "csv") == read(b, "csv")


def test_mean_and_sample_std_over_seeds(study_report):
    _, md = study_report
    cols = header(md)
    rbdc = dict(zip(cols, table_row(md, "imagenette-deit-tiny/rbdc-d1")))
    assert rbdc["Seeds"] == "3"
    # 65.0, 65.2, 64.8: mean 65.00, sample std 0.20 (population std would be 0.16)
    assert rbdc["Top-1 (%)"] == "65.00 ± 0.20"
    assert rbdc["Top-5 (%)"] == "85.00 ± 0.20"
    net2net = dict(zip(cols, table_row(md, "imagenette-deit-tiny/net2net")))
    assert net2net["Seeds"] == "1"
    assert net2net["Top-1 (%)"] == "66.00 ± –"


def test_flops_column_has_one_unit_and_ratio_to_largest_scratch(study_report):
    _, md = study_report
    cols = header(md)
    assert "Train PFLOPs" in cols
    expect = {
        "scratch-e2": ("1.00", "0.10x"),
        "scratch-e20": ("10.00", "1.00x"),
        "rbdc-d1": ("2.00", "0.20x"),
        "net2net": ("3.00", "0.30x"),
    }
    for name, (flops, rel) in expect.items():
        row = dict(zip(cols, table_row(md, f"imagenette-deit-tiny/{name}")))
        assert (row["Train PFLOPs"], row["FLOPs vs scratch"]) == (flops, rel), name


def test_rows_name_their_run_dirs(study_report):
    _, md = study_report
    runs = dict(zip(header(md), table_row(md, "imagenette-deit-tiny/rbdc-d1")))["Runs"].split("<br>")
    assert runs == [f"../runs/imagenette-deit-tiny/rbdc-d1/seed{s}" for s in range(3)]


def test_csv_holds_the_table_as_numbers(study_report):
    paths, _ = study_report
    with open(paths["csv"], newline="", encoding="utf-8") as f:
        rows = {(r["source"], r["group"], r["model"]): r for r in csv.DictReader(f)}
    rbdc = rows[("measured", "imagenette-deit-tiny/rbdc-d1", TINY)]
    assert float(rbdc["top1_mean"]) == pytest.approx(65.0)
    assert float(rbdc["top1_std"]) == pytest.approx(0.2)
    assert float(rbdc["total_train_flops_mean"]) == pytest.approx(2e15)
    assert float(rbdc["flops_rel_baseline"]) == pytest.approx(0.2)
    assert rbdc["baseline_group"] == "imagenette-deit-tiny/scratch-e20"
    assert rbdc["n_seeds"] == "3" and rbdc["seeds"] == "0;1;2"
    assert rbdc["run_dirs"].split(";")[0] == "../runs/imagenette-deit-tiny/rbdc-d1/seed0"
    assert rows[("measured", "imagenette-deit-tiny/net2net", TINY)]["top1_std"] == ""


def test_quoted_rows_present_and_marked(study_report):
    paths, md = study_report
    quoted = [line for line in md.splitlines() if line.startswith("| – | quoted")]
    assert len(quoted) == len(report.QUOTED) == 4
    assert sum("| quoted (paper) |" in line for line in quoted) == 1
    deit = {line.split("|")[5].strip(): line.split("|")[7].strip() for line in quoted if "quoted (DeiT)" in line}
    assert deit == {"deit_tiny_patch16_224": "72.2", "deit_small_patch16_224": "79.9", "deit_base_patch16_224": "81.8"}
    paper = next(line for line in quoted if "quoted (paper)" in line)
    assert "deit_base_patch16_224" in paper and "0.70x" in paper and "arXiv 2605.23656" in paper
    assert "facebookresearch/deit" in md
    tex = Path(paths["tex"]).read_text(encoding="utf-8")
    assert tex.count("quoted (paper)") == 1 and tex.count("quoted (DeiT)") == 3
    with open(paths["csv"], newline="", encoding="utf-8") as f:
        sources = [r["source"] for r in csv.DictReader(f)]
    assert sources.count("quoted (DeiT)") == 3 and sources.count("quoted (paper)") == 1
    # quoted numbers never reach the measured statistics
    assert sources.count("measured") == 4


def test_quoted_data_names_sources():
    for q in report.QUOTED:
        assert q.label in ("quoted (paper)", "quoted (DeiT)")
        assert ("2605.23656" in q.source) if q.label == "quoted (paper)" else ("facebookresearch/deit" in q.source)


@pytest.mark.parametrize(
    "points, top1, status, flops",
    [
        # linear in log10 FLOPs: 65 lies halfway between 60 @ 1e15 and 70 @ 1e16 -> 10**15.5
        ([(1e15, 60.0), (1e16, 70.0)], 65.0, "matched", 10**15.5),
        # order of points does not matter
        ([(1e16, 70.0), (1e15, 60.0)], 62.5, "matched", 10**15.25),
        # a noisy middle budget below its predecessor is lifted to 60 (running max): halfway 3e15 .. 1e16
        ([(1e15, 60.0), (3e15, 58.0), (1e16, 70.0)], 65.0, "matched", math.sqrt(3e15 * 1e16)),
        ([(1e15, 60.0), (1e16, 70.0)], 60.0, "matched", 1e15),
        ([(1e15, 60.0), (1e16, 70.0)], 70.0, "matched", 1e16),
        ([(1e15, 60.0), (1e16, 70.0)], 71.0, "above_range", 1e16),
        ([(1e15, 60.0), (1e16, 70.0)], 59.0, "below_range", 1e15),
        ([(1e16, 70.0)], 65.0, "one_budget", 1e16),
    ],
)
def test_matched_flops(points, top1, status, flops):
    match = report.matched_flops(points, top1)
    assert match.status == status
    assert match.flops == pytest.approx(flops, rel=1e-12)


def test_matched_flops_and_top1_at_flops_read_one_curve_across_steps_and_plateaus():
    """Two budgets of equal FLOPs make a vertical step (62 -> 70 at 1e16), a later equal top-1 a plateau (70 up to
    1e17): 70 is first reached at 1e16, the best top-1 at 1e16 is 70, and 75 lies halfway from the plateau's end."""
    points = [(1e15, 60.0), (1e16, 62.0), (1e16, 70.0), (1e17, 70.0), (1e18, 80.0)]
    assert report.matched_flops(points, 70.0).flops == pytest.approx(1e16, rel=1e-12)
    assert report.top1_at_flops(points, 1e16) == 70.0
    assert report.matched_flops(points, 75.0).flops == pytest.approx(10**17.5, rel=1e-12)
    assert report.top1_at_flops(points, 10**17.5) == pytest.approx(75.0)


def test_top1_at_flops_interpolates_in_log_flops_without_extrapolating():
    points = [(1e15, 60.0), (1e16, 70.0)]
    assert report.top1_at_flops(points, 10**15.5) == pytest.approx(65.0)
    assert report.top1_at_flops(points, 1e16) == pytest.approx(70.0)
    assert report.top1_at_flops(points, 2e16) is None
    assert report.top1_at_flops(points, 5e14) is None
    assert report.top1_at_flops(points[:1], 1e16) is None


def savings_block(md, group):
    section = md.split("## FLOPs saving at matched accuracy")[1].split("\n## ")[0]
    start = section.index(f"**{group}**")
    end = section.find("\n- ", start)
    return section[start : end if end >= 0 else None]


def test_saving_at_matched_accuracy_known_answer(study_report):
    _, md = study_report
    block = savings_block(md, "imagenette-deit-tiny/rbdc-d1")
    # scratch needs 10**15.5 = 3.162e15 FLOPs for 65.0; rbdc used 2e15: saving = 1 - 2/3.162 = 36.8%
    assert "with 3.16 PFLOPs (interpolated over 2 budgets): saving at matched accuracy 36.8%" in block
    # at equal FLOPs (2e15) scratch reaches 60 + 10 * log10(2) = 63.01
    assert "At equal FLOPs scratch reaches 63.01 top-1 (interpolated): +1.99 top-1" in block
    # vs the reference (scratch-e20, 70.0 +- 0.4): -5.00, pooled std 0.32, |diff| > 0.63
    assert "-5.00 top-1 at 0.20x its FLOPs; larger than seed noise (s_pooled 0.32)" in block
    assert "Seed-noise rule: a difference in mean top-1 counts as larger than seed noise when |diff| > 2 x" in md


def test_saving_from_one_scratch_budget_says_what_can_be_said(tmp_path):
    runs = tmp_path / "runs"
    for seed, acc in enumerate((70.0, 70.4, 69.6)):
        make_run(runs, "imagenette-deit-tiny/scratch", "scratch", seed, acc, 1e16)
    for seed, acc in enumerate((70.1, 70.5, 69.7)):
        make_run(runs, "imagenette-deit-tiny/rbdc-d1", "rbdc", seed, acc, 1e16)
    paths = report.generate_report([runs], tmp_path / "rep")
    block = savings_block(Path(paths["md"]).read_text(encoding="utf-8"), "imagenette-deit-tiny/rbdc-d1")
    assert "Saving not measurable from one scratch budget: at 1.00x the FLOPs rbdc is +0.10 top-1." in block
    assert "within seed noise (s_pooled 0.40)" in block
    assert "saving at matched accuracy" not in block


def test_saving_outside_scratch_range_gives_a_bound(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "imagenette-deit-tiny/scratch-e2", "scratch", 0, 60.0, 1e15)
    make_run(runs, "imagenette-deit-tiny/scratch-e20", "scratch", 0, 70.0, 1e16)
    make_run(runs, "imagenette-deit-tiny/rbdc-d1", "rbdc", 0, 72.0, 5e15)
    paths = report.generate_report([runs], tmp_path / "rep")
    block = savings_block(Path(paths["md"]).read_text(encoding="utf-8"), "imagenette-deit-tiny/rbdc-d1")
    assert "Above every scratch budget" in block and "at least 50.0%" in block
    assert "seed noise unknown (one seed each)" in block


def test_baseline_protocol_option_changes_the_reference(study, tmp_path):
    paths = report.generate_report([study], tmp_path / "rep", baseline_protocol="net2net")
    md = Path(paths["md"]).read_text(encoding="utf-8")
    assert "FLOPs vs net2net" in header(md)
    rbdc = dict(zip(header(md), table_row(md, "imagenette-deit-tiny/rbdc-d1")))
    assert rbdc["FLOPs vs net2net"] == "0.67x"


def test_discovers_run_dirs_recursively_and_sorted(study):
    found = report.discover_run_dirs([study / "imagenette-deit-tiny", study / "imagenette-deit-tiny/net2net/seed0"])
    assert len(found) == 10
    assert found == sorted(found)
    assert all((p / "results.json").is_file() for p in found)


def test_missing_run_dir_names_the_path(tmp_path):
    missing = tmp_path / "no-such-run"
    with pytest.raises(UserError, match="no-such-run"):
        report.generate_report([missing], tmp_path / "rep")


def test_folder_without_runs_names_the_path(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(UserError, match=r"empty.*results\.json"):
        report.generate_report([tmp_path / "empty"], tmp_path / "rep")


@pytest.mark.parametrize(
    "breakage, names",
    [
        (lambda d: (d / "results.json").write_text('{"name": '), "results.json"),
        (lambda d: (d / "results.json").write_text(json.dumps({"name": "x"})), "results.json"),
        (lambda d: (d / "summary.csv").unlink(), "summary.csv"),
        (lambda d: (d / "summary.csv").write_text("stage,epoch\nscratch,1\n"), "summary.csv"),
        (lambda d: (d / "summary.csv").write_text(",".join(SUMMARY_COLUMNS) + "\n"), "summary.csv"),
    ],
)
def test_invalid_run_dir_names_the_file(tmp_path, breakage, names):
    run = make_run(tmp_path / "runs", "imagenette-deit-tiny/scratch", "scratch", 0, 70.0, 1e16)
    breakage(run)
    with pytest.raises(UserError) as info:
        report.generate_report([tmp_path / "runs"], tmp_path / "rep")
    assert str(run / names) in str(info.value)


def test_invalid_number_names_the_key_and_file(tmp_path):
    run = make_run(tmp_path / "runs", "imagenette-deit-tiny/scratch", "scratch", 0, 70.0, 1e16)
    results = json.loads((run / "results.json").read_text())
    results["eval_top1"] = "n/a"
    (run / "results.json").write_text(json.dumps(results))
    with pytest.raises(UserError, match="eval_top1") as info:
        report.load_run(run)
    assert str(run / "results.json") in str(info.value)


def test_duplicate_seed_in_a_group_is_refused(tmp_path):
    make_run(tmp_path / "a", "imagenette-deit-tiny/scratch", "scratch", 0, 70.0, 1e16)
    make_run(tmp_path / "b", "imagenette-deit-tiny/scratch", "scratch", 0, 70.2, 1e16)
    with pytest.raises(UserError, match="seed 0 twice"):
        report.generate_report([tmp_path / "a", tmp_path / "b"], tmp_path / "rep")


def test_cli_subcommand(study, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="rbdc")
    report.add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", str(study), "-o", str(tmp_path / "reports" / "study"), "--title", "T"])
    assert args.func(args) == 0
    rep = tmp_path / "reports"
    assert (rep / "study.md").read_text(encoding="utf-8").startswith("# T\n")
    assert (rep / "study.csv").read_text().startswith("group,source,protocol,")
    assert "\\begin{tabular}" in (rep / "study.tex").read_text()
    assert (rep / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(tmp_path / "reports" / "study.md") in capsys.readouterr().out


def test_rbdc_meets_each_other_method_head_to_head_only_at_equal_flops(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "imagenette-deit-tiny/scratch", "scratch", 0, 60.0, 2e15)
    for seed, acc in enumerate((65.0, 66.0)):
        make_run(root, "imagenette-deit-tiny/rbdc-d1", "rbdc", seed, acc, 2e15)
    for seed, acc in enumerate((64.5, 65.0)):
        make_run(root, "imagenette-deit-tiny/gradmax", "gradmax", seed, acc, 2.01e15)  # within 2%: paired
    make_run(root, "imagenette-deit-tiny/net2net", "net2net", 0, 66.0, 3e15)  # 1.5x the FLOPs: not paired
    md = Path(report.generate_report([root], tmp_path / "rep")["md"]).read_text(encoding="utf-8")
    section = md.split("## RBDC vs the other methods at equal FLOPs")[1].split("## Figure")[0]
    rows = [line for line in section.splitlines() if line.startswith("| imagenette")]
    assert len(rows) == 1 and "imagenette-deit-tiny/gradmax (2 seed(s))" in rows[0]
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[3] == "+0.75" and cells[4] == "0.995"  # 65.5 - 64.75; 2e15 / 2.01e15
    assert cells[5] == "within noise (s_pooled 0.56)"  # sqrt((0.5 + 0.125) / 2) = 0.56, and 0.75 < 2 x 0.56


def test_failed_and_unfinished_runs_are_listed_and_left_out(tmp_path, capsys):
    root = tmp_path / "runs"
    make_run(root, "imagenette-deit-tiny/scratch", "scratch", 0, 70.0, 1e16)
    diverged = make_run(root, "imagenette-deit-tiny/scratch", "scratch", 1, 10.0, 1e16)
    (diverged / "failed.json").write_text(
        json.dumps({"stage": "scratch", "step": 7, "reason": "loss nan", "command": "rbdc train", "diverged": True})
    )
    unfinished = root / "imagenette-deit-tiny" / "scratch" / "seed2"
    unfinished.mkdir()
    (unfinished / "recipe.yaml").write_text("name: x\n")
    broken = make_run(root, "imagenette-deit-tiny/scratch", "scratch", 3, 10.0, 1e16)
    (broken / "failed.json").write_text('{"stage": "scr')  # cut mid-write: read as rundir.read_failed reads it
    md = Path(report.generate_report([root], tmp_path / "rep")["md"]).read_text(encoding="utf-8")
    err = capsys.readouterr().err
    assert f"skipped {diverged}: failed at stage scratch step 7: loss nan" in err
    assert f"skipped {unfinished}: unfinished" in err
    assert f"skipped {broken}: failed: {broken / 'failed.json'} is unreadable" in err
    assert "## Skipped run directories" in md and "seed1`: failed at stage scratch step 7: loss nan" in md
    assert "from 1 run(s)" in md  # the diverged seed is not averaged in
    with pytest.raises(UserError, match="failed at stage scratch step 7: loss nan"):
        report.generate_report([diverged], tmp_path / "rep2")


@pytest.mark.parametrize("cut", ["mid-row", "short row"])
def test_a_truncated_summary_row_is_refused(tmp_path, cut):
    run = make_run(tmp_path / "runs", "imagenette-deit-tiny/scratch", "scratch", 0, 70.0, 1e16)
    text = (run / "summary.csv").read_text()
    if cut == "mid-row":
        text = text[:-7]
    else:
        lines = text.splitlines()
        text = "\n".join(lines[:-1] + [",".join(lines[-1].split(",")[:5])]) + "\n"
    (run / "summary.csv").write_text(text)
    with pytest.raises(UserError, match="truncated" if cut == "mid-row" else "line .* fields") as info:
        report.generate_report([tmp_path / "runs"], tmp_path / "rep")
    assert str(run / "summary.csv") in str(info.value)


def test_narrow_parts_are_drawn_side_by_side_over_their_level_not_one_after_another(tmp_path):
    """The second narrow part trains after the first on the ledger, but it is a fresh model: drawn on the ledger's
    cumulative FLOPs it would look like the lineage dropping back. Each part spans its whole level instead and ends
    where the coupled model starts."""
    from rbdc.report.figure import run_segments

    run = report.load_run(make_run(tmp_path, "g/rbdc", "rbdc", 0, 60.0, 4e12))
    segs = {stage: (xs, ys, part) for stage, xs, ys, part in run_segments(run)}
    (a, _, part_a), (b, _, part_b), (c, _, part_c) = segs["L0.0"], segs["L0.1"], segs["L1"]
    assert part_a and part_b and not part_c
    assert a == pytest.approx(b)  # side by side: the same FLOPs at each epoch
    assert a[-1] == pytest.approx(2e12) == pytest.approx(c[0] - 2e12 / 4)  # the level ends, L1's first epoch follows
    assert run.levels() == {"L0.0": 0, "L0.1": 0, "L1": 1}
    (run.path / "manifest.json").unlink()  # without a manifest: every stage its own level, in order
    assert report.load_run(run.path).levels() == {"L0.0": 0, "L0.1": 1, "L1": 2}
