"""Parity run: the OFFICIAL DiffusionBlocks code on our study point ``vit-diffusionblocks`` (Imagenette, 32 px).

    export DIFFUSIONBLOCKS_REPO=/path/to/DiffusionBlocks     # a checkout of the official code (model.py, vit.py, ...)
    python -m benchmarks.parity.diffusionblocks_official --out DIR [--budget-epochs 8] [--seed 0] [--threads 1]

What runs is the official code, imported from ``$DIFFUSIONBLOCKS_REPO``: its LightningModule ``model.ViTDBlockModel``
(noise bands, sigma sampling, EDM preconditioning, the loss, ``configure_optimizers``, ``diffusion_step``
inference), its ViT (``vit.ViTDiTForImageClassification``), trained by a Lightning ``Trainer`` set up as the
official ``main.py`` sets it up (gradient clipping 1.0, one device, fp32). What comes from this suite is only what
parity needs to be the same as our study point (configs/recipes/imagenette32/vit-nano-diffusionblocks.yaml):

* the data: the recipe's Imagenette split decoded at 32 px by ``rbdc.data`` (the same in-memory images, the same
  train augmentation, seeded batch order and ImageNet normalisation as our run of the same seed; evaluation on the
  whole validation split, 3,925 images, centre crop as ours);
* the model size: the official 32-px config (``vit.load_vit``: width 128, 12 layers, 4 heads, patch 4, MLP 3072,
  dropout 0.1) mapped to our target's width 64, depth 4, 4 heads, patch 4, MLP 256 (ratio 4); its dropout 0.1 is
  kept (``--dropout`` changes it);
* the number of blocks (the recipe's ``diffusionblocks.blocks`` = 2; the official default 3 does not divide 4),
  the images per step (batch 128) and the seed;
* the budget: ``budget_epochs`` B means B epochs of the target ViT's training FLOPs, ``B x (train images // batch)
  x batch x 3 x forward FLOPs of the target``, counted by ``rbdc.flops`` as every run of the suite is. A step costs
  ``batch x 3 x 2 x`` the forward MACs of what it runs (the shared embeddings, the drawn block's layers, the final
  norm/adaLN/head), counted with the same rules on the official model; training stops when the budget is spent.

Everything else is the official entry point's default: AdamW lr 1e-3 with a constant schedule and no warm-up,
weight decay 0.01 on every parameter, gamma 0.05, inference over B sigmas, no classifier-free guidance. lr 1e-3 is
also our recipe's peak lr (lr_base 4e-3 x 128/512), so nothing is changed there; ``--lr`` and ``--weight-decay`` can.

Writes ``DIR/results.json`` (``eval_top1``, ``total_train_flops``, ``img_size``, ``budget_epochs``, ``seed``, the
official commit and file digests, the command line, what was kept and what was set). Exits 2 with one line when
``$DIFFUSIONBLOCKS_REPO`` is missing or wrong, or the official code's dependencies are not installed
(``pip install -e '.[parity]'``, see README.md here).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV = "DIFFUSIONBLOCKS_REPO"
OFFICIAL_FILES = ("model.py", "vit.py", "dblock_modules.py")
DEFAULT_RECIPE = REPO / "configs" / "recipes" / "imagenette32" / "vit-nano-diffusionblocks.yaml"
PROG = "diffusionblocks_official"

# The official main.py's argparse defaults (Z30G0D/DiffusionBlocks main.py; unchanged since ade0b08). The model reads
# args.{lr, weight_decay, scheduler_type, num_warmup_steps, scheduler_specific_kwargs, num_blocks, gamma,
# num_inference_steps, cfg_scale, class_dropout_prob, gradient_checkpointing}; main() adds image_size, num_labels.
OFFICIAL_ARGS = dict(
    stage="train",
    data_name="imagenette",
    model_type="dblock",
    devices=1,
    num_epochs=500,
    batch_size=128,
    add_rand_aug=False,
    eval_batch_size=None,
    save_every_n_epochs=5,
    accumulate_grad_batches=1,
    gradient_checkpointing=False,
    scheduler_type="constant_with_warmup",
    scheduler_specific_kwargs=None,
    lr=0.001,
    weight_decay=0.01,
    optimizer="adamw",
    num_warmup_steps=0,
    deepspeed=False,
    seed=42,
    save_top_k=1,
    num_workers=8,
    ckpt_path=None,
    debug=False,
    postfix="",
    num_blocks=3,
    gamma=0.05,
    num_inference_steps=None,
    cfg_scale=0.0,
    class_dropout_prob=0.0,
)
OFFICIAL_GRAD_CLIP = 1.0  # main.py: L.Trainer(gradient_clip_val=1.0)
OFFICIAL_DROPOUT = 0.1  # vit.load_vit, image_size 32: attention_probs_dropout_prob = hidden_dropout_prob = 0.1


def fail(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)
    raise SystemExit(2)


def official_repo() -> Path:
    """``$DIFFUSIONBLOCKS_REPO`` checked: a folder holding the official model.py, vit.py and dblock_modules.py."""
    raw = os.environ.get(ENV, "").strip()
    how = (
        f"export {ENV}=/path/to/DiffusionBlocks (a checkout of github.com/SakanaAI/DiffusionBlocks or its fork "
        f"Z30G0D/DiffusionBlocks, the folder holding {', '.join(OFFICIAL_FILES)})"
    )
    if not raw:
        fail(f"{ENV} is not set: {how}")
    path = Path(raw).expanduser()
    missing = [f for f in OFFICIAL_FILES if not (path / f).is_file()]
    if missing:
        fail(f"{ENV}={raw} is not a DiffusionBlocks checkout (no {', '.join(missing)} there): {how}")
    return path.resolve()


def import_official(path: Path):
    """The official modules ``model`` and ``vit``, imported from ``path`` (they import each other by bare name)."""
    sys.path.insert(0, str(path))
    try:
        import model as official_model  # noqa: PLC0415  (the official model.py)
        import vit as official_vit  # noqa: PLC0415
    except ModuleNotFoundError as e:
        if e.name in {"model", "vit", "dblock_modules"}:
            fail(f"{ENV}={path}: cannot import the official {e.name}.py from there")
        fail(
            f"the official code needs the Python package {e.name!r}, which is not installed here: "
            f"pip install -e '.[parity]' (best in its own virtualenv, see benchmarks/parity/README.md)"
        )
    except ImportError as e:  # e.g. a transformers without the ViT pieces vit.py imports
        fail(
            f"the official code at {path} does not import with the installed packages ({e}); install the versions "
            f"of the parity extra: pip install -e '.[parity]'"
        )
    for mod, names in (
        (official_model, ("ViTDBlockModel",)),
        (official_vit, ("ViTDiTConfig", "ViTDiTForImageClassification", "load_vit")),
    ):
        if not all(hasattr(mod, n) for n in names):
            fail(
                f"{ENV}={path}: {mod.__file__} has no {', '.join(names)}; is it the DiffusionBlocks image "
                f"classification code?"
            )
    return official_model, official_vit


def official_identity(path: Path) -> dict:
    """The official checkout's commit (git, or ``$DIFFUSIONBLOCKS_COMMIT``) and the sha256 of the files run."""
    commit, dirty = os.environ.get("DIFFUSIONBLOCKS_COMMIT") or None, None
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
        if out.returncode == 0:
            commit = out.stdout.strip()
            st = subprocess.run(
                ["git", "-C", str(path), "status", "--porcelain", "--", *OFFICIAL_FILES],
                capture_output=True,
                text=True,
                timeout=30,
            )
            dirty = bool(st.stdout.strip()) if st.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    digests = {f: hashlib.sha256((path / f).read_bytes()).hexdigest() for f in OFFICIAL_FILES}
    return {"path": str(path), "commit": commit, "dirty": dirty, "sha256": digests}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"python -m benchmarks.parity.{PROG}",
        description="Train and evaluate the official DiffusionBlocks code on our study "
        "point's data, model size and FLOPs budget (module docstring).",
    )
    p.add_argument("--out", required=True, help="output folder (results.json goes there)")
    p.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="our recipe of the study point (default: %(default)s)")
    p.add_argument(
        "--budget-epochs",
        type=float,
        default=None,
        help="budget as epochs of the target ViT's training FLOPs (default: the recipe's)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed (ours: 0, 1, 2; the official default is 42)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the study runs 1)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of our recipe, as `rbdc train --set` (e.g. data.source=synthetic)",
    )
    p.add_argument("--lr", type=float, default=None, help="AdamW lr (default: the official 1e-3)")
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default: the official 0.01)")
    p.add_argument(
        "--dropout",
        type=float,
        default=OFFICIAL_DROPOUT,
        help="attention and hidden dropout of the official ViT (default: its 32-px config's 0.1; "
        "our recipe uses none, drop_path 0.05 instead)",
    )
    p.add_argument("--eval-batch", type=int, default=128, help="images per inference batch")
    return p.parse_args(argv)


