"""The growth operators' defining invariants: Net2Net, GradMax, MixtureGrowth (issue 5)."""

import math
from fractions import Fraction

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import rbdc
from rbdc.flops import model_forward_macs
from rbdc.growth import (
    gradmax_grow,
    gradmax_model,
    gradmax_schedule,
    gradmax_start,
    gradmax_widths,
    grow_named_state,
    grow_optimizer_state,
    inner_widths,
    materialize,
    mixture_grow,
    mixture_member,
    net2wider,
)
from rbdc.growth.relu1 import ReLU1
from rbdc.growth.spaces import inner_spaces

RESNETS = ["test_rbdc_resnet", "test_rbdc_resnet_basic"]
SIZE = {"test_rbdc_resnet": 64, "test_rbdc_resnet_basic": 64, "test_rbdc_vit": 32}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: LAPACK (the GradMax SVDs) is many times slower with 2 threads on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def base(name):
    return name.rsplit("_w", 1)[0] if name.rsplit("_w", 1)[-1].isdigit() else name


def trained_like(model):
    """Non-trivial weights and BN statistics (not timm's zero-init last BN), as after training."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
            elif isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
        for n, p in model.named_parameters():
            if n.endswith(("cls_token", "pos_embed")) or (p.ndim == 1 and "bias" in n):
                p.normal_(0, 0.1)
    return model


def batch(name, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIZE[base(name)], SIZE[base(name)], generator=g), torch.randint(0, 10, (n,), generator=g)


# --- Net2Net ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, mode",
    [
        ("test_rbdc_resnet_w2", "uniform"),
        ("test_rbdc_resnet_w2", "random"),
        ("test_rbdc_resnet_basic_w4", "uniform"),
        ("test_rbdc_resnet_basic_w4", "random"),
        ("test_rbdc_vit_w2", "uniform"),
    ],
)
def test_net2wider_preserves_the_function(name, mode):
    model = trained_like(timm.create_model(name)).eval()
    wide = net2wider(model, 2, mode=mode, seed=1).eval()
    x, _ = batch(name, 4)
    with torch.no_grad():
        err = (wide(x) - model(x)).abs().max().item()
    print(f"net2wider {name} {mode}: max abs error {err:.2e}")
    assert err < 1e-5, err


@pytest.mark.parametrize(
    "name, factor",
    [("test_rbdc_resnet_w2", 2), ("test_rbdc_resnet_basic_w4", 4), ("test_rbdc_vit_w4", 4), ("test_rbdc_vit_w4", 2)],
)
def test_net2wider_builds_the_scaled_timm_architecture(name, factor):
    wide = net2wider(timm.create_model(name), factor)
    ref = rbdc.scaled(base(name), Fraction(4 if name.endswith("_w4") else 2) ** -1 * factor)
    assert type(wide) is type(ref)
    assert {k: v.shape for k, v in wide.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert rbdc.forward_macs(wide) == rbdc.forward_macs(ref)


def test_net2wider_vit_replicates_whole_heads_with_head_dim_fixed():
    model = timm.create_model("test_rbdc_vit_w2")
    wide = net2wider(model, 2)
    a, w = model.blocks[0].attn, wide.blocks[0].attn
    assert (w.num_heads, w.head_dim) == (2 * a.num_heads, a.head_dim)
    q_old = a.qkv.weight.detach().chunk(3)[0].view(a.num_heads, a.head_dim, -1)
    q_new = w.qkv.weight.detach().chunk(3)[0].view(w.num_heads, w.head_dim, -1)
    # uniform: head j copies head j mod h; its inputs (the replicated embedding) are divided by 2
    assert torch.allclose(q_new[a.num_heads + 1], torch.cat([q_old[1], q_old[1]], -1) / 2)


def test_net2wider_random_mode_is_not_ln_exact_for_vits():
    """Documented limitation: random replication changes LayerNorm statistics (uniform is exact, tested above)."""
    model = trained_like(timm.create_model("test_rbdc_vit_w2")).eval()
    x, _ = batch("test_rbdc_vit", 2)
    with torch.no_grad():
        assert (net2wider(model, 2, mode="random", seed=3).eval()(x) - model(x)).abs().max() > 1e-4


def test_net2wider_noise_breaks_the_symmetry_of_copies():
    model = timm.create_model("test_rbdc_resnet_w2")
    exact, noisy = net2wider(model, 2), net2wider(model, 2, noise_std=0.05)
    w0, w1 = exact.layer1[0].conv1.weight.detach(), noisy.layer1[0].conv1.weight.detach()
    half = w0.shape[0] // 2
    assert torch.equal(w0[:half], w0[half:]) and not torch.equal(w1[:half], w1[half:])
    assert (w1 - w0).std() < 0.1 * w0.std()


def test_net2wider_refuses_fractional_uniform_growth():
    with pytest.raises(ValueError, match="mode='random'"):
        net2wider(timm.create_model("test_rbdc_resnet_w4"), Fraction(3, 2))


# --- GradMax ---------------------------------------------------------------------------------------------------------


def grown_pair(name, train, n_new, seed=0):
    model = trained_like(gradmax_start(name, Fraction(1, 4), seed=seed)).train(train)
    xb = batch(name)
    grown, info = gradmax_grow(model, xb, n_new=n_new)
    control, _ = gradmax_grow(model, xb, n_new=n_new, random_fanout=True, seed=seed + 1)
    return model, grown, control, info, xb


def new_fanin_grad(model, space, old_width, k):
    """Gradient of the new units' fan-in (weights and bias; for heads: their v rows)."""
    mod = model.get_submodule(space.fan_in)
    w, b = mod.weight.grad, (mod.bias.grad if mod.bias is not None else None)
    if space.unit > 1:
        c = w.shape[0] // 3
        rows = slice(2 * c + old_width * space.unit, None)
    else:
        rows = slice(w.shape[0] - k, None)
    g = w[rows].flatten(1)
    return torch.cat([g, b[rows, None]], 1) if b is not None else g


