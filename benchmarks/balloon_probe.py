"""Frozen-feature probe of a detection study's backbones: can a linear classifier on each backbone's patch tokens,
with no fine-tuning, tell balloon pixels from background?

    python -m benchmarks.balloon_probe configs/studies/balloon32.yaml --backbones runs \
        -o reports/detection/balloon32-probe

The Mask R-CNN comparison (``rbdc det-study``) fine-tunes the backbone together with heads that start from random
weights, and at a CPU's budget the heads may not learn (see ``reports/runs/balloon32-probes/README.md``). This probe
asks the backbone alone: the same checkpoints at the study's image scale (keep-ratio resize, ImageNet normalisation
as the detection data preprocessor), the last block's tokens after the final norm (what ``RBDCViT`` gives the
pyramid), one logistic regression per backbone fitted on the train split's tokens (a token is a balloon token when
more than half of its patch is inside a balloon mask) and scored on the val split: ROC AUC and average precision
(the positive rate is printed beside it). Per backbone the report gives mean and 95% interval over pretraining
seeds, and the Welch 95% interval of the difference to the first backbone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
SUPERSAMPLE = 4  # mask pixels per token side: the token's balloon fraction is measured on this grid


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half): Mann-Whitney U."""
    labels = labels.astype(bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if not pos or not neg:
        raise ValueError("roc_auc needs positives and negatives")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    s = scores[order]
    # average the ranks of tied scores
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends):
        if b - a > 1:
            ranks[order[a:b]] = (a + 1 + b) / 2
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean of the precision at the rank of each positive, scores sorted from high to low."""
    labels = labels.astype(bool)
    if not labels.any():
        raise ValueError("average_precision needs positives")
    hit = labels[np.argsort(-scores, kind="mergesort")]
    precision = np.cumsum(hit) / np.arange(1, len(hit) + 1)
    return float(precision[hit].mean())


def resized_size(width: int, height: int, scale: tuple[int, int], multiple: int) -> tuple[int, int]:
    """MMDetection's keep-ratio ``Resize(scale)`` (long side <= max(scale), short side <= min(scale)), then cut
    down to a multiple of the patch size."""
    f = min(max(scale) / max(width, height), min(scale) / min(width, height))
    return int(width * f + 0.5) // multiple * multiple, int(height * f + 0.5) // multiple * multiple


def token_mask(polygons: list[list[float]], size: tuple[int, int], image_size: tuple[int, int], patch: int):
    """Per-token balloon label (> half of the token's patch inside a polygon) on the grid of a resized image."""
    (w, h), (iw, ih) = size, image_size
    gw, gh = w // patch, h // patch
    sw, sh = gw * SUPERSAMPLE / iw, gh * SUPERSAMPLE / ih
    canvas = Image.new("L", (gw * SUPERSAMPLE, gh * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        xy = [(x * sw, y * sh) for x, y in zip(poly[0::2], poly[1::2])]
        if len(xy) >= 3:
            draw.polygon(xy, fill=1)
    m = torch.from_numpy(np.asarray(canvas, dtype=np.float32))[None, None]
    return (F.avg_pool2d(m, SUPERSAMPLE)[0, 0] > 0.5).numpy().ravel()


def load_split(root: Path, split: str, scale: tuple[int, int], patch: int, limit: int | None = None):
    """(normalised image, token labels) per image of a COCO-format split."""
    ann = json.loads((root / f"{split}.json").read_text())
    polys: dict[int, list] = {}
    for a in ann["annotations"]:
        polys.setdefault(a["image_id"], []).extend(a["segmentation"])
    out = []
    for im in ann["images"][:limit]:
        size = resized_size(im["width"], im["height"], scale, patch)
        img = Image.open(root / split / im["file_name"]).convert("RGB").resize(size, Image.BILINEAR)
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
        out.append(((x - MEAN) / STD, token_mask(polys.get(im["id"], []), size, (im["width"], im["height"]), patch)))
    return out


def load_trunk(checkpoint: Path):
    """The checkpoint's timm ViT without classifier, resampling its position embedding to any input (as RBDCViT)."""
    import timm

    from rbdc.detection.weights import TRUNK, export_state_dict

    state, meta = export_state_dict(checkpoint)
    kwargs = {"img_size": tuple(meta["img_size"])} if "img_size" in meta else {}
    model = timm.create_model(meta["model"], pretrained=False, num_classes=0, dynamic_img_size=True, **kwargs)
    model.load_state_dict({k[len(TRUNK) :]: v for k, v in state.items()})
    return model.eval(), meta


@torch.no_grad()
def tokens(model, images) -> np.ndarray:
    rows = []
    for x, _ in images:
        f = model.forward_intermediates(
            x[None], indices=[len(model.blocks) - 1], norm=True, output_fmt="NCHW", intermediates_only=True
        )[-1][0]
        rows.append(f.flatten(1).T)
    return torch.cat(rows).numpy()


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-4, steps: int = 200):
    """L2-regularised logistic regression on standardised features (full-batch L-BFGS); returns a scorer."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xt = torch.from_numpy((x - mu) / sd).float()
    yt = torch.from_numpy(y.astype(np.float32))
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xt @ w + b, yt) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda z: (torch.from_numpy((z - mu) / sd).float() @ w + b).numpy()


def probe(model, meta: dict, train, val) -> dict:
    score = fit_logistic(tokens(model, train), np.concatenate([m for _, m in train]))
    s, y = score(tokens(model, val)), np.concatenate([m for _, m in val])
    return {
        "model": meta["model"],
        "sha256": meta["source_sha256"],
        "auc": round(100 * roc_auc(s, y), 2),
        "ap": round(100 * average_precision(s, y), 2),
        "positive_rate": round(100 * float(y.mean()), 2),
    }


def write_report(rows: list[dict], out: Path, study, command: str) -> None:
    from rbdc.report.stats import t_half_width, welch
    from rbdc.runs.rundir import atomic_write_bytes, code_version

    out.parent.mkdir(parents=True, exist_ok=True)
    code = code_version()
    record = {"command": command, "code": code, "rows": rows}
    atomic_write_bytes(out.with_suffix(".json"), (json.dumps(record, indent=1) + "\n").encode())
    by = {lab: [r for r in rows if r["label"] == lab] for lab in study.labels}
    pm = lambda v: "" if v is None else f" ± {v:.2f}"  # noqa: E731
    lines = [
        f"# {study.name}: frozen-feature balloon probe",
        "",
        f"Generated by `{command}` at commit {code['commit']}{' (uncommitted changes)' if code['dirty'] else ''}; "
        f"rows in `{out.with_suffix('.json').name}`. "
        f"A logistic regression on each backbone's last-block tokens (no fine-tuning), fitted on the balloon "
        f"train split at {study.scale[0]}x{study.scale[1]} and scored on val: per-token ROC AUC and average "
        f"precision (%), balloon tokens are {rows[0]['positive_rate']:.1f}% of val. Mean ± 95% interval over "
        f"pretraining seeds; the difference is to `{study.labels[0]}` (Welch 95%).",
        "",
        "| backbone | seeds | AUC | AP | AUC diff | AP diff |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    base = by[study.labels[0]]
    for lab in study.labels:
        rs = by[lab]
        if not rs:
            continue
        cells = []
        for key in ("auc", "ap"):
            v = [r[key] for r in rs]
            cells.append(f"{np.mean(v):.2f}{pm(t_half_width(v))}")
        diffs = []
        for key in ("auc", "ap"):
            if lab == study.labels[0]:
                diffs.append("-")
                continue
            d, hw = welch([r[key] for r in rs], [r[key] for r in base])
            diffs.append(f"{d:+.2f}{pm(hw)}")
        lines.append(f"| {lab} | {len(rs)} | {cells[0]} | {cells[1]} | {diffs[0]} | {diffs[1]} |")
    lines += ["", "| backbone | seed | AUC | AP | checkpoint sha256 |", "|---|---:|---:|---:|---|"]
    lines += [f"| {r['label']} | {r['seed']} | {r['auc']:.2f} | {r['ap']:.2f} | `{r['sha256'][:16]}` |" for r in rows]
    atomic_write_bytes(out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    from rbdc.detection.data import balloon_root
    from rbdc.detection.study import load_study

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("study", help="a detection study yaml (configs/studies/balloon32.yaml)")
    ap.add_argument("--backbones", required=True, help="runs root holding the study's backbone runs")
    ap.add_argument("-o", "--out", required=True, help="report path without suffix (writes .json and .md)")
    ap.add_argument("--limit", type=int, help="first N images of each split (a quick check)")
    args = ap.parse_args(argv)
    command = " ".join(["python -m benchmarks.balloon_probe", *(sys.argv[1:] if argv is None else argv)])
    torch.manual_seed(0)
    study = load_study(args.study)
    root = balloon_root()
    runs = list({(r.label, r.seed): r for r in study.runs}.values())  # fine-tuning seeds share a backbone
    backbones = Path(args.backbones)
    ckpts = [run.backbone(backbones, study) for run in runs]
    trunks = [load_trunk(c) for c in ckpts]  # each checkpoint read once (ViT-nano: 0.2M parameters each)
    patches = {tuple(m.patch_embed.patch_size) for m, _ in trunks}
    if len(patches) != 1:  # the token labels are made on one patch grid
        raise SystemExit(f"balloon_probe: the backbones have different patch sizes {sorted(patches)}")
    patch = patches.pop()[0]
    train = load_split(root, "train", study.scale, patch, args.limit)
    val = load_split(root, "val", study.scale, patch, args.limit)
    rows = []
    for run, ckpt, (model, meta) in zip(runs, ckpts, trunks):
        row = {
            "label": run.label,
            "point": run.point,
            "seed": run.seed,
            "backbone_run": str(ckpt.parent.relative_to(backbones)),
            **probe(model, meta, train, val),
        }
        print(f"{row['label']:10s} seed {row['seed']}: AUC {row['auc']:.2f}  AP {row['ap']:.2f}", flush=True)
        rows.append(row)
    write_report(rows, Path(args.out), study, command)
    print(f"wrote {Path(args.out).with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
