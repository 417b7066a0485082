"""The figures the fair-verdict study and the width ladder will draw once complete (issue 31 item 7, issue 36 item 3),
on fabricated complete runs of the real study files (:mod:`tests.fabricated_studies`): no label, tick label, title or
legend of a figure overlaps another, every series of a panel has its own colour and marker and keeps them in every
panel, a spare colour names one series across a figure, and the saving axes show +-40% and the paper's 30%."""

import itertools

import pytest
from matplotlib.colors import to_hex

from rbdc.report.colors import registered
from tests import fabricated_studies

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    """Every figure of the three reports by file name, as saved."""
    from rbdc.report import ladder_figures, study_figures

    saved, patches = {}, pytest.MonkeyPatch()
    for mod in (study_figures, ladder_figures):
        real = mod.save_png
        keep = lambda fig, path, real=real: saved.setdefault(path.name, fig) and real(fig, path)  # noqa: E731
        patches.setattr(mod, "save_png", keep)
    try:
        fabricated_studies.reports(tmp_path_factory.mktemp("complete"))
    finally:
        patches.undo()
    for fig in saved.values():
        fig.canvas.draw()
    return saved


def _boxes(fig) -> list[tuple[str, object]]:
    """``(what, window extent)`` of every drawn text and legend of the figure's axes; tick labels only where their
    tick lies inside the axis' view (the others are not drawn)."""
    out = []
    for ax in fig.axes:
        texts = [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        for axis, (a, b) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            texts += [t.label1 for t in axis.get_major_ticks() if min(a, b) <= t.get_loc() <= max(a, b)]
        out += [(f"{ax.get_title()[:30]}: {t.get_text()!r}", t.get_window_extent()) for t in texts if t.get_text()]
        if ax.get_legend():
            out.append((f"{ax.get_title()[:30]}: legend", ax.get_legend().get_window_extent()))
    return out


def test_every_figure_of_the_complete_studies_is_drawn(figures):
    assert set(figures) == {
        "imagenette32-fair-fig2.png",
        "imagenette32-fair-saving.png",
        "width-ladder32-fig2.png",
        "width-ladder32-saving.png",
        "width-ladder32-trend-width.png",
        "width-ladder32-trend-budget.png",
        "width-ladder32-trend-coupling.png",
    }


def test_no_text_or_legend_overlaps_another_or_leaves_the_figure(figures):
    for name, fig in figures.items():
        boxes = _boxes(fig)
        for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
            assert not box_a.shrunk(0.98, 0.98).overlaps(box_b.shrunk(0.98, 0.98)), (name, a, b)
        for what, box in boxes:
            assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1, (name, what)


def test_each_series_has_its_own_colour_and_marker_and_keeps_them_across_panels(figures):
    for name in ("imagenette32-fair-fig2.png", "width-ladder32-fig2.png"):
        seen = {}
        for ax in figures[name].axes:
            handles, labels = ax.get_legend_handles_labels()
            styles = {lab: (to_hex(h.lines[0].get_color()), h.lines[0].get_marker()) for h, lab in zip(handles, labels)}
            assert len(set(styles.values())) == len(styles), (name, ax.get_title(), styles)
            for label, style in styles.items():
                assert seen.setdefault(label, style) == style, (name, label)
        colours, own = {}, set(registered().values())  # a protocol's own colour marks its role in every panel
        for label, (colour, _) in seen.items():
            if colour not in own:  # a spare colour names one series in the whole figure
                assert colours.setdefault(colour, label) == label, (name, colour, label, colours[colour])


def test_the_saving_axes_show_40_percent_either_way_and_the_papers_30(figures):
    for name in ("imagenette32-fair-saving.png", "width-ladder32-saving.png", "width-ladder32-trend-width.png"):
        for ax in figures[name].axes:
            lo, hi = ax.get_ylim()
            assert lo <= -40 and hi >= 40, (name, ax.get_title())
            assert any(list(line.get_ydata()) == [30.0, 30.0] for line in ax.lines), (name, ax.get_title())


def test_no_legend_covers_a_point_of_its_panel(figures):
    for name, fig in figures.items():
        for ax in fig.axes:
            if ax.get_legend() is None:
                continue
            box = ax.get_legend().get_window_extent()
            under = [
                line.get_label()
                for line in ax.lines
                for xy in line.get_xydata()
                if len(xy) == 2 and box.contains(*ax.transData.transform(xy))
            ]
            assert not under, (name, ax.get_title(), under)
