"""The random-init control of a detection study: timm's own initialisation of a backbone model, written as a file.

Issue 34 asks for "the same detector from a randomly initialised backbone" beside the pretrained ones. With
``det-train --backbone none`` the random draw happens inside the detector's build, under the *fine-tuning* seed, so
several control seeds would also change the fine-tuning. Instead the study writes, per pretraining seed S, the model
timm builds under ``torch.manual_seed(S)`` (in a forked RNG, so no caller's random state moves) as an rbdc-style
``final.safetensors`` (same keys, classifier and metadata as a run's final model), plus a record of what it is. The
control then fine-tunes through the same ``--backbone PATH``, config and fine-tuning seed as every pretrained
backbone: only the weights differ.

Only torch and timm are needed (no MMDetection).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn as nn

from rbdc.detection.checks import closest
from rbdc.errors import UserError
from rbdc.nets.checkpoint import save_weights
from rbdc.runs.rundir import FINAL, read_json, sha256, write_json
import rbdc  # noqa: F401  (registers the rbdc_* names with timm)

__all__ = [
    "RECORD",
    "KIND",
    "parse_spec",
    "random_init_model",
    "write_random_init",
    "ensure_random_init",
    "read_record",
]

RECORD = "random_init.json"  # beside final.safetensors: model, seed, classes, versions, sha256
KIND = "random-init"  # the record's `kind` and the weights file's `stage` metadata
KEYS = {"label", "model", "num_classes"}  # of a study's backbones.random_init; label and model required
CLASSES = 10  # default num_classes: the classifier of the Imagenette studies' runs (timm's trunk draw depends on it)


def parse_spec(spec, taken: set[str]) -> dict | None:
    """A detection study's ``backbones.random_init`` checked: ``{label, model, num_classes}`` (classes default
    :data:`CLASSES`), or None when the study has no control. ``taken``: the labels and folder names the label must
    not be (the points' labels, the backbone copies' folder). Raises ValueError naming the field."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise ValueError(f"backbones.random_init must be a mapping {{label: ..., model: ...}}, got {spec!r}")
    unknown = sorted(set(spec) - KEYS)
    if unknown:
        raise ValueError(f"backbones.random_init: unknown key(s) {unknown}; known: {', '.join(sorted(KEYS))}")
    missing = sorted({"label", "model"} - set(spec))
    if missing:
        raise ValueError(f"backbones.random_init: missing key(s) {missing}")
    label, model, classes = spec["label"], spec["model"], spec.get("num_classes", CLASSES)
    if not (isinstance(label, str) and label and "/" not in label):
        raise ValueError(f"backbones.random_init.label must be a folder name, got {label!r}")
    if label in taken:
        raise ValueError(
            f"backbones.random_init.label {label!r} is already a label or folder of the study: {sorted(taken)}"
        )
    if not (isinstance(classes, int) and not isinstance(classes, bool) and classes >= 1):
        raise ValueError(f"backbones.random_init.num_classes must be a positive integer, got {classes!r}")
    if not (isinstance(model, str) and timm.is_model(model)):
        raise ValueError(
            f"backbones.random_init.model {model!r} is not a timm model{closest(str(model), timm.list_models())}"
        )
    return {"label": label, "model": model, "num_classes": classes}


def random_init_model(model: str, seed: int, num_classes: int) -> nn.Module:
    """``timm.create_model(model, num_classes=num_classes)`` under ``torch.manual_seed(seed)``, the caller's RNG
    state untouched. ``num_classes`` matters beyond the classifier: timm draws the classifier's weights before it
    initialises the convolutions, so the trunk's draw depends on it (give the classes of the pretrained runs)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(model, pretrained=False, num_classes=num_classes)


def _record(model: str, seed: int, num_classes: int) -> dict:
    return {
        "kind": KIND,
        "model": model,
        "seed": seed,
        "num_classes": num_classes,
        "file": FINAL,
        "versions": {"torch": torch.__version__, "timm": timm.__version__},
    }


def write_random_init(folder: str | Path, model: str, seed: int, num_classes: int) -> dict:
    """Write ``folder/final.safetensors`` (the initialisation) and ``folder/random_init.json``; returns the record,
    whose ``sha256`` is the weights file's."""
    folder = Path(folder)
    net = random_init_model(model, seed, num_classes)
    path = save_weights(net, folder / FINAL, stage=KIND, seed=str(seed))
    record = {**_record(model, seed, num_classes), "sha256": sha256(path)}
    write_json(folder / RECORD, record)
    return record


def read_record(folder: str | Path) -> dict | None:
    """The record of a written control, or None when there is none."""
    path = Path(folder) / RECORD
    return read_json(path, f"delete {Path(folder)} and rerun: the study writes it again") if path.is_file() else None


def ensure_random_init(folder: str | Path, model: str, seed: int, num_classes: int) -> dict:
    """Keep a control already written for the same model, seed and classes whose file still has the recorded sha256;
    write it otherwise. Returns the record."""
    folder = Path(folder)
    old = read_record(folder)
    wanted = _record(model, seed, num_classes)
    same = old is not None and all(old.get(k) == wanted[k] for k in ("kind", "model", "seed", "num_classes"))
    if same and (folder / FINAL).is_file() and sha256(folder / FINAL) == old.get("sha256"):
        return old
    try:
        return write_random_init(folder, model, seed, num_classes)
    except (RuntimeError, ValueError) as e:  # timm refuses the model's arguments
        raise UserError(f"random-init control: cannot build {model} with {num_classes} classes: {e}") from e