class _Batches:
    """Our loader as the official training_step wants it: dict batches, and a new seeded epoch per pass."""

    def __init__(self, loader):
        self.loader, self.epoch = loader, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.loader.set_epoch(self.epoch)
        self.epoch += 1
        for x, y in self.loader:
            yield {"pixel_values": x, "labels": y}


def mapped_load_vit(official_vit, sizes: dict, dropout: float):
    """``vit.load_vit`` with its 32-px config mapped to our target's sizes (same config and model classes)."""

    def load_vit(image_size: int, num_labels: int, is_dblock: bool = False, **kwargs):
        kwargs.update(sizes, attention_probs_dropout_prob=dropout, hidden_dropout_prob=dropout)
        if is_dblock:
            kwargs["time_conditioning"] = True
            config_cls, model_cls = official_vit.ViTDiTConfig, official_vit.ViTDiTForImageClassification
        else:
            config_cls, model_cls = official_vit.ViTConfig, official_vit.ViTForImageClassification
        return model_cls(config_cls(image_size=image_size, num_labels=num_labels, **kwargs))

    return load_vit


def block_forward_macs(module, image_size: int) -> list[int]:
    """Forward MACs per image of one training step on each block, by our ledger's rules (``rbdc.flops``): convs and
    linear layers by ``count_macs``'s hooks, plus the two attention matmuls (2 x N^2 x width) of every attention
    that runs, which ``count_macs`` finds only in timm's attention."""
    import torch
    from transformers.models.vit.modeling_vit import ViTSelfAttention

    from rbdc.flops import count_macs

    net = module.model
    hidden = net.config.hidden_size
    attn = [0]

    def hook(mod, inputs, out):
        b, n = inputs[0].shape[:2]
        attn[0] += 2 * b * n * n * mod.all_head_size

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, ViTSelfAttention)]
    was = module.training
    module.eval()  # dropout off: it changes no shapes, so no MACs
    try:
        macs = []
        for b in range(module.args.num_blocks):
            attn[0] = 0
            x = torch.zeros(1, 3, image_size, image_size)
            zt, sigma = torch.zeros(1, hidden), torch.ones(1)
            lin = count_macs(net, lambda: module.denoise(x, zt, sigma, block_idx=b))  # noqa: B023 (called here)
            macs.append(lin + attn[0])
    finally:
        for h in handles:
            h.remove()
        module.train(was)
    return macs


