"""The width ladder's trend report (issue 36 items 3-4) on fabricated run directories with a known saving per width
and budget per parameter: the savings, the fit and its prediction interval recover the truth; too few widths give the
'cannot fit' sentence; a width without runs is pending; the report regenerates byte for byte."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from rbdc import recipe as recipes
from rbdc.errors import UserError
from rbdc.report import ladder, ladder_fit
from rbdc.report.ladder_sections import CANNOT_FIT
from rbdc.studies.spec import load_study
from tests.test_report import make_run

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "configs" / "recipes" / "imagenette32"
TRUTH = (-0.2, 0.05, 0.02)  # saving = a + b log2(width) + c log2(image-epochs per parameter)
MODELS = {64: None, 128: "rbdc_vit_micro_patch4_32", 192: "rbdc_vit_tiny_patch4_32", 384: "rbdc_vit_small_patch4_32"}
SCRATCH = {64: [4, 8, 16, 32, 64, 128], 128: [4, 8, 16, 32], 192: [4, 8, 16, 32], 384: [4, 8, 16]}
RBDC = {64: [8, 16, 32, 64], 128: [8, 16], 192: [8, 16], 384: [8, 16]}  # as the two study files plan them
SEEDS = (0, 1, 2)


def truth(width: float, bpp: float) -> float:
    a, b, c = TRUTH
    return a + b * math.log2(width) + c * math.log2(bpp)


def _ids(width: int) -> tuple[str, str, str]:
    return (
        ("imagenette32-fair", "vit-scratch", "vit-rbdc-d1")
        if width == 64
        else ("width-ladder32", f"w{width}-scratch", f"w{width}-rbdc-d1")
    )


def _write_studies(tmp_path: Path) -> dict[str, Path]:
    """The two studies' headline points as the real files define them, without their tuning."""
    points = {}
    for w in MODELS:
        name, s_id, r_id = _ids(w)
        extra = {"set": {"model": MODELS[w]}} if MODELS[w] else {}
        points.setdefault(name, []).extend(
            [
                {"id": s_id, "recipe": str(RECIPES / "vit-nano-scratch.yaml"), "budgets": SCRATCH[w], **extra},
                {"id": r_id, "recipe": str(RECIPES / "vit-nano-rbdc-d1.yaml"), "budgets": RBDC[w], **extra},
            ]
        )
    files = {}
    for name, pts in points.items():
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump({"name": name, "seeds": list(SEEDS), "points": pts}))
    return files


def _fabricate(tmp_path: Path, widths=(64, 128, 192, 384), rbdc_widths=None, noise=0.0, rng_seed=0) -> dict:
    """Runs of every ladder point at ``widths`` (RBDC only at ``rbdc_widths``): scratch's top-1 is 40 + 6 log2(budget)
    at every width (linear in log FLOPs), RBDC's mean sits where scratch reaches it at F / (1 - truth), so the saving
    is :func:`truth`; seeds spread +-0.5 around it (means exact), plus Gaussian ``noise`` per seed."""
    files, runs = _write_studies(tmp_path), tmp_path / "runs"
    rng = np.random.default_rng(rng_seed)
    rbdc_widths = widths if rbdc_widths is None else rbdc_widths
    for w in widths:
        name, s_id, r_id = _ids(w)
        model = MODELS[w] or "rbdc_vit_nano_patch4_32"
        params = ladder.shape(model)[1]
        per_epoch = 6.0 * params * 9469 * 65
        arms = [(s_id, "scratch", b, 40 + 6 * math.log2(b)) for b in SCRATCH[w]]
        if w in rbdc_widths:
            arms += [(r_id, "rbdc", b, 40 + 6 * math.log2(b / (1 - truth(w, b * 9469 / params)))) for b in RBDC[w]]
        for pid, protocol, b, mean in arms:
            for s in SEEDS:
                top1 = mean + 0.5 * (s - 1) + noise * rng.standard_normal()
                d = make_run(runs, f"{name}/{pid}/b{b}", protocol, s, top1, b * per_epoch, model=model)
                if protocol == "rbdc":  # coupling loses less as the width grows
                    res = json.loads((d / "results.json").read_text())
                    res["coupled_top1_before_training"] = {"L1": top1 - 14.5 - 640 / w}
                    (d / "results.json").write_text(json.dumps(res))
    studies = {}
    for name, f in files.items():
        study = load_study(f, runs)
        for r in study.runs:  # each run's recipe.yaml as rbdc train writes it
            d = r.run_dir(runs)
            if d.is_dir():
                (d / "recipe.yaml").write_text(
                    recipes.dump(recipes.resolve(r.recipe, list(r.overrides), seed=r.seed, name=r.name))
                )
        studies[name] = (study, runs / name)
    return studies


