"""The coupling operator's defining invariants."""

import pytest
import timm
import torch
import torch.nn as nn

import rbdc
from rbdc.nets.checkpoint import load_model, save_weights


def randomize_bn(model):
    """Non-trivial BN statistics and affine parameters, so exactness is not an accident of identity BNs."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    return model


def parts(name, k, **kw):
    return [randomize_bn(timm.create_model(name, **kw)).eval() for _ in range(k)]


@pytest.mark.parametrize("name", ["test_rbdc_resnet_w4", "test_rbdc_resnet_basic_w4", "rbdc_resnet18_w4"])
@pytest.mark.parametrize("k", [2, 4])
def test_coupled_resnet_equals_the_mean_of_its_parts(name, k):
    models = parts(name, k, num_classes=10)
    wide = rbdc.couple(models, head="mean")
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = torch.stack([m(x) for m in models]).mean(0)
        err = (wide(x) - expected).abs().max().item()
    assert err < 1e-5, err


def test_coupled_resnet_is_exact_in_train_mode_too_and_head_sum_sums():
    models = [m.train() for m in parts("test_rbdc_resnet_w2", 2)]
    wide = rbdc.couple(models, head="sum")
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        err = (wide(x) - sum(m(x) for m in models)).abs().max().item()
    assert err < 1e-4, err


def test_coupled_resnet_is_a_standard_timm_model():
    wide = rbdc.couple([timm.create_model("test_rbdc_resnet_w2") for _ in range(2)])
    ref = timm.create_model("test_rbdc_resnet")
    assert type(wide) is type(ref)
    assert {k: v.shape for k, v in wide.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_coupled_vit_attention_and_mlp_are_separable():
    a, b = (timm.create_model("test_rbdc_vit_w2").eval() for _ in range(2))
    wide = rbdc.couple([a, b]).eval()
    xa, xb = torch.randn(2, 17, 32), torch.randn(2, 17, 32)
    x = torch.cat([xa, xb], -1)
    with torch.no_grad():
        for i, blk in enumerate(wide.blocks):
            for part in ("attn", "mlp"):
                got = getattr(blk, part)(x)
                want = torch.cat([getattr(a.blocks[i], part)(xa), getattr(b.blocks[i], part)(xb)], -1)
                assert (got - want).abs().max() < 1e-5, (i, part)


def test_heads_of_each_part_form_a_contiguous_group():
    a, b = (timm.create_model("test_rbdc_vit_w2") for _ in range(2))
    wide = rbdc.couple([a, b])
    assert wide.blocks[0].attn.num_heads == 2 * a.blocks[0].attn.num_heads
    assert wide.blocks[0].attn.head_dim == a.blocks[0].attn.head_dim


def test_vit_coupled_with_itself_equals_the_original():
    m = timm.create_model("test_rbdc_vit_w2").eval()
    for p in m.parameters():  # make LN affine non-trivial too
        p.data.add_(torch.randn_like(p) * 0.05)
    wide = rbdc.couple([m, m]).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (wide(x) - m(x)).abs().max() < 1e-5


def test_grouped_ln_coupling_is_the_exact_ensemble_and_plain_ln_is_not():
    models = [timm.create_model("test_rbdc_vit_w4").eval() for _ in range(4)]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        mean = torch.stack([m(x) for m in models]).mean(0)
        grouped = rbdc.couple_tree(models, norm="grouped").eval()(x)
        plain = rbdc.couple_tree(models, norm="plain").eval()(x)
    assert (grouped - mean).abs().max() < 1e-5
    assert (plain - mean).abs().max() > 1e-3  # documented: plain LN mixes the parts' statistics


@pytest.mark.parametrize("name", ["test_rbdc_vit_w2", "test_rbdc_resnet_w2"])
def test_off_diagonal_blocks_start_at_zero_and_learn(name):
    models = [randomize_bn(timm.create_model(name)) for _ in range(2)]  # not timm's zero-init last BN: as trained
    wide = rbdc.couple(models).train()
    blocks = {
        n: p
        for n, p in wide.named_parameters()
        if p.ndim >= 2
        and p.shape[0] > 10
        and p.shape[1] > 3
        and not n.startswith(("head", "fc", "pos_embed", "cls_token"))
    }
    assert blocks

    def offdiag(n, t):
        t = t.reshape(3, t.shape[0] // 3, *t.shape[1:]) if n.endswith("qkv.weight") else t.unsqueeze(0)
        o, c = t.shape[1] // 2, t.shape[2] // 2
        return torch.cat([t[:, :o, c:].flatten(), t[:, o:, :c].flatten()])

    assert all(offdiag(n, p.detach()).abs().max() == 0 for n, p in blocks.items())
    size = timm.create_model(name).pretrained_cfg["input_size"][-1]
    loss = nn.functional.cross_entropy(wide(torch.randn(4, 3, size, size)), torch.arange(4))
    loss.backward()
    grads = {n: offdiag(n, p.grad).abs().max().item() for n, p in blocks.items()}
    assert all(g > 0 for g in grads.values()), grads
    opt = torch.optim.SGD(wide.parameters(), lr=0.1)
    opt.step()
    assert all(offdiag(n, p.detach()).abs().max() > 0 for n, p in blocks.items())


def test_coupled_model_round_trips_through_safetensors_and_timm(tmp_path):
    wide = rbdc.couple([timm.create_model("test_rbdc_vit_w2") for _ in range(2)]).eval()
    path = save_weights(wide, tmp_path / "coupled.safetensors")
    x = torch.randn(2, 3, 32, 32)
    via_timm = timm.create_model("test_rbdc_vit", checkpoint_path=str(path)).eval()
    via_rbdc = load_model(path).eval()
    with torch.no_grad():
        assert torch.equal(via_timm(x), wide(x)) and torch.equal(via_rbdc(x), wide(x))


def test_recursive_tree_of_resnets_equals_the_mean_of_all_leaves():
    leaves = parts("test_rbdc_resnet_w4", 4)
    root = rbdc.couple_tree(leaves, k=2)
    assert type(root) is type(timm.create_model("test_rbdc_resnet"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (root(x) - torch.stack([m(x) for m in leaves]).mean(0)).abs().max() < 1e-5


@pytest.mark.parametrize(
    "other, what",
    [
        (lambda: timm.create_model("test_rbdc_resnet_w2"), "family"),
        (lambda: timm.create_model("test_rbdc_vit_w2", depth=3), "depth"),
        (lambda: timm.create_model("test_rbdc_vit_w2", patch_size=4), "patch_size"),
        (lambda: timm.create_model("test_rbdc_vit_w2", img_size=64), "img_size"),
        (lambda: timm.create_model("test_rbdc_vit_w2", num_classes=5), "num_classes"),
        (lambda: timm.create_model("test_rbdc_vit_w4"), "width"),
    ],
)
def test_incompatible_models_are_refused_naming_the_difference(other, what):
    with pytest.raises(ValueError, match=what):
        rbdc.couple([timm.create_model("test_rbdc_vit_w2"), other()])


def test_plan_lists_every_level():
    rows = rbdc.plan("deit_base_patch16_224", depth=2)
    assert [(r["count"], r["model"]) for r in rows] == [
        (4, "rbdc_deit_base_patch16_224_w4"),
        (2, "rbdc_deit_base_patch16_224_w2"),
        (1, "deit_base_patch16_224"),
    ]


def test_plain_ln_deviation_is_measured(capsys):
    """Report how far plain-LN coupling moves a ViT from the mean of its parts (benchmarks/ln_deviation.py too)."""
    from benchmarks.ln_deviation import ln_deviation

    dev = ln_deviation("test_rbdc_vit_w2", k=2, batch=4)
    print(f"plain-LN coupling, test_rbdc_vit_w2 k=2: {dev}")
    assert dev["grouped_max_abs"] < 1e-5 < dev["plain_max_abs"]


def test_deep_stem_resnet_couples_exactly():
    """resnet26d: 3-conv stem with avg-down projections; the narrow stem width must halve with the rest."""
    models = [randomize_bn(rbdc.narrow("resnet26d", 4, num_classes=10)).eval() for _ in range(2)]
    wide = rbdc.couple(models)
    assert wide.conv1[0].out_channels == 2 * models[0].conv1[0].out_channels == 16
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (wide(x) - torch.stack([m(x) for m in models]).mean(0)).abs().max() < 1e-5


# --- settings, packed projections, refused layers, dtype/device -------------------------------------------------


def perturbed(model):
    """Non-trivial LN/LayerScale/bias values too, so that exactness is not an accident of timm's init."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def relative_error(wide, models, size=32):
    x = torch.randn(2, 3, size, size, dtype=next(wide.parameters()).dtype)
    with torch.no_grad():
        ref = torch.stack([m(x) for m in models]).mean(0)
        return ((wide.eval()(x) - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize(
    "setting, field",
    [
        ({"act_layer": nn.SiLU}, r"blocks.0.mlp.act.type \(torch.nn.modules.activation.GELU vs .*SiLU\)"),
        ({"qkv_bias": False}, r"blocks.0.attn.qkv.bias \(torch.float32 vs None\)"),
        ({"init_values": 1e-2}, r"blocks.0.ls1.type \(torch.nn.modules.linear.Identity vs .*LayerScale\)"),
        ({"norm_layer": nn.LayerNorm}, r"blocks.0.norm1.eps \(1e-06 vs 1e-05\)"),
    ],
)
def test_parts_built_with_different_settings_are_refused_naming_the_field_and_both_values(setting, field):
    a, b = rbdc.narrow("test_rbdc_vit", 2), rbdc.narrow("test_rbdc_vit", 2, **setting)
    with pytest.raises(ValueError, match=field):
        rbdc.couple([a, b])


@pytest.mark.parametrize(
    "name, settings, size",
    [
        ("test_rbdc_resnet_basic", dict(act_layer=nn.SiLU), 64),
        ("test_rbdc_vit", dict(act_layer=nn.SiLU, qkv_bias=False, init_values=1e-2, reg_tokens=2), 32),
        ("test_rbdc_vit", dict(class_token=False, global_pool="avg", fc_norm=True, pre_norm=True), 32),
        ("test_rbdc_vit", {"dynamic_img_size": True, "no_embed_class": True, "drop_path_rate": 0.1}, 32),
    ],
)
def test_stock_timm_models_keep_their_settings_when_coupled(name, settings, size):
    models = [perturbed(randomize_bn(timm.create_model(name, **settings))) for _ in range(2)]
    assert relative_error(rbdc.couple(models, norm="grouped"), models, size) < 1e-5


def test_a_stock_resnet_keeps_its_activation():
    wide = rbdc.couple([timm.create_model("resnet18", act_layer=nn.SiLU, num_classes=10) for _ in range(2)])
    assert {type(m) for m in wide.modules() if isinstance(m, (nn.ReLU, nn.SiLU))} == {nn.SiLU}


def test_a_stock_setting_that_cannot_be_read_back_is_refused_not_dropped():
    from timm.layers import SwiGLUPacked  # GluMlp with gate_last=False: timm records neither

    models = [timm.create_model("test_rbdc_vit", mlp_layer=SwiGLUPacked) for _ in range(2)]
    with pytest.raises(ValueError, match=r"blocks.0.mlp.gate_last \(parts False, rebuilt True\).*rbdc.scaled"):
        rbdc.couple(models)


@pytest.mark.parametrize(
    "settings",
    [dict(global_pool="map"), dict(mlp_layer="swiglupacked"), dict(mlp_layer="swiglu"), dict(block_fn="respost")],
)
def test_packed_projections_and_other_vit_layers_couple_exactly(settings):
    from timm.layers import SwiGLU, SwiGLUPacked
    from timm.models.vision_transformer import ResPostBlock

    named = {"swiglupacked": SwiGLUPacked, "swiglu": SwiGLU, "respost": ResPostBlock}
    settings = {k: named.get(v, v) for k, v in settings.items()}
    models = [perturbed(rbdc.narrow("test_rbdc_vit", 2, **settings)) for _ in range(2)]
    assert relative_error(rbdc.couple(models, norm="grouped"), models) < 1e-5


def test_every_packed_projection_is_split_per_projection():
    from timm.layers import SwiGLUPacked

    model = rbdc.narrow("test_rbdc_vit", 2, global_pool="map", mlp_layer=SwiGLUPacked)
    packed = rbdc.coupling.packed_chunks(model)
    assert packed["blocks.0.attn.qkv"] == 3 and packed["attn_pool.kv"] == 2 and packed["blocks.1.mlp.fc1"] == 2
    assert "attn_pool.mlp.fc1" not in packed  # attention pooling's own MLP is a plain Mlp


def test_layers_without_a_rule_are_refused_by_narrow_and_couple():
    from timm.models.vision_transformer import ParallelScalingBlock

    with pytest.raises(ValueError, match="blocks.0: ParallelScalingBlock has no RBDC coupling rule"):
        rbdc.narrow("test_rbdc_vit", 2, block_fn=ParallelScalingBlock)
    models = [timm.create_model("test_rbdc_vit", block_fn=ParallelScalingBlock) for _ in range(2)]
    with pytest.raises(ValueError, match="ParallelScalingBlock has no RBDC coupling rule"):
        rbdc.couple(models)


def test_a_tensor_shared_by_the_parts_has_no_rule_and_is_refused_naming_its_key():
    models = [rbdc.narrow("test_rbdc_vit", 2, qk_norm=True) for _ in range(2)]  # one q_norm for all heads
    with pytest.raises(ValueError, match=r"no coupling rule for blocks.0.attn.q_norm.weight"):
        rbdc.couple(models)


def test_coupling_keeps_the_parts_dtype():
    models = [perturbed(rbdc.narrow("test_rbdc_vit", 2)).double() for _ in range(2)]
    wide = rbdc.couple(models, norm="grouped")
    assert {p.dtype for p in wide.state_dict().values() if p.is_floating_point()} == {torch.float64}
    assert relative_error(wide, models) < 1e-12


@pytest.mark.gpu
def test_coupling_keeps_the_parts_device():
    models = [perturbed(rbdc.narrow("test_rbdc_vit", 2)).cuda() for _ in range(2)]
    wide = rbdc.couple(models, norm="grouped")
    assert {t.device.type for t in wide.state_dict().values()} == {"cuda"}
    x = torch.randn(2, 3, 32, 32, device="cuda")
    with torch.no_grad():
        assert (wide.eval()(x) - (models[0](x) + models[1](x)) / 2).abs().max() < 1e-4


def test_grouped_convolutions_are_refused_by_narrow_and_a_full_width_resnext_still_builds():
    with pytest.raises(ValueError, match=r"layer1.0.conv2: grouped convolution \(ResNeXt-style\) has no RBDC"):
        rbdc.narrow("resnext50_32x4d", 2)
    assert rbdc.scaled("resnext50_32x4d", 1, num_classes=10).num_classes == 10  # e.g. for rbdc flops
