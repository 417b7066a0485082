"""Train/test launchers mirroring MMDetection's ``tools/train.py`` and ``tools/test.py``, with the checks it lacks.

Same flags (``--work-dir``, ``--amp``, ``--auto-scale-lr``, ``--resume [PATH]``, ``--cfg-options``, ``--launcher
none|pytorch|slurm|mpi``), plus ``--backbone`` to point the backbone at an rbdc run, checkpoint or export. Before
building anything they fail with the fix named when: the detection stack does not import; the config uses an ``RBDC*``
type without ``custom_imports`` of ``rbdc.detection`` (MMDetection's own tools would stop at a bare registry
``KeyError``); a backbone/neck type or timm model name is unknown, or a ViT has no ``RBDCSimpleFPN``
(:mod:`rbdc.detection.checks`); two bases set the same keys; the backbone checkpoint or a data root is missing. The
balloon set is extracted on first use. ``--iters N`` / ``--epochs N`` shorten the schedule
(:mod:`rbdc.detection.schedule`).

Single process: ``python -m rbdc.detection.train CONFIG``; one node with N GPUs:
``torchrun --nproc_per_node=N -m rbdc.detection.train CONFIG --launcher pytorch``; SLURM:
``srun python -m rbdc.detection.train CONFIG --launcher slurm``.
"""

from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import sys
import time
from pathlib import Path
from typing import Any, Callable

from rbdc.cost import perf
from rbdc.errors import UserError
from rbdc.detection import DetectionStackError, require_stack
from rbdc.detection.checks import check_model
from rbdc.detection.data import check_data_roots, ensure_data_env
from rbdc.detection.schedule import shorten
from rbdc.detection.weights import resolve_checkpoint
from rbdc.nets.checkpoint import sha256
from rbdc.runs.rundir import atomic_write_bytes, code_version

__all__ = ["add_train_arguments", "add_test_arguments", "load_config", "train", "test", "train_main", "test_main"]

BACKBONE_ENV = "BACKBONE_CKPT"
LAUNCHERS = ("none", "pytorch", "slurm", "mpi")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work-dir", metavar="DIR", help="logs and checkpoints (default: ./work_dirs/<config name>)")
    p.add_argument(
        "--cfg-options",
        nargs="+",
        default=None,
        metavar="KEY=VALUE",
        help="override config keys, e.g. train_cfg.max_epochs=24 (MMEngine DictAction syntax)",
    )
    p.add_argument("--launcher", choices=LAUNCHERS, default="none", help="job launcher (default: none)")
    p.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)


def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``rbdc det-train`` / ``python -m rbdc.detection.train``."""
    p.add_argument("config", help="MMDetection config file, e.g. detection/configs/mask-rcnn_rbdc-r50_fpn_1x_coco.py")
    _add_common(p)
    p.add_argument(
        "--backbone",
        metavar="PATH",
        help="backbone weights: an rbdc run folder, its final.safetensors, or a .pth from `rbdc "
        'export-mmdet`; "none" trains from scratch (default: the config\'s, $BACKBONE_CKPT)',
    )
    p.add_argument("--amp", action="store_true", help="mixed precision (needs CUDA)")
    p.add_argument(
        "--amp-dtype",
        choices=("bfloat16", "float16"),
        default=None,
        help="autocast dtype with --amp (default: bfloat16 where the GPU supports it, else float16)",
    )
    p.add_argument("--auto-scale-lr", action="store_true", help="scale the lr by total batch / auto_scale_lr base")
    short = p.add_mutually_exclusive_group()
    short.add_argument(
        "--iters",
        type=int,
        metavar="N",
        help="train N iterations (the lr schedule rescaled to them), validate and checkpoint at the end",
    )
    short.add_argument("--epochs", type=int, metavar="N", help="train N epochs, the lr schedule rescaled to them")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CKPT",
        help="resume from CKPT, or from the latest checkpoint in the work dir when given no value",
    )
    return p


def add_test_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``rbdc det-test`` / ``python -m rbdc.detection.test``."""
    p.add_argument("config", help="MMDetection config file the checkpoint was trained with")
    p.add_argument("checkpoint", help="detector checkpoint (.pth from training)")
    _add_common(p)
    p.add_argument("--out", metavar="PKL", help="also dump raw predictions to this .pkl")
    return p


def _cfg_options(values: list[str] | None) -> dict:
    if not values:
        return {}
    from mmengine.config import DictAction

    ns = argparse.Namespace()
    DictAction(option_strings=["--cfg-options"], dest="cfg_options")(None, ns, values)
    return ns.cfg_options


