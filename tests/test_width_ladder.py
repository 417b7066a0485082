"""The width ladder (issue 36): the 32-px rungs registered in timm's registry with the nano's shape, their RBDC parts
the next rung down, and both ladder study files planned whole without data (--list)."""

import pytest
import timm

import rbdc  # noqa: F401  (registers the rungs)
from rbdc.cli import main
from rbdc.studies.study import planned_flops
from rbdc.studies.spec import load_study
from conftest import REPO  # tests/conftest.py

RUNGS = {
    "rbdc_vit_nano_patch4_32": 64,
    "rbdc_vit_micro_patch4_32": 128,
    "rbdc_vit_tiny_patch4_32": 192,
    "rbdc_vit_small_patch4_32": 384,
}


@pytest.mark.parametrize("name, width", RUNGS.items())
def test_each_rung_is_the_nano_at_its_width_with_heads_of_16(name, width):
    m = timm.create_model(name)
    assert (m.embed_dim, len(m.blocks), m.blocks[0].attn.num_heads, m.patch_embed.patch_size) == (
        width,
        4,
        width // 16,
        (4, 4),
    )
    assert name in timm.list_models("rbdc_vit_*_patch4_32")


def test_the_widest_rungs_rbdc_parts_are_deit_ti_wide_and_its_d2_leaves_a_quarter():
    half, quarter = timm.create_model("rbdc_vit_small_patch4_32_w2"), timm.create_model("rbdc_vit_small_patch4_32_w4")
    tiny = timm.create_model("rbdc_vit_tiny_patch4_32")
    assert (
        (half.embed_dim, half.blocks[0].attn.num_heads) == (tiny.embed_dim, tiny.blocks[0].attn.num_heads) == (192, 12)
    )
    assert (quarter.embed_dim, quarter.blocks[0].attn.num_heads) == (96, 6)


@pytest.mark.parametrize("study, runs", [("width-ladder32.yaml", 82), ("imagenet-deit-ladder.yaml", 57)])
def test_the_ladder_studies_plan_whole_without_data(study, runs, capsys, monkeypatch):
    monkeypatch.setenv("IMAGENET_ROOT", "/nonexistent")
    path = REPO / "configs" / "studies" / study
    assert main(["study", str(path), "-o", "/nonexistent/runs", "--list"]) == 0
    out = capsys.readouterr().out
    assert f"{runs} runs" in out and "awaiting tuning" in out
    s = load_study(path)
    by_point = {}
    for r in s.runs:
        by_point.setdefault((r.point, r.budget_epochs), planned_flops(r))
    for (point, budget), flops in by_point.items():  # RBDC and scratch at one budget spend the same FLOPs
        if "rbdc" in point:
            ref = by_point.get((point.split("-rbdc")[0] + "-scratch", budget))
            if ref:
                assert flops == pytest.approx(ref, rel=0.01), point
