"""Detection subcommands of ``rbdc``: ``export-mmdet``, ``doctor``, ``det-train``, ``det-test``, ``det-study``.

Kept light: importing it costs only the package import (MMDetection's registry, ~0.3 s beside rbdc's torch/timm);
runners, datasets and ops are imported when a subcommand runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rbdc.errors import UserError
from rbdc.detection.weights import export_backbone
from rbdc.detection.doctor import cmd_doctor
from rbdc.detection.launch import train, test, add_test_arguments, add_train_arguments
from rbdc.detection.study import add_cli as add_study

__all__ = ["add_cli", "cmd_export", "config_snippet"]


def cmd_export(args) -> int:
    out = Path(args.output)
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; pass --force to overwrite it")
    meta = export_backbone(args.checkpoint, out)
    kind = "RBDCViT" if meta["family"] == "vit" else "RBDCResNet"
    print(
        f"wrote {out}: backbone of {meta['model'] or '?'} from {meta['source']} ({meta['num_params'] / 1e6:.2f}M "
        f"params; dropped {meta['dropped_keys'] or 'nothing'}); keys match {kind}(model_name={meta['model']!r})"
    )
    print(f"config (paste below _base_ = '{MMDET_BASE}'):")
    print(config_snippet(meta, out))
    return 0


MMDET_BASE = "mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py"


def config_snippet(meta: dict, checkpoint: str | Path) -> str:
    """Config lines that put an exported backbone into an MMDetection Mask R-CNN config (``MMDET_BASE``).

    ``_delete_=True`` drops the base's ResNet arguments (``depth``, ``num_stages``...) that the RBDC backbones do not
    take; the neck is sized from the model: ``RBDCSimpleFPN`` for a ViT, the FPN's ``in_channels`` for a ResNet.
    """
    import timm
    import torch

    name = meta["model"]
    vit = meta["family"] == "vit"
    img = {"img_size": tuple(meta["img_size"])} if vit and meta.get("img_size") else {}
    extra = f", img_size={img['img_size']}" if img else ""
    kind = "RBDCViT" if vit else "RBDCResNet"
    lines = [
        "custom_imports = dict(imports=['rbdc.detection'], allow_failed_imports=False)",
        "model = dict(",
        f"    backbone=dict(_delete_=True, type='{kind}', model_name='{name}'{extra},",
        f"                  init_cfg=dict(type='Pretrained', checkpoint='{checkpoint}')),",
    ]
    if not (name and timm.is_model(name)):
        return "\n".join(lines + ["    # set the neck to the backbone's widths (the model is not a timm name)", ")"])
    with torch.device("meta"):
        trunk = timm.create_model(name, pretrained=False, num_classes=0, **img)
    if vit:
        neck = (
            f"neck=dict(_delete_=True, type='RBDCSimpleFPN', in_channels={trunk.embed_dim}, "
            f"in_stride={trunk.patch_embed.patch_size[0]}))"
        )
    else:
        neck = f"neck=dict(in_channels={[trunk.feature_info[i]['num_chs'] for i in (1, 2, 3, 4)]}))"
    return "\n".join(lines + ["    " + neck])


def _cmd_doctor(args) -> int:
    return cmd_doctor(args)


def _cmd_train(args) -> int:
    return train(args)


def _cmd_test(args) -> int:
    return test(args)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the detection subcommands to the ``rbdc`` command line."""
    e = subparsers.add_parser(
        "export-mmdet",
        help="write an rbdc checkpoint as an MMDetection backbone .pth",
        description='Write {"state_dict", "meta"} whose keys match RBDCViT/RBDCResNet exactly '
        "(trunk.<timm key>, classifier dropped).",
    )
    e.add_argument("checkpoint", help="rbdc run folder (holding final.safetensors) or a .safetensors checkpoint")
    e.add_argument("-o", "--output", required=True, help="output .pth")
    e.add_argument("--force", action="store_true", help="overwrite the output")
    e.set_defaults(func=cmd_export)

    d = subparsers.add_parser("doctor", help="check the detection stack: versions, mmcv compiled ops, registry")
    d.add_argument("--json", action="store_true", help="print the checks as JSON")
    d.set_defaults(func=_cmd_doctor)

    t = subparsers.add_parser("det-train", help="train an MMDetection config (as mmdet tools/train.py, with checks)")
    add_train_arguments(t).set_defaults(func=_cmd_train)
    s = subparsers.add_parser("det-test", help="evaluate a trained detector (as mmdet tools/test.py)")
    add_test_arguments(s).set_defaults(func=_cmd_test)

    add_study(subparsers)
