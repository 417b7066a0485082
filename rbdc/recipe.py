"""Recipes are data: YAML files under ``configs/recipes/`` with an optional ``base:`` parent, resolved into one
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
from .data.datasets import SOURCES
from .errors import UserError


class Range(NamedTuple):
    lo: float
    hi: float = math.inf
    lo_inclusive: bool = True


class Key(NamedTuple):
    """One recipe key: its default, the Python types it accepts (``None``: null allowed), its range or allowed
    values, and what it means."""
    default: Any
    types: tuple
    allowed: Range | tuple | None = None
    doc: str = ""


_NUM = (int, float)
_POS = Range(0, lo_inclusive=False)
_NONNEG = Range(0)
_UNIT = Range(0, 1)
_ONE = Range(1)

# The recipe schema: every key a recipe may set, dotted for the keys of nested mappings (data, growth, rbdc).
# model_kwargs, aug and diffusionblocks are mappings whose own keys are checked by timm, the transforms and the
# diffusionblocks model when validate() builds them.
SCHEMA: dict[str, Key] = {
    "name": Key(None, (str,), None, "experiment name without the seed, e.g. imagenette-vit/rbdc-d1 (the "
                "report's group); default: MODEL/PROTOCOL"),
    "protocol": Key("scratch", (str,), None, "one of rbdc.protocols (scratch | rbdc | net2net | gradmax | "
                    "mixturegrowth | diffusionblocks | hypercloning)"),
    "model": Key(None, (str,), None, "target timm model (the final model of every protocol)"),
    "model_kwargs": Key({}, (dict,), None, "extra timm kwargs (img_size, patch_size, ...)"),
    "num_classes": Key(None, (int, None), _ONE, "default: the dataset's"),
    "img_size": Key(224, (int,), _ONE),
    "seed": Key(0, (int,), _NONNEG),
    "seed_stride": Key(100_000, (int,), _ONE, "stage seeds: seed x seed_stride + 1000 x level + index "
                       "(see CHANGELOG for the value of older runs)"),
    "data.source": Key("imagenette", (str,), SOURCES, "where the images come from (rbdc.data.build_dataset)"),
    "data.root": Key(None, (str, None), None, "dataset folder; default: RBDC_DATA or the source's default"),
    "data.subset": Key(None, (int, None), _ONE, "train on this many images (class-balanced)"),
    "data.in_memory": Key(False, (bool,), None, "decode once into a memory cache"),
    "data.download": Key(False, (bool,), None),
    "data.val_subset": Key(None, (int, None), _ONE),
    "data.holdout": Key(None, (float, None), Range(0, 1, lo_inclusive=False), "hold out this fraction of the train "
                        "split (class-balanced, fixed by data.holdout_seed) and evaluate on it instead of val: the "
                        "tuning split, so that chosen hyper-parameters never read the reported split"),
    "data.holdout_seed": Key(0, (int,), _NONNEG, "which images data.holdout holds out (not the run's seed)"),
    # optimisation: DeiT v1 defaults, scaled to the global batch (lr = lr_base * batch_size / 512)
    "epochs": Key(None, (*_NUM, None), _POS, "scratch: epochs; or give `budget` (training FLOPs) or `match` "
                  "(a run dir)"),
    "budget": Key(None, (*_NUM, None), _POS, "training FLOPs"),
    "budget_epochs": Key(None, (*_NUM, None), _POS, "the budget as that many epochs of the target (its FLOPs)"),
    "match": Key(None, (str, None), None, "a run directory whose training FLOPs this run spends"),
    "batch_size": Key(1024, (int,), _ONE, "GLOBAL batch (all processes, all accumulation steps)"),
    "micro_batch": Key(None, (int, None), _ONE, "per process per forward; default: batch_size / world size"),
    "opt": Key("adamw", (str,), None, "a timm optimizer name"),
    "lr_base": Key(5e-4, _NUM, _POS),
    "weight_decay": Key(0.05, _NUM, _NONNEG),
    "opt_eps": Key(1e-8, _NUM, _POS),
    "fused": Key(None, (bool, None), None, "fused AdamW (default: on CUDA)"),
    "min_lr": Key(1e-5, _NUM, _NONNEG),
    "warmup_epochs": Key(5, _NUM, _NONNEG),
    "warmup_lr": Key(1e-6, _NUM, _NONNEG),
    "anneal_to_end": Key(True, (bool,), None, "true: warm-up, then a cosine that reaches min_lr on the stage's "
                         "(lineage's) last step; false: the cosine ends warm-up steps short of min_lr (older "
                         "runs, see CHANGELOG)"),
    "clip_grad": Key(None, (*_NUM, None), _POS),
    "drop_path": Key(0.1, _NUM, _UNIT),
    "smoothing": Key(0.1, _NUM, _UNIT),
    "mixup": Key(0.8, _NUM, _NONNEG),
    "cutmix": Key(1.0, _NUM, _NONNEG),
    "mixup_prob": Key(1.0, _NUM, _UNIT),
    "mixup_switch_prob": Key(0.5, _NUM, _UNIT),
    "aug": Key({"auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.25, "interpolation": "bicubic",
                "color_jitter": 0.4}, (dict,), None, "timm create_transform options"),
    "repeated_aug": Key(False, (bool,), None),
    "ema": Key(False, (bool,), None),
    "ema_decay": Key(0.99996, _NUM, _UNIT),
    "amp": Key("auto", (str,), ("auto", "bf16", "fp32"), "auto: bf16 on CUDA, fp32 on CPU"),
    "compile": Key(False, (bool,), None),
    "fused_attn": Key(None, (bool, None), None, "attention kernel of timm ViTs: null keeps timm's choice (fused "
                      "SDPA); false runs the explicit matmul-softmax path (faster under bf16 on CPU)"),
    "channels_last": Key("auto", (str, bool), ("auto", True, False), "auto: on for CNNs on CUDA"),
    "workers": Key(None, (int, None), _NONNEG),
    "eval_every": Key(1, (int,), _ONE, "epochs"),
    "device": Key("auto", (str,), None),
    "diffusionblocks": Key({}, (dict,), None, "options of the diffusionblocks protocol (rbdc.diffusionblocks)"),
    # Growth baselines (net2net, mixturegrowth) reuse rbdc's level settings (epochs, ratio, ratio_type, schedule,
    # optimizer: fresh only) with depth 1: one (net2net) or two (mixturegrowth) half-width models, then grow.
    # gradmax: inner widths x start_factor, grown grow_steps times at even points of grow_span (fractions of the
    # steps), fan-out norm `scale` x the existing units' (growneuron's CIFAR config: 0.25, 12, 10k..37.5k of 78k, 0.5).
    "growth.mode": Key("uniform", (str,), None, "net2net: how new units copy old ones"),
    "growth.noise_std": Key(0.01, _NUM, _NONNEG, "net2net: symmetry-breaking noise"),
    "growth.coefs": Key("orthogonal", (str,), None, "mixturegrowth: template coefficients"),
    "growth.noise": Key(1.0, _NUM, _NONNEG, "mixturegrowth"),
    "growth.num_templates": Key(2, (int,), _ONE, "mixturegrowth"),
    "growth.snr_db": Key(None, (*_NUM, None), None, "hypercloning: function-preserving noise at this "
                         "signal-to-noise ratio in dB (null: none; the copies then stay identical)"),
    "growth.start_factor": Key(0.25, _NUM, Range(0, 1, False), "gradmax: starting fraction of the inner widths"),
    "growth.grow_steps": Key(12, (int,), _ONE, "gradmax"),
    "growth.grow_span": Key([0.125, 0.5], (list,), None, "gradmax: [first, last] growth as fractions of the steps"),
    "growth.scale": Key(0.5, _NUM, _POS, "gradmax: fan-out norm of new units relative to the existing ones"),
    # the RBDC protocol
    "rbdc.depth": Key(1, (int,), _ONE, "recursive coupling steps"),
    "rbdc.k": Key(2, (int,), Range(2), "parts coupled per step"),
    "rbdc.epochs": Key(None, (list, None), None, "epochs per level [E0, ..., Er], level 0 the narrowest; default: "
                       "from the budget and ratio"),
    "rbdc.ratio": Key(1.5, _NUM, _POS, "training ratio: E_l = ratio x E_(l+1) (ratio_type epochs) or FLOPs "
                      "of level l = ratio x those of level l+1 (ratio_type flops)"),
    "rbdc.ratio_type": Key("epochs", (str,), ("epochs", "flops")),
    "rbdc.head": Key("mean", (str,), ("mean", "sum"), "how the coupled head combines the parts' logits"),
    "rbdc.norm": Key("plain", (str,), ("plain", "grouped"), "LayerNorm of the coupled model"),
    "rbdc.offdiag_std": Key(0.0, _NUM, _NONNEG, "init std of the off-diagonal blocks"),
    "rbdc.optimizer": Key("fresh", (str,), ("fresh", "carried"), "AdamW state after coupling"),
    "rbdc.schedule": Key("restart", (str,), ("restart", "continue"), "lr schedule after coupling"),
    "rbdc.jobs": Key(1, (int,), _ONE, "train a level's independent parts in this many processes"),
    "rbdc.parts": Key("independent", (str,), ("independent", "copies"), "independent: k narrow models from their "
                      "own seeds (RBDC); copies: one narrow model trained for all their steps, coupled with k-1 "
                      "copies of itself (depth 1; the ablation beside HyperCloning)"),
    "rbdc.narrow_lr_scale": Key(1.0, _NUM, _POS, "peak lr of level 0 (the independently trained narrow parts) as a "
                                "multiple of the recipe's"),
    "rbdc.coupled_lr_scale": Key(1.0, _NUM, _POS, "peak lr of the coupled levels 1..depth as a multiple of the "
                                 "recipe's"),
    "rbdc.coupled_warmup_epochs": Key(None, (*_NUM, None), _NONNEG, "warm-up of the coupled levels; default: "
                                      "warmup_epochs"),
}
_LISTS = {"rbdc.epochs": _POS, "growth.grow_span": _UNIT}  # lists of numbers in these ranges
FREE_FORM = tuple(k for k, key in SCHEMA.items() if key.types == (dict,))  # mappings whose keys are not checked here


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


# Every key a recipe may set, with its default, as the nested mapping a resolved recipe is.
DEFAULTS: dict[str, Any] = _nest({k: key.default for k, key in SCHEMA.items()})


class Loader(yaml.SafeLoader):
    """YAML 1.1 with YAML 1.2's floats: ``1e-3``, ``5e-4`` and ``1e9`` are numbers (PyYAML reads them as strings)."""


