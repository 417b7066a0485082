"""Checks of a detection config's names and parts before anything is built, each failing in one line with the fix.

MMDetection reports these mistakes late and raw: an unregistered type is a registry ``KeyError`` deep in the runner, a
wrong timm name a ``RuntimeError`` re-raised by the registry, a ViT left on the default ``FPN`` an ``AssertionError``
at the first forward. The launchers call :func:`check_model` on the loaded config; the backbones call
:func:`check_timm_model` themselves, so ``MODELS.build`` in a user's own script says the same.
"""

from __future__ import annotations

import difflib
from typing import Iterable

from rbdc.errors import UserError
import rbdc  # noqa: F401  (registers the rbdc_* and test_rbdc_* names with timm)

__all__ = ["UnknownNameError", "closest", "check_timm_model", "check_model"]


class UnknownNameError(UserError, ValueError):
    """A type or model name that nothing is registered under."""


def closest(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'X'?)`` for the closest of ``choices`` to ``name`` (difflib), or ``''`` when none is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    if not match:  # case slips ("RBDCVit") are what difflib scores lowest on short names
        match = [c for c in choices if c.lower() == name.lower()][:1]
    return f" (did you mean {match[0]!r}?)" if match else ""


def check_timm_model(name: str, owner: str) -> None:
    """Raise :class:`UnknownNameError` unless ``name`` is a timm model (stock or registered by rbdc)."""
    import timm

    if not timm.is_model(name):
        raise UnknownNameError(
            f"{owner}: model_name {name!r} is not a timm model{closest(name, timm.list_models())}; "
            f"use a name from timm.list_models() (rbdc adds rbdc_*_w<k> and test_rbdc_*)"
        )


def _rbdc_types(models) -> list[str]:
    return sorted(k for k in models.module_dict if k.startswith("RBDC"))


def check_model(model_cfg: dict) -> None:
    """Refuse an unregistered backbone/neck type, a wrong timm ``model_name``, and a ViT backbone without
    ``RBDCSimpleFPN`` (the neck that makes a pyramid from a ViT's single-stride maps).

    Args:
        model_cfg: the config's ``model`` (with ``custom_imports`` already imported, as ``Config.fromfile`` does).
    """
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=False)  # mmdet's own types, so that only real misses are reported
    known = {*MODELS.module_dict, *getattr(MODELS.parent, "module_dict", {})}
    for part in ("backbone", "neck"):
        node = model_cfg.get(part) or {}
        kind = node.get("type")
        if isinstance(kind, str) and MODELS.get(kind) is None:
            raise UnknownNameError(
                f"model.{part}.type {kind!r} is not registered{closest(kind, known)}; rbdc "
                f"registers {', '.join(_rbdc_types(MODELS))} (with custom_imports of "
                f"rbdc.detection), MMDetection its own (ResNet, FPN, ...)"
            )
    backbone, neck = model_cfg.get("backbone") or {}, model_cfg.get("neck") or {}
    if backbone.get("type") in ("RBDCViT", "RBDCResNet") and backbone.get("model_name"):
        check_timm_model(backbone["model_name"], backbone["type"])
    if backbone.get("type") == "RBDCViT" and neck.get("type") != "RBDCSimpleFPN":
        raise UserError(
            f"model.neck is {neck.get('type')!r}, but an RBDCViT backbone gives maps at one stride (the "
            f"patch size), not the 4 strides {neck.get('type') or 'a neck'} expects; use "
            f"neck=dict(_delete_=True, type='RBDCSimpleFPN', in_channels=<ViT width>, "
            f"in_stride=<patch size>)"
        )