def fanin_grad_norms(model, xb, train, info):
    model.train(train)
    model.zero_grad()
    F.cross_entropy(model(xb[0]), xb[1]).backward()
    spaces = {s.name: s for s in inner_spaces(model)}
    return {
        n: new_fanin_grad(model, spaces[n], info["widths"][n] - k, k).norm().item() for n, k in info["n_new"].items()
    }


N_NEW = {
    "test_rbdc_resnet": 2,
    "test_rbdc_resnet_basic": 2,
    "test_rbdc_vit": {"blocks.0.attn": 1, "blocks.1.attn": 1, "blocks.0.mlp": 8, "blocks.1.mlp": 8},
}


@pytest.mark.parametrize("name, train", [(n, t) for n in RESNETS for t in (False, True)] + [("test_rbdc_vit", True)])
def test_gradmax_growth_preserves_the_function(name, train):
    model, grown, _, info, xb = grown_pair(name, train, N_NEW[name])
    assert all(inner_widths(grown)[n] == inner_widths(model)[n] + k for n, k in info["n_new"].items())
    with torch.no_grad():
        err = (grown.train(train)(xb[0]) - model.train(train)(xb[0])).abs().max().item()
    print(f"gradmax {name} train={train}: max abs error {err:.2e}")
    assert err < 1e-5, err


@pytest.mark.parametrize("name, train", [(n, t) for n in RESNETS for t in (False, True)] + [("test_rbdc_vit", True)])
def test_gradmax_fanout_beats_random_fanout_of_the_same_norm(name, train):
    model, grown, control, info, xb = grown_pair(name, train, N_NEW[name])
    ours, rand = fanin_grad_norms(grown, xb, train, info), fanin_grad_norms(control, xb, train, info)
    print(
        f"gradmax {name} train={train}: gradmax / random fan-in gradient norms",
        {n: round(ours[n] / rand[n], 1) for n in ours},
    )
    assert all(ours[n] > rand[n] > 0 for n in ours), (ours, rand)


