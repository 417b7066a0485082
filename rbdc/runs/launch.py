"""Launch a study (several recipes) on one node through torchrun, or on Slurm through submitit.

    python -m rbdc.runs.launch configs/recipes/imagenet/deit-base-*.yaml [--dry-run] [--slurm] [-- extra train args]

For each recipe it prints the plan (stages, steps, FLOPs per stage, total vs scratch) and the fully resolved
command, then runs it: ``torchrun --standalone --nproc_per_node $NGPU -m rbdc.cli train -c RECIPE``
(``NNODES`` > 1: pass torchrun's rendezvous settings through ``RBDC_TORCHRUN_ARGS``). Runs resume automatically,
so rerunning a study continues it. ``--slurm`` submits one job per recipe with submitit, checkpoint-and-requeue:
on preemption or timeout the job is requeued and the run directory resumes where it stopped.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from ..errors import UserError
from .train import run_recipe
from .. import cli
from ..training.preempt import PREEMPTED_EXIT


def torchrun_command(recipe: str, output: str, extra: list[str]) -> list[str]:
    ngpu = os.environ.get("NGPU", "1")
    rdzv = shlex.split(os.environ.get("RBDC_TORCHRUN_ARGS", "--standalone"))
    return [
        "torchrun",
        *rdzv,
        f"--nproc_per_node={ngpu}",
        "-m",
        "rbdc.cli",
        "train",
        "-c",
        recipe,
        "-o",
        output,
        *extra,
    ]


class SlurmTrain:
    """A submitit job: one recipe; requeued with its own state on preemption (the run dir holds the progress)."""

    def __init__(self, recipe: str, output: str, extra: list[str]):
        self.recipe, self.output, self.extra = recipe, output, extra

    def __call__(self):
        import submitit

        env = submitit.JobEnvironment()
        os.environ.update(
            RANK=str(env.global_rank),
            WORLD_SIZE=str(env.num_tasks),
            LOCAL_RANK=str(env.local_rank),
            MASTER_ADDR=env.hostnames[0],
            MASTER_PORT=os.environ.get("MASTER_PORT", "29500"),
        )
        rc = cli.main(["train", "-c", self.recipe, "-o", self.output, *self.extra])
        if rc == PREEMPTED_EXIT:  # checkpointed at a step boundary: requeue as submitit's own handler does
            env._requeue(1)  # local executor: exit 144, run again; Slurm: scontrol requeue
        return rc

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmTrain(self.recipe, self.output, self.extra))


def submit_slurm(recipes: list[str], output: str, extra: list[str], args) -> None:
    try:
        import submitit
    except ImportError as e:
        raise UserError("--slurm needs submitit: pip install 'rbdc[slurm]'") from e
    ex = submitit.AutoExecutor(folder=Path(output) / "slurm" / "%j")
    ngpu = int(os.environ.get("NGPU", "8"))
    ex.update_parameters(
        nodes=int(os.environ.get("NNODES", "1")),
        gpus_per_node=ngpu,
        tasks_per_node=ngpu,
        cpus_per_task=int(os.environ.get("CPUS_PER_TASK", "10")),
        timeout_min=args.timeout_min,
        slurm_partition=args.partition,
        slurm_signal_delay_s=120,
        name="rbdc",
    )
    for r in recipes:
        job = ex.submit(SlurmTrain(r, output, extra))
        print(f"submitted {r} as Slurm job {job.job_id}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m rbdc.runs.launch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("recipes", nargs="+")
    p.add_argument("--output", "-o", default=os.environ.get("RBDC_OUT", "runs"))
    p.add_argument("--dry-run", action="store_true", help="print plans and commands, train nothing")
    p.add_argument("--slurm", action="store_true", help="submit with submitit instead of running here")
    p.add_argument("--partition", default=os.environ.get("SLURM_PARTITION"))
    p.add_argument("--timeout-min", type=int, default=int(os.environ.get("RBDC_TIMEOUT_MIN", 4320)))
    args, extra = p.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    try:
        for r in args.recipes:
            run_recipe(r, args.output, dry_run=True)
            print("command:", shlex.join(torchrun_command(r, args.output, extra)), "\n", flush=True)
        if args.dry_run:
            return 0
        if args.slurm:
            submit_slurm(args.recipes, args.output, extra, args)
            return 0
        for r in args.recipes:
            rc = subprocess.call(torchrun_command(r, args.output, extra))
            if rc:
                print(f"{r}: exited with {rc}", file=sys.stderr)
                return rc
    except UserError as e:
        print(f"rbdc launch: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