def _types(node: Any) -> set[str]:
    """Every ``type`` string in a nested config."""
    found = set()
    if isinstance(node, dict):
        if isinstance(node.get("type"), str):
            found.add(node["type"])
        for v in node.values():
            found |= _types(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            found |= _types(v)
    return found


def check_custom_imports(cfg) -> None:
    """Refuse a config that uses ``RBDC*`` types without importing ``rbdc.detection`` (a silent registry miss)."""
    used = sorted(t for t in _types(cfg.get("model", {})) | _types(cfg.get("custom_hooks", [])) if "RBDC" in t)
    imports = (cfg.get("custom_imports") or {}).get("imports", [])
    imports = [imports] if isinstance(imports, str) else list(imports)
    if used and not any(m == "rbdc.detection" or m.startswith("rbdc.detection.") for m in imports):
        raise UserError(
            f"{cfg.filename}: uses {used} but does not import rbdc.detection, so MMDetection would not "
            f"find them; add custom_imports = dict(imports=['rbdc.detection'], "
            f"allow_failed_imports=False) to the config"
        )


def _set_backbone(cfg, backbone: str | None) -> None:
    bb = cfg.model.get("backbone", {})
    if backbone == "":
        raise UserError(
            "--backbone got an empty path (an unset variable such as RBDC_BACKBONE or STD_BACKBONE?); "
            'give an rbdc run folder, a .safetensors or an exported .pth, or "none"'
        )
    if backbone is not None:
        bb["init_cfg"] = None if backbone.lower() == "none" else dict(type="Pretrained", checkpoint=backbone)
    init = bb.get("init_cfg")
    if isinstance(init, dict) and init.get("type") == "Pretrained" and str(bb.get("type", "")).startswith("RBDC"):
        try:
            resolve_checkpoint(init["checkpoint"])
        except UserError as e:
            raise UserError(
                f"backbone checkpoint: {e}. Point the config at one with {BACKBONE_ENV}=PATH or "
                f"--backbone PATH (--backbone none trains from scratch)"
            ) from None


def _fromfile(path: str):
    from mmengine.config import Config

    try:
        return Config.fromfile(path)
    except KeyError as e:  # MMEngine refuses two bases that set the same top-level key
        if "Duplicate key is not allowed among bases" not in str(e):
            raise
        raise UserError(
            f"{path}: {e.args[0]}: two of its _base_ files set the same keys (a "
            f"dataset base beside mmdet's mask-rcnn_r50_fpn_1x_coco.py, which has its own); keep one "
            f'base and set the dataset keys in the config, as in detection/README.md "Your own '
            f'dataset"'
        ) from None


def load_config(args: argparse.Namespace, for_test: bool = False):
    """Load ``args.config`` with the launcher's overrides and checks; returns the MMEngine ``Config``."""
    try:
        require_stack()
    except DetectionStackError as e:
        raise UserError(str(e)) from None
    if not Path(args.config).is_file():
        raise UserError(f"{args.config}: no such config file (the configs are in detection/configs/)")
    cfg = _fromfile(args.config)
    if ensure_data_env(cfg.text):  # variables are substituted at load time: load again with the data root set
        cfg = _fromfile(args.config)
    cfg.launcher = args.launcher
    if args.launcher in ("pytorch", "slurm"):
        import torch

        if not torch.cuda.is_available():  # MMEngine's launchers call torch.cuda.set_device(local_rank) first
            raise UserError(
                f"--launcher {args.launcher} needs CUDA devices (MMEngine binds each process to a GPU); "
                f"on a CPU run with --launcher none"
            )
    cfg.merge_from_dict(_cfg_options(args.cfg_options))
    if getattr(args, "iters", None) is not None or getattr(args, "epochs", None) is not None:
        shorten(cfg, epochs=args.epochs, iters=args.iters)
    check_custom_imports(cfg)
    check_model(cfg.model)
    if for_test:
        # The detector checkpoint holds the backbone: nothing to initialise, nothing to check.
        if cfg.model.get("backbone", {}).get("init_cfg") is not None:
            cfg.model.backbone.init_cfg = None
    else:
        _set_backbone(cfg, getattr(args, "backbone", None))
    check_data_roots(cfg, cfg.text)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    hooks = list(cfg.get("custom_hooks") or [])
    if not any(h.get("type") == "RBDCMetricsHook" for h in hooks):
        cfg.custom_hooks = hooks + [dict(type="RBDCMetricsHook")]
    return cfg


def _build_runner(cfg):
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    return Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)


def train(args: argparse.Namespace) -> int:
    """Train as MMDetection's tools/train.py does (see the module docstring for the added checks)."""
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    cfg = load_config(args)
    if args.amp:
        import torch

        if not torch.cuda.is_available():
            raise UserError("--amp needs a CUDA device (MMEngine's AmpOptimWrapper); drop --amp on CPU")
        dtype = args.amp_dtype or ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.dtype = dtype
        cfg.optim_wrapper.loss_scale = "dynamic"
    if args.auto_scale_lr:
        if not cfg.get("auto_scale_lr", {}).get("base_batch_size"):
            raise UserError(f"{args.config}: --auto-scale-lr needs auto_scale_lr.base_batch_size in the config")
        cfg.auto_scale_lr.enable = True
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        if not Path(args.resume).is_file():
            raise UserError(
                f"--resume {args.resume}: no such checkpoint (give none to resume the latest in the work dir)"
            )
        cfg.resume, cfg.load_from = True, args.resume
    runner = _build_runner(cfg)
    record = _launch_record(cfg, args)
    start = time.time()
    record["trained_s"] = _trained_before(Path(runner.work_dir)) if cfg.resume else 0.0
    record["started_at"] = start
    _write_launch(runner, record)
    runner.train()
    _validate_if_missing(runner)
    record["wall_s"] = round(record["trained_s"] + time.time() - start, 1)  # summed over resumed segments
    _write_launch(runner, record)
    return 0


