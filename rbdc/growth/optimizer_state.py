"""Optimizer state grown with the model: AdamW moments remapped like the weights, new slots zero."""

from __future__ import annotations

import torch
import torch.nn as nn

from .remap import remap


def grow_optimizer_state(
    opt: torch.optim.Optimizer, old_model: nn.Module, new_model: nn.Module, mapping: dict[str, list]
) -> torch.optim.Optimizer:
    """Move ``opt`` onto ``new_model``'s parameters, carrying its state; slots of new units are zero.

    The optimizer is updated in place (so LR schedulers holding it keep working) and returned. Parameters are
    matched by name; every per-element state tensor (SGD ``momentum_buffer``, Adam/AdamW ``exp_avg``,
    ``exp_avg_sq``, ``max_exp_avg_sq``) is remapped with ``mapping`` (the ``info["mapping"]`` of a growth operator:
    state key -> ops) and filled with 0 where a unit is new; scalars such as ``step`` are kept.

    Raises:
        ValueError: when ``opt`` holds a tensor that is not a parameter of ``old_model``, or the two models'
            parameter names differ.
    """
    old_names = {id(p): n for n, p in old_model.named_parameters()}
    new_params = dict(new_model.named_parameters())
    if set(new_params) != set(old_names.values()):
        raise ValueError(
            f"parameter names differ between the old and new model: "
            f"{sorted(set(new_params) ^ set(old_names.values()))[:5]}"
        )
    for group in opt.param_groups:
        moved = []
        for p in group["params"]:
            if id(p) not in old_names:
                raise ValueError(
                    "the optimizer holds a tensor that is not a parameter of old_model: pass the model "
                    "the optimizer was built for"
                )
            name = old_names[id(p)]
            q = new_params[name]
            state = opt.state.pop(p, None)
            if state:
                opt.state[q] = _grow_slots(state, p.shape, mapping.get(name, []))
            moved.append(q)
        group["params"] = moved
    return opt


def grow_named_state(state: dict[str, dict], old_model: nn.Module, mapping: dict[str, list]) -> dict[str, dict]:
    """:func:`grow_optimizer_state` for name-keyed state (``rbdc.coupling.named_optimizer_state``, as checkpoints
    hold it): ``{parameter name: {slot: tensor}}`` of ``old_model`` -> the same for the grown model."""
    shapes = {n: p.shape for n, p in old_model.named_parameters()}
    return {n: _grow_slots(st, shapes[n], mapping.get(n, [])) for n, st in state.items()}


def _grow_slots(state: dict, shape: torch.Size, ops: list) -> dict:
    """Per-element slots (parameter-shaped tensors) remapped, new units 0 and never divided; scalars kept."""
    ops = [(d, i, s, None) for d, i, s, _ in ops]
    return {k: remap(v, ops, 0.0) if torch.is_tensor(v) and v.shape == shape else v for k, v in state.items()}
