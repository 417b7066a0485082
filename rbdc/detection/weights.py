"""Backbone checkpoints for MMDetection: export from rbdc runs, and a strict, reported load.

The detection backbones (:mod:`rbdc.detection.backbones`) hold a timm model without its classifier as ``trunk``, so
their state-dict keys are ``trunk.<timm key>``. :func:`export_backbone` writes exactly those keys; :func:`load_backbone`
refuses a checkpoint that misses or adds any (MMEngine's own ``Pretrained`` init loads with ``strict=False`` and only
warns, which is how detection fine-tunes silently start from random weights) and logs what it loaded.

Only torch, timm and safetensors are needed here: a checkpoint can be exported on a machine without MMDetection.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from rbdc.errors import UserError
from rbdc.runs.rundir import FINAL, atomic_write
from rbdc.nets.checkpoint import load_model, load_weights, sha256
import rbdc  # noqa: F401  (registers rbdc_* names with timm)

__all__ = [
    "TRUNK",
    "CheckpointKeyError",
    "resolve_checkpoint",
    "export_state_dict",
    "export_backbone",
    "read_state_dict",
    "load_backbone",
    "classifier_prefixes",
]

TRUNK = "trunk."  # attribute of the backbones that holds the timm model
RUN_FILE = FINAL  # what an rbdc training run leaves in its folder
logger = logging.getLogger(__name__)


class CheckpointKeyError(UserError, ValueError):
    """A backbone checkpoint whose keys or shapes do not fit the backbone it is loaded into."""


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A file path from a checkpoint path or an rbdc run folder (which holds ``final.safetensors``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        if (path / RUN_FILE).is_file():
            return path / RUN_FILE
        found = sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", ".pth", ".pt"))
        raise UserError(
            f"{path}: run folder without {RUN_FILE} (found {found or 'no checkpoints'}); pass the "
            f"checkpoint file itself or wait for the run to finish"
        )
    if not path.is_file():
        raise UserError(
            f"{path}: no such checkpoint; pass an rbdc run folder, its {RUN_FILE}, or a .pth written by "
            f"`rbdc export-mmdet`"
        )
    return path


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Key prefixes of a timm model's classifier(s) (``head.``, ``head_dist.``, ``fc.``), from its pretrained_cfg."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    cls = cfg.get("classifier", "head")
    return tuple(f"{c}." for c in ((cls,) if isinstance(cls, str) else cls))


def export_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Backbone state dict (``trunk.*`` keys, classifier dropped) and metadata from an rbdc checkpoint or run folder.

    The model is rebuilt from the checkpoint's own metadata and loaded strictly
    (:func:`rbdc.nets.checkpoint.load_model`), so a file that does not hold the model it names fails here, not at
    detection time.
    """

    src = resolve_checkpoint(path)
    if src.suffix != ".safetensors":
        raise UserError(
            f"{src}: export-mmdet reads rbdc .safetensors checkpoints (or run folders); a .pth is "
            f"loaded by the backbone directly"
        )
    model = load_model(src)
    full = set(model.state_dict())
    model.reset_classifier(0)
    state = {TRUNK + k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _, rbdc_meta = load_weights(src)
    meta = {
        "model": rbdc_meta.get("model", ""),
        "family": "vit" if hasattr(model, "patch_embed") else "cnn",
        "source": str(src),
        "source_sha256": sha256(src),
        "dropped_keys": sorted(full - {k[len(TRUNK) :] for k in state}),
        "num_params": int(sum(p.numel() for p in model.parameters())),
        "rbdc_meta": dict(rbdc_meta),
    }
    if hasattr(model, "patch_embed"):
        meta["img_size"] = list(model.patch_embed.img_size)
    return state, meta


def export_backbone(path: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """Write ``{'state_dict': ..., 'meta': ...}`` for the detection backbones; returns the metadata.

    The keys are checked against a freshly built trunk of the named timm model (classifier removed), the same
    construction :class:`~rbdc.detection.backbones.RBDCViT`/``RBDCResNet`` use.
    """
    import timm

    state, meta = export_state_dict(path)
    if meta["model"] and timm.is_model(meta["model"]):
        kwargs = {"img_size": tuple(meta["img_size"])} if "img_size" in meta else {}
        with torch.device("meta"):
            ref = timm.create_model(meta["model"], pretrained=False, num_classes=0, **kwargs)
        _check_keys(
            {k: v for k, v in state.items()},
            {TRUNK + k: v for k, v in ref.state_dict().items()},
            f"export of {meta['source']} as {meta['model']}",
            strict=True,
        )
    atomic_write(out, lambda f: torch.save({"state_dict": state, "meta": meta}, f))
    return meta


def read_state_dict(path: str | os.PathLike, prefix: str | None = None) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """State dict, metadata and resolved file of any checkpoint a backbone accepts.

    Accepted: an rbdc run folder or ``.safetensors`` (converted as by :func:`export_state_dict`); a ``.pth`` from
    ``rbdc export-mmdet`` (``{'state_dict': ...}``); a timm/DeiT-style classifier checkpoint (``{'model': ...}`` or a
    bare state dict of timm keys), whose classifier is dropped later against the backbone. ``prefix`` keeps only the
    keys that start with it and strips it (MMEngine's ``Pretrained`` semantics, e.g. ``'backbone.'``).
    """
    src = resolve_checkpoint(path)
    if src.suffix == ".safetensors":
        state, meta = export_state_dict(src)
    else:
        # weights_only: a backbone file is data; a pickle that needs more than tensors and plain containers is refused.
        try:
            ckpt = torch.load(src, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises UnpicklingError/RuntimeError/EOFError for foreign or broken files
            raise UserError(
                f"{src}: not a readable torch checkpoint ({type(e).__name__}: {str(e)[:200]}); "
                f"re-export it with `rbdc export-mmdet`"
            ) from e
        if not isinstance(ckpt, dict):
            raise UserError(
                f"{src}: holds a {type(ckpt).__name__}, not a state dict; re-export it with `rbdc export-mmdet`"
            )
        meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}
        for key in ("state_dict", "model", "module"):
            if isinstance(ckpt.get(key), dict):
                state = ckpt[key]
                break
        else:
            state = ckpt
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if prefix:
        if not any(k.startswith(prefix) for k in state):
            raise CheckpointKeyError(
                f"{src}: no key starts with prefix {prefix!r} (first keys: "
                f"{sorted(state)[:3]}); drop the prefix from init_cfg or fix it"
            )
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP-wrapped model
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state, meta, src


def load_backbone(
    backbone: nn.Module,
    path: str | os.PathLike,
    prefix: str | None = None,
    strict: bool = True,
    log: logging.Logger | None = None,
) -> dict[str, Any]:
    """Load a checkpoint into a detection backbone, refusing missing/unexpected keys and wrong shapes.

    Timm-keyed checkpoints are mapped onto ``trunk.``; their classifier keys are dropped (and reported). A ViT's
    absolute position embedding is resampled when the checkpoint was trained at another image size.

    Args:
        backbone: a module whose timm model is ``backbone.trunk``.
        path: checkpoint file or rbdc run folder (see :func:`read_state_dict`).
        prefix: keep and strip only keys starting with this (e.g. ``'backbone.'`` for a whole detector).
        strict: raise :class:`CheckpointKeyError` on any missing or unexpected key (default); with False they are
            only reported.
        log: where the coverage summary goes (default: this module's logger).

    Returns:
        The coverage summary: ``loaded``, ``missing``, ``unexpected``, ``dropped``, ``resampled``, ``source``.
    """
    log = log or logger
    state, meta, src = read_state_dict(path, prefix)
    trunk = backbone.trunk
    expected = backbone.state_dict()
    if not any(k.startswith(TRUNK) for k in state):  # timm keys: a classifier checkpoint, not an export
        cls = classifier_prefixes(trunk)
        dropped = sorted(k for k in state if k.startswith(cls) and TRUNK + k not in expected)
        state = {TRUNK + k: v for k, v in state.items() if k not in dropped}
    else:
        dropped = []
    dropped += list(meta.get("dropped_keys", []))
    resampled = _resample_pos_embed(state, expected, trunk)
    report = _check_keys(
        state,
        expected,
        f"{type(backbone).__name__} <- {src}",
        strict=strict,
        hint=_model_hint(meta.get("model"), trunk),
    )
    backbone.load_state_dict(state, strict=False)
    n_loaded = sum(state[k].numel() for k in report["loaded"])
    n_total = sum(v.numel() for v in expected.values())
    log.info(
        f"{type(backbone).__name__}: loaded {len(report['loaded'])}/{len(expected)} tensors "
        f"({n_loaded / 1e6:.2f}M of {n_total / 1e6:.2f}M values) from {src}"
        + (f" [model {meta['model']}]" if meta.get("model") else "")
        + (f"; dropped classifier keys {dropped}" if dropped else "")
        + (f"; resampled {resampled}" if resampled else "")
        + (f"; MISSING {len(report['missing'])}: {report['missing'][:5]}" if report["missing"] else "")
        + (f"; UNEXPECTED {len(report['unexpected'])}: {report['unexpected'][:5]}" if report["unexpected"] else "")
    )
    return {**report, "dropped": dropped, "resampled": resampled, "source": str(src), "meta": meta}


def _resample_pos_embed(state: dict, expected: dict, trunk: nn.Module) -> str:
    """Resample a checkpoint's ViT position embedding to the backbone's grid (training at another image size)."""
    key = TRUNK + "pos_embed"
    if key not in state or key not in expected or state[key].shape == expected[key].shape:
        return ""
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(trunk, "no_embed_class", False) else getattr(trunk, "num_prefix_tokens", 0)
    old_grid = _grid(state[key].shape[1] - prefix)
    new_grid = tuple(trunk.patch_embed.grid_size)
    state[key] = resample_abs_pos_embed(state[key], new_size=new_grid, old_size=old_grid, num_prefix_tokens=prefix)
    return f"pos_embed {old_grid} -> {new_grid}"


def _grid(n: int) -> tuple[int, int]:
    side = math.isqrt(n)
    if side * side != n:
        raise CheckpointKeyError(
            f"position embedding of {n} patch tokens is not a square grid; set the backbone's "
            f"img_size to the size the checkpoint was trained at"
        )
    return side, side


def _model_hint(recorded: str | None, trunk: nn.Module) -> str:
    """What the checkpoint's metadata says it holds, when that is not the model the backbone was built as."""
    built = (getattr(trunk, "pretrained_cfg", None) or {}).get("architecture")
    if not recorded or recorded == built:
        return ""
    return f"; its metadata records model {recorded!r} (the backbone is {built!r}): set model_name='{recorded}'"


def _check_keys(state: dict, expected: dict, what: str, strict: bool, hint: str = "") -> dict[str, list[str]]:
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    shapes = sorted(
        f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    )
    if shapes:
        raise CheckpointKeyError(
            f"{what}: {len(shapes)} tensors have the wrong shape ({shapes[:3]}); the checkpoint "
            f"holds another architecture: set the backbone's model_name to the model the "
            f"checkpoint was trained as{hint}"
        )
    if strict and (missing or unexpected):
        raise CheckpointKeyError(
            f"{what}: {len(missing)} missing keys {missing[:4]}, {len(unexpected)} unexpected keys {unexpected[:4]}; "
            f"export the checkpoint with `rbdc export-mmdet RUN_DIR -o backbone.pth` for this backbone (keys "
            f'"{TRUNK}<timm key>"), set init_cfg.prefix if it is a whole detector, or check model_name{hint}'
        )
    return {"loaded": sorted(k for k in state if k in expected), "missing": missing, "unexpected": unexpected}
