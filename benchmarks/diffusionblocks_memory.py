"""DiffusionBlocks' training memory against the number of blocks B, beside end-to-end backprop of the same ViT.

    python -m benchmarks.diffusionblocks_memory [--out reports/bench/diffusionblocks-memory-<cpu>.json]
    python -m benchmarks.diffusionblocks_memory --dry-run --out /tmp/db.json    # toy sizes, in-process, seconds

The method's headline property: a training step backpropagates through one block of depth/B layers, so the
activations a step keeps fall ~ as 1/B. Per configuration (width x method x B) this measures, in a fresh
subprocess (nothing else has run in it, so its peak RSS is the step's):

* **saved activations**: the bytes the autograd graph holds for backward after one forward of a training step,
  summed once per storage through ``torch.autograd.graph.saved_tensors_hooks``; parameters are left out, and the
  low-precision copies of weights that autocast saves are counted apart (``saved_weight_copy_bytes``). Exact and
  independent of the machine's load. ``saved_layer_bytes``: the part first saved while a transformer layer ran (what
  the method splits into blocks); ``saved_shared_bytes``: the rest (embeddings, final norm, head, loss). A
  DiffusionBlocks step trains one block: the figures are the block with the most (``saved_by_block_bytes``: each).
* **peak RSS** (CPU): ``getrusage(RUSAGE_SELF).ru_maxrss`` after a few engine steps (DiffusionBlocks: every block in
  turn, ``--rounds`` times; end-to-end: that many steps), and its increment over the RSS right before the first step
  (the high-water mark is reset there through ``/proc/self/clear_refs``; freed heap is trimmed first). The increment
  holds the activations, the gradients, AdamW's two moments, backward's temporaries and the runtime's one-time
  buffers, not the weights; ``retained_increment_bytes`` is what is still there after the steps (the moments, the
  one-time buffers) and ``step_transient_bytes`` the peak above it.
* **CUDA** (when a GPU is present): ``torch.cuda.max_memory_allocated`` over the same steps, and its increment over
  ``memory_allocated`` before the first one.

Models and steps are the engine's: the 32-px study's recipes (``configs/recipes/imagenette32/vit-nano-scratch``
and ``vit-nano-diffusionblocks``: bf16 autocast, explicit attention, drop-path 0.05, AdamW, clipping), the
protocol's own ``target`` builder, :func:`rbdc.training.engine.build_training` and
:func:`rbdc.training.engine.train_step`. Widths:
the study's ``rbdc_vit_nano_patch4_32`` (width 64, 4 heads, depth 4) and the same ViT 3x wider and twice as deep
(width 192, 12 heads as :func:`rbdc.scaled` makes them, depth 8), so that B = 4 divides both. B = 1 is not a
configuration of the method (the model refuses B < 2): here it is the same model with one block holding every layer,
the DiffusionBlocks objective trained end to end, built by re-splitting a B = 2 model. Batch 128 at 32 px: the
activations (~90 MB to 1.2 GB a step) dwarf the weights (0.9 and 15 MB), so no larger image is needed. Precisions:
bf16 autocast (the recipes') and fp32.

*ratio vs end-to-end*: DiffusionBlocks' figure over the scratch protocol's for the same ViT; *promised*: 1/B.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import gc
import itertools
import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "configs" / "recipes" / "imagenette32"
NUM_CLASSES = 10
# (width, depth, heads): the study's model, and 3x its width (rbdc.scaled keeps head_dim 16: 12 heads) at depth 8
WIDTHS = ((64, 4, 4), (192, 8, 12))
BLOCKS = (1, 2, 4)
TOY = dict(model="test_rbdc_vit", widths=((64, 4, 4),), batch=8, img_size=32)
# autograd nodes that pass a weight through unchanged in content (a cast, a transpose, a view): a saved tensor that
# reaches a parameter's AccumulateGrad through them alone is a copy of that weight, not an activation
_WEIGHT_PATH = {
    "ToCopyBackward0",
    "TBackward0",
    "TransposeBackward0",
    "PermuteBackward0",
    "ViewBackward0",
    "UnsafeViewBackward0",
    "ExpandBackward0",
    "ReshapeAliasBackward0",
}


# ----------------------------------------------------------------------------------------------------------------
# One configuration (runs in its own process)


def recipe_for(
    method: str,
    width: int,
    depth: int,
    heads: int,
    blocks: int,
    *,
    batch: int,
    img_size: int,
    amp: str | None = None,
    model: str | None = None,
) -> dict:
    """The study recipe of ``method`` (``end-to-end``: scratch; ``diffusionblocks``) at this width, depth and B."""
    from rbdc.recipe import resolve

    name = "vit-nano-scratch.yaml" if method == "end-to-end" else "vit-nano-diffusionblocks.yaml"
    over = [
        f"model_kwargs.embed_dim={width}",
        f"model_kwargs.depth={depth}",
        f"model_kwargs.num_heads={heads}",
        f"batch_size={batch}",
        f"img_size={img_size}",
    ]
    if img_size != 32:
        over.append(f"model_kwargs.img_size={img_size}")
    if model:
        over.append(f"model={model}")
    if amp:
        over.append(f"amp={amp}")
    if method == "diffusionblocks":
        over.append(f"diffusionblocks.blocks={max(blocks, 2)}")
    return resolve(RECIPES / name, over)


def one_block(model):
    """A DiffusionBlocksViT re-split into one block of every layer (B = 1: the objective trained end to end)."""
    from rbdc.nets.diffusion_noise import band_edges

    model.num_blocks, model.layers_per_block = 1, len(model.trunk.blocks)
    model.edges = band_edges(1, model.p_mean, model.p_std, model.sigma_min, model.sigma_max)
    model.sigmas, model.inference_steps = [model.sigma_max, model.sigma_min], 2  # (training only reads the split)
    return model


def build(spec: dict):
    """``(model, recipe)`` of a configuration, built as the protocol builds it (seeded by the recipe)."""
    from rbdc import protocols

    rec = recipe_for(
        spec["method"],
        spec["width"],
        spec["depth"],
        spec["heads"],
        spec["blocks"],
        batch=spec["batch"],
        img_size=spec["img_size"],
        amp=spec.get("amp"),
        model=spec.get("model"),
    )
    torch.manual_seed(rec.seed)
    model = protocols.get(rec.protocol).target(rec, NUM_CLASSES)
    if spec["method"] == "diffusionblocks" and spec["blocks"] == 1:
        one_block(model)
    return model, rec


def force_block(model, block: int) -> None:
    """Make the model's next training steps train ``block`` (instead of drawing it)."""

    def draw():
        model.last_block = block
        return block

    model.draw_block = draw