def _report(tmp_path, **kw) -> tuple[list, dict, str]:
    rungs = ladder.rungs(_fabricate(tmp_path, **kw))
    paths = ladder.build(rungs, tmp_path / "out" / "width-ladder32", "python -m rbdc.report.ladder runs")
    return rungs, paths, paths["md"].read_text()


def test_noise_free_savings_and_the_fit_recover_the_truth_exactly(tmp_path):
    rungs, paths, md = _report(tmp_path)
    assert [r.width for r in rungs] == [64, 128, 192, 384]
    assert set(paths) == {"md", "width", "budget", "coupling"}
    for r in rungs:
        for row in r.rows:
            if row.s["status"] == "matched":
                assert row.s["saving"] == pytest.approx(truth(r.width, row.bpp), abs=1e-9)
    # width 384 at 16 target epochs saves FLOPs, but scratch there stops at 16: a bound, left out of the fit
    b16 = next(row for row in rungs[-1].rows if row.point.budget == 16)
    assert b16.s["status"] == "above_range" and not b16.fits
    f = ladder_fit.fit(ladder.fit_points(rungs))
    assert f.coef == pytest.approx(TRUTH, abs=1e-9) and f.n == 9 and f.dof == 6
    iv = f.predict(768, ladder.DEIT_B.bpp)
    assert iv.estimate == pytest.approx(truth(768, ladder.DEIT_B.bpp), abs=1e-9)
    assert "| width | budget (target epochs) | image-epochs per parameter |" in md
    assert "| 128 | 8 | 0.0936 | 3 |" in md and "saves FLOPs" in md
    assert f"| intercept | {100 * TRUTH[0]:+.1f}% |" in md
    assert f"| per doubling of width | {100 * TRUTH[1]:+.1f}% |" in md
    assert "DeiT-B: 300 epochs of ImageNet-1k" in md and "4.44" in md and "far outside the data" in md
    assert "### Check: width 384 held out" in md and "Pending" not in md
    assert "At 8 target epochs the top-1 lost by coupling falls at every step of width" in md


def test_the_prediction_interval_holds_the_truth_at_deit_b_with_seed_noise(tmp_path):
    rungs, _, md = _report(tmp_path, noise=1.0, rng_seed=3)
    f = ladder_fit.fit(ladder.fit_points(rungs))
    iv = f.predict(768, ladder.DEIT_B.bpp)
    assert iv.lo < truth(768, ladder.DEIT_B.bpp) < iv.hi and iv.hi - iv.lo > 0
    assert iv.estimate != pytest.approx(truth(768, ladder.DEIT_B.bpp), abs=1e-3)  # the noise moved it
    assert "measured width-384 savings lie inside the prediction interval" in md


def test_prediction_interval_coverage_on_the_ladders_design():
    """95% prediction intervals at DeiT-B's width and budget per parameter cover a new point's truth in ~95% of
    fits of noisy savings at the ladder's (width, budget per parameter) points, far outside them as DeiT-B is."""
    pts = (
        [(64, b * 9469 / 208074) for b in (8, 16, 32, 64)]
        + [(w, b * 9469 / p) for w, p in ((128, 809354), (192, 1803850)) for b in (8, 16)]
        + [(384, 8 * 9469 / 7146634)]
    )
    rng = np.random.default_rng(0)
    target = truth(768, ladder.DEIT_B.bpp)
    hits = []
    for _ in range(2000):
        noisy = [(w, b, truth(w, b) + 0.05 * rng.standard_normal()) for w, b in pts]
        iv = ladder_fit.fit(noisy).predict(768, ladder.DEIT_B.bpp)
        hits.append(iv.lo <= target + 0.05 * rng.standard_normal() <= iv.hi)
    assert 0.93 <= np.mean(hits) <= 0.97, np.mean(hits)


