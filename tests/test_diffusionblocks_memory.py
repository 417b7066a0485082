"""DiffusionBlocks' training memory against B (benchmarks/diffusionblocks_memory.py): the machine-independent part.

What a step saves for backward is fixed by the shapes, so it is tested exactly on a tiny ViT (test_rbdc_vit at depth
4: width 64, 17 tokens, batch 8, fp32, no drop-path so that every layer saves the same). Peak RSS depends on the
machine and is only checked to be recorded.
"""

import json

import pytest
import torch
import torch.nn.functional as F

from benchmarks import diffusionblocks_memory as dbm
from benchmarks import perf_report
from rbdc import protocols
from rbdc.recipe import DEFAULTS, Recipe

N, WIDTH, DEPTH, TOKENS, COND = 8, 64, 4, 17, 64 // 6  # test_rbdc_vit: 32 px / patch 8 = 16 patches + 1 slot
RECIPE = dict(model="test_rbdc_vit", drop_path=0.0, model_kwargs={"depth": DEPTH}, smoothing=0.0)


def typed(**keys):
    return Recipe.from_dict({**DEFAULTS, **RECIPE, **keys})


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, 3, 32, 32, generator=g), torch.randint(10, (N,), generator=g)


def _end_to_end() -> dict:
    x, y = _inputs()
    model = protocols.get("scratch").target(typed(), 10)
    return dbm.saved_bytes(model, lambda: F.cross_entropy(model(x), y))


def _diffusionblocks(blocks: int) -> list[dict]:
    """Saved bytes of a step on each block."""
    x, y = _inputs()
    model = protocols.get("diffusionblocks").target(typed(diffusionblocks={"blocks": max(blocks, 2)}), 10)
    if blocks == 1:
        dbm.one_block(model)
    out = []
    for b in range(blocks):
        dbm.force_block(model, b)
        out.append(dbm.saved_bytes(model, lambda: model(x, y)))
        assert model.last_block == b
    return out


@pytest.fixture(scope="module")
def saved():
    return {"e2e": _end_to_end(), **{b: _diffusionblocks(b) for b in (1, 2, 4)}}