def _trained_before(work_dir: Path) -> float:
    """Seconds the earlier segments of a resumed run spent: each killed segment counts from its start to its last
    checkpoint (what it trained after that is trained again now)."""
    path = work_dir / "launch.json"
    if not path.is_file():
        return 0.0
    prev = json.loads(path.read_text())
    if prev.get("wall_s") is not None:
        return float(prev["wall_s"])
    ckpts = [p.stat().st_mtime for p in work_dir.glob("*.pth")]
    started = prev.get("started_at")
    last = max(ckpts, default=None)
    return float(prev.get("trained_s") or 0.0) + (max(0.0, last - started) if started and last else 0.0)


def _validate_if_missing(runner) -> None:
    """A run killed during its last validation resumes with nothing left to train, and MMEngine does not validate
    again: do it here, so that its metrics.json ends at the last iteration as an uninterrupted run's does."""
    from mmengine.runner import EpochBasedTrainLoop

    loop, val = runner.train_loop, runner.val_loop
    at = runner.epoch if isinstance(loop, EpochBasedTrainLoop) else runner.iter  # what val_begin counts
    if val is None or runner.iter < loop.max_iters or at < getattr(loop, "val_begin", 1):
        return
    path = Path(runner.work_dir) / "metrics.json"
    done = json.loads(path.read_text()).get("val", []) if path.is_file() else []
    if not done or done[-1]["iter"] != runner.iter:
        val.run()


def _launch_record(cfg, args) -> dict:
    """What a report needs to say about a run besides its metrics: config, backbone file and hash, versions, and the
    code's commit (what replays it)."""
    import mmcv
    import mmdet
    import mmengine
    import timm
    import torch

    init = cfg.model.get("backbone", {}).get("init_cfg") or {}
    backbone = init.get("checkpoint") if isinstance(init, dict) else None
    digest = None
    if backbone:
        backbone = str(resolve_checkpoint(backbone))
        digest = sha256(backbone)
    ds = cfg.get("train_dataloader", {}).get("dataset", {})
    while "dataset" in ds:
        ds = ds["dataset"]
    scale = next((t.get("scale") for t in ds.get("pipeline", []) if t.get("type") == "Resize"), None)
    return {
        "config": Path(args.config).name,
        "config_path": str(args.config),
        "argv": sys.argv,
        "img_scale": list(scale) if scale else None,
        "backbone": backbone,
        "backbone_sha256": digest,
        "launcher": args.launcher,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        **({} if torch.cuda.is_available() else {"cpu": perf.cpu_info()}),  # AVX2 vs AVX-512: wall times differ
        "world_size": int(os.environ.get("WORLD_SIZE", 1)),
        "amp": bool(args.amp),
        "code": code_version(),
        "versions": {
            "torch": torch.__version__,
            "timm": timm.__version__,
            "mmengine": mmengine.__version__,
            "mmcv": mmcv.__version__,
            "mmdet": mmdet.__version__,
        },
        "wall_s": None,
    }


def _write_launch(runner, record: dict) -> None:
    from mmengine.dist import is_main_process

    if is_main_process():
        atomic_write_bytes(Path(runner.work_dir) / "launch.json", (json.dumps(record, indent=1) + "\n").encode())


def test(args: argparse.Namespace) -> int:
    """Evaluate a trained detector; prints the metrics and writes ``<work_dir>/metrics.json`` (``test`` entries)."""
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    if not Path(args.checkpoint).is_file():
        raise UserError(f"{args.checkpoint}: no such detector checkpoint")
    if args.out and not args.out.endswith((".pkl", ".pickle")):
        raise UserError(f"--out {args.out}: the predictions dump must be a .pkl file")
    cfg = load_config(args, for_test=True)
    cfg.load_from = args.checkpoint
    runner = _build_runner(cfg)
    if args.out:
        from mmdet.evaluation import DumpDetResults

        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    metrics = runner.test()
    print(json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, indent=1))
    return 0


def _main(add: Callable, run: Callable, prog: str, argv: list[str] | None) -> int:
    parser = add(argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


def train_main(argv: list[str] | None = None) -> int:
    return _main(add_train_arguments, train, "python -m rbdc.detection.train", argv)


def test_main(argv: list[str] | None = None) -> int:
    return _main(add_test_arguments, test, "python -m rbdc.detection.test", argv)