@pytest.mark.parametrize(
    "name, train",
    [
        ("test_rbdc_resnet", False),
        ("test_rbdc_resnet", True),
        ("test_rbdc_resnet_basic", True),
        ("test_rbdc_vit", False),
    ],
)
def test_gradmax_matrix_is_the_exact_gradient_operator(name, train):
    """||grad of new fan-in|| = f'(0) * BN scale * |fan-out| * sqrt(sum of the top singular values^2) of M."""
    model, grown, _, info, xb = grown_pair(name, train, N_NEW[name])
    measured = fanin_grad_norms(grown, xb, train, info)
    for s in inner_spaces(model):
        if s.name not in info["n_new"]:
            continue
        fan_out = model.get_submodule(s.fan_out).weight.detach()
        magnitude = 0.5 * fan_out.transpose(0, 1).flatten(1).norm(dim=1).mean().item()
        if s.norm:  # identity BN: 1/sqrt(var + eps) with var 1 (eval) or the new channel's batch variance 0 (train)
            slope = 1 / math.sqrt(1e-5) if train else 1 / math.sqrt(1 + 1e-5)
        else:  # GELU'(0) for MLP units; heads have no activation
            slope = 0.5 if s.unit == 1 else 1.0
        predicted = slope * magnitude * math.sqrt(sum(v * v for v in info["singular_values"][s.name]))
        assert measured[s.name] == pytest.approx(predicted, rel=1e-4), s.name


def test_gradmax_new_units_start_dead_free_and_identity_normalised():
    model, grown, _, info, xb = grown_pair("test_rbdc_resnet", True, 1)
    blk = grown.layer2[0]
    n = info["widths"]["layer2.0.conv1"]
    assert blk.conv1.weight[n - 1 :].abs().max() == 0
    assert (blk.bn1.weight[-1], blk.bn1.bias[-1], blk.bn1.running_mean[-1], blk.bn1.running_var[-1]) == (1, 0, 0, 1)
    assert isinstance(blk.act1, ReLU1) and isinstance(blk.act2, ReLU1) and isinstance(blk.act3, nn.ReLU)
    x = torch.zeros(3, requires_grad=True)
    ReLU1()(x).sum().backward()
    assert torch.equal(x.grad, torch.ones(3))


def test_gradmax_leaves_the_input_model_untouched():
    model = trained_like(gradmax_start("test_rbdc_resnet", Fraction(1, 4))).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gradmax_grow(model, batch("test_rbdc_resnet"), n_new=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_gradmax_reduce_sums_data_parallel_shards_into_the_full_batch_directions():
    model = trained_like(gradmax_start("test_rbdc_resnet_basic", Fraction(1, 4))).eval()
    x, y = batch("test_rbdc_resnet_basic", 8)
    full, _ = gradmax_grow(model, (x, y), n_new=2)
    shard_b = []
    gradmax_grow(model, (x[4:], y[4:]), n_new=2, reduce=lambda m: shard_b.append(m) or m)
    sharded, _ = gradmax_grow(model, (x[:4], y[:4]), n_new=2, reduce=lambda m: m + shard_b.pop(0))
    err = max((a - b).abs().max().item() for a, b in zip(full.state_dict().values(), sharded.state_dict().values()))
    assert err < 1e-5, err  # same directions (singular-vector signs are canonical), same norms


def test_gradmax_reports_the_flops_of_its_gradient_batch():
    model = gradmax_start("test_rbdc_vit", Fraction(1, 2))
    _, info = gradmax_grow(model, batch("test_rbdc_vit", n=5), n_new=1)
    assert info["images"] == 5
    assert info["extra_flops"] == 5 * 3 * 2 * model_forward_macs(model, 32)


@pytest.mark.parametrize("name", RESNETS + ["test_rbdc_vit"])
def test_gradmax_schedule_reaches_the_target_architecture_and_its_flops(name):
    model = trained_like(gradmax_start(name, Fraction(1, 4))).train()
    for factor in gradmax_schedule(Fraction(1, 4), 1, 3):
        model, info = gradmax_grow(model, batch(name, 4), widths=gradmax_widths(name, factor))
    target = timm.create_model(name)
    assert inner_widths(model) == inner_widths(target)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in target.state_dict().items()}
    assert model_forward_macs(model, SIZE[name]) == rbdc.forward_macs(name)
    assert model.train_flops_per_image(SIZE[name]) == rbdc.train_flops_per_image(name)


