"""HyperCloning (rbdc.growth.hypercloning) and RBDC's ``copies`` ablation: the expanded model computes the narrow
model's function (the defining invariant), with or without the reference's noise; both plan exactly RBDC depth 1's
FLOPs per level; the expansion follows apple/ml-hypercloning's rules where that repository is at hand."""

import importlib.util
import os

import pytest
import torch
import torch.nn as nn
from conftest import CI, QUIET  # tests/conftest.py

import rbdc
from rbdc import recipe as recipes
from rbdc.coupling import couple
from rbdc.errors import UserError
from rbdc.growth.hypercloning import clone_weight, hyperclone
from rbdc.protocols.planning import plan_stages, stage_flops


def _narrow(name, **kw):
    torch.manual_seed(0)
    m = rbdc.scaled(name, 0.5, num_classes=10, **kw)
    for p in m.parameters():  # trained-looking weights: no zero biases or unit norms that would hide a wrong rule
        p.data.add_(0.05 * torch.randn_like(p))
    return m.eval()


@pytest.mark.parametrize("name, size", [("test_rbdc_vit", 32), ("resnet18", 32)])
@pytest.mark.parametrize("snr_db", [None, 10.0])
def test_the_hypercloned_model_computes_the_narrow_models_function(name, size, snr_db):
    m = _narrow(name)
    for mod in m.modules():  # BatchNorm statistics that are not the identity
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    wide = hyperclone(m, 2, snr_db=snr_db, seed=1).eval()
    assert type(wide) is type(m) and wide.num_features == 2 * m.num_features  # a stock timm model, 2x wide
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(wide(x), m(x), rtol=1e-4, atol=1e-4)


def test_noise_breaks_the_copies_symmetry_and_is_seeded():
    m = _narrow("test_rbdc_vit")
    quiet, noisy, again = hyperclone(m, 2), hyperclone(m, 2, snr_db=10.0, seed=3), hyperclone(m, 2, snr_db=10.0, seed=3)
    key = "blocks.0.mlp.fc1.weight"
    w, n = quiet.state_dict()[key], noisy.state_dict()[key]
    half = w.shape[1] // 2
    assert torch.equal(w[:, :half], w[:, half:]) and not torch.equal(n[:, :half], n[:, half:])
    torch.testing.assert_close(n[:, :half] + n[:, half:], w[:, :half] + w[:, half:])  # +N and -N cancel
    assert torch.equal(n, again.state_dict()[key])
    noise = n[:, :half] - w[:, :half]
    snr = 10 * torch.log10(w[:, :half].pow(2).mean() / noise.pow(2).mean())
    assert snr.item() == pytest.approx(10.0, abs=0.01)


def test_packed_qkv_repeats_each_projections_heads():
    m = _narrow("test_rbdc_vit")
    wide = hyperclone(m, 2)
    d = m.embed_dim
    q, k, v = m.state_dict()["blocks.0.attn.qkv.weight"].chunk(3)
    wq, wk, wv = wide.state_dict()["blocks.0.attn.qkv.weight"].chunk(3)
    for a, b in ((q, wq), (k, wk), (v, wv)):
        assert torch.equal(b[:d, :d], a / 2) and torch.equal(b[d:, d:], a / 2) and torch.equal(b[:d, d:], a / 2)


def test_copies_coupled_block_diagonally_are_exact_even_with_plain_layernorm():
    m = _narrow("test_rbdc_vit")
    wide = couple([m, m], head="mean", norm="plain").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(wide(x), m(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("protocol, extra", [("hypercloning", []), ("rbdc", ["rbdc.parts=copies"])])
def test_one_narrow_source_spends_rbdc_depth_1s_flops_per_level(protocol, extra):
    over = ["budget_epochs=8", "rbdc.epochs=null"]
    ref = recipes.resolve(str(CI / "rbdc.yaml"), over)
    rec = recipes.resolve(str(CI / "rbdc.yaml"), [f"protocol={protocol}", *over, *extra])
    a, b = plan_stages(ref, 640, 10), plan_stages(rec, 640, 10)
    assert [s.id for s in b] == ["L0", "L1"] and b[1].parents == ["L0"]
    assert b[0].steps == sum(s.steps for s in a if s.level == 0) and b[1].steps == a[-1].steps
    assert sum(stage_flops(b, 16)) == sum(stage_flops(a, 16))


@pytest.mark.parametrize("extra", [["rbdc.depth=2"], ["rbdc.schedule=continue"]])
def test_one_narrow_source_refuses_depth_2_and_a_continued_schedule_naming_both(extra):
    rec = recipes.resolve(str(CI / "hypercloning.yaml"), extra)
    with pytest.raises(UserError, match="rbdc.depth 1 with rbdc.schedule restart"):
        plan_stages(rec, 640, 10)


@pytest.mark.parametrize("protocol", ["hypercloning", "rbdc-copies"])
def test_the_ci_recipes_train_and_grow_from_one_source(protocol, tmp_path):
    from rbdc.runs import train

    recipe, extra = (
        (str(CI / "hypercloning.yaml"), [])
        if protocol == "hypercloning"
        else (str(CI / "rbdc.yaml"), ["rbdc.parts=copies", "name=ci/rbdc-copies"])
    )
    res = train.run_recipe(recipe, str(tmp_path), extra, **QUIET)
    assert [s["stage"] for s in res["stages"]] == ["L0", "L1"]
    # function-preserving growth: the grown model before training scores what the narrow model ended with
    import csv

    rows = list(csv.DictReader(open(tmp_path / res["name"] / "summary.csv")))
    narrow_last = [r for r in rows if r["stage"] == "L0" and r["eval_top1"]][-1]
    grown = [r for r in rows if r["stage"] == "L1" and r["epoch"] == "-1"][0]
    assert float(grown["eval_top1"]) == pytest.approx(float(narrow_last["eval_top1"]), abs=1e-6)


REFERENCE = os.environ.get("HYPERCLONING_REPO")


@pytest.mark.skipif(not REFERENCE, reason="set HYPERCLONING_REPO to a checkout of apple/ml-hypercloning")
@pytest.mark.parametrize("out_k, in_k", [(2, 2), (1, 2), (2, 1), (4, 4)])
def test_the_weight_rule_equals_the_reference_implementation(out_k, in_k):
    # common.py alone: the package's __init__ imports the LLM libraries (hf_olmo, transformers) it clones
    spec = importlib.util.spec_from_file_location(
        "hypercloning_common", os.path.join(REFERENCE, "hypercloning", "common.py")
    )
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    src, dst = nn.Linear(6, 5), nn.Linear(6 * in_k, 5 * out_k)
    common.clone_linear_layer(dst, src)
    assert torch.equal(clone_weight(src.weight.data, dst.weight.shape), dst.weight.data)