def kept_official(margs: argparse.Namespace, dropout: float) -> list[str]:
    """The official settings this run keeps, with how each compares with our recipe's."""
    kept = [
        "AdamW on every parameter (ours: no decay on norms, biases, embeddings)",
        "gradient clipping 1.0 (= ours)",
        "no label smoothing (= the study recipe)",
        "fp32 (ours: bf16 autocast)",
        "gamma 0.05; log sigma ~ N(-1.2, 1.2^2) on [0.002, 80]; sigma_data 0.5 (= ours)",
        "loss mean(w) x mean(ce) (= ours, loss_weighting batch_mean)",
        "SiLU on the adaLN (= ours, adaln_silu)",
        "raw label embeddings in the Euler step (= ours, euler_embeds raw)",
        "num_inference_steps = num_blocks (= ours)",
        "cond width hidden // 6 (= ours)",
        "ViT details: LayerNorm eps 1e-12, qkv bias, the official init",
    ]
    if margs.lr == OFFICIAL_ARGS["lr"]:
        kept.append("lr 1e-3 (= ours: lr_base 4e-3 x 128/512)")
    if margs.weight_decay == OFFICIAL_ARGS["weight_decay"]:
        kept.append("weight decay 0.01 (= the study recipe)")
    kept.append("constant schedule, no warm-up (constant_with_warmup, 0 steps; = the study recipe)")
    if dropout == OFFICIAL_DROPOUT:
        kept.append("attention and hidden dropout 0.1 (ours: none, drop_path 0.05)")
    return kept


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = official_repo()
    official_model, official_vit = import_official(path)

    import lightning as L
    import torch
    import transformers

    from rbdc.nets.diffusionblocks import build_model as build_ours
    from rbdc.errors import UserError
    from rbdc.nets.models import scaled
    from rbdc.protocols.base import target_fpi, whole_steps
    from rbdc.protocols.planning import lr_for, plan_stages
    from rbdc.data import build_loader
    from rbdc.recipe import resolve
    from rbdc.data import recipe_datasets

    t_start = time.time()
    torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision("high")  # as the official main.py (TF32 on CUDA and CPUs that have it)
    out = Path(args.out)
    overrides = [*args.overrides, f"seed={args.seed}"]
    if args.budget_epochs is not None:
        overrides.append(f"budget_epochs={args.budget_epochs}")
    try:
        rec = resolve(args.recipe, overrides)
        if rec.protocol != "diffusionblocks":
            raise UserError(f"{args.recipe} is a {rec.protocol} recipe; give a diffusionblocks one")
        if rec.budget_epochs is None:
            raise UserError("the recipe has no budget_epochs; pass --budget-epochs")
        train_ds, val_ds = recipe_datasets(rec)
        num_classes = rec.num_classes or train_ds.num_classes
        ours_stage = plan_stages(rec, len(train_ds), num_classes)[0]
    except UserError as e:
        fail(str(e).splitlines()[0])

    batch, img_size, blocks = rec.batch_size, rec.img_size, int(rec.diffusionblocks.get("blocks", 3))
    steps_per_epoch = len(train_ds) // batch
    target_train_fpi = target_fpi(rec, Fraction(1), num_classes)
    budget = rec.budget_epochs * steps_per_epoch * batch * target_train_fpi  # rbdc.protocols.planning

    # our target's sizes, for the official config
    with torch.device("meta"):
        target = scaled(rec.model, 1, num_classes=num_classes, **rec.model_kwargs)
    patch = target.patch_embed.patch_size[0]
    sizes = dict(
        hidden_size=target.embed_dim,
        num_hidden_layers=len(target.blocks),
        num_attention_heads=target.blocks[0].attn.num_heads,
        patch_size=patch,
        intermediate_size=target.blocks[0].mlp.fc1.out_features,
    )
    official_model.load_vit = mapped_load_vit(official_vit, sizes, args.dropout)

    settings = {
        **OFFICIAL_ARGS,
        "num_blocks": blocks,
        "batch_size": batch,
        "seed": args.seed,
        "image_size": img_size,
        "num_labels": num_classes,
        "data_name": rec.data.source,
    }
    if args.lr is not None:
        settings["lr"] = args.lr
    if args.weight_decay is not None:
        settings["weight_decay"] = args.weight_decay
    margs = argparse.Namespace(**settings)

    # the FLOPs of one step, counted on a throwaway copy of the official model
    with contextlib.redirect_stdout(io.StringIO()):
        twin = official_model.ViTDBlockModel(margs)
        twin.configure_model()
    macs = block_forward_macs(twin, img_size)
    step_flops = [3 * 2 * m * batch for m in macs]  # rbdc.flops: training = 3 x forward FLOPs
    official_fpi = round(3 * 2 * sum(macs) / len(macs))
    official_params = sum(p.numel() for p in twin.parameters())
    del twin
    try:
        steps = whole_steps(budget / (batch * official_fpi), f"the budget of {budget:.4g} FLOPs")
    except UserError as e:
        fail(str(e))
    with torch.device("meta"):
        ours = build_ours(rec, num_classes)
    ours_params = sum(p.numel() for p in ours.parameters())

    device = torch.device(args.device)
    loader_kw = dict(img_size=img_size, in_memory=rec.data.in_memory, num_workers=rec.workers, device=device)
    train_loader = build_loader(
        train_ds, batch_size=batch, train=True, aug=rec.aug, seed=rec.seed, repeated_aug=rec.repeated_aug, **loader_kw
    )
    val_loader = build_loader(val_ds, batch_size=args.eval_batch, train=False, **loader_kw)

    class Ledger(L.Callback):
        """Adds each step's FLOPs (the block it ran) and stops the run once the budget is spent."""

        def __init__(self):
            self.spent, self.steps, self.by_block, self.ran = 0, 0, [0] * blocks, set()
            self.losses, self.epoch_losses = [], []

        def on_fit_start(self, trainer, module):
            per_block = module.model.config.num_hidden_layers // blocks
            for i, layer in enumerate(module.model.vit.encoder.layer):
                layer.register_forward_hook(lambda m, a, o, i=i: self.ran.add(i // per_block))

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.ran.clear()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if len(self.ran) != 1:
                raise RuntimeError(f"a training step ran blocks {sorted(self.ran)}; the official step runs one")
            b = self.ran.pop()
            self.spent += step_flops[b]
            self.steps += 1
            self.by_block[b] += 1
            self.losses.append(float(outputs["loss"]))
            if self.spent + step_flops[b] / 2 > budget:  # the next step would overshoot more than this one stops short
                trainer.should_stop = True

        def on_train_epoch_end(self, trainer, module):
            if self.losses:
                self.epoch_losses.append(sum(self.losses) / len(self.losses))
            self.losses = []

    ledger = Ledger()
    L.seed_everything(args.seed, workers=False)  # as main.py, before the model is built
    module = official_model.ViTDBlockModel(margs)
    trainer = L.Trainer(
        max_steps=steps,
        max_epochs=-1,
        gradient_clip_val=OFFICIAL_GRAD_CLIP,
        accumulate_grad_batches=1,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[ledger],
    )
    t_train = time.time()
    trainer.fit(module, train_dataloaders=_Batches(train_loader))
    train_wall = time.time() - t_train

    # the official inference (diffusion_step: Euler steps over num_inference_steps sigmas, then a final denoise)
    t_eval = time.time()
    module.to(device).eval()
    torch.manual_seed(args.seed)  # diffusion_step draws its starting noise from torch's global generator
    correct = seen = 0
    with torch.inference_mode():
        for x, y in val_loader:
            logits = module.diffusion_step(x.to(device))
            correct += int((logits.argmax(dim=-1) == y.to(device)).sum())
            seen += y.numel()
    eval_wall = time.time() - t_eval

    results = {
        "eval_top1": 100.0 * correct / max(seen, 1),
        "eval_images": seen,
        "total_train_flops": ledger.spent,
        "budget_flops": budget,
        "budget_epochs": rec.budget_epochs,
        "img_size": img_size,
        "seed": args.seed,
        "batch_size": batch,
        "steps": ledger.steps,
        "planned_steps": steps,
        "steps_by_block": ledger.by_block,
        "epochs_of_data": ledger.steps / steps_per_epoch,
        "train_flops_per_image": official_fpi,
        "block_forward_macs": macs,
        "target_train_flops_per_image": target_train_fpi,
        "train_loss_by_epoch": ledger.epoch_losses,
        "official": {
            **official_identity(path),
            "settings": {k: v for k, v in vars(margs).items()},
            "grad_clip": OFFICIAL_GRAD_CLIP,
            "dropout": args.dropout,
            "vit_sizes": sizes,
            "params": official_params,
            "precision": "fp32",
        },
        "ours": {
            "recipe": str(Path(args.recipe)),
            "name": rec.name,
            "steps": ours_stage.steps,
            "train_flops_per_image": ours_stage.flops_per_image,
            "lr": lr_for(rec),
            "params": ours_params,
            "amp": rec.amp,
        },
        "kept_official": kept_official(margs, args.dropout),
        "set_to_ours": [
            "data: rbdc.data's in-memory images of the recipe's split at its img_size, our train augmentation "
            "(random resized crop + flip), ImageNet normalisation and seeded batch order",
            f"ViT sizes {sizes} (the official 32-px config: 128 wide, 12 layers, 4 heads, patch 4, MLP 3072)",
            f"num_blocks {blocks} (official default 3)",
            f"batch {batch} (official default 128)",
            f"seed {args.seed} (official default 42)",
            "length: steps until budget_epochs x the target ViT's training FLOPs are spent (rbdc.flops rules)",
            "evaluation: every validation image (the official loaders drop the last partial batch)",
            *([f"lr {margs.lr:g} (official 1e-3)"] if args.lr is not None else []),
            *([f"weight decay {margs.weight_decay:g} (official 0.01)"] if args.weight_decay is not None else []),
            *([f"dropout {args.dropout:g} (official 0.1)"] if args.dropout != OFFICIAL_DROPOUT else []),
        ],
        "command": shlex.join(
            [sys.executable, "-m", f"benchmarks.parity.{PROG}", *(sys.argv[1:] if argv is None else argv)]
        ),
        "cwd": os.getcwd(),
        "threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "device": args.device,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "lightning": L.__version__,
        },
        "train_wall_s": round(train_wall, 1),
        "eval_wall_s": round(eval_wall, 1),
        "wall_s": round(time.time() - t_start, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(
        f"eval_top1 {results['eval_top1']:.2f} on {seen} images after {ledger.steps} steps "
        f"({ledger.spent:.4g} of {budget:.4g} FLOPs); wrote {out / 'results.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
