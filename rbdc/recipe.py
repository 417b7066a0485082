"""Recipes are data: YAML files under ``configs/recipes/`` with an optional ``base:`` parent, resolved into the
typed :data:`Recipe` (code reads its fields: ``recipe.batch_size``, ``recipe.rbdc.depth``), whose nested mapping the
run directory stores (``recipe.yaml``) and that replays the run.

The common keys are declared here; each protocol declares its own (its section of the recipe: ``rbdc``, ``growth``,
``diffusionblocks``) in its file under :mod:`rbdc.protocols`, and :data:`Recipe` is assembled from the registry."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import protocols
from .data.datasets import SOURCES
from .errors import UserError
from .protocols.keys import NONNEG as _NONNEG, NUM as _NUM, ONE as _ONE, POS as _POS, UNIT as _UNIT
from .protocols.keys import Key, Range, copy_field, from_dict, key, merge_sections, schema, section
from .data.loaders import _check_aug


# The common keys: those every protocol reads. A protocol's own keys (the rbdc, growth and diffusionblocks sections)
# are declared in its file under rbdc/protocols/ (``Protocol.keys``). model_kwargs, aug and diffusionblocks are
# mappings whose own keys are checked by timm, the transforms and the diffusionblocks model when validate() builds them.
@dataclass
class DataKeys:
    """The ``data:`` section: where the images come from and which of them are trained on and evaluated."""

    source: str = key("imagenette", (str,), SOURCES, "where the images come from (rbdc.data.build_dataset)")
    root: str | None = key(None, (str, None), None, "dataset folder; default: RBDC_DATA or the source's default")
    subset: int | None = key(None, (int, None), _ONE, "train on this many images (class-balanced)")
    in_memory: bool = key(False, (bool,), None, "decode once into a memory cache")
    download: bool = key(False, (bool,), None)
    val_subset: int | None = key(None, (int, None), _ONE)
    holdout: float | None = key(
        None,
        (float, None),
        Range(0, 1, lo_inclusive=False),
        "hold out this fraction of "
        "the train split (class-balanced, fixed by data.holdout_seed) and evaluate on it "
        "instead of val: the tuning split, so that chosen hyper-parameters never read the "
        "reported split",
    )
    holdout_seed: int = key(0, (int,), _NONNEG, "which images data.holdout holds out (not the run's seed)")


@dataclass
class CommonKeys:
    """The recipe's keys that do not belong to one protocol; :data:`Recipe` adds the protocols' sections."""

    name: str = key(
        None,
        (str,),
        None,
        "experiment name without the seed, e.g. imagenette-vit/rbdc-d1 (the report's group); default: MODEL/PROTOCOL",
    )
    protocol: str = key(
        "scratch",
        (str,),
        None,
        "one of rbdc.protocols (scratch | rbdc | net2net | gradmax | mixturegrowth | diffusionblocks | hypercloning)",
    )
    model: str = key(None, (str,), None, "target timm model (the final model of every protocol)")
    model_kwargs: dict = key({}, (dict,), None, "extra timm kwargs (img_size, patch_size, ...)")
    num_classes: int | None = key(None, (int, None), _ONE, "default: the dataset's")
    img_size: int = key(224, (int,), _ONE)
    seed: int = key(0, (int,), _NONNEG)
    seed_stride: int = key(
        100_000,
        (int,),
        _ONE,
        "stage seeds: seed x seed_stride + 1000 x level + index (see CHANGELOG for the value of older runs)",
    )
    data: DataKeys = section(DataKeys)
    # optimisation: DeiT v1 defaults, scaled to the global batch (lr = lr_base * batch_size / 512)
    epochs: float | None = key(
        None, (*_NUM, None), _POS, "scratch: epochs; or give `budget` (training FLOPs) or `match` (a run dir)"
    )
    budget: float | None = key(None, (*_NUM, None), _POS, "training FLOPs")
    budget_epochs: float | None = key(
        None, (*_NUM, None), _POS, "the budget as that many epochs of the target (its FLOPs)"
    )
    match: str | None = key(None, (str, None), None, "a run directory whose training FLOPs this run spends")
    batch_size: int = key(1024, (int,), _ONE, "GLOBAL batch (all processes, all accumulation steps)")
    micro_batch: int | None = key(None, (int, None), _ONE, "per process per forward; default: batch_size / world size")
    opt: str = key("adamw", (str,), None, "a timm optimizer name")
    lr_base: float = key(5e-4, _NUM, _POS)
    weight_decay: float = key(0.05, _NUM, _NONNEG)
    opt_eps: float = key(1e-8, _NUM, _POS)
    fused: bool | None = key(None, (bool, None), None, "fused AdamW (default: on CUDA)")
    min_lr: float = key(1e-5, _NUM, _NONNEG)
    warmup_epochs: float = key(5, _NUM, _NONNEG)
    warmup_lr: float = key(1e-6, _NUM, _NONNEG)
    anneal_to_end: bool = key(
        True,
        (bool,),
        None,
        "true: warm-up, then a cosine that reaches min_lr on the stage's "
        "(lineage's) last step; false: the cosine ends warm-up steps short of min_lr (older "
        "runs, see CHANGELOG)",
    )
    clip_grad: float | None = key(None, (*_NUM, None), _POS)
    drop_path: float = key(0.1, _NUM, _UNIT)
    smoothing: float = key(0.1, _NUM, _UNIT)
    mixup: float = key(0.8, _NUM, _NONNEG)
    cutmix: float = key(1.0, _NUM, _NONNEG)
    mixup_prob: float = key(1.0, _NUM, _UNIT)
    mixup_switch_prob: float = key(0.5, _NUM, _UNIT)
    aug: dict = key(
        {"auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.25, "interpolation": "bicubic", "color_jitter": 0.4},
        (dict,),
        None,
        "timm create_transform options",
    )
    repeated_aug: bool = key(False, (bool,), None)
    ema: bool = key(False, (bool,), None)
    ema_decay: float = key(0.99996, _NUM, _UNIT)
    amp: str = key("auto", (str,), ("auto", "bf16", "fp32"), "auto: bf16 on CUDA, fp32 on CPU")
    compile: bool = key(False, (bool,), None)
    fused_attn: bool | None = key(
        None,
        (bool, None),
        None,
        "attention kernel of timm ViTs: null keeps timm's "
        "choice (fused SDPA); false runs the explicit matmul-softmax path (faster under "
        "bf16 on CPU)",
    )
    channels_last: str | bool = key("auto", (str, bool), ("auto", True, False), "auto: on for CNNs on CUDA")
    workers: int | None = key(None, (int, None), _NONNEG)
    eval_every: int = key(1, (int,), _ONE, "epochs")
    device: str = key("auto", (str,), None)

    def to_dict(self) -> dict:
        """The nested mapping a run directory stores (``recipe.yaml``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict):
        """The typed recipe of a resolved (complete, validated) nested mapping; :func:`resolve` makes one."""
        return from_dict(cls, values)


