"""Recipes are data: YAML files under ``benchmarks/recipes/`` with an optional ``base:`` parent, resolved into one
flat-ish dict that the run directory stores (``recipe.yaml``) and that replays the run."""
from __future__ import annotations

import copy
import functools
import json
import math
import re
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from . import protocols
from .errors import UserError


# Every key a recipe may set, with its default. Nested dicts (data, rbdc, aug) merge key by key.
DEFAULTS: dict[str, Any] = {
    "name": None,               # experiment name without the seed, e.g. imagenette-vit/rbdc-d1 (the report's group)
    "protocol": "scratch",      # one of rbdc.protocols (scratch | rbdc | net2net | gradmax | mixturegrowth | ...)
    "model": None,              # target timm model (the final model of every protocol)
    "model_kwargs": {},         # extra timm kwargs (img_size, patch_size, ...)
    "num_classes": None,        # default: the dataset's
    "img_size": 224,
    "seed": 0,
    "seed_stride": 100_000,     # stage seeds: seed x seed_stride + 1000 x level + index (1 in runs before 2026-11-23)
    "data": {"source": "imagenette", "root": None, "subset": None, "in_memory": False, "download": False,
             "val_subset": None},
    # optimisation (DeiT v1 defaults, scaled to the global batch: lr = lr_base * batch_size / 512)
    "epochs": None,             # scratch: epochs; or give `budget` (training FLOPs) or `match` (a run dir)
    "budget": None,             # training FLOPs; or budget_epochs: that many epochs of the target (its FLOPs)
    "budget_epochs": None,
    "match": None,
    "batch_size": 1024,         # GLOBAL batch (all processes, all accumulation steps)
    "micro_batch": None,        # per process per forward; default: batch_size / world size
    "opt": "adamw",
    "lr_base": 5e-4,
    "weight_decay": 0.05,
    "opt_eps": 1e-8,
    "fused": None,              # fused AdamW (default: on CUDA)
    "min_lr": 1e-5,
    "warmup_epochs": 5,
    "warmup_lr": 1e-6,
    # true: warm-up, then a cosine that reaches min_lr on the stage's (lineage's) last step. false: the cosine
    # ended warm-up steps short of min_lr, worst for short stages; runs made before 2026-11-23 used it (their
    # recipe.yaml says so)
    "anneal_to_end": True,
    "clip_grad": None,
    "drop_path": 0.1,
    "smoothing": 0.1,
    "mixup": 0.8,
    "cutmix": 1.0,
    "mixup_prob": 1.0,
    "mixup_switch_prob": 0.5,
    "aug": {"auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.25, "interpolation": "bicubic",
            "color_jitter": 0.4},
    "repeated_aug": False,
    "ema": False,
    "ema_decay": 0.99996,
    "amp": "auto",              # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    "compile": False,
    # attention kernel of timm ViTs: null keeps timm's choice (fused SDPA); false runs the explicit matmul-softmax
    # path, ~6% faster per training step on this CPU for the 32-px study's ViT (head_dim 16, 65 tokens)
    "fused_attn": None,
    "channels_last": "auto",    # auto: on for CNNs on CUDA
    "workers": None,
    "eval_every": 1,            # epochs
    "device": "auto",
    "diffusionblocks": {},      # options of the diffusionblocks protocol (rbdc.diffusionblocks)
    # Growth baselines (net2net, mixturegrowth) reuse rbdc's level settings (epochs, ratio, ratio_type, schedule,
    # optimizer: fresh only) with depth 1: one (net2net) or two (mixturegrowth) half-width models, then grow.
    # gradmax: inner widths x start_factor, grown grow_steps times at even points of grow_span (fractions of the
    # steps), fan-out norm `scale` x the existing units' (growneuron's CIFAR config: 0.25, 12, 10k..37.5k of 78k, 0.5).
    "growth": {"mode": "uniform", "noise_std": 0.01, "coefs": "orthogonal", "noise": 1.0, "num_templates": 2,
               "start_factor": 0.25, "grow_steps": 12, "grow_span": [0.125, 0.5], "scale": 0.5},
    # RBDC protocol
    "rbdc": {"depth": 1, "k": 2, "epochs": None, "ratio": 1.5, "ratio_type": "epochs", "head": "mean",
             "norm": "plain", "offdiag_std": 0.0, "optimizer": "fresh", "schedule": "restart", "jobs": 1},
}


FREE_FORM = ("model_kwargs", "aug", "diffusionblocks")  # dicts whose keys are not checked here


