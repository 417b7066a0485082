"""The ``rbdc`` command line: ``rbdc SUBCOMMAND --help`` for each."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from .errors import UserError
from .training.preempt import PREEMPTED_EXIT, Preempted
from .units import human_flops, human_time
from .flops import TRAIN_FLOPS_PER_FORWARD, forward_macs
from .nets.models import family_of, scaled
from .cost.estimate import bench_train_flops_per_s, level_speeds, rbdc_vs_scratch
from .coupling import plan, couple
from .data import TRAIN_SIZES, known_train_size
from . import recipe as recipes
from .nets.checkpoint import load_model, save_weights, sha256
from .report.commands import REPORTS  # the report package writes a study's report: no study -> report import

# Subcommands defined in other modules: each exposes add_cli(subparsers). Imported lazily so that, e.g., a broken
# detection stack never breaks `rbdc flops`.
_PLUGINS = ("rbdc.runs.train", "rbdc.studies.study", "rbdc.quickstart", "rbdc.report", "rbdc.detection.cli")


def _fmt_table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    head = [c[1] for c in cols]
    body = [[format(r[c[0]], c[2]) if c[2] else str(r[c[0]]) for c in cols] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda xs: "  ".join(x.rjust(w) for x, w in zip(xs, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def check_output(path: str | Path, flag: str, *, directory: bool = False) -> Path:
    """Refuse an output path that cannot be written: a directory where a file is due (or the reverse), or a path
    under an existing file."""
    path = Path(path)
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, not a directory; pick a path in a directory")
    if path.exists() and path.is_dir() != directory:
        want, got = ("a directory", "a file") if directory else ("a file", "a directory")
        raise UserError(
            f"{flag} {path} is {got}; pass {want}" + ("" if directory else f", e.g. {path / 'coupled.safetensors'}")
        )
    return path


def check_img_size(img_size: int | None) -> None:
    if img_size is not None and img_size < 1:
        raise UserError(f"--img-size must be a positive number of pixels, got {img_size}; omit it for the model's")


def cmd_flops(args) -> int:
    import torch

    check_img_size(args.img_size)
    try:
        with torch.device("meta"):
            model = scaled(args.model, 1)
            if args.img_size and family_of(model) == "vit":  # the position embedding follows the input size
                model = scaled(args.model, 1, img_size=args.img_size)
    except ValueError as e:
        raise UserError(str(e)) from e
    macs = forward_macs(model, args.img_size)
    size = args.img_size or model.pretrained_cfg["input_size"][-1]
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{args.model} @ {size}px: params {params / 1e6:.2f} M | forward {macs / 1e9:.3f} GMACs "
        f"= {human_flops(2 * macs)} | training {human_flops(TRAIN_FLOPS_PER_FORWARD * 2 * macs)} per image "
        f"(3 x forward)"
    )
    return 0


def _plan_speed(args, rows: list[dict]) -> dict[int, float] | None:
    """Training FLOP/s per level: measured here (--estimate) or from the committed benchmarks (--gpu)."""
    if args.gpu:
        return {r["level"]: bench_train_flops_per_s(args.gpu, r["model"]) for r in rows}
    if args.estimate:  # this CPU kind's cost model where fitted, else a few steps measured here
        speed, args.where, args.slow = level_speeds(
            args.target, rows, args.img_size, amp=args.amp, batch=args.batch, log=lambda line: print(line, flush=True)
        )
        return speed
    return None


PLAN_DATA = "imagenet"  # the dataset of a plan given no recipe: ImageNet-1k's train split, as the paper's targets


def _plan_settings(args) -> str:
    """Fill the plan's target, depth, k and image size from ``--recipe`` where not given, and its images per epoch:
    ``--dataset-size``, else the known size (:data:`rbdc.data.TRAIN_SIZES`) of the recipe's dataset (no recipe:
    ImageNet-1k). Returns the words saying where the size comes from."""
    rec = recipes.resolve(args.recipe) if args.recipe else None
    if args.target is None:
        if rec is None:
            raise UserError("name a target model or a recipe (--recipe)")
        args.target = rec.model
    if args.depth is None:
        args.depth = rec.rbdc.depth if rec else 1
    if args.k is None:
        args.k = rec.rbdc.k if rec else 2
    if args.img_size is None and rec is not None:
        args.img_size = rec.img_size
    data = rec.data if rec else recipes.DataKeys(source=PLAN_DATA)
    if args.dataset_size is not None:
        return "--dataset-size"
    args.dataset_size = known_train_size(data)
    if args.dataset_size is None:
        raise UserError(
            f"the training-set size of {args.recipe or 'the plan'}'s data ({data.source}"
            f"{', subset' if data.subset else ''}) is not known without reading it (known: {', '.join(TRAIN_SIZES)}); "
            f"pass --dataset-size N"
        )
    return f"{data.source}'s train split" + (f" less the {data.holdout} holdout" if data.holdout is not None else "")


def cmd_plan(args) -> int:
    where = _plan_settings(args)
    check_img_size(args.img_size)
    try:
        rows = plan(args.target, args.depth, k=args.k, img_size=args.img_size, dataset_size=args.dataset_size)
    except ValueError as e:
        raise UserError(str(e)) from e
    speed = _plan_speed(args, rows)
    for r in rows:
        r["train_per_image"] = human_flops(r["train_gflops_per_image"] * 1e9)
        r["level_per_epoch"] = human_flops(r["level_train_pflops_per_epoch"] * 1e15)
        if speed:
            r["time_per_epoch"] = human_time(r["level_train_pflops_per_epoch"] * 1e15 / speed[r["level"]])
    print(
        f"RBDC plan: {args.target}, depth {args.depth}, k={args.k}, FLOPs per epoch of {args.dataset_size:,} images "
        f"({where})"
    )
    cols = [
        ("level", "level", ""),
        ("count", "models", ""),
        ("width", "width", ""),
        ("model", "model", ""),
        ("params", "params", ",d"),
        ("gmacs", "GMACs/img", ".3f"),
        ("train_per_image", "train FLOPs/img", ""),
        ("level_per_epoch", "level FLOPs/epoch", ""),
    ]
    if speed:
        where = f"at the benchmarked speed of {args.gpu}" if args.gpu else args.where
        cols.append(("time_per_epoch", "time/epoch", ""))
    print(_fmt_table(rows, cols))
    if speed:
        print(rbdc_vs_scratch(rows, speed, where, getattr(args, "slow", None)))
    return 0


def cmd_couple(args) -> int:
    out = check_output(args.output, "-o")
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; pass --force to overwrite it")
    if len(args.checkpoints) < 2:
        raise UserError(f"couple needs at least 2 checkpoints, got {len(args.checkpoints)}")
    models = [load_model(p, args.model) for p in args.checkpoints]
    try:
        wide = couple(models, head=args.head, norm="plain")
    except ValueError as e:
        raise UserError(str(e)) from e
    save_weights(
        wide,
        out,
        coupled_from=[{"path": str(p), "sha256": sha256(p)} for p in args.checkpoints],
        coupling={"k": len(models), "head": args.head, "norm": "plain"},
    )
    print(f"coupled {len(models)} x {args.model or 'checkpoint'} -> {out}")
    return 0


def add_command(sub, name: str, help: str, examples: list[str]) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with ``examples`` (lines kept as written)."""
    return sub.add_parser(
        name,
        help=help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n" + "".join(f"  {e}\n" for e in examples),
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rbdc", description="Recursive Block-Diagonal Coupling: train, couple, compare.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_flops, _add_plan, _add_couple, _add_keys, _add_plugins):
        add(sub)
    return p