_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def load_yaml(text: str):
    return yaml.load(text, Loader=Loader)


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
        raise bad(f"must be one of {', '.join(map(_yaml_value, allowed))}")


def validate(recipe: dict) -> None:
    """Every key's type and range (:data:`SCHEMA`), the options of ``aug`` and ``diffusionblocks``, and that
    ``model`` with ``model_kwargs`` builds; one line naming the key on the first problem."""
    for key, (_, types, allowed, _) in SCHEMA.items():
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
        raise UserError(f"recipe {path} not found; recipes live under configs/recipes/")
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


def _yaml_value(value) -> str:
    """An accepted value as a recipe or --set spells it (true, not True)."""
    return value if isinstance(value, str) else json.dumps(value)


def describe(pattern: str = "") -> str:
    """The schema as text, one key per line (default, accepted values, meaning), for ``rbdc keys``."""
    def allowed(key: Key) -> str:
        if isinstance(key.allowed, Range):
            lo = (">= " if key.allowed.lo_inclusive else "> ") + format(key.allowed.lo, "g")
            return lo + ("" if key.allowed.hi == math.inf else f", <= {key.allowed.hi:g}")
        if key.allowed:
            return " | ".join(map(_yaml_value, key.allowed))
        return _type_name(key.types)
    rows = [(k, json.dumps(key.default), allowed(key), key.doc) for k, key in SCHEMA.items() if pattern in k]
    if not rows:
        raise UserError(f"no recipe key contains {pattern!r}; `rbdc keys` lists them all")
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{k:<{widths[0]}}  {d:<{widths[1]}}  {a:<{widths[2]}}  {doc}".rstrip() for k, d, a, doc in rows)


def dump(recipe: dict) -> str:
    return yaml.safe_dump(recipe, sort_keys=True)
