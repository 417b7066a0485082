"""How recipe keys are declared: a typed section is a dataclass whose fields are :func:`key` s (default, accepted
types, range or allowed values, meaning); a recipe is such a dataclass whose fields may be sections (:func:`section`).

The common keys are declared in :mod:`rbdc.recipe`; each protocol declares the keys it owns in its own file
(``Protocol.keys``, under ``Protocol.section``) and :mod:`rbdc.recipe` assembles the recipe from the registry. This
module imports nothing of rbdc's, so that protocols and the recipe can both use it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, NamedTuple

__all__ = [
    "Range",
    "Key",
    "key",
    "section",
    "copy_field",
    "merge_sections",
    "schema",
    "from_dict",
    "NUM",
    "POS",
    "NONNEG",
    "UNIT",
    "ONE",
]


class Range(NamedTuple):
    lo: float
    hi: float = math.inf
    lo_inclusive: bool = True


class Key(NamedTuple):
    """One recipe key: its default, the Python types it accepts (``None``: null allowed), its range or allowed
    values, what it means, and (for a list of numbers) the range of its entries."""

    default: Any
    types: tuple
    allowed: Range | tuple | None = None
    doc: str = ""
    items: Range | None = None


NUM = (int, float)
POS = Range(0, lo_inclusive=False)
NONNEG = Range(0)
UNIT = Range(0, 1)
ONE = Range(1)


def key(default, types: tuple, allowed: Range | tuple | None = None, doc: str = "", items: Range | None = None) -> Any:
    """A recipe key as a dataclass field (a mutable default is copied for each recipe)."""
    meta = {"key": Key(default, types, allowed, doc, items)}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type) -> Any:
    """A nested mapping of keys (``data``, ``rbdc``, ``growth``) as a dataclass field of the typed section ``cls``."""
    return dataclasses.field(default_factory=cls, metadata={"section": cls})


def copy_field(f: dataclasses.Field) -> dataclasses.Field:
    """A declared key for another dataclass (a field belongs to the one class it was declared in)."""
    return dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=f.metadata)


def merge_sections(name: str, parts: list[tuple[str, type]]) -> type:
    """One typed section from the keys several protocols declare in it (``(protocol, dataclass)`` pairs, in order);
    a key declared twice is a programming error."""
    fields, owner = [], {}
    for protocol, cls in parts:
        for f in dataclasses.fields(cls):
            if f.name in owner:
                raise ValueError(f"recipe key {name}.{f.name} is declared by protocols {owner[f.name]} and {protocol}")
            owner[f.name] = protocol
            fields.append((f.name, f.type, copy_field(f)))
    return dataclasses.make_dataclass(name, fields)


def schema(cls: type, prefix: str = "") -> dict[str, Key]:
    """Every key of the typed recipe ``cls``, dotted for the keys of its sections, in declaration order."""
    out: dict[str, Key] = {}
    for f in dataclasses.fields(cls):
        if "section" in f.metadata:
            out.update(schema(f.metadata["section"], f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = f.metadata["key"]
    return out


def from_dict(cls: type, values: dict):
    """The typed recipe (or section) ``cls`` holding the nested mapping ``values`` (a resolved recipe)."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        value = values[f.name]
        kwargs[f.name] = from_dict(f.metadata["section"], value) if "section" in f.metadata else copy.deepcopy(value)
    return cls(**kwargs)
