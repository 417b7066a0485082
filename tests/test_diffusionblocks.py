"""DiffusionBlocks protocol: band partition, block-local training steps, B-block inference, FLOPs/memory, resume."""

import json
import math
from pathlib import Path
from statistics import NormalDist

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.flop_counter import FlopCounterMode

import rbdc.runs.train as train
from rbdc import cli
from rbdc.runs import rundir
from rbdc.nets.diffusion_noise import band_edges, inference_sigmas
from rbdc.nets.diffusionblocks import DiffusionBlocksError, build_model
from rbdc.flops import train_flops_per_image
from rbdc.recipe import DEFAULTS, Recipe

REPO = Path(__file__).resolve().parents[1]
CI_RECIPE = REPO / "configs" / "recipes" / "ci" / "diffusionblocks.yaml"
TINY = dict(
    model="test_rbdc_vit", drop_path=0.0, smoothing=0.0, model_kwargs={"depth": 3}, diffusionblocks={"blocks": 3}
)


def typed(**keys):
    """A recipe of the defaults and ``keys`` (what build_model reads)."""
    return Recipe.from_dict({**DEFAULTS, **keys})


def tiny(**over):
    return build_model(typed(**{**TINY, **over}), 10)


def perturbed(model):
    # adaLN-Zero and the zero head make most gradients vanish at init; noise makes "no gradient" mean "not run".
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def shared_names(model):
    own = set().union(*(model.block_parameter_names(b) for b in range(model.num_blocks)))
    return {n for n, _ in model.named_parameters()} - own


# --- noise-level bands ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("blocks", [2, 3, 4, 6])
def test_bands_have_equal_probability_mass(blocks):
    edges = band_edges(blocks)
    assert edges[0] == 0.002 and edges[-1] == 80.0 and edges == sorted(edges)
    nd = NormalDist(-1.2, 1.2)
    total = nd.cdf(math.log(80.0)) - nd.cdf(math.log(0.002))
    masses = [(nd.cdf(math.log(hi)) - nd.cdf(math.log(lo))) / total for lo, hi in zip(edges, edges[1:])]
    assert masses == pytest.approx([1 / blocks] * blocks, rel=1e-9)
    # the same by sampling the clipped log-normal
    g = torch.Generator().manual_seed(0)
    s = torch.exp(-1.2 + 1.2 * torch.randn(400_000, generator=g, dtype=torch.float64))
    s = s[(s >= 0.002) & (s <= 80.0)]
    counts = torch.bucketize(s, torch.tensor(edges[1:-1], dtype=torch.float64)).bincount(minlength=blocks)
    assert (counts / len(s)).tolist() == pytest.approx([1 / blocks] * blocks, abs=0.005)


def test_block_zero_owns_the_highest_band_and_samples_stay_in_its_widened_band():
    m = tiny()
    bands = [m.band(b) for b in range(3)]
    assert bands[0][1] == 80.0 and bands[-1][0] == 0.002
    assert all(bands[b][0] == bands[b + 1][1] for b in range(2))  # contiguous, descending
    for b in range(3):
        (lo, hi), (wlo, whi) = m.band(b), m.train_band(b)
        width = math.log(hi / lo)
        assert wlo == pytest.approx(max(lo * math.exp(-0.05 * width), 0.002))
        assert whi == pytest.approx(min(hi * math.exp(0.05 * width), 80.0))
        s = m.sample_sigma(b, 20_000)
        assert s.min() >= wlo and s.max() <= whi
        # sigma follows the truncated log-normal: half the draws lie below the band's CDF midpoint
        nd = NormalDist(-1.2, 1.2)
        mid = math.exp(nd.inv_cdf((nd.cdf(math.log(wlo)) + nd.cdf(math.log(whi))) / 2))
        assert (s < mid).double().mean().item() == pytest.approx(0.5, abs=0.02)
    assert m.train_band(1)[1] > m.band(0)[0] and m.train_band(0)[0] < m.band(1)[1]  # neighbours overlap


def test_inference_sigmas_fall_one_in_each_band_from_high_to_low():
    for blocks in (2, 3, 4, 6):
        m = tiny(model_kwargs={"depth": 12}, diffusionblocks={"blocks": blocks})
        sig = inference_sigmas(blocks)
        assert sig[0] == 80.0 and sig[-1] == 0.002 and sig == sorted(sig, reverse=True)
        assert [m.block_for_sigma(s) for s in sig] == list(range(blocks))


# --- training step --------------------------------------------------------------------------------------------------


