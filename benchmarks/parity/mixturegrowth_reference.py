"""Our MixtureGrowth growth step (rbdc/growth/mixturegrowth.py) against the reference, layer by layer.

    export MIXTUREGROWTH_REPO=/path/to/mixturegrowth     # a checkout of chaudatascience/mixturegrowth
    python -m benchmarks.parity.mixturegrowth_reference  # the table of reports/mixturegrowth-reference.md

The reference's ``models/layers.py`` (``SConv2d``, ``SLinear``, ``SBatchNorm2d``) is loaded by file path (it needs
only torch and numpy; its ``import utils`` is served a stub, nothing of utils is used by the layers). For every
template layer of two members of our tiny timm models (``test_rbdc_resnet``: stem, 1x1/3x3 convs, downsample,
classifier; ``test_rbdc_vit``: patch embedding, attention proj, MLP, head), a reference layer of the grown size is
built with the main.py defaults (``template_size=[0.5, 0.5, 1]``, 2 sets of 2 templates, ``member_template_sets=[0,
1, 0, 1]``, ``ensemble_growth_type="diag"``), given the same templates and the same member coefficients, grown by
its own ``growth_update(len(template_size) - 1)`` (what main.py's ``growth_update`` calls) and read by
``get_params(None)``. Its weight is compared with the same layer of ``mixture_grow(member0, member1)``, and so are the
layer's outputs on a random input (biases left out: the reference's template layers have none).

Off-diagonal coefficients ``c2`` (top right, template set 0) and ``c3`` (bottom left, set 1) are taken three ways:
``zero`` (``coefs_growing="zero"`` / ``coefs="zero"``), ``orthogonal`` as each code does it (the reference keeps
``coefs_member_2`` at its initial value, see :data:`REFERENCE_C2_RULE`), and ``orthogonal`` with the reference's
``coefs_member_2`` set to ours before it grows (to check the rest of the rule: c3, the layout, the stem and head).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import subprocess
import sys
import types
from pathlib import Path

ENV = "MIXTUREGROWTH_REPO"
FAMILIES = ("test_rbdc_resnet", "test_rbdc_vit")
# Coefficients given to every template layer of the two members (trained coefficients need not be unit vectors).
GIVEN_COEFS = ((0.6, -0.8), (-0.3, 1.1))
REFERENCE_C2_RULE = (
    "models/layers.py, SModule.growth_update, lines 350-384: for i in range(num_ensembles, "
    "current_num_combinations) with num_ensembles = len(template_size) - 1 = 2, the orthogonal "
    "branch skips i == 2 ('if i == num_ensembles: continue', lines 373-374), so coefs_member_2 "
    "keeps its value from SModule.__init__ (lines 213-221: row 2 of nn.init.orthogonal_ on a "
    "[4, 2] matrix, never trained: members 0 and 1 read only coefs_member_0/1); only "
    "coefs_member_3 = svd([c0; c1; c2]).Vh[-1] x coefs_noise_growing"
)


def reference_repo() -> Path | None:
    raw = os.environ.get(ENV, "").strip()
    return Path(raw).expanduser() if raw else None


def load_reference_layers(repo: Path) -> types.ModuleType:
    """The reference's models/layers.py as a module (``import utils`` in it gets an empty stub)."""
    path = repo / "models" / "layers.py"
    if not path.is_file():
        raise FileNotFoundError(
            f"{ENV}={repo}: no models/layers.py there; point it at a checkout of chaudatascience/mixturegrowth"
        )
    saved = sys.modules.get("utils")
    sys.modules["utils"] = types.ModuleType("utils")
    try:
        spec = importlib.util.spec_from_file_location("mixturegrowth_reference_layers", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        if saved is None:
            sys.modules.pop("utils", None)
        else:
            sys.modules["utils"] = saved
    return mod


def reference_commit(repo: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
        return out.stdout.strip() if out.returncode == 0 else os.environ.get("MIXTUREGROWTH_COMMIT")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("MIXTUREGROWTH_COMMIT")


def reference_args(coefs: str = "orthogonal", noise: float = 1.0) -> argparse.Namespace:
    """The main.py defaults the layers read (main.py lines 98-110, 131-140, 229-242, 276-280)."""
    return argparse.Namespace(
        template_size=[0.5, 0.5, 1.0],
        num_templates_each_set=[2, 2],
        member_template_sets=[0, 1, 0, 1],
        ensemble_growth_type="diag",
        coefs_growing=coefs,
        coefs_noise_growing=noise,
        add_extra_templates_growing=0,
    )


def members(family: str, seed: int = 0):
    """Two members of ``family`` (templates seeded apart) whose every layer has the :data:`GIVEN_COEFS`."""
    import torch

    from rbdc.growth.mixturegrowth import mixture_member

    m0 = mixture_member(family, 1, seed=2 * seed + 1, num_classes=10)
    m1 = mixture_member(family, 1, seed=2 * seed + 2, num_classes=10)
    with torch.no_grad():
        for m, c in zip((m0, m1), GIVEN_COEFS):
            for layer in _template_layers(m).values():
                layer.coefs.copy_(torch.tensor(c))
    return m0, m1


def _template_layers(model) -> dict:
    from rbdc.growth.mixturegrowth import TemplateConv2d, TemplateLinear

    return {n: m for n, m in model.named_modules() if isinstance(m, (TemplateConv2d, TemplateLinear))}


def _kind(layer, grown_shape) -> str:
    o, c = layer.templates.shape[1:3]
    if grown_shape[:2] == (2 * o, 2 * c):
        return "hidden"
    if grown_shape[:2] == (2 * o, c):
        return "stem"  # reads the image: stacked along outputs (reference: SConv2d(set_input=True))
    if grown_shape[:2] == (o, 2 * c):
        return "classifier"  # stacked along inputs, logits summed (reference: SLinear(full_output=True))
    return "other"


def _reference_layer(ref, l0, l1, grown_shape, kind: str, args):
    from rbdc.growth.mixturegrowth import TemplateConv2d

    with contextlib.redirect_stdout(io.StringIO()):  # the reference prints norms as it goes
        if isinstance(l0, TemplateConv2d):
            layer = ref.SConv2d(
                args,
                1,
                grown_shape[1] * l0.groups,
                grown_shape[0],
                l0.kernel_size[0],
                stride=l0.stride,
                padding=l0.padding,
                groups=l0.groups,
                set_input=kind == "stem",
            )
        else:
            layer = ref.SLinear(args, 1, grown_shape[1], grown_shape[0], full_output=kind == "classifier")
    for s, lay in ((0, l0), (1, l1)):
        tp = layer.trainable_parameters[f"template_set_{s}"]
        if tuple(tp.shape) != tuple(lay.templates.shape):
            raise AssertionError(f"reference templates {tuple(tp.shape)} vs ours {tuple(lay.templates.shape)}")
        tp.data.copy_(lay.templates.detach())
        layer.coefficients[f"coefs_member_{s}"].data.copy_(lay.coefs.detach())
    return layer


def _grow_reference(layer, args) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        layer.growth_update(len(args.template_size) - 1)


def compare(ref, family: str, mode: str = "orthogonal", seed: int = 0) -> list[dict]:
    """Grow both ways and compare every template layer but qkv (the reference has no attention).

    ``mode``: ``zero``; ``orthogonal`` (each code's own rule); ``orthogonal-same-c2`` (the reference's
    ``coefs_member_2`` set to ours before it grows). Returns one row per layer: max |W_ref - W_ours| over the whole
    weight and per block (``tl``, ``tr``, ``bl``, ``br`` for hidden layers), max |y_ref - y_ours| on a random input
    and, for hidden layers, both codes' c2 and c3 (and the reference's c2 before it grew, ``ref_c2_before``).
    """
    import torch
    import torch.nn.functional as F

    from rbdc.growth.mixturegrowth import TemplateConv2d, _new_coefs, mixture_grow

    coefs = "zero" if mode == "zero" else "orthogonal"
    m0, m1 = members(family, seed)
    grown = mixture_grow(m0, m1, coefs=coefs).state_dict()
    layers1 = _template_layers(m1)
    rows = []
    gen = torch.Generator().manual_seed(1234)
    for i, (name, l0) in enumerate(_template_layers(m0).items()):
        if name.endswith("attn.qkv"):
            continue
        l1, w = layers1[name], grown[f"{name}.weight"]
        kind = _kind(l0, tuple(w.shape))
        args = reference_args(coefs)
        torch.manual_seed(seed * 1000 + i)  # the reference's own init of coefs_member_2/3 (orthogonal_)
        layer = _reference_layer(ref, l0, l1, tuple(w.shape), kind, args)
        ours_c2 = ours_c3 = None
        if kind == "hidden":
            ours_c2, ours_c3 = _new_coefs(l0.coefs.detach(), l1.coefs.detach(), coefs, 1.0, None)
            if mode == "orthogonal-same-c2":
                layer.coefficients["coefs_member_2"].data.copy_(ours_c2)
            ref_c2_before = layer.coefficients["coefs_member_2"].detach().clone()
        _grow_reference(layer, args)
        with torch.no_grad():
            w_ref = layer.get_params(None).detach()
            if isinstance(l0, TemplateConv2d):
                x = torch.randn(2, w.shape[1] * l0.groups, 8, 8, generator=gen)
                conv = dict(stride=l0.stride, padding=l0.padding, dilation=l0.dilation, groups=l0.groups)
                y_ref, y = F.conv2d(x, w_ref, **conv), F.conv2d(x, w, **conv)
            else:
                x = torch.randn(4, w.shape[1], generator=gen)
                y_ref, y = F.linear(x, w_ref), F.linear(x, w)
        row = {
            "family": family,
            "layer": name,
            "kind": kind,
            "shape": tuple(w.shape),
            "mode": mode,
            "max_dw": (w_ref - w).abs().max().item(),
            "max_dy": (y_ref - y).abs().max().item(),
            "max_w": w.abs().max().item(),
            "max_y": y.abs().max().item(),
        }
        if kind == "hidden":
            o, c = l0.templates.shape[1:3]
            d = w_ref - w
            row.update(
                tl=d[:o, :c].abs().max().item(),
                tr=d[:o, c:].abs().max().item(),
                bl=d[o:, :c].abs().max().item(),
                br=d[o:, c:].abs().max().item(),
                ref_c2_before=ref_c2_before.tolist(),
                ref_c2=layer.coefficients["coefs_member_2"].detach().tolist(),
                ref_c3=layer.coefficients["coefs_member_3"].detach().tolist(),
                ours_c2=ours_c2.tolist(),
                ours_c3=ours_c3.tolist(),
            )
        rows.append(row)
    return rows


def compare_batchnorm(ref, seed: int = 0) -> float:
    """Max |difference| of the grown BatchNorms (weight, bias, running stats) of test_rbdc_resnet: the reference's
    ``SBatchNorm2d.bn_growth`` (concatenation) against ours (``rbdc.couple``)."""
    import torch

    from rbdc.growth.mixturegrowth import mixture_grow

    m0, m1 = members("test_rbdc_resnet", seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # trained-looking statistics, different in the two members
        for m in (m0, m1):
            for bn in (b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)):
                for t in (bn.weight, bn.bias, bn.running_mean):
                    t.copy_(torch.randn(t.shape, generator=gen))
                bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=gen) + 0.5)
    grown = mixture_grow(m0, m1, coefs="zero").state_dict()
    args, worst = reference_args(), 0.0
    bns1 = dict(m1.named_modules())
    for name, bn0 in m0.named_modules():
        if not isinstance(bn0, torch.nn.BatchNorm2d):
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            sbn = ref.SBatchNorm2d(args, 2 * bn0.num_features)
            for k, b in enumerate((bn0, bns1[name])):
                sbn.batch_norms[k].load_state_dict(b.state_dict())
            sbn.growth_update(len(args.template_size) - 1)
        full = sbn.batch_norm_fully_grown
        for attr in ("weight", "bias", "running_mean", "running_var"):
            worst = max(worst, (getattr(full, attr) - grown[f"{name}.{attr}"]).abs().max().item())
    return worst