def _protocol_sections() -> list[tuple[str, type, dataclasses.Field]]:
    """The sections the registered protocols declare (``Protocol.section`` / ``keys``), by section name: one typed
    section from every protocol declaring keys in it, or the one free-form mapping a protocol declares."""
    parts: dict[str, list[tuple[str, object]]] = {}
    for p in protocols.registry().values():
        if p.keys is not None:
            parts.setdefault(p.section, []).append((p.name, p.keys))
    out = []
    for name in sorted(parts):
        if isinstance(parts[name][0][1], dataclasses.Field):  # a free-form mapping (diffusionblocks)
            if len(parts[name]) > 1:
                raise ValueError(
                    f"recipe section {name} is free-form for {parts[name][0][0]}; no other protocol may declare it"
                )
            out.append((name, dict, copy_field(parts[name][0][1])))
        elif len(parts[name]) == 1:  # one protocol's section (rbdc): its own dataclass
            out.append((name, parts[name][0][1], section(parts[name][0][1])))
        else:
            cls = merge_sections(f"{name.capitalize()}Keys", parts[name])
            cls.__module__ = __name__
            globals()[cls.__name__] = cls  # where pickle looks for it (e.g. GrowthKeys)
            out.append((name, cls, section(cls)))
    return out


# The typed recipe: the common keys and every protocol's section; code reads its fields (recipe.rbdc.depth).
Recipe = dataclasses.make_dataclass("Recipe", _protocol_sections(), bases=(CommonKeys,))
Recipe.__module__ = __name__
# Every key a recipe may set (dotted for the keys of sections), and its default as the nested mapping.
SCHEMA: dict[str, Key] = schema(Recipe)
FREE_FORM = tuple(k for k, key in SCHEMA.items() if key.types == (dict,))  # mappings whose keys are not checked here
DEFAULTS: dict[str, Any] = Recipe().to_dict()


