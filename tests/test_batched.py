"""rbdc.nets.batched: k ViT parts as one batched model equal the k separate parts (forward, gradients, a clipped AdamW
step), and parts that cannot be batched are refused in one line."""

import copy

import pytest
import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2

from rbdc.nets.batched import BatchedViT, _unstack, check_batchable, clip_per_part, param_groups, part_loss
from rbdc.nets.models import scaled


def _parts(k: int, name: str = "test_rbdc_vit", **kwargs) -> list[nn.Module]:
    out = []
    for i in range(k):
        torch.manual_seed(i)
        out.append(scaled(name, 1, num_classes=10, **kwargs))
    for p in out:
        for m in p.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = False
    return out


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_forward_equals_the_separate_parts(k, fused):
    parts = _parts(k)
    for m in (m for p in parts for m in p.modules() if hasattr(m, "fused_attn")):
        m.fused_attn = fused
    x = torch.randn(k, 3, 3, 32, 32)
    batched = BatchedViT(parts).eval()
    want = torch.stack([p.eval()(x[i]) for i, p in enumerate(parts)])
    assert torch.allclose(batched(x), want, atol=1e-6, rtol=0)


def test_the_narrow_parts_of_the_study_model_too():
    parts = _parts(4, "rbdc_vit_nano_patch4_32_w4")
    x = torch.randn(4, 2, 3, 32, 32)
    want = torch.stack([p.eval()(x[i]) for i, p in enumerate(parts)])
    assert (BatchedViT(parts).eval()(x) - want).abs().max() < 1e-6


def test_a_clipped_adamw_step_equals_the_separate_steps():
    k, lr, wd = 2, 1e-3, 0.05
    parts = _parts(k)
    batched = BatchedViT(copy.deepcopy(parts)).train()
    x, y = torch.randn(k, 4, 3, 32, 32), torch.randint(0, 10, (k, 4))
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    for i, p in enumerate(parts):  # the engine's step of each part: loss, backward, clip to 0.1 (active), AdamW
        opt = create_optimizer_v2(p, opt="adamw", lr=lr, weight_decay=wd)
        crit(p.train()(x[i]), y[i]).backward()
        nn.utils.clip_grad_norm_(p.parameters(), 0.1)
        opt.step()
    opt = torch.optim.AdamW(param_groups(batched.named_parameters(), batched.no_decay, wd), lr=lr)
    part_loss(crit, batched(x), y).backward()
    norms = clip_per_part(batched.parameters(), k, 0.1)
    assert (norms > 0.1).all()  # the clipping is exercised
    for flat, (name, how) in batched.links.items():  # the clipped gradients: equal to round-off
        for i, g in enumerate(_unstack(getattr(batched, flat).grad, how, k)):
            want = dict(parts[i].named_parameters())[name].grad
            assert (g - want).abs().max() <= 1e-5 * want.abs().max() + 1e-12, name
    opt.step()
    # AdamW's first update is lr * g / (|g| + eps): round-off in a gradient near eps moves it by a fraction of lr
    for i, state in enumerate(batched.part_state_dicts()):
        for name, p in parts[i].named_parameters():
            assert torch.allclose(state[name], p.detach(), atol=1e-2 * lr, rtol=0), name


def test_decay_follows_timms_groups():
    batched = BatchedViT(_parts(2))
    decayed = {batched.links[n][0] for n, _ in batched.named_parameters() if n not in batched.no_decay}
    assert "blocks.0.attn.qkv.weight" in decayed and "head.weight" in decayed
    assert not decayed & {"pos_embed", "cls_token", "blocks.0.norm1.weight", "blocks.0.mlp.fc1.bias"}


def test_parts_of_different_architectures_are_refused_in_one_line():
    a, b = _parts(1)[0], _parts(1, drop_path_rate=0.1)[0]
    with pytest.raises(ValueError, match=r"^parts 0 and 1 differ in .*train them separately$"):
        check_batchable([a, b])
    with pytest.raises(ValueError, match=r"^part 0 is a ResNet: only timm VisionTransformer parts can be batched"):
        check_batchable([scaled("test_rbdc_resnet", 1)])
    with pytest.raises(ValueError, match=r"^part 0 has pooling 'avg'"):
        check_batchable([scaled("test_rbdc_vit", 1, global_pool="avg")])
