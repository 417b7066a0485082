"""``rbdc quickstart``: the whole idea in minutes on a laptop, offline.

Trains two half-width ViTs independently, couples them block-diagonally, trains the coupled model on, then trains
the same model from scratch on the same training FLOPs, and writes the comparison table and the
accuracy-vs-training-FLOPs figure. Real data without downloads: Imagenette (32 px) when it can be found
(``RBDC_DATA``), else scikit-learn's digits.
"""
from __future__ import annotations

import time
from pathlib import Path

from .data import DataError, find_imagenette

RECIPES = Path(__file__).resolve().parents[1] / "benchmarks" / "recipes" / "quickstart"
IMAGENETTE = ["data.source=imagenette", "budget_epochs=6", "batch_size=128"]


def pick_data(choice: str) -> tuple[str, list[str]]:
    """The dataset the quickstart uses and the recipe overrides that select it."""
    if choice == "digits":
        return "digits", []
    try:
        find_imagenette()
        return "imagenette", IMAGENETTE
    except DataError:
        if choice == "imagenette":
            raise
        return "digits", []


def cmd_quickstart(args) -> int:
    from .report import generate_report
    from .train import run_recipe

    t0 = time.time()
    source, over = pick_data(args.data)
    over = over + (args.set or [])
    print(f"rbdc quickstart on {source}: rbdc (2 narrow ViTs -> couple -> train on), then scratch at equal FLOPs")
    out = Path(args.output)
    rbdc_res = run_recipe(str(RECIPES / "rbdc.yaml"), str(out), over, seed=args.seed)
    rbdc_dir = out / "quickstart" / "rbdc-d1" / f"seed{args.seed}"
    scratch = run_recipe(str(RECIPES / "scratch.yaml"), str(out), over + [f"match={rbdc_dir}"], seed=args.seed)
    written = generate_report([out / "quickstart"], out / "quickstart-report", title=f"rbdc quickstart ({source})")
    print()
    print(written["md"].read_text())
    print(f"rbdc top-1 {rbdc_res['eval_top1']:.2f} vs scratch {scratch['eval_top1']:.2f} at "
          f"{rbdc_res['total_train_flops']:.3e} / {scratch['total_train_flops']:.3e} training FLOPs")
    print(f"report: {written['md']}  figure: {written['png']}  ({time.time() - t0:.0f} s)")
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("quickstart", help="rbdc vs budget-matched scratch on a small real dataset, in minutes")
    p.add_argument("--data", choices=("auto", "imagenette", "digits"), default="auto",
                   help="auto: Imagenette if RBDC_DATA (or ../shared/data) has it, else digits")
    p.add_argument("--output", "-o", default="runs", help="root of the run directories")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe key of both runs")
    p.set_defaults(func=cmd_quickstart)