class Loader(yaml.SafeLoader):
    """YAML 1.1 with YAML 1.2's floats: ``1e-3``, ``5e-4`` and ``1e9`` are numbers (PyYAML reads them as strings)."""


_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def load_yaml(text: str):
    return yaml.load(text, Loader=Loader)


class Range(NamedTuple):
    lo: float
    hi: float = math.inf
    lo_inclusive: bool = True


# Types and ranges (or allowed values) of the keys, dotted for nested ones. A type is a tuple of accepted Python
# types (None: null allowed).
_NUM = (int, float)
_POS = Range(0, lo_inclusive=False)
_NONNEG = Range(0)
_UNIT = Range(0, 1)
_ONE = Range(1)
SPEC: dict[str, tuple] = {
    "name": ((str,), None), "protocol": ((str,), None), "model": ((str,), None), "model_kwargs": ((dict,), None),
    "num_classes": ((int, None), _ONE), "img_size": ((int,), _ONE),
    "seed": ((int,), _NONNEG), "seed_stride": ((int,), _ONE),
    "data.source": ((str,), None), "data.root": ((str, None), None), "data.subset": ((int, None), _ONE),
    "data.in_memory": ((bool,), None), "data.download": ((bool,), None),
    "data.val_subset": ((int, None), _ONE),
    "epochs": ((*_NUM, None), _POS), "budget": ((*_NUM, None), _POS), "budget_epochs": ((*_NUM, None), _POS),
    "match": ((str, None), None), "batch_size": ((int,), _ONE),
    "micro_batch": ((int, None), _ONE), "opt": ((str,), None), "lr_base": (_NUM, _POS),
    "weight_decay": (_NUM, _NONNEG), "opt_eps": (_NUM, _POS), "fused": ((bool, None), None), "min_lr": (_NUM, _NONNEG),
    "warmup_epochs": (_NUM, _NONNEG), "warmup_lr": (_NUM, _NONNEG), "anneal_to_end": ((bool,), None),
    "clip_grad": ((*_NUM, None), _POS), "drop_path": (_NUM, _UNIT), "smoothing": (_NUM, _UNIT),
    "mixup": (_NUM, _NONNEG), "cutmix": (_NUM, _NONNEG), "mixup_prob": (_NUM, _UNIT),
    "mixup_switch_prob": (_NUM, _UNIT), "aug": ((dict,), None), "repeated_aug": ((bool,), None),
    "ema": ((bool,), None), "ema_decay": (_NUM, _UNIT), "amp": ((str,), ("auto", "bf16", "fp32")),
    "compile": ((bool,), None), "fused_attn": ((bool, None), None),
    "channels_last": ((str, bool), ("auto", True, False)),
    "workers": ((int, None), _NONNEG), "eval_every": ((int,), _ONE), "device": ((str,), None),
    "diffusionblocks": ((dict,), None),
    "growth.mode": ((str,), None), "growth.noise_std": (_NUM, _NONNEG), "growth.coefs": ((str,), None),
    "growth.noise": (_NUM, _NONNEG), "growth.num_templates": ((int,), _ONE),
    "growth.start_factor": (_NUM, Range(0, 1, False)), "growth.grow_steps": ((int,), _ONE),
    "growth.grow_span": ((list,), None), "growth.scale": (_NUM, _POS),
    "rbdc.depth": ((int,), _ONE), "rbdc.k": ((int,), Range(2)),
    "rbdc.epochs": ((list, None), None), "rbdc.ratio": (_NUM, _POS), "rbdc.ratio_type": ((str,), ("epochs", "flops")),
    "rbdc.head": ((str,), ("mean", "sum")), "rbdc.norm": ((str,), ("plain", "grouped")),
    "rbdc.offdiag_std": (_NUM, _NONNEG), "rbdc.optimizer": ((str,), ("fresh", "carried")),
    "rbdc.schedule": ((str,), ("restart", "continue")), "rbdc.jobs": ((int,), _ONE),
}
_LISTS = {"rbdc.epochs": _POS, "growth.grow_span": _UNIT}  # lists of numbers in these ranges


def _type_name(types: tuple) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list",
             dict: "a mapping", None: "null"}
    return " or ".join(dict.fromkeys(names[t] for t in types if not (t is int and float in types)))