def _add_flops(sub) -> None:
    """``rbdc flops``."""
    f = add_command(
        sub,
        "flops",
        "params, GMACs, GFLOPs and training FLOPs per image of a model",
        [
            "rbdc flops deit_base_patch16_224            # 17.6 GMACs = 35.1 GFLOPs, x3 to train",
            "rbdc flops rbdc_resnet50_w2                 # a registered narrow variant",
            "rbdc flops rbdc_vit_nano_patch4_32 --img-size 32",
        ],
    )
    f.add_argument("model", help="timm model name, e.g. deit_base_patch16_224 or rbdc_resnet50_w2")
    f.add_argument("--img-size", type=int, default=None, help="input size in pixels (default: the model's)")
    f.set_defaults(func=cmd_flops)


def _add_plan(sub) -> None:
    """``rbdc plan``."""
    pl = add_command(
        sub,
        "plan",
        "the levels of an RBDC recursion towards a target model",
        [
            "rbdc plan deit_base_patch16_224 --depth 2        # 4 DeiT-Ti -> 2 DeiT-S -> DeiT-B",
            "rbdc plan resnet50 --depth 2 --estimate          # + time per epoch measured here",
            "rbdc plan deit_base_patch16_224 --gpu H100       # + time from the benchmarked speeds",
            "rbdc plan -c configs/recipes/imagenette32/vit-nano-rbdc-d1.yaml --estimate  # its model and data",
            "rbdc plan rbdc_vit_nano_patch4_32 --dataset-size 9469 --estimate",
        ],
    )
    pl.add_argument("target", nargs="?", help="target timm model, e.g. deit_base_patch16_224 (default: the recipe's)")
    pl.add_argument(
        "-c",
        "--recipe",
        default=None,
        help="a recipe: its model, depth, k, image size and dataset are the defaults of the flags below",
    )
    pl.add_argument("--depth", type=int, default=None, help="recursion depth r: k**r narrow models at level 0 (1)")
    pl.add_argument("-k", type=int, default=None, help="models coupled per step (default 2)")
    pl.add_argument("--img-size", type=int, default=None)
    pl.add_argument(
        "--dataset-size",
        type=int,
        default=None,
        help="images per epoch (default: the known size of the recipe's dataset; no recipe: ImageNet-1k)",
    )
    pl.add_argument(
        "--estimate",
        action="store_true",
        help="time per epoch of each level and RBDC vs scratch at equal FLOPs: by this CPU kind's cost "
        "model (rbdc/cost/fitted/costmodel-*.json), else from a few training steps measured here",
    )
    pl.add_argument(
        "--amp",
        choices=("fp32", "bf16"),
        default="fp32",
        help="precision of --estimate (the cost model's fit or the measured steps)",
    )
    pl.add_argument("--batch", type=int, default=128, help="batch of --estimate's cost model (default 128)")
    pl.add_argument(
        "--gpu",
        metavar="NAME",
        default=None,
        help="time per epoch on the device NAME from its benchmarked speeds (rbdc/cost/fitted/train-step.json)",
    )
    pl.set_defaults(func=cmd_plan)


