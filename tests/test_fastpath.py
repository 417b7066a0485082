"""The GPU fast path changes speed, not results: each flag that runs on a CPU is checked against the plain path.

Flags: channels_last, fused AdamW, torch.compile (slow: inductor compiles C++), bf16 autocast (within bf16 noise),
timm's fused SDPA attention; plus MFU reporting (rbdc.cost.perf) and, on a GPU, a training step without host syncs.
"""

import os
import shutil

import pytest
import torch

from rbdc.cost import perf
from rbdc import protocols
from rbdc.training.engine import Stage, train_stage, train_step
from rbdc.flops import Ledger
from rbdc.nets.models import scaled
from rbdc.recipe import DEFAULTS, Recipe


class ListLoader:
    """The loader interface train_stage uses, over fixed batches."""

    def __init__(self, batches):
        self.batches = batches

    def set_epoch(self, epoch):
        pass

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def train(model_name: str, steps: int = 4, **flags):
    """Train a tiny model for ``steps`` steps (2 per epoch) through train_stage; return (model, summary rows)."""
    torch.manual_seed(0)
    model = scaled(model_name, 1)
    size = model.pretrained_cfg["input_size"][-1]
    gen = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(8, 3, size, size, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(2)
    ]
    # The DeiT recipe's hot path: mixup/cutmix, label smoothing; clipping and EMA on too.
    recipe = Recipe.from_dict(
        {
            **DEFAULTS,
            "model": model_name,
            "batch_size": 8,
            "amp": "fp32",
            "fused": False,
            "channels_last": False,
            "clip_grad": 1.0,
            "ema": True,
            "ema_decay": 0.9,
            **flags,
        }
    )
    rows = []
    spec = Stage("s", model_name, steps, seed=0, lr=1e-3, warmup_steps=1)
    model, _ = train_stage(
        model,
        spec,
        recipe,
        ListLoader(batches),
        None,
        torch.device("cpu"),
        Ledger(),
        lambda row, ckpt: rows.append(row),
        log=lambda *a, **k: None,
        protocol=protocols.get(recipe.protocol),
    )
    return model, rows


def assert_same_training(a, b, rtol=1e-4, atol=1e-5):
    (model_a, rows_a), (model_b, rows_b) = a, b
    losses_a, losses_b = [r["train_loss"] for r in rows_a], [r["train_loss"] for r in rows_b]
    assert losses_a == pytest.approx(losses_b, rel=rtol)
    sd_a, sd_b = model_a.state_dict(), model_b.state_dict()
    assert set(sd_a) == set(sd_b)
    for key in sd_a:
        torch.testing.assert_close(sd_a[key].float(), sd_b[key].float(), rtol=rtol, atol=atol, msg=key)


# Layout and compilation change the gradients' rounding. AdamW's first steps are ~lr * sign(grad), which turns a
# rounding difference in a near-zero gradient into a full lr-sized step, so those comparisons train with SGD
# (timm's "sgd", Nesterov momentum), where the fp32 tolerance is meaningful.
SGD = {"opt": "sgd"}


def test_channels_last_does_not_change_training():
    flat = train("test_rbdc_resnet", **SGD)
    fast = train("test_rbdc_resnet", channels_last=True, **SGD)
    assert next(fast[0].parameters()).is_contiguous(memory_format=torch.channels_last)
    assert_same_training(flat, fast)


def test_fused_adamw_matches_the_default_implementation():
    plain = train("test_rbdc_vit")
    fused = train("test_rbdc_vit", fused=True)
    assert_same_training(plain, fused)


@pytest.mark.slow
def test_compiled_step_matches_eager():
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        pytest.skip(f"torch.compile on CPU needs a C++ compiler ({compiler} not found)")
    eager = train("test_rbdc_vit", **SGD)
    compiled = train("test_rbdc_vit", compile=True, **SGD)
    assert_same_training(eager, compiled)


def test_bf16_autocast_stays_within_bf16_noise():
    fp32 = train("test_rbdc_vit", steps=2)
    bf16 = train("test_rbdc_vit", steps=2, amp="bf16")
    losses = [[r["train_loss"] for r in rows] for _, rows in (fp32, bf16)]
    assert losses[1] != losses[0]  # autocast did run in bf16
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)


def test_timm_attention_uses_fused_sdpa_and_matches_the_explicit_math():
    torch.manual_seed(0)
    model = scaled("test_rbdc_vit", 1).eval()
    attns = [m for m in model.modules() if hasattr(m, "fused_attn")]
    assert attns and all(m.fused_attn for m in attns), "set TIMM_FUSED_ATTN=1 (or unset it) for SDPA attention"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fused = model(x)
        for m in attns:
            m.fused_attn = False
        explicit = model(x)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)


# --- MFU (rbdc.cost.perf) --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.5),
        ("NVIDIA H100 NVL", 835.5),
        ("NVIDIA GH200 480GB", 989.4),
        ("NVIDIA H200", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.05),
        ("NVIDIA L4", 121.0),
        ("Tesla V100-SXM2-16GB", None),
        ("NVIDIA A10G", None),
    ],
)
def test_peak_table_picks_the_most_specific_name(name, peak):
    assert perf.lookup_peak(name) == peak


def test_peak_env_overrides_the_table_and_rejects_nonsense(monkeypatch):
    monkeypatch.delenv(perf.PEAK_ENV, raising=False)
    assert perf.peak_tflops("cpu") is None and perf.mfu_fields(1.0, "cpu") == {}
    monkeypatch.setenv(perf.PEAK_ENV, "798")
    assert perf.peak_tflops("cpu") == 798.0
    assert perf.mfu(399.0, "cpu") == pytest.approx(0.5)
    monkeypatch.setenv(perf.PEAK_ENV, "fast")
    with pytest.raises(ValueError, match=perf.PEAK_ENV):
        perf.peak_tflops("cpu")


def test_summary_rows_carry_mfu_when_the_peak_is_known(monkeypatch):
    monkeypatch.delenv(perf.PEAK_ENV, raising=False)
    _, rows = train("test_rbdc_vit", steps=2)
    assert "mfu" not in rows[0]  # a CPU has no table entry
    monkeypatch.setenv(perf.PEAK_ENV, "0.5")
    _, rows = train("test_rbdc_vit", steps=2)
    assert rows[0]["mfu"] == pytest.approx(rows[0]["model_tflops_per_s"] / 0.5, rel=1e-3)


# --- GPU ---------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_train_step_never_waits_for_the_gpu():
    """The hot loop queues work without host syncs (loss accumulated on the device), with mixup, clipping, EMA."""
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy
    from timm.utils import ModelEmaV3

    from rbdc.training.engine import build_optimizer

    device = torch.device("cuda")
    model = scaled("test_rbdc_vit", 1).to(device).train()
    recipe = Recipe.from_dict({**DEFAULTS, "amp": "bf16", "clip_grad": 1.0})
    opt = build_optimizer(model, recipe, 1e-3, device)
    mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)
    ema = ModelEmaV3(model, decay=0.9)
    x, y = torch.randn(8, 3, 32, 32, device=device), torch.randint(0, 10, (8,), device=device)
    batches = iter([(x, y)] * 4)
    loss_sum = torch.zeros((), device=device)
    kw = dict(loss_sum=loss_sum, mix=mix, ema=ema, accum=2)
    train_step(model, batches, opt, SoftTargetCrossEntropy(), recipe, device, step=0, **kw)  # warm-up: allocations
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        train_step(model, batches, opt, SoftTargetCrossEntropy(), recipe, device, step=1, **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss_sum).item()