def test_grown_models_count_their_own_flops_even_after_deepcopy():
    import copy

    model = gradmax_start("test_rbdc_resnet", Fraction(1, 4))
    grown, _ = gradmax_grow(model, batch("test_rbdc_resnet"), n_new=4)
    twin = copy.deepcopy(grown)
    assert twin.train_flops_per_image.__self__ is twin
    assert (
        model.train_flops_per_image(64)
        < twin.train_flops_per_image(64)
        < rbdc.train_flops_per_image("test_rbdc_resnet")
    )


def test_gradmax_schedule_is_linear_in_width():
    assert gradmax_schedule(0.25, 1, 12)[:2] == [Fraction(5, 16), Fraction(3, 8)]
    assert gradmax_schedule(0.25, 1, 12)[-1] == 1


def test_grown_model_rebuilds_from_its_widths_for_checkpoints():
    model, grown, _, info, xb = grown_pair("test_rbdc_resnet", False, 1)
    again = gradmax_model("test_rbdc_resnet", grown.rbdc_arch["inner_widths"])
    again.load_state_dict(grown.state_dict())
    with torch.no_grad():
        assert torch.equal(again.eval()(xb[0]), grown.eval()(xb[0]))


@pytest.mark.parametrize("opt_cls", [torch.optim.AdamW, torch.optim.SGD])
def test_optimizer_state_is_carried_with_zero_new_slots(opt_cls):
    model = trained_like(gradmax_start("test_rbdc_vit", Fraction(1, 2))).train()
    kwargs = {"lr": 1e-3} if opt_cls is torch.optim.AdamW else {"lr": 0.1, "momentum": 0.9}
    opt = opt_cls(model.parameters(), **kwargs)
    xb = batch("test_rbdc_vit")
    F.cross_entropy(model(xb[0]), xb[1]).backward()
    opt.step()
    slot = "exp_avg" if opt_cls is torch.optim.AdamW else "momentum_buffer"
    old = opt.state[model.blocks[0].mlp.fc2.weight][slot].clone()
    grown, info = gradmax_grow(model, xb, n_new=1)
    opt = grow_optimizer_state(opt, model, grown, info["mapping"])
    new = opt.state[grown.blocks[0].mlp.fc2.weight][slot]
    assert torch.equal(new[:, : old.shape[1]], old) and new[:, old.shape[1] :].abs().max() == 0
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in grown.parameters()}
    grown.zero_grad()
    F.cross_entropy(grown(xb[0]), xb[1]).backward()
    opt.step()  # runs on the grown shapes


def test_name_keyed_optimizer_state_grows_like_the_live_optimizer():
    from rbdc.coupling import named_optimizer_state

    model = trained_like(gradmax_start("test_rbdc_resnet", Fraction(1, 2))).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    xb = batch("test_rbdc_resnet")
    F.cross_entropy(model(xb[0]), xb[1]).backward()
    opt.step()
    grown, info = gradmax_grow(model, xb, n_new=2)
    named = grow_named_state(named_optimizer_state(model, opt), model, info["mapping"])  # what checkpoints carry
    live = named_optimizer_state(grown, grow_optimizer_state(opt, model, grown, info["mapping"]))
    assert named.keys() == live.keys() == dict(grown.named_parameters()).keys()
    assert all(torch.equal(named[n][k], live[n][k]) for n in named for k in named[n])
    assert named["layer1.0.conv1.weight"]["exp_avg"].shape == grown.layer1[0].conv1.weight.shape


def test_a_grown_checkpoint_reloads_with_its_intermediate_widths(tmp_path):
    model, grown, _, info, xb = grown_pair("test_rbdc_vit", False, 1)
    rbdc.save_weights(grown, tmp_path / "g.safetensors")
    again = rbdc.load_model(tmp_path / "g.safetensors")
    assert inner_widths(again) == inner_widths(grown) != inner_widths(timm.create_model("test_rbdc_vit"))
    with torch.no_grad():
        assert torch.equal(again.eval()(xb[0]), grown.eval()(xb[0]))