def _add_couple(sub) -> None:
    """``rbdc couple``."""
    c = add_command(
        sub,
        "couple",
        "couple k narrow checkpoints (safetensors) into one k x wider checkpoint",
        [
            "rbdc couple a.safetensors b.safetensors -o wide.safetensors",
            "rbdc couple runs/x/seed0/stages/L0.{0,1}/final.safetensors -o wide.safetensors --head sum",
        ],
    )
    c.add_argument("checkpoints", nargs="+", help="narrow .safetensors files (from rbdc runs or rbdc.save_weights)")
    c.add_argument("--model", default=None, help="timm name of the narrow models (default: from the files)")
    c.add_argument("--head", choices=("mean", "sum"), default="mean", help="classifier: mean (default) or sum")
    c.add_argument("-o", "--output", required=True, help="output .safetensors file")
    c.add_argument("--force", action="store_true", help="overwrite the output")
    c.set_defaults(func=cmd_couple)


def _add_keys(sub) -> None:
    """``rbdc keys``."""
    k = add_command(
        sub,
        "keys",
        "the recipe keys: default, accepted values, meaning",
        ["rbdc keys            # every key", "rbdc keys rbdc.       # the RBDC protocol's keys"],
    )
    k.add_argument("pattern", nargs="?", default="", help="only keys containing this text")
    k.set_defaults(func=lambda args: print(__import__("rbdc.recipe").recipe.describe(args.pattern)))


def _add_plugins(sub) -> None:
    """The subcommands of the modules in :data:`_PLUGINS` (train, study, report, ...); a plugin whose optional stack
    (mmdet) is not installed is left out."""
    for mod in _PLUGINS:
        try:
            module = importlib.import_module(mod)
        except ImportError as e:
            if e.name and (e.name == mod or mod.startswith(e.name + ".") or e.name.startswith("mm")):
                continue
            raise
        module.add_cli(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func = args.func
    if getattr(args, "report", False) and args.command in ("study", "det-study"):
        func = REPORTS[args.command]
    try:
        return int(func(args) or 0)
    except UserError as e:
        print(f"rbdc {args.command}: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)  # 2; a run held by another launcher: runlock.HELD_EXIT
    except KeyboardInterrupt:
        print(f"rbdc {args.command}: interrupted", file=sys.stderr)
        return 130
    except Preempted as e:  # the checkpoint is written: a scheduler requeues on this code (submitit's)
        print(f"rbdc {args.command}: {e}", file=sys.stderr)
        return PREEMPTED_EXIT


if __name__ == "__main__":
    sys.exit(main())