class Loader(yaml.SafeLoader):
    """YAML 1.1 with YAML 1.2's floats: ``1e-3``, ``5e-4`` and ``1e9`` are numbers (PyYAML reads them as strings)."""


_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def load_yaml(text: str):
    return yaml.load(text, Loader=Loader)


def _type_name(types: tuple) -> str:
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true/false",
        list: "a list",
        dict: "a mapping",
        None: "null",
    }
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
    for name, spec in SCHEMA.items():
        node = recipe
        for part in name.split("."):
            node = node[part]
        _check_value(name, node, spec.types, spec.allowed)
        if spec.items is not None and node is not None:
            for v in node:
                _check_value(f"{name} entries", v, _NUM, spec.items)

    try:
        _check_aug(recipe["aug"])
    except ValueError as e:
        raise UserError(f"recipe key aug: {e}") from None
    _check_model(
        json.dumps(
            {
                k: recipe[k]
                for k in (
                    "model",
                    "model_kwargs",
                    "protocol",
                    "diffusionblocks",
                    "drop_path",
                    "smoothing",
                    "num_classes",
                )
            },
            sort_keys=True,
        )
    )


@functools.lru_cache(maxsize=256)
def _check_model(settings: str) -> None:
    """Build the recipe's target on the meta device (no memory, no time): an unknown model name or timm kwarg is
    found before anything is written."""
    import torch

    rec = json.loads(settings)
    typed = Recipe.from_dict(_deep_update(DEFAULTS, rec))
    try:
        with torch.device("meta"):
            protocols.get(typed.protocol).target(typed, typed.num_classes or 10)
    except UserError:
        raise
    except (TypeError, ValueError, KeyError, RuntimeError, AssertionError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"model {rec['model']!r} with model_kwargs {rec['model_kwargs']} cannot be built ({msg}); "
            f"fix `model` or `model_kwargs`"
        ) from None


def _merge(base: dict, over: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for name, value in over.items():
        if name not in base and where != "":
            raise UserError(f"unknown recipe key {where}{name!r}; known keys: {', '.join(sorted(base))}")
        if isinstance(out.get(name), dict) and isinstance(value, dict) and name not in FREE_FORM:
            out[name] = _merge(out[name], value, f"{where}{name}.")
        else:
            out[name] = copy.deepcopy(value)
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


def resolve(path: str | Path | None = None, overrides: list[str] = (), **fields) -> Recipe:
    """Recipe file (with parents) + ``key=value`` overrides + explicit fields, over :data:`DEFAULTS`, validated,
    as the typed :data:`Recipe`. The protocol may read keys of recipes older than its own (``Protocol.upgrade``)."""
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
    protocol = protocols.get(recipe["protocol"])  # an unknown one: the error names the registered ones
    recipe["name"] = recipe["name"] or f"{recipe['model']}/{recipe['protocol']}"
    protocol.upgrade(raw, recipe)
    validate(recipe)
    return Recipe.from_dict(recipe)


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


def dump(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=True)