def test_model_forward_macs_agrees_with_forward_macs_on_stock_models():
    for name in ["test_rbdc_resnet_w2", "test_rbdc_resnet_basic", "test_rbdc_vit_w4"]:
        assert model_forward_macs(timm.create_model(name)) == rbdc.forward_macs(name)


def test_gradmax_refuses_unknown_spaces_naming_the_valid_ones():
    with pytest.raises(ValueError, match="layer1.0.conv1"):
        gradmax_grow(gradmax_start("test_rbdc_resnet", 0.5), batch("test_rbdc_resnet"), n_new={"layer9.conv1": 1})


# --- MixtureGrowth ---------------------------------------------------------------------------------------------------


def members(name):
    return [trained_like(mixture_member(name, seed=s)).eval() for s in (0, 1)]


@pytest.mark.parametrize("name", RESNETS + ["test_rbdc_vit"])
def test_mixture_growth_with_zero_coefs_is_the_rbdc_coupling(name):
    m0, m1 = members(name)
    full = mixture_grow(m0, m1, coefs="zero").eval()
    ref = rbdc.couple([materialize(m0), materialize(m1)], head="sum").eval()
    x, _ = batch(name, 4)
    with torch.no_grad():
        err = (full(x) - ref(x)).abs().max().item()
        if name in RESNETS:  # and, for BatchNorm nets, exactly the sum of the two members' logits
            err = max(err, (full(x) - (m0(x) + m1(x))).abs().max().item())
    print(f"mixture_grow(zero) {name}: max abs error vs couple(head='sum') {err:.2e}")
    assert err < 1e-5, err


@pytest.mark.parametrize("name", RESNETS + ["test_rbdc_vit"])
def test_mixture_growth_builds_a_dense_target_model_with_template_offdiagonals(name):
    m0, m1 = members(name)
    full = mixture_grow(m0, m1)  # orthogonal
    target = timm.create_model(name)
    assert type(full) is type(target)
    assert {k: v.shape for k, v in full.state_dict().items()} == {k: v.shape for k, v in target.state_dict().items()}
    conv = "layer2.0.conv2" if name in RESNETS else "blocks.1.mlp.fc1"
    l0, l1 = m0.get_submodule(conv), m1.get_submodule(conv)
    w = full.get_submodule(conv).weight.detach()
    o, c = l0.templates.shape[1:3]
    assert torch.allclose(w[:o, :c], l0.weight) and torch.allclose(w[o:, c:], l1.weight)
    c2 = torch.linalg.svd(torch.stack([l0.coefs, l1.coefs]).detach().double()).Vh[-1].float()
    assert torch.allclose(w[:o, c:], torch.tensordot(c2, l0.templates.detach(), dims=1), atol=1e-6)
    assert w[o:, :c].abs().max() > 0


def test_mixture_member_is_its_materialised_timm_model():
    m = members("test_rbdc_vit")[0]
    x, _ = batch("test_rbdc_vit", 2)
    with torch.no_grad():
        assert (m(x) - materialize(m)(x)).abs().max() < 1e-6
    assert rbdc.forward_macs(m) == model_forward_macs(m) == rbdc.forward_macs("test_rbdc_vit_w2")
    assert {type(p) for p in (m.blocks[0].attn.qkv.templates, m.blocks[0].attn.qkv.coefs)} == {nn.Parameter}


def test_mixture_grow_refuses_members_of_different_shapes():
    with pytest.raises(ValueError, match="template shapes differ"):
        mixture_grow(mixture_member("test_rbdc_resnet"), mixture_member("test_rbdc_resnet", num_templates=3))


@pytest.mark.slow
def test_net2wider_deit_small_to_deit_base_dims():
    wide = net2wider(timm.create_model("deit_small_patch16_224"), 2)
    ref = timm.create_model("deit_base_patch16_224")
    assert {k: v.shape for k, v in wide.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