def test_a_step_saves_one_block_of_layers_exactly_1_over_b_of_the_whole_depth(saved):
    for b in (1, 2, 4):
        assert all(s == saved[b][0] for s in saved[b]), "every block of equal layers saves the same"
        assert saved[b][0]["weight_copies"] == 0  # fp32: no autocast copies
    layers = {b: saved[b][0]["layers"] for b in (1, 2, 4)}
    shared = {saved[b][0]["shared"] for b in (1, 2, 4)}
    assert len(shared) == 1, "the embeddings/head save the same at every B"
    # layers(B) = (DEPTH / B) x one layer + the conditioning vector c (saved once, by the first layer that reads it)
    c = N * COND * 4
    per_layer = (layers[1] - c) // DEPTH
    assert {b: layers[b] for b in (1, 2, 4)} == {b: DEPTH // b * per_layer + c for b in (1, 2, 4)}


@pytest.mark.parametrize("blocks", [2, 4])
def test_against_end_to_end_a_step_saves_1_over_b_of_the_layers_times_adalns_overhead(saved, blocks):
    e2e = saved["e2e"]
    plain_layer = e2e["layers"] / DEPTH
    # adaLN-Zero keeps, per layer, what a plain timm Block does not: the two LayerNorm outputs that multiply
    # (1 + scale) and the attention/MLP outputs that multiply the gates (4 x [N, T, C]), the modulation Linear's
    # [N, 6C] output (shift/scale/gate are views of it) and the two (1 + scale) tensors [N, C]; fp32 bytes
    adaln = 4 * (4 * N * TOKENS * WIDTH + 6 * N * WIDTH + 2 * N * WIDTH)
    ratio = saved[blocks][0]["layers"] / e2e["layers"]
    # Tolerance 1%: the only other byte is the conditioning vector c ([N, C/6] saved once per step, 0.1% here);
    # the layer count, widths and token count fix everything else.
    assert ratio == pytest.approx((1 + adaln / plain_layer) / blocks, rel=0.01)
    # "about 1/B": 1/B of the layers, times adaLN's overhead (+37% at this tiny size: mlp_ratio 2, 17 tokens)
    assert 1 / blocks < ratio < 1.5 / blocks
    # the whole step: those layers plus the shared embeddings/head, which do not shrink with B
    whole = saved[blocks][0]["activations"] / e2e["activations"]
    assert whole < 1.5 / blocks + saved[blocks][0]["shared"] / e2e["activations"]


def test_help_and_the_dry_run_write_the_json_the_report_reads(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        dbm.main(["--help"])
    assert e.value.code == 0
    assert "--out" in capsys.readouterr().out
    out = tmp_path / "diffusionblocks-memory-toy.json"
    assert dbm.main(["--dry-run", "--device", "cpu", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["kind"] == "diffusionblocks-memory" and data["dry_run"] and data["cpu_info"]["capability"]
    rows = data["rows"]
    assert [(r["method"], r["blocks"]) for r in rows] == [
        ("end-to-end", 1),
        ("diffusionblocks", 1),
        ("diffusionblocks", 2),
        ("diffusionblocks", 4),
    ]
    for r in rows:
        assert r["saved_activation_bytes"] > 0 and r["peak_rss_bytes"] > 0 and r["promised_ratio"] == 1 / r["blocks"]
        assert "saved_activation_ratio_vs_e2e" in r and "peak_rss_increment_ratio_vs_e2e" in r
    b4 = rows[-1]
    assert b4["block_order"] == [0, 1, 2, 3] and len(b4["saved_by_block_bytes"]) == 4
    assert b4["saved_layer_bytes"] < 0.5 * rows[0]["saved_layer_bytes"]
    # perf_report keeps it apart from the pytest-benchmark JSONs and renders its section
    (tmp_path / "cpu.json").write_text(json.dumps({"benchmarks": [], "datetime": "2026-01-01T00:00"}))
    assert [r["_path"].name for r in perf_report.load(tmp_path)] == ["cpu.json"]
    (mem,) = perf_report.load_memory(tmp_path)
    report = perf_report.render(perf_report.load(tmp_path), [mem])
    assert "## DiffusionBlocks: training memory against the number of blocks B" in report
    assert "| 64 (4) | bf16 | diffusionblocks | 4 |" in report and "What scales with B" in report


@pytest.mark.slow  # a subprocess that imports torch: ~4-7 s on 2 busy cores
def test_a_configuration_runs_in_a_fresh_process_and_reports_its_peak_rss():
    spec = {**dbm.configs(toy=True)[2], "device": "cpu", "threads": 1, "rounds": 1, "amp": "fp32"}
    assert (spec["method"], spec["blocks"]) == ("diffusionblocks", 2)
    row = dbm.run_fresh(spec, timeout=120)
    assert row["block_order"] == [0, 1] and row["amp"] == "fp32" and row["peak_reset"] in (True, False)
    assert row["peak_rss_bytes"] >= row["rss_before_bytes"] > 0 and row["peak_rss_increment_bytes"] > 0
    assert row["saved_activation_bytes"] == row["saved_layer_bytes"] + row["saved_shared_bytes"] > 0


@pytest.mark.gpu
def test_on_cuda_the_peak_allocated_memory_falls_with_b():
    rows = []
    for spec in dbm.configs(toy=True):
        rows.append(dbm.measure({**spec, "device": "cuda", "threads": 1, "rounds": 1, "amp": "bf16"}))
    dbm.add_ratios(rows)
    for r in rows:
        assert r["cuda_peak_allocated_bytes"] >= r["cuda_allocated_before_bytes"] and r["saved_activation_bytes"] > 0
    by_b = {r["blocks"]: r for r in rows if r["method"] == "diffusionblocks"}
    assert by_b[4]["saved_layer_bytes"] < by_b[2]["saved_layer_bytes"] < by_b[1]["saved_layer_bytes"]
    assert by_b[4]["cuda_peak_increment_bytes"] < by_b[1]["cuda_peak_increment_bytes"]


def test_cpu_slug():
    assert dbm.cpu_slug("Intel(R) Xeon(R) Processor (2 cores)") == "intel-xeon-processor"
    assert dbm.cpu_slug("AMD EPYC 7B13 (16 cores)") == "amd-epyc-7b13"
