"""Where a training step's time goes: the study step of each width split by ``torch.profiler`` into kinds of work.

:func:`profile_split` profiles a few steps of a :class:`benchmarks.train_paths.Trainer` and adds up every profiled
op's *self* time (on a GPU, its kernels' time) by

* **phase**: ``forward``; ``backward`` (inside autograd's ``evaluate_function`` nodes); ``optimizer`` (inside
  ``Optimizer.step`` / ``zero_grad``, and the gradient clipping between backward and the step);
* **kind**: the nearest op, from the event up through its parents, that names one (:data:`KINDS`): ``gemm``
  (linear layers and convolutions, forward and backward), ``attention_matmul`` (the batched ``q @ k^T`` and
  ``attn @ v``), ``softmax`` (and the fused SDPA kernels on a GPU), ``norm``, ``activation``, ``cast_copy``
  (autocast's casts, ``contiguous`` copies, concatenations), ``elementwise`` (adds, multiplies, reductions, the loss,
  the optimizer's arithmetic) and ``other`` (view ops, autograd's own bookkeeping).

The step's wall time not covered by any op (Python, dispatch, the profiler's own overhead) is ``untracked``. The
report groups the kinds as GEMMs / attention (matmuls + softmax) / norms, activations and elementwise (with casts
and copies) / optimizer / other; the profiled step is slower than an unprofiled one (both are recorded).
"""

from __future__ import annotations

import time

from benchmarks.bench_common import sync

KINDS: dict[str, tuple[str, ...]] = {
    "gemm": (
        "aten::mm",
        "aten::addmm",
        "aten::linear",
        "aten::baddbmm",
        "aten::addmv",
        "aten::mv",
        "aten::conv2d",
        "aten::convolution",
        "aten::_convolution",
        "aten::mkldnn_convolution",
        "aten::convolution_backward",
        "aten::mkldnn_linear",
        "aten::cudnn_convolution",
        "aten::_convolution_mode",
    ),
    "attention_matmul": ("aten::bmm", "aten::matmul"),
    "softmax": (
        "aten::softmax",
        "aten::_softmax",
        "aten::_softmax_backward_data",
        "aten::scaled_dot_product_attention",
        "aten::_scaled_dot_product_flash_attention",
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
        "aten::_scaled_dot_product_efficient_attention",
        "aten::_efficient_attention_forward",
        "aten::_efficient_attention_backward",
        "aten::_flash_attention_forward",
        "aten::_flash_attention_backward",
        "aten::_scaled_dot_product_cudnn_attention",
        "aten::_scaled_dot_product_cudnn_attention_backward",
    ),
    "norm": (
        "aten::layer_norm",
        "aten::native_layer_norm",
        "aten::native_layer_norm_backward",
        "aten::batch_norm",
        "aten::_batch_norm_impl_index",
        "aten::native_batch_norm",
        "aten::native_batch_norm_backward",
        "aten::_native_batch_norm_legit",
        "aten::_native_batch_norm_legit_functional",
        "aten::group_norm",
        "aten::native_group_norm",
        "aten::native_group_norm_backward",
        "aten::cudnn_batch_norm",
        "aten::cudnn_batch_norm_backward",
    ),
    "activation": (
        "aten::gelu",
        "aten::gelu_backward",
        "aten::relu",
        "aten::relu_",
        "aten::threshold_backward",
        "aten::silu",
        "aten::silu_backward",
        "aten::max_pool2d_with_indices",
        "aten::max_pool2d_with_indices_backward",
        "aten::max_pool2d",
    ),
    "cast_copy": (
        "aten::to",
        "aten::_to_copy",
        "aten::copy_",
        "aten::clone",
        "aten::cat",
        "aten::stack",
        "aten::contiguous",
    ),
    "other": (
        "aten::view",
        "aten::reshape",
        "aten::_unsafe_view",
        "aten::as_strided",
        "aten::transpose",
        "aten::permute",
        "aten::expand",
        "aten::t",
        "aten::unbind",
        "aten::select",
        "aten::slice",
        "aten::flatten",
        "aten::unsqueeze",
        "aten::squeeze",
        "aten::detach",
        "detach",
        "aten::alias",
        "aten::split",
        "aten::chunk",
        "aten::narrow",
        "aten::empty",
        "aten::empty_strided",
        "aten::new_empty",
        "aten::empty_like",
        "aten::resolve_conj",
        "aten::resolve_neg",
        "aten::lift_fresh",
        "torch::autograd::AccumulateGrad",
        "aten::result_type",
        "aten::numpy_T",
        "aten::_reshape_alias",
    ),
}
_KIND_OF = {name: kind for kind, names in KINDS.items() for name in names}
GROUPS = {
    "gemm": ("gemm",),
    "attention": ("attention_matmul", "softmax"),
    "elementwise": ("norm", "activation", "cast_copy", "elementwise"),
    "other": ("other", "untracked"),
}
BACKWARD = "autograd::engine::evaluate_function"
OPTIMIZER = "Optimizer."


def kind_of(event) -> str:
    """The kind of work of ``event``'s self time: the first of it and its parents that names one; any other aten
    op is ``elementwise``; no aten op on the way up (autograd nodes, record_function ranges) is ``other``."""
    e, aten = event, False
    while e is not None:
        kind = _KIND_OF.get(e.name)
        if kind is not None:
            return kind
        aten |= e.name.startswith("aten::")
        e = e.cpu_parent
    return "elementwise" if aten else "other"