def test_fewer_than_three_widths_cannot_be_fitted_and_the_missing_ones_are_pending(tmp_path):
    rungs, paths, md = _report(tmp_path, widths=(64, 128))
    assert f"{CANNOT_FIT}: 2 width(s) have a saving with an interval (64, 128)" in md
    assert "The points are shown only" in md and "| intercept |" not in md
    assert "width 192 (rbdc_vit_tiny_patch4_32): no finished w192-rbdc-d1 run yet (0 of 6; w192-scratch: 0 of 12)" in md
    assert "width 384 (rbdc_vit_small_patch4_32): no finished w384-rbdc-d1 run yet (0 of 6; w384-scratch: 0 of 9)" in md
    assert set(paths) == {"md", "width", "budget", "coupling"}


def test_a_width_with_scratch_but_no_rbdc_runs_is_pending_and_the_rest_is_fitted(tmp_path):
    rungs, _, md = _report(tmp_path, rbdc_widths=(64, 128, 192))
    assert (
        "**Pending**: width 384 (rbdc_vit_small_patch4_32): no finished w384-rbdc-d1 run yet (0 of 6; "
        "w384-scratch: 9 of 9)."
    ) in md
    assert "Fitted on 8 points at widths 64, 128, 192" in md
    assert "Width 384 has no saving in the fit yet: nothing to check." in md


def test_no_runs_at_all_is_all_pending(tmp_path):
    rungs = ladder.rungs(_fabricate(tmp_path, widths=()))
    paths = ladder.build(rungs, tmp_path / "out" / "w", "cmd")
    md = paths["md"].read_text()
    assert set(paths) == {"md"} and "from 0 of 81 runs" in md and "No rung has a saving yet" in md
    assert md.count("no finished") == 4 and CANNOT_FIT in md


def test_the_report_regenerates_byte_for_byte(tmp_path):
    studies = _fabricate(tmp_path, noise=0.7)
    first = ladder.build(ladder.rungs(studies), tmp_path / "out" / "r", "cmd")
    before = {k: p.read_bytes() for k, p in first.items()}
    again = ladder.build(ladder.rungs(studies), tmp_path / "out" / "r", "cmd")
    assert {k: p.read_bytes() for k, p in again.items()} == before


def test_the_fit_refuses_what_cannot_separate_width_from_budget():
    one_budget = [(64, 0.36, 0.1), (128, 0.09, 0.1), (192, 0.04, 0.1)]
    assert "no width has savings at two budgets" in ladder_fit.why_not(one_budget)
    with pytest.raises(UserError, match="cannot support a fit"):
        ladder_fit.fit(one_budget)
    with pytest.raises(UserError, match="positive widths"):
        ladder_fit.fit([(0, 0.36, 0.1), (128, 0.09, 0.1), (192, 0.04, 0.1), (192, 0.08, 0.1)])


def test_a_ladder_naming_an_unknown_study_or_point_is_refused(tmp_path):
    studies = _fabricate(tmp_path, widths=())
    with pytest.raises(UserError, match="names study 'nope'"):
        ladder.rungs(studies, ladder=(("nope", "a", "b"),))
    with pytest.raises(UserError, match="does not define"):
        ladder.rungs(studies, ladder=(("width-ladder32", "w128-scratch", "w999-rbdc-d1"),))


def test_budget_per_parameter_is_image_epochs_per_parameter():
    assert ladder.DEIT_B.bpp == pytest.approx(300 * 1_281_167 / 86_567_656)
    assert ladder.shape("rbdc_vit_small_patch4_32") == (384, 7_146_634)
    assert ladder.shape("rbdc_vit_small_patch4_32", 768)[0] == 768


def _figures(tmp_path, monkeypatch, **kw) -> dict:
    """The trend report's matplotlib figures by name (width, budget, coupling), kept as they were saved."""
    from rbdc.report import ladder_figures

    saved = {}
    real = ladder_figures.save_png

    def keep(fig, path):
        saved[path.stem.rsplit("-", 1)[1]] = fig
        return real(fig, path)

    monkeypatch.setattr(ladder_figures, "save_png", keep)
    _report(tmp_path, **kw)
    for fig in saved.values():
        fig.canvas.draw()
    return saved


