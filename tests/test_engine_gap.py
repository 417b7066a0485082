"""benchmarks/engine_gap.py: the engine's step over the time-split benchmark's, attributed along a chain of changes
(the measurement itself needs the study's data and minutes: ``python -m benchmarks.engine_gap``)."""

import json

import numpy as np
import pytest

from benchmarks import engine_gap, perf_costmodel, perf_report


def test_the_chain_factors_multiply_to_the_whole_ratio_when_each_round_scales_alike():
    rounds = np.array([1.0, 1.3, 0.8, 1.1])  # the machine's load changes from round to round, the same for all
    per_step = dict(zip(engine_gap.VARIANTS, (1.0, 1.1, 0.95, 1.02, 1.05)))
    times = {k: list(f * rounds) for k, f in per_step.items()}
    out = engine_gap.chain_factors(times)
    assert out["factors"]["engine-model"] == pytest.approx(1.1)
    assert out["factors"]["real-batch"] == pytest.approx(0.95 / 1.1)
    assert out["total"] == pytest.approx(1.05) and out["residual"] == pytest.approx(1.0)
    assert list(out["factors"]) == list(engine_gap.VARIANTS[1:])


def test_the_residual_is_what_the_per_round_medians_do_not_multiply_to():
    times = {"a": [1.0, 1.0, 1.0], "b": [1.0, 3.0, 2.0], "c": [1.0, 1.0, 4.0]}
    out = engine_gap.chain_factors(times, order=("a", "b", "c"))
    # b/a: 1, 3, 2 -> 2; c/b: 1, 1/3, 2 -> 1; c/a: 1, 1, 4 -> 1: the medians multiply to 2, the chain is 1
    assert out["factors"] == {"b": pytest.approx(2.0), "c": pytest.approx(1.0)}
    assert out["total"] == pytest.approx(1.0) and out["residual"] == pytest.approx(0.5)


def test_the_chain_refuses_variants_timed_a_different_number_of_rounds():
    times = {k: [1.0, 1.0] for k in engine_gap.VARIANTS}
    times["loader"] = [1.0]
    with pytest.raises(ValueError, match="same number"):
        engine_gap.chain_factors(times)


def test_each_case_has_a_time_split_case_of_the_same_precision_and_batch():
    for label, (_recipe, _factor, width) in engine_gap.CASES.items():
        case = engine_gap._split_case(width)
        assert case.batch == 128 and case.study, label
        assert (case.amp == "fp32") == ("resnet" in label), label


def _case(label: str, bench_us: float, fit_s: float | None) -> dict:
    factors = dict.fromkeys(engine_gap.VARIANTS[1:], 1.0)
    chain = {"factors": factors, "total": 1.0, "residual": 1.0}
    return {
        "case": label,
        "model": "resnet18" if "resnet" in label else "rbdc_vit_nano_patch4_32",
        "amp": "fp32" if "resnet" in label else "bf16",
        "us_per_image_busy": {"bench": bench_us},
        "busy": chain,
        "wall": chain,
        "core_share": 0.5,
        "cold_start": {"extra_s": 0.1, "steps": 3},
        "gemm_busy_flops_per_s": [1.0e12],
        "fit": None if fit_s is None else {"s_per_image": fit_s, "fit_s_per_image": fit_s},
    }


def test_the_report_shows_a_row_per_case_and_the_loaded_machine_over_the_fitted_row():
    gap = {
        "command": "python -m benchmarks.engine_gap",
        "threads": 1,
        "started": "2026-12-06 17:40 UTC",
        "beside": [],
        "variants": list(engine_gap.VARIANTS),
        "cases": [_case("vit w64", 1400.0, 1e-3), _case("resnet18 /1", 5000.0, None)],
    }
    text = "\n".join(perf_costmodel.engine_gap_section(gap, "engine-gap-x.json"))
    assert "| vit w64 (bf16) |" in text and "| 1.40x |" in text
    assert "| resnet18 /1 (fp32) |" in text
    assert "cost 1.40-1.40x the CPU seconds of the row it was fitted on" in text


def test_the_report_reads_no_engine_gap_json_as_a_benchmark(tmp_path):
    (tmp_path / "engine-gap-x.json").write_text(json.dumps({"cases": []}))  # no "benchmarks" key: not pytest's
    assert perf_report.load(tmp_path) == []
