"""Levers on the speed of a level's narrow parts, each measured against the study path in the same process.

A *runner* trains some parts one optimizer step per ``step()`` and says how many images that is (``images``):

* :class:`Separate`: k study-path :class:`benchmarks.train_paths.Trainer` parts, one after another (the reference
  of the batched and vmap levers; k = 1 is the study path itself);
* :class:`Batched`: the k parts as one :class:`rbdc.nets.batched.BatchedViT` on k x B images (per-part loss, per-part
  clipping, AdamW with the parts' decay groups);
* :class:`Vmapped`: the k parts' stacked parameters under ``torch.func.vmap`` of ``functional_call``, trained the
  same way.

Every other lever is a :class:`Trainer` on a changed :class:`PathCase` (``torch.compile``, batch 256, fp32, two
threads) against the study path's :class:`Trainer`.
"""

from __future__ import annotations

import copy

import torch

from benchmarks.bench_common import REPO, require_device
from benchmarks.train_paths import PathCase, Trainer
from rbdc.nets.batched import BatchedViT, clip_per_part, param_groups, part_loss, part_no_decay
from rbdc.training.engine import autocast_for, build_criterion, lr_for, set_attention_path
from rbdc.nets.models import scaled
from rbdc.recipe import resolve


class Separate:
    """k study-path trainers (their own weights and batches), one step each per ``step()``."""

    def __init__(self, case: PathCase, k: int):
        self.parts = [Trainer(case) for _ in range(k)]
        self.device, self.images = self.parts[0].device, k * case.batch

    def step(self) -> None:
        for t in self.parts:
            t.step()


class _Stacked:
    """What :class:`Batched` and :class:`Vmapped` share: the recipe, k parts, the k batches, the step."""

    def __init__(self, case: PathCase, k: int, warmup: int = 2):
        self.case, self.k = case, k
        self.device = require_device(case.device)
        if self.device.type == "cpu":
            torch.set_num_threads(case.threads)
        self.recipe = resolve(
            REPO / case.recipe, model=case.model, img_size=case.img_size, batch_size=case.batch, amp=case.amp
        )
        self.recipe.fused_attn = case.fused_attn
        parts = []
        for i in range(k):
            torch.manual_seed(i)
            part = scaled(case.model, 1, num_classes=10, drop_path_rate=self.recipe.drop_path)
            parts.append(set_attention_path(part, self.recipe).to(self.device).train())
        self.build(parts)
        self.crit = build_criterion(self.recipe, mixup=False)
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(k, case.batch, 3, case.img_size, case.img_size, generator=gen).to(self.device)
        self.y = torch.randint(0, 10, (k, case.batch), generator=gen).to(self.device)
        self.images = k * case.batch
        self.loss_sum = torch.zeros((), device=self.device)
        for _ in range(warmup):
            self.step()

    def step(self) -> None:
        with autocast_for(self.recipe, self.device):
            loss = part_loss(self.crit, self.logits(), self.y)
        loss.backward()
        self.loss_sum += loss.detach()
        if self.recipe.clip_grad:
            clip_per_part(self.params, self.k, self.recipe.clip_grad)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def _optimizer(self, named, no_decay: set[str]) -> torch.optim.Optimizer:
        # timm's factory makes a plain torch AdamW (foreach/fused left to torch), as for the separate parts
        fused = {"fused": True} if self.device.type == "cuda" else {}
        return torch.optim.AdamW(
            param_groups(named, no_decay, self.recipe.weight_decay),
            lr=lr_for(self.recipe),
            eps=self.recipe.opt_eps,
            **fused,
        )


class Batched(_Stacked):
    """The k parts as one :class:`BatchedViT`."""

    def build(self, parts) -> None:
        self.model = BatchedViT(parts).to(self.device).train()
        self.params = list(self.model.parameters())
        self.opt = self._optimizer(self.model.named_parameters(), self.model.no_decay)

    def logits(self) -> torch.Tensor:
        return self.model(self.x)


class Vmapped(_Stacked):
    """The k parts' stacked parameters under ``torch.func.vmap`` (randomness per part: drop-path)."""

    def build(self, parts) -> None:
        from torch.func import functional_call, stack_module_state, vmap

        params, buffers = stack_module_state(parts)
        base = copy.deepcopy(parts[0]).to("meta")
        self.named, self.buffers = params, buffers
        self.params = list(params.values())
        self.fn = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), randomness="different")
        self.opt = self._optimizer(params.items(), part_no_decay(parts[0]))

    def logits(self) -> torch.Tensor:
        return self.fn(self.named, self.buffers, self.x)


def core_busy(core: int, seconds: float = 1.0) -> float:
    """The fraction of ``seconds`` that CPU ``core`` was busy (``/proc/stat``); 1.0 where it cannot be read."""
    import time

    def sample():
        for line in open("/proc/stat"):
            if line.startswith(f"cpu{core} "):
                v = [int(x) for x in line.split()[1:]]
                return sum(v), v[3] + v[4]  # total, idle + iowait
        raise OSError(f"cpu{core} not in /proc/stat")

    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except OSError:
        return 1.0
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)
