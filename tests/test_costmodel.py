"""rbdc.cost.costmodel (seconds per image from countable terms, per CPU kind) and its use by `rbdc plan --estimate` and
`rbdc train --dry-run --estimate`."""

import json

import numpy as np
import pytest
import torch.nn as nn

from rbdc.cost import bench, costmodel, estimate, machine
from rbdc.cli import main

XEON = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 207
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile

processor\t: 1
model name\t: something else
"""


def test_fit_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    truth = np.array([2e-12, 5e-9, 3e-8, 4e-5])  # s per FLOP, per element, per parameter-step, per image
    x = np.column_stack([rng.uniform(1e7, 3e9, 12), rng.uniform(1e5, 3e6, 12), rng.uniform(1e2, 1e5, 12), np.ones(12)])
    assert np.allclose(costmodel.fit(x, x @ truth), truth, rtol=1e-6)


def test_fit_keeps_coefficients_non_negative():
    x = np.column_stack([np.arange(1.0, 7.0), np.ones(6)])
    y = 5.0 - 0.5 * np.arange(1.0, 7.0)  # a negative slope: non-negative least squares sets it to 0
    coef = costmodel.fit(x, y)
    assert coef[0] == 0 and coef[1] > 0


def test_fit_refuses_bad_targets():
    with pytest.raises(ValueError, match="positive seconds per image"):
        costmodel.fit(np.ones((2, 2)), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"needs an \(n, terms\) matrix"):
        costmodel.fit(np.ones(3), np.ones(3))


def test_cpu_kind_is_model_name_family_model_and_isa():
    kind = machine.cpu_kind(XEON)
    assert kind["key"] == "Intel(R) Xeon(R) Processor | 6-207 | avx2 avx512f avx512_bf16 amx_bf16 amx_tile"
    assert kind["slug"] == "intel-xeon-processor-6-207-amx"
    assert machine.cpu_kind(XEON.replace(" amx_bf16 amx_tile", ""))["key"] != kind["key"]


def test_activation_elements_count_every_computing_leaf_once():
    class Tiny(nn.Sequential):
        pass

    model = Tiny(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Identity(), nn.Dropout(0.0))
    assert costmodel.activation_elements(model, 2) == 12 + 5 + 5  # identity and inactive dropout left out


def test_activation_elements_count_the_attention_matrices():
    terms = costmodel.features("test_rbdc_vit", 32, 128)
    n, heads, depth = 17, 4, 2  # 32 px / patch 8 -> 16 tokens + class
    with_attention = terms["activation_elements"]
    assert with_attention > depth * 2 * heads * n * n
    assert terms["params_per_batch"] * 128 == pytest.approx(
        sum(p.numel() for p in costmodel._meta("test_rbdc_vit", 32).parameters())
    )


def _write_model(folder, kind, coefs=None):
    coefs = coefs or {
        f"{amp}/{fam}": {"train_flops": 1e-11, "activation_elements": 1e-9, "params_per_batch": 1e-8, "constant": 1e-5}
        for amp in ("fp32", "bf16")
        for fam in ("vit", "resnet")
    }
    model = costmodel.CostModel(
        kind, coefs, {"32": 2e-5}, [{"amp": "fp32", "family": "vit", "img_size": 32, "train_flops": 1e7, "width": "16"}]
    )
    return model.save(costmodel.costmodel_path(kind, folder))


def test_plan_on_an_unfitted_cpu_kind_says_so_and_measures(tmp_path, monkeypatch, capsys):
    other = machine.cpu_kind(XEON.replace("207", "143"))
    _write_model(tmp_path, other)
    monkeypatch.setattr(estimate, "FITTED", tmp_path)
    assert main(["plan", "test_rbdc_vit", "--dataset-size", "1000", "--estimate"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("cost model:"))
    assert "not fitted for this CPU kind" in line and other["slug"] in line and "measured here" in line
    assert "at the speed measured here" in out and "time/epoch" in out


def test_plan_prints_rbdc_and_scratch_walls_from_this_kinds_model(tmp_path, monkeypatch, capsys):
    _write_model(tmp_path, machine.cpu_kind())
    monkeypatch.setattr(estimate, "FITTED", tmp_path)
    assert (
        main(
            ["plan", "rbdc_vit_nano_patch4_32", "--depth", "2", "--dataset-size", "9469", "--estimate", "--amp", "bf16"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "cost model fitted on this CPU kind" in out and "measuring" not in out
    last = out.splitlines()[-1]
    assert "one epoch of every level:" in last and "scratch (rbdc_vit_nano_patch4_32) at equal FLOPs" in last
    assert "RBDC takes" in last and "by this CPU kind's cost model (bf16, batch 128)" in last


def test_train_dry_run_prints_each_stage_and_scratch_by_the_cost_model(tmp_path, monkeypatch, capsys):
    _write_model(tmp_path, machine.cpu_kind())
    monkeypatch.setattr(estimate, "FITTED", tmp_path)
    assert main(["train", "-c", "configs/recipes/imagenette32/vit-nano-rbdc-d1.yaml", "--dry-run", "--estimate"]) == 0
    out = capsys.readouterr().out
    assert "stage L0.0 (rbdc_vit_nano_patch4_32_w2" in out and "stage L1 (rbdc_vit_nano_patch4_32" in out
    assert "scratch at the same training FLOPs" in out and "by this CPU kind's cost model (bf16" in out


def test_the_committed_model_of_a_kind_round_trips(tmp_path):
    kind = machine.cpu_kind(XEON)
    path = _write_model(tmp_path, kind)
    found, why = costmodel.for_this_machine(tmp_path, kind)
    assert found is not None and path.name in why
    assert json.loads(path.read_text())["kind"] == "costmodel"
    terms = costmodel.features("rbdc_vit_nano_patch4_32", 32, 128)
    assert found.seconds_per_image(terms, "bf16", "vit") > 0
    with pytest.raises(KeyError, match="no fp16 vit fit"):
        found.seconds_per_image(terms, "fp16", "vit")


def test_fast_state_splits_two_clusters_of_gemm_rates_and_keeps_one():
    rates = [1100e9, 1050e9, 400e9, 380e9, 1120e9]
    floor = bench.fast_state(rates)
    assert 400e9 < floor < 1050e9
    assert bench.fast_state([150e9, 147e9, 152e9, 145e9]) == 0.0  # one state: every round counts


def test_bench_rows_count_only_the_rounds_in_the_fast_state():
    def row(busy, gemm, **extra):
        return {
            "group": "time-split",
            "stats": {"median": 1.0},
            "extra_info": {
                "model": "test_rbdc_vit",
                "img_size": 32,
                "batch": 8,
                "amp": "bf16",
                "family": "vit",
                "width": "64",
                "images_per_round": 8,
                "round_busy_s": busy,
                "gemm_busy_flops_per_s": gemm,
                **extra,
            },
        }

    bench_json = {
        "benchmarks": [
            row([0.8, 2.0, 0.8], [1e12, 4e11, 1e12]),
            row([2.0, 2.0], [4e11, 4e11]),
            {
                "group": "time-split",
                "stats": {"median": 1.0},
                "extra_info": {"family": "data", "img_size": 32, "images_per_round": 100, "round_busy_s": [0.01]},
            },
        ]
    }
    rows, data = bench.bench_rows(bench_json)
    assert len(rows) == 1 and rows[0]["rounds_used"] == 2 and rows[0]["s_per_image"] == pytest.approx(0.1)
    assert data == {"32": pytest.approx(1e-4)}