def root_phases(events) -> dict[int, str]:
    """The phase of every top-level event (by id): optimizer ranges are ``optimizer``, autograd nodes
    ``backward``, what runs between a step's last autograd node and its optimizer step (clipping, the loss sum)
    ``optimizer``, the rest ``forward``."""
    roots = sorted((e for e in events if e.cpu_parent is None), key=lambda e: e.time_range.start)
    phases: dict[int, str] = {}
    pending, last_bwd = [], float("-inf")
    for r in roots + [None]:
        if r is None or r.name.startswith(OPTIMIZER):
            for p in pending:
                phases[id(p)] = (
                    "backward"
                    if p.name.startswith(BACKWARD)
                    else "optimizer"
                    if r is not None and p.time_range.start >= last_bwd
                    else "forward"
                )
            pending, last_bwd = [], float("-inf")
            if r is not None:
                phases[id(r)] = "optimizer"
            continue
        pending.append(r)
        if r.name.startswith(BACKWARD):
            last_bwd = r.time_range.end
    return phases


def split_events(events, wall_s: float, steps: int, device_time: bool = False) -> dict:
    """Seconds per step by phase and kind: ``{phase: {kind: s}}``, and the wall not covered by any op's self time
    as ``{"untracked": {"untracked": s}}`` (on a GPU: time the device was idle)."""
    phases = root_phases(events)
    out: dict[str, dict[str, float]] = {p: {} for p in ("forward", "backward", "optimizer")}
    covered = 0.0
    for e in events:
        t = (getattr(e, "self_device_time_total", 0.0) if device_time else e.self_cpu_time_total) or 0.0
        if not t or "CPU" not in str(getattr(e, "device_type", "CPU")):  # kernels count through their CPU op
            continue
        root = e
        while root.cpu_parent is not None:
            root = root.cpu_parent
        ph, kind = phases.get(id(root), "forward"), kind_of(e)
        out[ph][kind] = out[ph].get(kind, 0.0) + t * 1e-6 / steps
        covered += t * 1e-6 / steps
    out["untracked"] = {"untracked": max(0.0, wall_s / steps - covered)}
    return out


def profile_split(trainer, steps: int = 2) -> dict:
    """Profile ``steps`` steps of ``trainer`` (warm already) and split their time (:func:`split_events`)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = trainer.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(trainer.device)
    clock = busy_clock(trainer.device)
    with profile(activities=acts) as prof:
        t0, b0 = time.perf_counter(), clock()
        for _ in range(steps):
            trainer.step()
        sync(trainer.device)
        wall, busy = time.perf_counter() - t0, clock() - b0
    # on a shared CPU the time slices lost to other jobs are no work of the step: the split's total is the busy time
    split = split_events(prof.events(), min(wall, busy), steps, device_time=cuda)
    return {
        "split_s": split,
        "profiled_step_s": wall / steps,
        "profiled_step_busy_s": busy / steps,
        "profiled_steps": steps,
        "split_time": "device (kernels)" if cuda else "cpu",
    }


def grouped(split: dict) -> dict[str, float]:
    """The report's columns, as fractions of the profiled step: forward / backward x GEMM / attention /
    elementwise, then optimizer (everything in its phase) and other (view ops, bookkeeping, untracked)."""
    total = sum(v for ph in split.values() for v in ph.values())
    out = {}
    for ph in ("forward", "backward"):
        for g, kinds in GROUPS.items():
            if g != "other":
                out[f"{ph}_{g}"] = sum(split[ph].get(k, 0.0) for k in kinds) / total
    out["optimizer"] = sum(v for k, v in split["optimizer"].items() if k not in GROUPS["other"]) / total
    out["other"] = sum(split[ph].get(k, 0.0) for ph in split for k in GROUPS["other"]) / total
    return out


def busy_clock(device) -> callable:
    """The clock a round is measured on besides the wall: on a CPU the process's CPU time, which a 1-thread run
    accumulates only while it runs (on a machine shared with other jobs, time slices lost to them do not count);
    on a GPU the wall (after a synchronisation)."""
    return time.process_time if device.type == "cpu" else time.perf_counter


def gemm_busy_rate(dtype, device, n: int | None = None, min_s: float = 0.05) -> float:
    """FLOP/s of ``n x n`` products in ``dtype`` on :func:`busy_clock` (at least 2, ~``min_s``, one untimed)."""
    import torch

    from benchmarks.train_paths import gemm_size

    n = n or gemm_size(device)
    clock = busy_clock(device)
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    torch.mm(a, b)
    sync(device)
    reps, t0 = 0, clock()
    while reps < 2 or clock() - t0 < min_s:
        torch.mm(a, b)
        reps += 1
    sync(device)
    return 2 * n**3 * reps / (clock() - t0)


def beside(min_cpu: float = 20.0) -> list[str]:
    """Other processes using more than ``min_cpu`` % of a core now (``ps``): what a timing ran beside."""
    import os
    import subprocess

    try:
        out = subprocess.run(
            ["ps", "-eo", "pid,psr,pcpu,args", "--sort=-pcpu"], capture_output=True, text=True, timeout=10
        ).stdout.splitlines()[1:]
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out:
        pid, core, cpu, args = line.split(None, 3)
        if float(cpu) >= min_cpu and int(pid) != os.getpid():
            rows.append(f"core {core}, {float(cpu):.0f}%: {args[:100]}")
    return rows


__all__ = [
    "KINDS",
    "GROUPS",
    "kind_of",
    "root_phases",
    "split_events",
    "profile_split",
    "grouped",
    "busy_clock",
    "gemm_busy_rate",
    "beside",
]
