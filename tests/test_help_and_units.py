"""What a first-time user reads: examples in every README command's --help, FLOPs and times in human units."""

import re

import pytest
import torch

from rbdc.cli import build_parser, main
from rbdc.errors import UserError

README_COMMANDS = ["flops", "plan", "couple", "train", "report", "study", "quickstart"]


@pytest.mark.parametrize("command", README_COMMANDS)
def test_readme_commands_show_examples_in_help(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and f"rbdc {command} " in out


def test_plan_prints_flops_in_human_units(capsys):
    assert main(["plan", "deit_base_patch16_224", "--depth", "2"]) == 0
    out = capsys.readouterr().out
    assert "135 PFLOPs" in out and "105 GFLOPs" in out and "PFLOPs/epoch" not in out


def test_flops_prints_human_units(capsys):
    assert main(["flops", "deit_base_patch16_224"]) == 0
    assert "35.1 GFLOPs | training 105 GFLOPs per image" in capsys.readouterr().out


def test_plan_estimate_measures_each_level_here(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("rbdc.cost.estimate.FITTED", tmp_path)  # no cost model of this CPU kind: measured steps
    assert main(["plan", "test_rbdc_vit", "--dataset-size", "1000", "--estimate"]) == 0
    out = capsys.readouterr().out
    assert "time/epoch" in out and "at the speed measured here" in out


@pytest.mark.parametrize("amp, fused, autocast", [("fp32", None, False), ("bf16", False, True)])
def test_measured_steps_run_in_the_recipes_precision_and_attention(monkeypatch, amp, fused, autocast):
    """The fallback speed (no cost model) of a bf16 recipe is a bf16 step with the recipe's attention kernel: an fp32
    step measured 2-3x slower than what a bf16 run reaches on an AMX CPU and tripled the width ladder's cost plan."""
    import rbdc.cost.estimate as estimate
    from rbdc.cost.estimate import measure_train_flops_per_s

    seen, scaled = [], estimate.scaled

    def recording(*args, **kwargs):
        model = scaled(*args, **kwargs)
        model.register_forward_hook(
            lambda m, i, o: seen.append(
                (torch.is_autocast_enabled("cpu"), {a.fused_attn for a in m.modules() if hasattr(a, "fused_attn")})
            )
        )
        return model

    monkeypatch.setattr(estimate, "scaled", recording)
    assert measure_train_flops_per_s("test_rbdc_vit", batch=2, steps=1, amp=amp, fused_attn=fused) > 0
    assert seen and all(on == autocast for on, _ in seen)
    if fused is not None:
        assert all(kinds == {fused} for _, kinds in seen)


def test_plan_for_a_gpu_without_benchmarks_is_a_clear_error(tmp_path):
    from rbdc.cost.estimate import bench_train_flops_per_s

    with pytest.raises(UserError, match="no committed benchmark results for 'H100'.*tox -e bench"):
        bench_train_flops_per_s("H100", speeds=tmp_path / "train-step.json")


def test_plan_for_a_benchmarked_device_uses_its_results(capsys):
    assert main(["plan", "rbdc_vit_mini_patch8_64", "--dataset-size", "9469", "--gpu", "AMD EPYC"]) == 0
    assert "at the benchmarked speed of AMD EPYC" in capsys.readouterr().out


def test_train_dry_run_estimates_the_wall_time(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("rbdc.cost.estimate.FITTED", tmp_path)
    assert (
        main(
            [
                "train",
                "-c",
                "rbdc/quickstart_recipes/rbdc.yaml",
                "--dry-run",
                "--estimate",
                "--set",
                "budget_epochs=1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "estimated wall time:" in out and re.search(r"total training FLOPs: [\d.]+ [GTPE]FLOPs", out)


def test_plan_counts_the_recipes_dataset_from_the_known_sizes(capsys):
    from rbdc.data import TRAIN_SIZES

    assert main(["plan", "-c", "configs/recipes/imagenette32/vit-nano-rbdc-d1.yaml"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert f"rbdc_vit_nano_patch4_32, depth 1, k=2, FLOPs per epoch of {TRAIN_SIZES['imagenette'][0]:,} images" in first
    assert main(["plan", "deit_base_patch16_224"]) == 0  # no recipe: ImageNet-1k, from the same table
    assert f"of {TRAIN_SIZES['imagenet'][0]:,} images (imagenet's train split)" in capsys.readouterr().out


def test_plan_dataset_size_overrides_the_recipes(capsys):
    assert main(["plan", "-c", "configs/recipes/imagenette32/vit-nano-rbdc-d1.yaml", "--dataset-size", "1000"]) == 0
    assert "FLOPs per epoch of 1,000 images (--dataset-size)" in capsys.readouterr().out


def test_plan_of_a_dataset_of_unknown_size_names_the_flag(capsys):
    assert main(["plan", "-c", "rbdc/quickstart_recipes/rbdc.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(
        r"\(digits\) is not known without reading it.*; pass --dataset-size N$", err
    )
    assert main(["plan", "-c", "rbdc/quickstart_recipes/rbdc.yaml", "--dataset-size", "1437"]) == 0