def test_a_training_step_touches_only_the_drawn_block_and_the_shared_parts():
    m = perturbed(tiny())
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    shared = shared_names(m)
    assert {
        "trunk.patch_embed.proj.weight",
        "trunk.pos_embed",
        "label_embed.weight",
        "time_embed.mlp.0.weight",
        "final_mod.weight",
        "trunk.norm.weight",
        "trunk.head.weight",
    } <= shared
    seen = set()
    for seed in range(40):
        torch.manual_seed(seed)
        m.zero_grad(set_to_none=True)
        calls = []
        hooks = [
            blk.attn.register_forward_hook(lambda mod, i, o, k=k: calls.append(k))  # noqa: B023 (removed below)
            for k, blk in enumerate(m.trunk.blocks)
        ]
        m.training_loss(x, y).backward()
        for h in hooks:
            h.remove()
        b = m.last_block
        assert calls == list(m.block_layers(b))
        grads = {n: p.grad for n, p in m.named_parameters()}
        for other in set(range(3)) - {b}:
            assert all(grads[n] is None for n in m.block_parameter_names(other)), other
        for n in m.block_parameter_names(b) | shared:
            assert grads[n] is not None and grads[n].abs().sum() > 0, n
        seen.add(b)
        if seen == {0, 1, 2}:
            break
    assert seen == {0, 1, 2}


def test_the_block_is_drawn_uniformly_from_the_global_rng():
    m = tiny()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    for seed in range(5):  # training_loss draws its block with draw_block, from torch's global state
        torch.manual_seed(seed)
        with torch.no_grad():
            m.training_loss(x, y)
        torch.manual_seed(seed)
        assert m.last_block == m.draw_block()
    torch.manual_seed(7)
    a = [m.draw_block() for _ in range(6000)]
    torch.manual_seed(7)
    assert a == [m.draw_block() for _ in range(6000)]  # reproducible: what the engine checkpoints
    freq = torch.bincount(torch.tensor(a), minlength=3) / 6000
    assert freq.tolist() == pytest.approx([1 / 3] * 3, abs=0.02)  # 3.3 standard deviations


def test_the_loss_is_the_sigma_weighted_cross_entropy():
    m = perturbed(tiny())
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([1, 2, 3])
    torch.manual_seed(3)
    loss = m.training_loss(x, y)
    torch.manual_seed(3)  # replay the same draws by hand
    b = int(torch.randint(3, ()).item())
    sigma = m.sample_sigma(b, 3).float()
    z = torch.nn.functional.normalize(m.label_embed(y), dim=-1)
    logits = m.denoise(m.trunk.patch_embed(x), z + sigma[:, None] * torch.randn_like(z), sigma, b)
    w = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    assert loss.item() == pytest.approx((w * ce).mean().item(), rel=1e-5)


def test_batch_mean_weighting_is_the_official_codes_broadcast():
    # the official loss is `(ce[n] * w[n, 1]).mean()`: an [n, n] outer product whose mean is mean(w) x mean(ce),
    # so every sample counts equally and the batch's mean weight only scales the step
    m = perturbed(tiny(diffusionblocks={"blocks": 3, "loss_weighting": "batch_mean"}))
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([1, 2, 3, 4, 5, 6])
    torch.manual_seed(3)
    loss = m.training_loss(x, y)
    torch.manual_seed(3)
    b = int(torch.randint(3, ()).item())
    sigma = m.sample_sigma(b, 6).float()
    z = torch.nn.functional.normalize(m.label_embed(y), dim=-1)
    logits = m.denoise(m.trunk.patch_embed(x), z + sigma[:, None] * torch.randn_like(z), sigma, b)
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    official = (ce * ((sigma**2 + 0.25) / (sigma * 0.5) ** 2)[:, None]).mean()
    assert loss.item() == pytest.approx(official.item(), rel=1e-5)
    assert loss.item() != pytest.approx((ce * (sigma**2 + 0.25) / (sigma * 0.5) ** 2).mean().item(), rel=1e-3)


def test_soft_targets_are_refused_with_the_fix():
    with pytest.raises(DiffusionBlocksError, match="mixup: 0"):
        tiny().training_loss(torch.randn(2, 3, 32, 32), torch.rand(2, 10))


# --- inference ------------------------------------------------------------------------------------------------------


def test_inference_runs_every_block_exactly_once_from_high_to_low_noise():
    m = perturbed(tiny()).eval()
    layer_calls = [0] * len(m.trunk.blocks)
    for k, blk in enumerate(m.trunk.blocks):
        for part in (blk.attn, blk.mlp):
            part.register_forward_hook(lambda mod, i, o, k=k: layer_calls.__setitem__(k, layer_calls[k] + 1))
    evals = []
    real = m.denoise
    m.denoise = lambda p, z, s, b: (evals.append((b, s[0].item())), real(p, z, s, b))[1]
    out = m(torch.randn(5, 3, 32, 32))
    assert out.shape == (5, 10)
    assert layer_calls == [2] * len(m.trunk.blocks)  # attention and MLP of every layer, once
    assert [b for b, _ in evals] == [0, 1, 2]
    assert [s for _, s in evals] == pytest.approx(inference_sigmas(3))


