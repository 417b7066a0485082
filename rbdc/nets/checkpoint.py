"""Weights files: safetensors with the metadata needed to rebuild the model, written atomically."""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path
from typing import Callable

import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save

from ..errors import UserError
from .layers import group_norms, grouped_norms
from .models import arch_of, from_import_path, import_path, scaled
from .variants import rebuild_name
from ..files import atomic_write_bytes, sha256

__all__ = ["save_weights", "load_weights", "load_model", "register_rebuild", "sha256", "atomic_write_bytes"]

_REBUILD: dict[str, Callable[..., nn.Module]] = {}


def register_rebuild(key: str, build: Callable[..., nn.Module]) -> None:
    """Models whose ``rbdc_arch`` holds ``key`` (widths no registered timm name describes, e.g. GradMax's
    ``inner_widths``) are saved with ``arch[key]`` and rebuilt on load by ``build(name, arch[key], **timm_kwargs)``.

    The module that makes such models registers its builder when it is imported (``import rbdc`` imports them all).
    """
    _REBUILD[key] = build


def _sorted_metadata(data: bytes) -> bytes:
    """The safetensors file ``data`` with its metadata keys sorted: safetensors writes them in hash-map order, which
    changes from process to process, so the same weights would get a different sha256 each time."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    if "__metadata__" in header:
        meta = dict(sorted(header.pop("__metadata__").items()))
        header = {"__metadata__": meta, **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the tensor data stays 8-byte aligned, as safetensors pads it
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def save_weights(model: nn.Module, path: str | os.PathLike, **meta) -> Path:
    """Write ``model``'s weights (and buffers) as safetensors, with how to rebuild it in the metadata.

    Metadata: ``model`` (a timm name that builds this width: registered now for an unregistered 1/d width, see
    :func:`rbdc.nets.variants.rebuild_name`; absent when none does), ``arch`` (json: base name, width factor, timm
    kwargs with classes as ``{"import": "module.Name"}``, the parts of grouped LayerNorms, the keys of
    :func:`register_rebuild`, e.g. GradMax's ``inner_widths``), ``num_classes`` and any ``meta`` given (stringified).
    """
    arch = arch_of(model)
    desc = {"name": arch["name"], "factor": str(arch["factor"]), "kwargs": arch["kwargs"]}
    desc.update({key: arch[key] for key in _REBUILD if key in arch})
    if grouped_norms(model):
        desc["grouped_norms"] = grouped_norms(model)
    name = rebuild_name(arch["name"], arch["factor"])
    info = {"model": name, "num_classes": str(model.num_classes), "arch": _dump_arch(desc)}
    if name is None:
        del info["model"]
    info.update({k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in meta.items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return atomic_write_bytes(path, _sorted_metadata(save(tensors, metadata=info)))


def _dump_arch(desc: dict) -> str:
    try:
        return json.dumps(desc, sort_keys=True, default=lambda obj: {"import": import_path(obj)})
    except ValueError as e:
        raise ValueError(f"cannot record how to rebuild this model: {e}") from e


def _load_arch(text: str) -> dict:
    return json.loads(text, object_hook=lambda d: from_import_path(d["import"]) if set(d) == {"import"} else d)


def load_weights(path: str | os.PathLike) -> tuple[dict, dict]:
    """Read a safetensors weights file: (state_dict, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file (expected a .safetensors file written by rbdc)")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for corrupt/foreign files
        raise UserError(f"{path}: not a readable safetensors file ({e}); pass a checkpoint written by rbdc") from e


def load_model(path: str | os.PathLike, model: str | None = None, **timm_kwargs) -> nn.Module:
    """Rebuild the model stored in ``path`` (its metadata says which, or pass ``model``) and load its weights."""
    sd, meta = load_weights(path)
    try:
        arch = _load_arch(meta["arch"]) if "arch" in meta else {}
    except (ValueError, ImportError, AttributeError) as e:
        raise UserError(
            f"{path}: its metadata names a setting this environment cannot import ({e}); pass --model NAME"
        ) from e
    if model is None and arch:
        kwargs = {**arch["kwargs"], **timm_kwargs}
        key = next((k for k in _REBUILD if k in arch), None)
        try:
            if key is not None:
                net = _REBUILD[key](arch["name"], arch[key], **kwargs)
            else:
                net = scaled(arch["name"], Fraction(arch["factor"]), **kwargs)
        except ValueError as e:
            raise UserError(f"{path}: cannot rebuild the model its metadata names: {e}; pass --model NAME") from e
    else:
        name = model or meta.get("model")
        if not name:
            raise UserError(f"{path}: the file does not say which model it holds; pass --model NAME")
        if "num_classes" in meta and "num_classes" not in timm_kwargs:
            timm_kwargs["num_classes"] = int(meta["num_classes"])
        try:
            net = scaled(name, 1, **timm_kwargs)
        except ValueError as e:
            raise UserError(
                f"{path}: cannot build {'--model ' if model else 'the model its metadata names, '}{name}: {e}"
            ) from e
    tried = model or meta.get("model") or arch.get("name")
    try:
        group_norms(net, arch.get("grouped_norms", {}))
    except (ValueError, TypeError, AttributeError) as e:
        raise UserError(
            f"{path}: its grouped LayerNorms do not fit {tried}: {e}; pass the --model the checkpoint was trained as"
        ) from e
    try:
        missing, unexpected = net.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches raise even with strict=False
        raise UserError(
            f"{path}: weights do not fit {tried}: {str(e).splitlines()[-1].strip()}; "
            f"pass the --model the checkpoint was trained as"
        ) from e
    if missing or unexpected:
        raise UserError(
            f"{path}: weights do not fit {tried} (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); pass the --model the checkpoint was trained as"
        )
    return net
