"""Seconds per training image on one machine kind, from countable terms of the model.

Counted FLOPs (:mod:`rbdc.flops`: GEMMs and attention matmuls) do not predict the wall time of a narrow model: its
norms, activations, softmax, casts and optimizer scale with the width, not its square, and run far below the GEMM
rate (``reports/perf.md``, where the time goes). The cost model adds the terms that count that work::

    seconds per image = a * training FLOPs + b * activation elements + d * parameters / batch + c

per precision and model family, fitted (non-negative least squares, relative errors) on the ``time-split``
benchmark of one machine kind (``benchmarks/test_bench_time_split.py``) and stored in the package
(``rbdc/cost/fitted/costmodel-<kind>.json``, package data: the estimator reads it at run time, installed or not).
*Activation elements*: the elements every leaf layer writes in one image's forward (linear, conv, norm, activation
outputs) plus the attention's score and probability matrices: the memory-bound work, done again in backward.
*Parameters / batch*: the optimizer's and clipping's per-step sweep over the weights, shared by the batch's images.
*c*: the per-image work that does not scale with the model (the loss, the batch's copies). A machine kind is the
CPU's model name, family/model numbers and the ISA flags that pick oneDNN's kernels (:mod:`rbdc.cost.machine`): a model
fitted on one kind is refused on another (the caller falls back to measuring a few steps). :mod:`rbdc.cost.bench`
reads the benchmark's rows.

An evaluation image costs a forward only: ``a' * training FLOPs + b' * activation elements + c'``, fitted the same
way on each benchmark row's training seconds times the forward's share of its profiled step (the ``time-split``
profile: about 0.4 of a narrow ViT's step and 0.2-0.3 of a ResNet's, not a constant third).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..files import package_data
from ..nets.models import family_of, scaled
from ..flops import train_flops_per_image
from ..runs.rundir import atomic_write_bytes
from .bench import bench_rows
from .machine import cpu_kind

FITTED = package_data("cost/fitted")  # the fitted cost models (written by main, read by for_this_machine)
TERMS = ("train_flops", "activation_elements", "params_per_batch", "constant")
EVAL_TERMS = ("train_flops", "activation_elements", "constant")  # a forward: no optimizer sweep


# ----------------------------------------------------------------------------------------------------------------
# The countable terms


def activation_elements(model: nn.Module, img_size: int) -> int:
    """Elements written in one image's forward by every leaf layer that computes (``nn.Identity`` and inactive
    dropout left out), plus each attention's score and probability matrices (heads x tokens x tokens, twice)."""
    total = 0

    def leaf(mod, inputs, out):
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel()

    def attention(mod, inputs, out):
        nonlocal total
        b, n = inputs[0].shape[:2]
        total += 2 * b * mod.num_heads * n * n

    handles = []
    for m in model.modules():
        if hasattr(m, "qkv") and hasattr(m, "num_heads"):
            handles.append(m.register_forward_hook(attention))
        elif (
            not any(True for _ in m.children())
            and not isinstance(m, nn.Identity)
            and not (isinstance(m, nn.Dropout) and m.p == 0)
        ):
            handles.append(m.register_forward_hook(leaf))
    p = next(model.parameters())
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, img_size, img_size, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
    return int(total)


def _meta(name: str, img_size: int, factor: Fraction | int = 1, **kwargs) -> nn.Module:
    kwargs = {"num_classes": 10, **kwargs}
    with torch.device("meta"):
        model = scaled(name, factor, **kwargs)
        if family_of(model) == "vit" and model.patch_embed.img_size[0] != img_size:
            model = scaled(name, factor, **{**kwargs, "img_size": img_size})
    return model


def features(name: str, img_size: int, batch: int, factor: Fraction | int = 1, **kwargs) -> dict[str, float]:
    """The cost model's terms for one image of ``name`` (at ``factor`` of its width) trained at ``batch``."""
    model = _meta(name, img_size, factor, **kwargs)
    return {
        "train_flops": float(train_flops_per_image(model, img_size)),
        "activation_elements": float(activation_elements(model, img_size)),
        "params_per_batch": sum(p.numel() for p in model.parameters()) / batch,
        "constant": 1.0,
    }