@pytest.mark.parametrize("steps", [2, 5, 8])
def test_more_inference_steps_walk_down_every_band_in_order(steps):
    m = perturbed(tiny(diffusionblocks={"blocks": 3, "inference_steps": steps})).eval()
    evals = []
    real = m.denoise
    m.denoise = lambda p, z, s, b: (evals.append((b, s[0].item())), real(p, z, s, b))[1]
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    sig = inference_sigmas(steps)
    assert [s for _, s in evals] == pytest.approx(sig) and sig == sorted(sig, reverse=True)
    # each sigma goes to the block whose band holds it: block indices never decrease, first 0, last B-1
    assert [b for b, _ in evals] == [m.block_for_sigma(s) for s in sig]
    assert evals[0][0] == 0 and evals[-1][0] == 2 and [b for b, _ in evals] == sorted(b for b, _ in evals)
    for b, s in evals:
        lo, hi = m.band(b)
        assert lo <= s <= hi


def test_block_for_sigma_is_the_official_estimate_target_layer():
    m = tiny(model_kwargs={"depth": 4}, diffusionblocks={"blocks": 4})
    edges = torch.tensor(m.edges, dtype=torch.float64)
    sig = torch.cat([edges, torch.exp(torch.linspace(math.log(0.002), math.log(80.0), 101, dtype=torch.float64))])
    # official: bucketize(sigma, block_sigmas, right=True) - 1, flipped, clamped to 0..B-1
    official = (3 - (torch.bucketize(sig, edges, right=True) - 1)).clamp(0, 3)
    assert [m.block_for_sigma(s) for s in sig.tolist()] == official.tolist()


def test_the_time_conditioning_reaches_every_layer_of_every_block():
    m = perturbed(tiny())
    x, z = torch.randn(2, 3, 32, 32), torch.randn(2, m.trunk.embed_dim)
    sigma = torch.tensor([0.7, 0.7])
    expected = F.silu(m.time_embed(0.25 * sigma.log()))
    for b in range(3):
        seen = {}
        hooks = [
            mod.register_forward_hook(lambda mod, i, o, k=k, seen=seen: seen.__setitem__(k, i[0]))
            for k, mod in enumerate([*m.layer_mods, m.final_mod])
        ]
        m.denoise(m.trunk.patch_embed(x), z, sigma, b)
        for h in hooks:
            h.remove()
        assert sorted(seen) == [*m.block_layers(b), len(m.layer_mods)]  # its layers and the output modulation
        assert all(torch.allclose(c, expected) for c in seen.values())
        # and sigma changes the block's output through them, with z_t and the EDM scalings held fixed
        with torch.no_grad():
            a = m._layer(m.block_layers(b)[0], torch.ones(2, 3, m.trunk.embed_dim), expected)
            c = m._layer(
                m.block_layers(b)[0],
                torch.ones(2, 3, m.trunk.embed_dim),
                F.silu(m.time_embed(0.25 * torch.tensor([3.0, 3.0]).log())),
            )
        assert not torch.allclose(a, c)


def test_the_official_silu_keeps_modulations_from_flipping_signs_at_any_noise_level():
    # inference starts at sigma_max, where training almost never draws: the time conditioning extrapolates there
    m = perturbed(tiny(diffusionblocks={"blocks": 3, "adaln_silu": True}))
    c = 50 * torch.randn(64, m.time_embed.mlp[2].out_features)  # far outside anything training produces
    for lin in (*m.layer_mods, m.final_mod):
        mods = m._modulation(lin, c)
        assert mods.min() >= -0.2785  # SiLU's minimum: every 1 + scale >= 0.72, every gate >= -0.28
    dit = perturbed(tiny())
    assert any(dit._modulation(lin, c).min() < -1 for lin in dit.layer_mods)  # DiT's form can flip a feature


def test_inference_is_deterministic_and_leaves_the_training_rng_alone():
    m = perturbed(tiny()).eval()
    x = torch.randn(3, 3, 32, 32)
    state = torch.get_rng_state()
    a, b = m(x), m(x)
    assert torch.equal(a, b) and torch.equal(state, torch.get_rng_state())


def test_state_dict_loads_into_a_fresh_model():
    a = perturbed(tiny()).eval()
    b = tiny().eval()
    b.load_state_dict(a.state_dict())  # strict
    assert "trunk.cls_token" not in a.state_dict()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(a(x), b(x))
    assert a.rbdc_arch["name"] == "test_rbdc_vit" and a.pretrained_cfg["input_size"] == (3, 32, 32)


# --- FLOPs and memory -----------------------------------------------------------------------------------------------