def test_the_matched_budgets_markers_at_one_width_stand_apart(tmp_path, monkeypatch):
    """Both budgets' savings at width 64 are drawn side by side: their centres lie more than a marker apart."""
    ax = _figures(tmp_path, monkeypatch)["width"].axes[0]
    centres = [
        ax.transData.transform((x, y))[0]
        for line in ax.lines
        if line.get_marker() in ("o", "s") and line.get_label() != "paper: 30%"
        for x, y in line.get_xydata()
        if 50 < x < 80
    ]
    assert len(centres) == 2, centres
    marker_px = 6 * ax.figure.dpi / 72
    assert abs(centres[0] - centres[1]) > marker_px


def test_no_legend_of_the_coupling_figure_covers_a_point_it_names(tmp_path, monkeypatch):
    """Four lines of two budgets leave no free corner inside the left panel (a 'best' legend covered the parts'
    line of 16 target epochs on a fabricated complete ladder): each legend sits under its panel, outside it."""
    fig = _figures(tmp_path, monkeypatch)["coupling"]
    for ax in fig.axes:
        box = ax.get_legend().get_window_extent()
        points = [ax.transData.transform(xy) for line in ax.lines for xy in line.get_xydata()]
        assert points and not [p for p in points if box.contains(*p)], ax.get_title()
        assert not box.overlaps(ax.get_window_extent()), ax.get_title()
        assert box.y0 >= 0 and not box.overlaps(ax.xaxis.label.get_window_extent()), ax.get_title()


def test_a_saving_beyond_the_axis_is_an_arrow_and_its_value_not_a_marker_at_the_edge():
    """Issue 36's DeiT-B prediction may lie far below -45%: drawn at the edge it would read as -45%."""
    from rbdc.report.study_figures import SAVING_LIM, _figure, saving_mark

    ax = _figure(4, 3).add_subplot()
    saving_mark(ax, 4.4, {"saving": -0.58, "lo": -1.18, "hi": 0.03, "status": "matched"}, "black", "D", "DeiT-B")
    ax.set_ylim(*SAVING_LIM)
    drawn = [(line.get_marker(), tuple(line.get_xydata()[0])) for line in ax.lines if len(line.get_xydata())]
    assert ("D", (4.4, SAVING_LIM[0])) not in drawn and ("v", (4.4, SAVING_LIM[0])) in drawn
    assert [t.get_text() for t in ax.texts] == ["-58%"]
    arrows = [line for line in ax.lines if line.get_marker() == "v"]
    assert arrows and not any(line.get_clip_on() for line in arrows)  # the arrow's point is not cut at the edge
    assert "DeiT-B" in ax.get_legend_handles_labels()[1]  # the legend still names it


def test_the_narrow_speed_is_reported_per_cpu_kind_never_pooled(tmp_path, monkeypatch):
    """The ladder's runs span CPU kinds (its first 12 ran on an AMX Xeon, later ones on AVX2-only machines): a width's
    narrow ÷ target FLOP/s pooled over kinds would read a change of machine as a change of width. Seed 0's RBDC runs
    are recorded on one kind, the others on another: one table row and one figure series per kind."""
    from rbdc.report import ladder_figures
    from rbdc.runs import rundir

    studies = _fabricate(tmp_path)
    for _, root in studies.values():
        for d in root.glob("*rbdc*/b*/seed*"):
            kind = "AMX" if d.name == "seed0" else "AVX2"
            rundir.append_command(d, "rbdc train", {"cpu": {"capability": kind}})
    saved = {}
    monkeypatch.setattr(ladder_figures, "save_png", lambda fig, path: saved.setdefault(path.stem, fig) and path)
    md = ladder.build(ladder.rungs(studies), tmp_path / "out" / "w", "cmd")["md"].read_text()
    assert "| CPU kind | width | RBDC runs |" in md
    assert "| AMX | 64 | 4 | 0.50 (0.50–0.50) |" in md and "| AVX2 | 64 | 8 | 0.50 (0.50–0.50) |" in md
    assert "On AMX the median narrow ÷ target FLOP/s" in md and "On AVX2 the median" in md
    right = saved["w-coupling"].axes[1]
    labels = [c.get_label() for c in right.containers]
    assert labels == ["AMX: median over RBDC runs (range)", "AVX2: median over RBDC runs (range)"]
    xs = [c.lines[0].get_xdata()[0] for c in right.containers]
    assert xs[0] < 64 < xs[1]  # the two kinds' width-64 points stand apart