def family(name: str, factor: Fraction | int = 1, **kwargs) -> str:
    """``vit`` or ``resnet``: fits are per precision and family (their kernels differ: a bf16 ResNet step on a CPU
    can be slower than its fp32 one while a ViT's is faster)."""
    return family_of(_meta(name, 32 if "32" in name else 224, factor, **kwargs))


# ----------------------------------------------------------------------------------------------------------------
# Fitting


def fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative coefficients of ``y ~ x @ coef`` minimising the *relative* squared error (each row divided by
    its ``y``, so that a 30 ms and a 3 s step weigh alike)."""
    from scipy.optimize import nnls

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"fit needs an (n, terms) matrix and n targets, got shapes {x.shape} and {y.shape}")
    if np.any(y <= 0):
        raise ValueError("fit needs positive seconds per image")
    w = x / y[:, None]
    scale = np.abs(w).max(axis=0)  # columns of very different magnitudes (FLOPs ~1e8, constant 1)
    scale[scale == 0] = 1.0
    coef, _ = nnls(w / scale, np.ones(len(y)))
    return coef / scale


@dataclass
class CostModel:
    """Coefficients per precision and family (``{"bf16/vit": {term: coef}}``) for one machine kind, and the
    benchmark rows they came from."""

    kind: dict
    coefs: dict[str, dict[str, float]]
    data_s_per_image: dict[str, float] = field(default_factory=dict)  # "32": the in-memory loader at 32 px
    fitted_on: list[dict] = field(default_factory=list)  # the benchmark rows: model, amp, s/img, fit
    eval_coefs: dict[str, dict[str, float]] = field(default_factory=dict)  # an evaluation image (EVAL_TERMS)
    slow_state_factor: float | None = None  # runs' slow-state over fast-state epoch walls (benchmarks.costmodel_check)

    def has(self, amp: str, fam: str) -> bool:
        return f"{amp}/{fam}" in self.coefs

    def seconds_per_image(self, terms: dict[str, float], amp: str, fam: str) -> float:
        if not self.has(amp, fam):
            raise KeyError(f"the cost model of {self.kind['name']} has no {amp} {fam} fit (has {sorted(self.coefs)})")
        return float(sum(self.coefs[f"{amp}/{fam}"][t] * terms[t] for t in TERMS))

    def eval_seconds_per_image(self, terms: dict[str, float], amp: str, fam: str) -> float | None:
        """Seconds of one evaluation image (a forward), or None where the benchmark had no profile to fit it on."""
        coef = self.eval_coefs.get(f"{amp}/{fam}")
        return None if coef is None else float(sum(coef[t] * terms[t] for t in EVAL_TERMS))

    def flops_range(self, amp: str, fam: str) -> tuple[float, float]:
        f = [r["train_flops"] for r in self.fitted_on if (r["amp"], r["family"]) == (amp, fam)]
        return (min(f), max(f)) if f else (float("nan"), float("nan"))

    def to_dict(self) -> dict:
        return {
            "kind": "costmodel",
            "device_kind": self.kind,
            "terms": list(TERMS),
            "coefs": self.coefs,
            "data_s_per_image": self.data_s_per_image,
            "fitted_on": self.fitted_on,
            "eval_coefs": self.eval_coefs,
            **({"slow_state_factor": self.slow_state_factor} if self.slow_state_factor else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CostModel":
        return cls(
            d["device_kind"],
            d["coefs"],
            d.get("data_s_per_image", {}),
            d.get("fitted_on", []),
            d.get("eval_coefs", {}),
            d.get("slow_state_factor"),
        )

    def save(self, path: Path) -> Path:
        atomic_write_bytes(path, json.dumps(self.to_dict(), indent=1).encode())
        return path


def fit_rows(rows: list[dict], kind: dict, data_s_per_image: dict | None = None) -> CostModel:
    """A :class:`CostModel` from benchmark rows ``{model, img_size, batch, amp, s_per_image}``: one fit per
    precision and family; each row gets its terms and its fitted seconds per image."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        r = {**r, "family": r.get("family") or family(r["model"])}
        groups.setdefault(f"{r['amp']}/{r['family']}", []).append(r)
    coefs, eval_coefs, fitted = {}, {}, []
    for key, mine in sorted(groups.items()):
        terms = [features(r["model"], r["img_size"], r["batch"]) for r in mine]
        x = np.array([[t[k] for k in TERMS] for t in terms])
        coef = fit(x, np.array([r["s_per_image"] for r in mine]))
        coefs[key] = dict(zip(TERMS, map(float, coef)))
        rows = [
            {**r, **t, "fit_s_per_image": float(p), "fit_error": float(p / r["s_per_image"] - 1)}
            for r, t, p in zip(mine, terms, x @ coef)
        ]
        profiled = [r for r in rows if r.get("forward_fraction")]
        if profiled:  # the forward's seconds: the row's training seconds times its profiled forward share
            xe = np.array([[r[k] for k in EVAL_TERMS] for r in profiled])
            ye = np.array([r["s_per_image"] * r["forward_fraction"] for r in profiled])
            ecoef = fit(xe, ye)
            eval_coefs[key] = dict(zip(EVAL_TERMS, map(float, ecoef)))
            for r, y, p in zip(profiled, ye, xe @ ecoef):
                r.update(eval_s_per_image=float(y), fit_eval_s_per_image=float(p), fit_eval_error=float(p / y - 1))
        fitted += rows
    return CostModel(kind, coefs, dict(data_s_per_image or {}), fitted, eval_coefs)