def _check_value(key: str, value, types: tuple, allowed) -> None:
    def bad(what: str) -> UserError:
        return UserError(f"recipe key {key}: {what}, got {value!r}; fix it in the recipe or with --set {key}=...")
    if value is None:
        if None not in types:
            raise bad(f"must be {_type_name(types)}")
        return
    ok = isinstance(value, tuple(t for t in types if t is not None))
    if isinstance(value, bool) and bool not in types:
        ok = False  # YAML's true/false are ints to Python
    if not ok:
        raise bad(f"must be {_type_name(types)}")
    if isinstance(allowed, Range):
        lo, hi, lo_incl = allowed
        if not (math.isfinite(value) and (value >= lo if lo_incl else value > lo) and value <= hi):
            raise bad(f"must be {'>=' if lo_incl else '>'} {lo:g}" + (f" and <= {hi:g}" if hi != math.inf else ""))
    elif allowed is not None and value not in allowed:
        raise bad(f"must be one of {', '.join(map(str, allowed))}")


def validate(recipe: dict) -> None:
    """Every key's type and range (:data:`SPEC`), the options of ``aug`` and ``diffusionblocks``, and that
    ``model`` with ``model_kwargs`` builds; one line naming the key on the first problem."""
    for key, (types, allowed) in SPEC.items():
        node = recipe
        for part in key.split("."):
            node = node[part]
        _check_value(key, node, types, allowed)
        if key in _LISTS and node is not None:
            for v in node:
                _check_value(f"{key} entries", v, _NUM, _LISTS[key])
    from .data.loaders import _check_aug
    try:
        _check_aug(recipe["aug"])
    except ValueError as e:
        raise UserError(f"recipe key aug: {e}") from None
    _check_model(json.dumps({k: recipe[k] for k in ("model", "model_kwargs", "protocol", "diffusionblocks",
                                                      "drop_path", "smoothing", "num_classes")}, sort_keys=True))


@functools.lru_cache(maxsize=256)
def _check_model(key: str) -> None:
    """Build the recipe's target on the meta device (no memory, no time): an unknown model name or timm kwarg is
    found before anything is written."""
    import torch
    rec = json.loads(key)
    try:
        with torch.device("meta"):
            protocols.get(rec["protocol"]).target(rec, rec["num_classes"] or 10)
    except UserError:
        raise
    except (TypeError, ValueError, KeyError, RuntimeError, AssertionError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"model {rec['model']!r} with model_kwargs {rec['model_kwargs']} cannot be built ({msg}); "
                        f"fix `model` or `model_kwargs`") from None


def _merge(base: dict, over: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if key not in base and where != "":
            raise UserError(f"unknown recipe key {where}{key!r}; known keys: {', '.join(sorted(base))}")
        if isinstance(out.get(key), dict) and isinstance(value, dict) and key not in FREE_FORM:
            out[key] = _merge(out[key], value, f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read(path: Path, seen: tuple = ()) -> dict:
    if not path.is_file():
        raise UserError(f"recipe {path} not found; recipes live under benchmarks/recipes/")
    if path in seen:
        raise UserError(f"recipe {path} inherits from itself through {' -> '.join(map(str, seen))}")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"recipe {path} is not valid YAML: {e}") from e
    parent = data.pop("base", None)
    if parent is None:
        return data
    return _deep_update(_read((path.parent / parent).resolve(), seen + (path,)), data)


def _deep_update(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_update(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise UserError(f"override {text!r} must look like key=value (e.g. rbdc.depth=2 or epochs=10)")
    key, value = text.split("=", 1)
    try:
        return key.split("."), load_yaml(value)
    except yaml.YAMLError as e:
        raise UserError(f"override {text!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None


def resolve(path: str | Path | None = None, overrides: list[str] = (), **fields) -> dict:
    """Recipe file (with parents) + ``key=value`` overrides + explicit fields, over :data:`DEFAULTS`, validated."""
    raw = _read(Path(path).resolve()) if path else {}
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    raw = _deep_update(raw, {k: v for k, v in fields.items() if v is not None})
    recipe = _merge(DEFAULTS, raw, "")
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise UserError(f"unknown recipe key(s) {unknown}; known keys: {', '.join(sorted(DEFAULTS))}")
    if not recipe["model"]:
        raise UserError("the recipe names no model: set `model:` (a timm name, e.g. deit_base_patch16_224)")
    protocols.get(recipe["protocol"])  # an unknown one: the error names the registered ones
    recipe["name"] = recipe["name"] or f"{recipe['model']}/{recipe['protocol']}"
    validate(recipe)
    return recipe


def dump(recipe: dict) -> str:
    return yaml.safe_dump(recipe, sort_keys=True)
