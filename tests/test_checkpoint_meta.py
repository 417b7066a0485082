"""Checkpoint metadata rebuilds the model that was saved: grouped LayerNorms, unregistered widths, class settings."""

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import timm
import torch
from timm.models.vision_transformer import ResPostBlock

import rbdc
from rbdc.runs import train
from rbdc.nets import checkpoint
from rbdc.nets.checkpoint import load_model, load_weights, save_weights
from rbdc.growth import gradmax_start, inner_widths
from rbdc.nets.layers import PartLayerNorm

CI = Path(__file__).resolve().parents[1] / "configs" / "recipes" / "ci"


def mean_logits(models, x):
    with torch.no_grad():
        return torch.stack([m.eval()(x) for m in models]).mean(0)


def test_grouped_layer_norms_survive_a_reload_and_recouple_exactly(tmp_path):
    leaves = [rbdc.narrow("test_rbdc_vit", 4).eval() for _ in range(4)]
    mids = [rbdc.couple(leaves[i : i + 2], norm="grouped") for i in (0, 2)]
    reloaded = [load_model(save_weights(m, tmp_path / f"mid{i}.safetensors")) for i, m in enumerate(mids)]
    assert {(type(m), m.parts) for r in reloaded for m in r.modules() if isinstance(m, torch.nn.LayerNorm)} == {
        (PartLayerNorm, 2)
    }
    root = rbdc.couple(reloaded, norm="grouped")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (root.eval()(x) - mean_logits(leaves, x)).abs().max() < 1e-5


@pytest.mark.slow
def test_depth_2_grouped_run_couples_its_reloaded_parents_exactly(tmp_path):
    """lr ~3e-14 throughout (recipes refuse lr 0), so each coupled stage's final weights are its coupled start to far
    below the tolerance: the root, coupled from the reloaded level-1 parents, must be the mean of the 4 leaves."""
    sets = ["rbdc.depth=2", "rbdc.epochs=[1,1,1]", "rbdc.norm=grouped", "lr_base=1e-12", "min_lr=0", "warmup_lr=0"]
    train.run_recipe(str(CI / "rbdc.yaml"), str(tmp_path), sets, log=lambda *a, **k: None)
    run_dir = tmp_path / "ci" / "rbdc-d1" / "seed0"
    leaves = [load_model(run_dir / "stages" / f"L0.{i}" / "final.safetensors") for i in range(4)]
    root = load_model(run_dir / "final.safetensors")
    assert {m.parts for m in root.modules() if isinstance(m, PartLayerNorm)} == {4}
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        err = (root.eval()(x) - mean_logits(leaves, x)).abs().max().item()
    assert err < 1e-5, err


def test_an_unregistered_width_is_saved_under_a_name_that_rebuilds_it(tmp_path):
    half = rbdc.narrow("resnet34", 2, num_classes=10).eval()
    path = save_weights(half, tmp_path / "half.safetensors")
    name = load_weights(path)[1]["model"]
    assert name == "rbdc_resnet34_w2"
    x = torch.randn(1, 3, 64, 64)
    via_timm = timm.create_model(name, num_classes=10, checkpoint_path=str(path)).eval()
    via_name = load_model(path, model=name).eval()
    with torch.no_grad():
        assert torch.equal(via_timm(x), half(x)) and torch.equal(via_name(x), half(x))


def test_a_width_no_name_describes_is_saved_without_a_misleading_name(tmp_path):
    wide = rbdc.couple([timm.create_model("test_rbdc_resnet") for _ in range(2)])  # 2 x test_rbdc_resnet
    meta = load_weights(save_weights(wide, tmp_path / "x2.safetensors"))[1]
    assert "model" not in meta
    assert load_model(tmp_path / "x2.safetensors").fc.in_features == wide.fc.in_features


def test_class_valued_settings_are_stored_by_import_path(tmp_path):
    model = rbdc.narrow("test_rbdc_vit", 2, block_fn=ResPostBlock).eval()
    path = save_weights(model, tmp_path / "post.safetensors")
    assert '"block_fn": {"import": "timm.models.vision_transformer.ResPostBlock"}' in load_weights(path)[1]["arch"]
    back = load_model(path).eval()
    assert type(back.blocks[0]) is ResPostBlock
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


def test_a_registered_rebuild_key_is_saved_and_rebuilds_the_model(tmp_path, monkeypatch):
    """A model whose arch holds a registered key is rebuilt on load by that key's builder, given the saved value."""
    calls = []

    def build(name, value, **kwargs):
        calls.append((name, value))
        return rbdc.scaled(name, Fraction(1, 2), **kwargs)

    monkeypatch.setitem(checkpoint._REBUILD, "test_widths", build)
    model = rbdc.narrow("test_rbdc_vit", 2)
    model.rbdc_arch = {**model.rbdc_arch, "test_widths": {"embed": 8}}
    back = load_model(save_weights(model, tmp_path / "w.safetensors"))
    assert calls == [("test_rbdc_vit", {"embed": 8})]
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values()))


def test_a_gradmax_checkpoint_loads_in_a_process_that_imports_only_the_checkpoint_module(tmp_path):
    model = gradmax_start("test_rbdc_vit", Fraction(1, 2))
    path = save_weights(model, tmp_path / "g.safetensors")
    code = (
        "import json; from rbdc.nets.checkpoint import load_model; "
        f"print(json.dumps(load_model({str(path)!r}).rbdc_arch['inner_widths']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == inner_widths(model) != inner_widths(timm.create_model("test_rbdc_vit"))