# ----------------------------------------------------------------------------------------------------------------
# Finding this machine's model, fitting it from the benchmark


def costmodel_path(kind: dict, folder: Path = FITTED) -> Path:
    return Path(folder) / f"costmodel-{kind['slug']}.json"


def for_this_machine(folder: Path = FITTED, kind: dict | None = None) -> tuple[CostModel | None, str]:
    """This machine kind's cost model from ``folder`` (default: the package's fitted models), or None and one line
    saying why not."""
    kind = kind or cpu_kind()
    fitted = sorted(Path(folder).glob("costmodel-*.json"))
    for path in fitted:
        model = CostModel.from_dict(json.loads(path.read_text()))
        if model.kind.get("key") == kind["key"]:
            return model, f"cost model fitted on this CPU kind ({path.name})"
    have = ", ".join(p.stem.removeprefix("costmodel-") for p in fitted) or "none"
    return None, (
        f"cost model: not fitted for this CPU kind ({kind['name']}, {kind['family_model']}, "
        f"{' '.join(kind['isa']) or 'no AVX'}; fitted: {have}); using a few steps measured here"
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m rbdc.cost.costmodel BENCH.json``: fit the cost model of the JSON's device kind (a CPU kind, or a GPU)
    on its ``time-split`` rows and write ``costmodel-<kind>.json`` into the package (``--out``: another folder)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m rbdc.cost.costmodel", description=main.__doc__.split("\n")[0])
    p.add_argument("bench", type=Path, help="a pytest-benchmark JSON holding time-split rows (tox -e bench)")
    p.add_argument("--out", type=Path, default=FITTED, help="folder to write the fit into (default: %(default)s)")
    args = p.parse_args(argv)
    bench = json.loads(args.bench.read_text())
    rows, data = bench_rows(bench)
    kinds = {
        json.dumps(b["extra_info"]["kind"], sort_keys=True)
        for b in bench["benchmarks"]
        if b.get("group") == "time-split" and "kind" in b.get("extra_info", {})
    }
    if not rows or len(kinds) != 1:
        print(f"{args.bench}: needs time-split rows of one device kind (found {len(rows)} rows, {len(kinds)} kinds)")
        return 2
    kind = json.loads(kinds.pop())
    model = fit_rows(rows, kind, data)
    out = model.save(costmodel_path(kind, args.out))
    for r in model.fitted_on:
        print(
            f"{r['amp']} {r['family']:6s} {r['model']:28s} b{r['batch']} ({r['rounds_used']} rounds) measured "
            f"{1e6 * r['s_per_image']:8.1f} us/img  fit {1e6 * r['fit_s_per_image']:8.1f}  "
            f"({100 * r['fit_error']:+.1f}%)"
            + (
                f"; forward {1e6 * r['eval_s_per_image']:.1f} fit {1e6 * r['fit_eval_s_per_image']:.1f}"
                if "eval_s_per_image" in r
                else ""
            )
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