def main() -> int:
    repo = reference_repo()
    if repo is None:
        print(
            f"mixturegrowth_reference: {ENV} is not set: export {ENV}=/path/to/mixturegrowth (a checkout of "
            f"chaudatascience/mixturegrowth)",
            file=sys.stderr,
        )
        return 2
    try:
        ref = load_reference_layers(repo)
    except FileNotFoundError as e:
        print(f"mixturegrowth_reference: {e}", file=sys.stderr)
        return 2
    print(f"reference {repo} @ {reference_commit(repo)}; given coefficients c0={GIVEN_COEFS[0]}, c1={GIVEN_COEFS[1]}\n")
    print(
        "| family | mode | layers | max abs dW (all) | max abs dW diagonal blocks, stem, head | "
        "max abs dW top right | max abs dW bottom left | max abs dy | max abs W | max abs y |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for family in FAMILIES:
        for mode in ("zero", "orthogonal-same-c2", "orthogonal"):
            rows = compare(ref, family, mode)
            hidden = [r for r in rows if r["kind"] == "hidden"]
            diag = max([max(r["tl"], r["br"]) for r in hidden] + [r["max_dw"] for r in rows if r["kind"] != "hidden"])
            print(
                f"| {family} | {mode} | {len(rows)} | {max(r['max_dw'] for r in rows):.2e} | {diag:.2e} | "
                f"{max(r['tr'] for r in hidden):.2e} | {max(r['bl'] for r in hidden):.2e} | "
                f"{max(r['max_dy'] for r in rows):.2e} | {max(r['max_w'] for r in rows):.2e} | "
                f"{max(r['max_y'] for r in rows):.2e} |"
            )
    h = [r for r in compare(ref, "test_rbdc_vit", "orthogonal") if r["kind"] == "hidden"][0]
    print(
        f"\nexample ({h['family']} {h['layer']}): reference c2 {[round(v, 4) for v in h['ref_c2']]}, c3 "
        f"{[round(v, 4) for v in h['ref_c3']]}; ours c2 {[round(v, 4) for v in h['ours_c2']]}, c3 "
        f"{[round(v, 4) for v in h['ours_c3']]}"
    )
    print(f"BatchNorm growth (test_rbdc_resnet, all BNs): max abs difference {compare_batchnorm(ref):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
