"""The study's training step on one execution path, and the GEMM probe its speed is compared with.

A *path* is how a step runs: precision (fp32 or bf16 autocast), ``torch.compile``, channels_last, the attention
kernel, CPU threads per process and processes at once. :class:`Trainer` builds one study recipe's step on that path
(the engine's ``train_step`` with the recipe's loss, clipping and drop-path, on a fixed in-memory batch: data loading
is the ``data`` group's business). :func:`gemm_rate` measures the same-precision matrix-product rate in the same
process, right before every timed round, so that model FLOP/s / GEMM FLOP/s survives a machine whose load changes.

:class:`Pack` runs ``procs`` such trainers in their own processes at once (the study's ``jobs: 2`` on the CPU; several
runs sharing one GPU), each driven round by round from the parent.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import asdict, dataclass, replace

import torch

from benchmarks.bench_common import REPO, TOY, compiled, require_device, sync, toy_sized
from rbdc.training.engine import build_criterion, build_optimizer, lr_for, set_attention_path, train_step
from rbdc.flops import train_flops_per_image
from rbdc.nets.models import scaled
from rbdc.recipe import resolve

GEMM_N = {"cpu": 1024, "cuda": 8192}  # square matrix side of the probe: ~2 GFLOP on a CPU core, ~1 TFLOP on a GPU
GEMM_MIN_S = {"cpu": 0.05, "cuda": 0.02}


@dataclass(frozen=True)
class PathCase:
    device: str  # "cpu" or "cuda"
    model: str
    img_size: int
    recipe: str  # the study recipe (relative to the repository) whose step is timed
    batch: int = 128
    amp: str = "fp32"  # fp32 | bf16 (autocast)
    compile: bool = False
    channels_last: bool = False
    fused_attn: bool | None = None  # ViTs: timm's fused SDPA (True) or its explicit attention (False)
    threads: int = 1  # CPU threads of each process
    procs: int = 1  # processes training at once, each its own model
    steps: int = 1  # optimizer steps per timed round, per process
    rounds: int = 8
    study: bool = False  # the path the study runs this model on (the reference of its rows)

    def __str__(self) -> str:
        parts = [self.device, self.model, f"{self.img_size}px", f"b{self.batch}", self.amp]
        parts += ["compile"] if self.compile else []
        parts += ["cl"] if self.channels_last else []
        parts += [] if self.fused_attn is None else ["fusedattn" if self.fused_attn else "explicitattn"]
        parts += [f"{self.procs}x{self.threads}t"]
        return "-".join(parts)

    def for_run(self) -> PathCase:
        """The case as it runs here: toy-sized, 1 thread and at most 2 processes under ``RBDC_BENCH_TOY=1`` (the
        device script's dry run)."""
        return replace(toy_sized(self), threads=1, procs=min(self.procs, 2)) if TOY else self


def gemm_size(device: torch.device) -> int:
    return 256 if TOY else GEMM_N[device.type]


def gemm_rate(dtype: torch.dtype, device: torch.device, n: int | None = None) -> float:
    """FLOP/s of ``n x n @ n x n`` products in ``dtype`` on ``device`` (one untimed, then at least 2 and ~50 ms)."""
    n = n or gemm_size(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while reps < 2 or time.perf_counter() - t0 < GEMM_MIN_S[device.type]:
        torch.mm(a, b)
        reps += 1
        if reps % 4 == 0 or reps < 4:
            sync(device)
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


class Trainer:
    """One process's training of ``case`` (already :meth:`PathCase.for_run`): ``step()``, ``gemm()``, ``info``."""

    def __init__(self, case: PathCase, warmup: int | None = None):
        self.case = case
        self.device = require_device(case.device)
        if self.device.type == "cpu":
            torch.set_num_threads(case.threads)
        recipe = resolve(
            REPO / case.recipe,
            model=case.model,
            img_size=case.img_size,
            batch_size=case.batch,
            amp=case.amp,
            compile=case.compile,
            channels_last=case.channels_last,
        )
        recipe.fused_attn = case.fused_attn  # None is meaningful here (timm's choice), so not a resolve field
        self.recipe = recipe
        torch.manual_seed(0)
        model = scaled(case.model, 1, num_classes=10, drop_path_rate=recipe.drop_path)
        set_attention_path(model, recipe).to(self.device).train()
        if case.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.step_fn = compiled(model) if case.compile else model
        self.opt = build_optimizer(model, recipe, lr_for(recipe), self.device)
        self.crit = build_criterion(recipe, mixup=False)  # the batch's integer labels are never mixed
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(case.batch, 3, case.img_size, case.img_size, generator=gen).to(self.device)
        y = torch.randint(0, 10, (case.batch,), generator=gen).to(self.device)
        self.batch = (x, y)
        self.loss_sum = torch.zeros((), device=self.device)
        self.i = 0
        self.gemm_dtype = torch.bfloat16 if case.amp == "bf16" else torch.float32
        self.fpi = train_flops_per_image(case.model, case.img_size, num_classes=10)
        for _ in range(warmup if warmup is not None else (3 if case.compile else 2)):
            self.step()
        sync(self.device)

    def step(self) -> None:
        train_step(
            self.model,
            iter((self.batch,)),
            self.opt,
            self.crit,
            self.recipe,
            self.device,
            loss_sum=self.loss_sum,
            step=self.i,
            step_fn=self.step_fn,
            channels_last=self.case.channels_last,
        )
        self.i += 1

    def train(self, steps: int) -> float:
        """Seconds for ``steps`` optimizer steps, the device synchronised at the end."""
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(self.device)
        return time.perf_counter() - t0

    def gemm(self) -> float:
        return gemm_rate(self.gemm_dtype, self.device)

    def info(self) -> dict:
        """What a JSON row records about the case besides its timings."""
        c = self.case
        return dict(
            case=str(c),
            **{k: v for k, v in asdict(c).items() if k not in ("device", "rounds")},
            images_per_round=c.procs * c.steps * c.batch,
            train_flops_per_image=self.fpi,
            gemm_dtype=str(self.gemm_dtype).removeprefix("torch."),
            gemm_n=gemm_size(self.device),
            fused_adamw=bool(self.opt.defaults.get("fused")),
        )


def _serve(case: PathCase, conn) -> None:
    """A pack member: build the trainer, then answer ``("train", steps)``, ``("gemm",)`` and ``("stop",)``."""
    try:
        trainer = Trainer(case)
        conn.send(("ready", trainer.info()))
        while True:
            cmd = conn.recv()
            if cmd[0] == "stop":
                break
            conn.send(("ok", trainer.train(cmd[1]) if cmd[0] == "train" else trainer.gemm()))
    except Exception as e:  # noqa: BLE001  (the parent re-raises it with the member's message)
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


class Pack:
    """``case.procs`` trainers in their own (spawned) processes; each call drives all of them at once."""

    def __init__(self, case: PathCase):
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for _ in range(case.procs):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_serve, args=(case, child), daemon=True)
            p.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(p)
        self.info = self._all(None)[0]

    def _all(self, cmd) -> list:
        if cmd is not None:
            for c in self.conns:
                c.send(cmd)
        out = []
        for c in self.conns:
            status, value = c.recv()
            if status == "error":
                self.close()
                raise RuntimeError(f"a pack member failed: {value}")
            out.append(value)
        return out

    def train(self, steps: int) -> list[float]:
        """Every member's seconds for ``steps`` steps, all started together."""
        return self._all(("train", steps))

    def gemm(self) -> float:
        """The members' GEMM rates, measured at the same time, added up."""
        return sum(self._all(("gemm",)))

    def close(self) -> None:
        for c, p in zip(self.conns, self.procs):
            try:
                c.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