def test_training_flops_are_one_block_plus_the_shared_parts_and_match_flop_counter_mode():
    rec = typed(
        model="deit_tiny_patch16_224", drop_path=0.0, smoothing=0.0, model_kwargs={}, diffusionblocks={"blocks": 3}
    )
    with torch.device("meta"):  # the planner builds it this way
        m = build_model(rec, 1000)
    analytic = m.train_flops_per_image(224)
    full = train_flops_per_image("deit_tiny_patch16_224", 224)
    assert 1 / 3 < analytic / full < 1 / 3 + 0.03  # ~1/B of a full step; the shared parts are small at this size
    for mod in m.modules():
        if hasattr(mod, "fused_attn"):
            mod.fused_attn = False  # the CPU SDPA kernel counts zero FLOPs
    measured = []
    for b in range(3):
        counter = FlopCounterMode(display=False)
        x, y = torch.empty(2, 3, 224, 224, device="meta"), torch.zeros(2, dtype=torch.long, device="meta")
        torch.manual_seed(0)
        while True:  # draw until block b comes up
            state = torch.get_rng_state()
            if int(torch.randint(3, ()).item()) == b:
                torch.set_rng_state(state)
                break
        with counter:
            m.training_loss(x, y).backward()
        assert m.last_block == b
        measured.append(counter.get_total_flops() / 2)
    assert abs(sum(measured) / 3 / analytic - 1) < 0.03, (measured, analytic)


def _saved_activation_bytes(model, loss_fn) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    loss.backward()
    return sum(seen.values())


def test_a_training_step_keeps_one_block_of_activations():
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8)

    def saved(depth, blocks):
        m = tiny(model_kwargs={"depth": depth}, diffusionblocks={"blocks": blocks})
        return _saved_activation_bytes(m, lambda: m.training_loss(x, y))

    # what a step keeps for backward depends on the block's size only, not on the depth of the whole model
    assert saved(3, 3) == saved(6, 6) == saved(12, 12)
    two_of_six = saved(6, 3)
    assert two_of_six == saved(4, 2)
    full = timm.create_model("test_rbdc_vit", depth=6, num_classes=10)
    ref = _saved_activation_bytes(full, lambda: torch.nn.functional.cross_entropy(full(x), y))
    # 2 of 6 layers: ~1/3 of the full model's activations, plus the shared embeddings/head and the adaLN terms
    assert two_of_six < 0.5 * ref, (two_of_six, ref)


# --- recipe, engine, resume, CLI ------------------------------------------------------------------------------------


def test_bad_recipes_fail_with_the_key_and_the_fix():
    with pytest.raises(DiffusionBlocksError, match="diffusionblocks.nope"):
        tiny(diffusionblocks={"nope": 1})
    with pytest.raises(DiffusionBlocksError, match="divide the depth 3"):
        tiny(diffusionblocks={"blocks": 2})
    with pytest.raises(DiffusionBlocksError, match="loss_weighting must be per_sample or batch_mean"):
        tiny(diffusionblocks={"blocks": 3, "loss_weighting": "mean"})
    with pytest.raises(DiffusionBlocksError, match="inference_steps must be >= 2"):
        tiny(diffusionblocks={"blocks": 3, "inference_steps": 1})
    with pytest.raises(DiffusionBlocksError, match="VisionTransformer"):
        build_model(typed(**{**TINY, "model": "test_rbdc_resnet", "model_kwargs": {}}), 10)


def test_the_ci_recipe_runs_end_to_end_and_accounts_one_block_per_step(ci_reference):
    run_dir, results = ci_reference("diffusionblocks")
    assert json.loads((run_dir / rundir.RESULTS).read_text()) == results
    assert json.loads((run_dir / rundir.LEDGER).read_text())["total_train_flops"] == results["total_train_flops"]
    assert results["protocol"] == "diffusionblocks" and results["peak_mem_mb"] > 0
    stage = results["stages"][0]
    assert stage["epochs"] == 3.0  # `epochs: 1` per block x 3 blocks: the method's equal-iteration accounting
    rec = train.recipes.resolve(CI_RECIPE)
    m = build_model(rec, 10)
    assert results["total_train_flops"] == stage["steps"] * rec.batch_size * m.train_flops_per_image(32)
    assert results["eval_top1"] > 30  # 10 synthetic classes: well above chance
    m.load_state_dict(load_file(str(run_dir / "final.safetensors")))  # the weights file rebuilds the model


def test_the_cli_trains_the_protocol(tmp_path):
    assert cli.main(["train", "-c", str(CI_RECIPE), "-o", str(tmp_path), "--set", "epochs=0.25"]) == 0
    results = json.loads((tmp_path / "ci" / "diffusionblocks" / "seed0" / "results.json").read_text())
    batch = train.recipes.resolve(CI_RECIPE).batch_size
    # 0.25 epochs per block x 3 blocks of 640 synthetic images
    assert results["protocol"] == "diffusionblocks" and results["stages"][0]["steps"] == round(0.75 * (640 // batch))