def _from_weight(t: torch.Tensor) -> bool:
    fn = t.grad_fn
    while fn is not None:
        if fn.name().endswith("AccumulateGrad"):
            return True
        nxt = [f for f, _ in fn.next_functions if f is not None]
        if fn.name() not in _WEIGHT_PATH or len(nxt) != 1:
            return False
        fn = nxt[0]
    return False


def saved_bytes(model: torch.nn.Module, loss_fn) -> dict:
    """Bytes the autograd graph of ``loss_fn()`` saves for backward, once per storage.

    Returns ``activations`` (all but parameters and weight copies), ``layers`` (the part first saved while a
    transformer layer ran: the part the method splits into blocks), ``shared`` (the rest: embeddings, final norm,
    head, loss) and ``weight_copies`` (autocast's low-precision copies of weights). Parameters are not counted. The
    graph is freed without a backward (no gradient is made)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    found: dict[int, tuple[str, int]] = {}
    inside = [0]

    def pack(t):
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr and ptr not in params and ptr not in found:
            kind = "weight_copies" if _from_weight(t) else ("layers" if inside[0] else "shared")
            found[ptr] = (kind, st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _layers_marked(model, inside):
        loss = loss_fn()
    del loss
    out = {k: sum(n for kind, n in found.values() if kind == k) for k in ("layers", "shared", "weight_copies")}
    return {"activations": out["layers"] + out["shared"], **out}


class _layers_marked:
    """Within it, ``flag[0]`` is nonzero while one of the model's transformer layers runs."""

    def __init__(self, model: torch.nn.Module, flag: list):
        self.model, self.flag, self.handles = model, flag, []

    def __enter__(self):
        m, flag = self.model, self.flag
        if hasattr(m, "_layer"):  # DiffusionBlocksViT runs its layers through _layer (adaLN-modulated)
            run = m._layer

            def layer(i, x, c):
                flag[0] += 1
                try:
                    return run(i, x, c)
                finally:
                    flag[0] -= 1

            m._layer = layer
        else:
            for blk in m.blocks:
                self.handles.append(blk.register_forward_pre_hook(lambda *_: flag.__setitem__(0, flag[0] + 1)))
                self.handles.append(blk.register_forward_hook(lambda *_: flag.__setitem__(0, flag[0] - 1)))
        return self

    def __exit__(self, *exc):
        self.model.__dict__.pop("_layer", None)
        for h in self.handles:
            h.remove()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _reset_peak_rss() -> bool:
    """Reset the RSS high-water mark that getrusage reports (Linux); False where it cannot be."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _maxrss() <= _rss() + (8 << 20)


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the baseline RSS is what is alive
    except (OSError, AttributeError):
        pass


def measure(spec: dict) -> dict:
    """One configuration on ``spec["device"]``: peak memory over a few engine steps, then the saved activations."""
    from rbdc.training.engine import autocast_for, build_training, set_attention_path, train_step
    from rbdc.protocols import Stage, get

    device = torch.device(spec["device"])
    model, rec = build(spec)
    own = get(rec.protocol).own_objective
    set_attention_path(model, rec).to(device)
    ts = build_training(model, rec, Stage("mem", rec.model, 100, rec.seed, 1e-3), device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(spec["batch"], 3, spec["img_size"], spec["img_size"], generator=g).to(device)
    y = torch.randint(NUM_CLASSES, (spec["batch"],), generator=g).to(device)
    batches = itertools.repeat((x, y))
    blocks = model.num_blocks if own else 1
    order = [b for _ in range(spec["rounds"]) for b in range(blocks)] if own else [0] * spec["rounds"]
    params = sum(p.numel() for p in model.parameters())
    out = {
        **{k: spec[k] for k in ("method", "width", "depth", "heads", "blocks", "batch", "img_size")},
        "model": rec.model,
        "amp": rec.amp,
        "fused_attn": rec.fused_attn,
        "device": device.type,
        "params": params,
        "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "steps": len(order),
        "block_order": order,
        "threads": torch.get_num_threads(),
    }
    loss_sum = torch.zeros((), device=device)

    def step(b):
        if own:
            force_block(model, b)
        train_step(
            model,
            batches,
            ts.optimizer,
            ts.criterion,
            rec,
            device,
            loss_sum=loss_sum,
            model=model,
            mix=ts.mixup,
            ema=ts.ema,
            custom_loss=own,
        )

    model.train()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        for b in order:
            step(b)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        out.update(
            cuda_allocated_before_bytes=before, cuda_peak_allocated_bytes=peak, cuda_peak_increment_bytes=peak - before
        )
    else:
        _trim()
        out["rss_setup_peak_bytes"] = _maxrss()
        out["peak_reset"] = _reset_peak_rss()
        before = _rss()
        for b in order:
            step(b)
        peak = _maxrss()
        _trim()
        after = _rss()
        # retained: what stays between steps (AdamW's moments, the runtime's one-time buffers); transient: what one
        # step adds on top of it at its peak (activations, gradients, backward's temporaries)
        out.update(
            rss_before_bytes=before,
            peak_rss_bytes=peak,
            peak_rss_increment_bytes=peak - before,
            rss_after_steps_bytes=after,
            retained_increment_bytes=after - before,
            step_transient_bytes=peak - after,
        )
    if not torch.isfinite(loss_sum):
        raise RuntimeError(f"non-finite loss in {spec}")

    # the saved activations of one forward of a step, per block
    crit = ts.criterion
    per_block = []
    for b in range(blocks):
        if own:
            force_block(model, b)
            fn = lambda: model(x, y)  # noqa: E731
        else:
            fn = lambda: crit(model(x), y)  # noqa: E731
        with autocast_for(rec, device):
            per_block.append(saved_bytes(model, fn))
    worst = max(per_block, key=lambda s: s["activations"])
    out["saved_by_block_bytes"] = [s["activations"] for s in per_block]
    out["saved_activation_bytes"] = worst["activations"]
    out["saved_layer_bytes"], out["saved_shared_bytes"] = worst["layers"], worst["shared"]
    out["saved_weight_copy_bytes"] = worst["weight_copies"]
    return out


# ----------------------------------------------------------------------------------------------------------------
# The grid


def configs(toy: bool = False, widths=None, blocks=BLOCKS, batch: int = 128, img_size: int = 32) -> list[dict]:
    """The grid: per width, end-to-end then DiffusionBlocks at every B that divides the depth."""
    sizes = TOY if toy else dict(model=None, widths=widths or WIDTHS, batch=batch, img_size=img_size)
    out = []
    for width, depth, heads in sizes["widths"]:
        base = dict(width=width, depth=depth, heads=heads, batch=sizes["batch"], img_size=sizes["img_size"])
        if sizes["model"]:
            base["model"] = sizes["model"]
        out.append({**base, "method": "end-to-end", "blocks": 1})
        out += [{**base, "method": "diffusionblocks", "blocks": b} for b in blocks if depth % b == 0]
    return out


def run_fresh(spec: dict, timeout: float | None = None) -> dict:
    """:func:`measure` in a fresh interpreter (its peak RSS is this configuration's alone)."""
    cmd = [sys.executable, "-m", "benchmarks.diffusionblocks_memory", "--worker", json.dumps(spec)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"worker failed for {spec}:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def add_ratios(rows: list[dict]) -> None:
    """Each row's ratios to the end-to-end row of its width and device, and the promised 1/B."""
    ref = {(r["device"], r["amp"], r["width"]): r for r in rows if r["method"] == "end-to-end"}
    for r in rows:
        e = ref.get((r["device"], r["amp"], r["width"]))
        r["promised_ratio"] = 1 / r["blocks"]
        for key in (
            "saved_activation_bytes",
            "saved_layer_bytes",
            "peak_rss_increment_bytes",
            "step_transient_bytes",
            "cuda_peak_increment_bytes",
        ):
            if e and key in r and e.get(key):
                r[key.replace("_bytes", "_ratio_vs_e2e")] = r[key] / e[key]


def cpu_slug(name: str) -> str:
    """``Intel(R) Xeon(R) Processor (2 cores)`` -> ``intel-xeon-processor``."""
    name = re.sub(r"\((r|tm|c)\)|\(\d+ cores\)", "", name.lower())
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "cpu"


def run_grid(
    specs: list[dict],
    devices: list[str],
    *,
    amps=("bf16",),
    fresh: bool = True,
    threads: int = 1,
    rounds: int = 2,
    log=print,
) -> dict:
    """Every configuration of ``specs`` on every device at every precision; ratios added."""
    import timm

    from rbdc.cost.perf import cpu_info

    from benchmarks.bench_common import device_name

    rows = []
    for dev, amp, spec in itertools.product(devices, amps, specs):
        spec = {**spec, "device": dev, "threads": threads, "rounds": rounds, "amp": amp}
        row = run_fresh(spec) if fresh else measure(spec)
        row["fresh_process"] = fresh
        rows.append(row)
        mem = (
            f"peak RSS +{row['peak_rss_increment_bytes'] / 2**20:.1f} MB"
            if dev == "cpu"
            else f"CUDA peak +{row['cuda_peak_increment_bytes'] / 2**20:.1f} MB"
        )
        log(
            f"diffusionblocks_memory: {dev} {amp} width {row['width']} depth {row['depth']} {row['method']} "
            f"B={row['blocks']}: saved activations {row['saved_activation_bytes'] / 2**20:.1f} MB, {mem}",
            flush=True,
        )
    add_ratios(rows)
    return {
        "kind": "diffusionblocks-memory",
        "cpu": device_name("cpu"),
        "cpu_info": cpu_info(),
        "gpu": torch.cuda.get_device_name(0) if "cuda" in devices else None,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "threads": threads if fresh else torch.get_num_threads(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cuda_measured": "cuda" in devices,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.diffusionblocks_memory",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[4:]),
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the JSON to write (default: reports/bench/diffusionblocks-memory-<cpu>.json)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: the CPU, then CUDA when a GPU is present (default)",
    )
    parser.add_argument(
        "--amp",
        choices=("bf16", "fp32"),
        nargs="+",
        default=None,
        help="precisions to measure (default: bf16, the study recipes', then fp32; --dry-run: bf16)",
    )
    parser.add_argument("--batch", type=int, default=128, help="images per step (default 128, the study's)")
    parser.add_argument(
        "--img-size",
        type=int,
        default=32,
        help="image size in px (default 32, the study's; patch 4: (px/4)^2 + 1 tokens)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="steps per block (DiffusionBlocks: every block in turn, this many times; default 2)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads of each configuration's process (default 1; --dry-run: unchanged)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="toy sizes (test_rbdc_vit, batch 8), in this process (peak RSS not per configuration)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        torch.set_num_threads(spec.get("threads", 1))
        print(json.dumps(measure(spec)))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("diffusionblocks_memory: --device cuda but no CUDA device here", file=sys.stderr)
        return 2
    devices = {"auto": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []), "cpu": ["cpu"], "cuda": ["cuda"]}[
        args.device
    ]
    if "cuda" not in devices:
        print("diffusionblocks_memory: no CUDA device here; CPU figures only (GPU peak memory not measured)")
    import rbdc  # noqa: F401  (registers rbdc's timm models)

    amps = args.amp or (["bf16"] if args.dry_run else ["bf16", "fp32"])
    specs = configs(toy=args.dry_run, batch=args.batch, img_size=args.img_size)
    result = run_grid(
        specs,
        devices,
        amps=amps,
        fresh=not args.dry_run,
        threads=args.threads,
        rounds=1 if args.dry_run else args.rounds,
    )
    result["dry_run"] = args.dry_run
    from benchmarks.bench_common import device_name

    out = args.out or REPO / "reports" / "bench" / f"diffusionblocks-memory-{cpu_slug(device_name('cpu'))}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    from rbdc.runs.rundir import atomic_write_bytes

    atomic_write_bytes(out, (json.dumps(result, indent=1) + "\n").encode())
    print(f"diffusionblocks_memory: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
