"""How long a study's unfinished runs will take on this machine, for ``rbdc study --list``: each run's planned FLOPs
at the speed the finished runs of its recipe (its point and that point's tuning trials) reached here, their training
FLOPs over their whole walls (evaluation included), counting only runs recorded on this CPU kind (``command.txt``:
vector capability and bf16 kernels) with the thread count asked now; a recipe with no such run counts at the speed
of all of them. Those walls were measured with the study's other runs beside them on the cores, so the ``jobs``
slots divide the total as they are."""

from __future__ import annotations

import json
from pathlib import Path

from ..cost import perf
from ..runs import rundir
from .spec import StudyRun


def this_cpu() -> dict:
    return perf.cpu_info()


def _key(run: StudyRun) -> str:
    """A run's speed class: its recipe (the tuning trials share their point's; budget and lr do not change speed)."""
    return Path(run.recipe).stem


def _same_kind(run_dir: Path, cpu: dict, threads: int) -> bool:
    """Every invocation of the run was on this CPU kind (its model too, where the run recorded one; an older run's
    capability alone is the best guess there is), the last one with ``threads`` threads."""
    envs = rundir.recorded_envs(run_dir)
    same = bool(envs) and all(
        e.get("cpu")
        and all(e["cpu"].get(k) == cpu[k] for k in ("capability", "bf16_fast"))
        and e["cpu"].get("model", cpu.get("model")) == cpu.get("model")
        for e in envs
    )
    return same and rundir.recorded_threads(run_dir) == threads


def speeds(runs: list[StudyRun], output: Path, cpu: dict, threads: int) -> dict[str, list[float]]:
    """Per recipe (file stem): [FLOPs, seconds, runs] over its finished runs of this CPU kind and thread count."""
    found: dict[str, list[float]] = {}
    for r in runs:
        path = r.run_dir(output) / rundir.RESULTS
        if r.waiting or not path.is_file() or not _same_kind(r.run_dir(output), cpu, threads):
            continue
        res = json.loads(path.read_text())
        if float(res.get("wall_s") or 0) > 0:
            acc = found.setdefault(_key(r), [0.0, 0.0, 0])
            acc[0] += float(res["total_train_flops"])
            acc[1] += float(res["wall_s"])
            acc[2] += 1
    return found


def wall_left(left: list[tuple[StudyRun, float]], speed: dict[str, list[float]], jobs: int) -> float | None:
    """Seconds the runs ``left`` (each with its planned FLOPs) take, ``jobs`` at a time; None with no speed known."""
    if not speed:
        return None
    overall = sum(v[0] for v in speed.values()) / sum(v[1] for v in speed.values())
    seconds = sum(c / (speed[_key(r)][0] / speed[_key(r)][1] if _key(r) in speed else overall) for r, c in left)
    return seconds / jobs


def rough_time(seconds: float) -> str:
    """An estimate's precision: ``5400`` -> ``'1.5 h'``, ``600`` -> ``'10 min'``."""
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{max(1, round(seconds / 60))} min"


def eta_text(runs: list[StudyRun], left: list[tuple[StudyRun, float]], output: Path, jobs: int, threads: int) -> str:
    """One line: the wall the unfinished runs will take here and what it rests on."""
    if not left:
        return "nothing left to train"
    cpu = this_cpu()
    where = f"{cpu['capability']}{', fast bf16' if cpu['bf16_fast'] else ''}, {threads} thread(s) per run"
    speed = speeds(runs, output, cpu, threads)
    seconds = wall_left(left, speed, jobs)
    if seconds is None:
        return (
            f"no finished run of this study on this CPU kind ({where}) yet to time the rest by: "
            "`rbdc plan RECIPE --estimate` measures a recipe's speed here"
        )
    guessed = sorted({_key(r) for r, _ in left if _key(r) not in speed})
    n = sum(int(v[2]) for v in speed.values())
    return f"about {rough_time(seconds)} at {jobs} run(s) at once here ({where}), at the speed of {n} finished runs" + (
        f"; {', '.join(guessed)} at the average speed (no finished run of theirs here)" if guessed else ""
    )
