"""The run directory: its layout and schema (every file name, the summary.csv columns) and :class:`RunDir`, the one
object that reads and writes a run's files: paths, the failed marker, command records, progress, checkpoints,
orphans. Writers (:mod:`rbdc.runs.run`, :mod:`rbdc.runs.train`) and readers (``rbdc.report``,
``rbdc.studies.study``) name its files through this module only; the files are written whole or not at all
(:mod:`rbdc.files`).

Run directory (``<output>/<name>/seed<seed>/``)::

    recipe.yaml        resolved recipe: `rbdc train --recipe recipe.yaml` replays the run
    command.txt        every command line that ran it (paths relative to the runs root) and its environment
    summary.csv        one row per epoch of every stage (:mod:`rbdc.runs.summary`)
    ledger.json        training FLOPs per stage (every narrow model counts)
    manifest.json      stages done, their final weights (and carried optimizer state) with sha256, their parents
                       (:mod:`rbdc.runs.manifest`)
    failed.json        only after a failure (divergence, an error): stage, step, reason, command
    train.log          output of the process, when a study's pool ran it (:data:`LOG`)
    stages/<id>/last.pt            resumable training state of the stage in progress (sha256-checked)
    stages/<id>/final.safetensors  the stage's final weights;  stages/<id>/optimizer.pt  its carried AdamW state
    stages/<id>/stage.json         a stage trained by a parallel child process, before it is merged
    stages/<id>/failed.json        that child's failure;  stages/<id>.log  its output
    final.safetensors  the final model;  results.json  the final numbers
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from importlib import metadata
from pathlib import Path

from ..errors import RunFailed, UserError
from ..files import (
    TMP_SUFFIX,
    atomic_write,
    atomic_write_bytes,
    load_state,
    read_json,
    save_state,
    sha256,
    user_errors,
    write_json,
)
from .summary import SUMMARY_COLUMNS, SUMMARY_OPTIONAL, TIMING_COLUMNS, read_summary, write_summary

__all__ = [
    "RunDir",
    "RunFailed",
    "code_version",
    "copy_light",
    "read_failed",
    "read_manifest",
    "recorded_envs",
    "recorded_threads",
    "relative_argv",
    "run_dir",
    "stage_dir",
    "stage_log",
    "append_command",
    # from rbdc.runs.summary: RunDir.write_progress calls write_summary through this module's name (tests replace it)
    "read_summary",
    "write_summary",
    "SUMMARY_COLUMNS",
    "SUMMARY_OPTIONAL",
    "TIMING_COLUMNS",
    # from rbdc.files, for the modules that write through this one
    "atomic_write",
    "atomic_write_bytes",
    "load_state",
    "read_json",
    "save_state",
    "sha256",
    "user_errors",
    "write_json",
]

RECIPE, COMMAND, SUMMARY, LEDGER = "recipe.yaml", "command.txt", "summary.csv", "ledger.json"
MANIFEST, RESULTS, FINAL, FAILED = "manifest.json", "results.json", "final.safetensors", "failed.json"
STAGES, CHECKPOINT, OPTIMIZER, STAGE_DONE = "stages", "last.pt", "optimizer.pt", "stage.json"
LOG = "train.log"
LIGHT = (RECIPE, SUMMARY, RESULTS, LEDGER, MANIFEST, COMMAND)  # what a committed copy of a run keeps (no weights)
NEW_RUN = "start a new run (another --name or --output)"


class RunDir(os.PathLike):
    """One run directory. ``RunDir(path)`` (or :meth:`of`); it is a path-like (``Path(rd)``, ``rd / name``)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def of(cls, output: str | os.PathLike, name: str, seed: int) -> RunDir:
        """The run directory of recipe ``name`` at ``seed`` under the runs root ``output``."""
        return cls(Path(output) / name / f"seed{seed}")

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # --- paths ------------------------------------------------------------------------------------------------

    def stage(self, stage: str) -> Path:
        """The folder of ``stage`` (its checkpoint, final weights, a parallel child's result)."""
        return self.path / STAGES / stage

    def stage_log(self, stage: str) -> Path:
        """The output of the parallel child process that trains ``stage``."""
        return self.path / STAGES / f"{stage}.log"

    def checkpoint(self, stage: str) -> Path:
        return self.stage(stage) / CHECKPOINT

    # --- the failed marker ------------------------------------------------------------------------------------

    def write_failed(
        self,
        *,
        stage: str | None,
        step: int | None,
        reason: str,
        command: str,
        diverged: bool = False,
        child_stage: str | None = None,
    ) -> None:
        """Mark the run failed: the study runner and ``rbdc report`` refuse a run directory holding
        ``failed.json``. A parallel child marks its stage's folder (``child_stage``), for its parent to read."""
        info = {
            "stage": stage,
            "step": step,
            "reason": " ".join(reason.split()),
            "command": command,
            "diverged": diverged,
        }
        where = self.stage(child_stage) if child_stage else self.path
        atomic_write_bytes(where / FAILED, (json.dumps(info, indent=1) + "\n").encode())

    def failed(self, stage: str | None = None) -> dict | None:
        """What ``failed.json`` says (of a parallel child's ``stage``), None when there is none."""
        path = (self.stage(stage) if stage else self.path) / FAILED
        if not path.is_file():
            return None
        try:
            info = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            info = None
        return info if isinstance(info, dict) else {"stage": None, "step": None, "reason": f"{path} is unreadable"}

    def clear_failed(self, stage: str | None = None) -> None:
        ((self.stage(stage) if stage else self.path) / FAILED).unlink(missing_ok=True)

    def refuse_diverged(self) -> None:
        """Resuming a diverged run replays the same steps bit for bit, so it would diverge again; and a run that
        only survives a retry must not enter a report either."""
        failed = self.failed()
        if failed and failed.get("diverged"):
            raise UserError(
                f"{self} diverged in stage {failed['stage']} at step {failed['step']}: rerunning the "
                f"same recipe diverges again; lower lr_base or set clip_grad and train it under another "
                f"--name or --output (or delete {self} to retrain it as it is)"
            )

    # --- command records --------------------------------------------------------------------------------------

    def append_command(self, command: str, env: dict) -> None:
        """Add this invocation (see :func:`relative_argv`) and its environment to ``command.txt``: every rerun
        that resumed the run is there."""
        path = self.path / COMMAND
        old = path.read_text() if path.is_file() else ""
        block = command + "\n" + json.dumps(env, indent=1) + "\n"
        atomic_write_bytes(path, (old + ("\n" if old else "") + block).encode())

    def recorded_envs(self) -> list[dict]:
        """The environment (see ``rbdc.runs.run``) of every invocation in ``command.txt``, in order."""
        path = self.path / COMMAND
        text = path.read_text() if path.is_file() else ""
        envs, decoder = [], json.JSONDecoder()
        for m in re.finditer(r"^\{", text, re.M):
            try:
                envs.append(decoder.raw_decode(text, m.start())[0])
            except ValueError:
                continue
        return envs

    def recorded_threads(self) -> int | None:
        """The threads the last invocation in ``command.txt`` ran with (None without a record)."""
        found = [env["threads"] for env in self.recorded_envs() if "threads" in env]
        return int(found[-1]) if found else None

    def mixed_with(self, env: dict) -> tuple[str, str] | None:
        """(what the run started under, what ``env`` has) where a resume under ``env`` would mix them, else None.
        Compares the first invocation in ``command.txt``, on the fields both record."""
        envs = self.recorded_envs()
        if not envs:
            return None
        first, now = _mix_keys(envs[0]), _mix_keys(env)
        diff = [k for k in first if k in now and first[k] != now[k]]
        if not diff:
            return None
        return (", ".join(f"{k} {first[k]}" for k in diff), ", ".join(f"{k} {now[k]}" for k in diff))

    # --- progress, results, checkpoints -----------------------------------------------------------------------

    def write_progress(self, rows: list[dict], ledger) -> None:
        """The rows and the FLOPs ledger (:class:`rbdc.flops.Ledger`) so far: ``summary.csv`` and ``ledger.json``."""
        write_summary(self.path / SUMMARY, rows)
        ledger.save(self.path / LEDGER)

    def write_results(self, results: dict) -> Path:
        return write_json(self.path / RESULTS, results, sort_keys=True)

    def save_checkpoint(self, stage: str, state: dict) -> Path:
        return save_state(state, self.checkpoint(stage))

    def load_checkpoint(self, stage: str) -> dict | None:
        """The resumable state of ``stage`` in progress (``last.pt``), checked; None when it has not started."""
        path = self.checkpoint(stage)
        if not path.is_file():
            return None
        return load_state(
            path, f"delete it to restart stage {stage} from its beginning (the run stays exact), or {NEW_RUN}"
        )

    def drop_checkpoint(self, stage: str) -> None:
        """The stage is done: its ``last.pt`` goes."""
        self.checkpoint(stage).unlink(missing_ok=True)

    def remove_orphans(self, stage_ids: list[str], done: dict, top: bool = True) -> None:
        """Delete what a kill left behind: the temporary files of interrupted writes (of rbdc and of safetensors;
        on a full disk they hold the space), in the run directory (``top``) and in the folders of ``stage_ids``,
        and the ``last.pt`` of stages already done (in ``done``, the manifest's stages, or holding
        ``stage.json``)."""
        if top:
            _remove_orphans_in(self.path)
        for sid in stage_ids:
            sdir = self.stage(sid)
            finished = sid in done or (sdir / STAGE_DONE).is_file()
            _remove_orphans_in(sdir, (CHECKPOINT,) if finished else ())

    def copy_light(self, dest: Path, names: tuple[str, ...] = LIGHT) -> Path:
        """Copy the light files ``names`` it holds to ``dest``, e.g. for reports/runs."""
        for name in names:
            if (self.path / name).is_file():
                atomic_write_bytes(Path(dest) / name, (self.path / name).read_bytes())
        return Path(dest)


def _mix_keys(env: dict) -> dict:
    """What a resume must not change: the code's commit, torch, and the bf16 matmul path (bf16 runs only)."""
    keys = {
        "code": (env.get("code") or {}).get("commit"),
        "torch": env.get("torch"),
        "bf16 matmul": (env.get("cpu") or {}).get("bf16_matmul"),
    }
    return {k: v for k, v in keys.items() if v is not None}


def _remove_orphans_in(folder: Path, stale: tuple[str, ...] = ()) -> None:
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_file() and (p.name in stale or (p.name.startswith(".") and TMP_SUFFIX in p.name)):
                p.unlink(missing_ok=True)


def relative_argv(argv: list[str], root: Path) -> str:
    """The command line with every argument that names an existing path written relative to ``root``."""
    root = Path(root).resolve()
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
        if value and (os.path.isabs(value) or os.path.exists(value)):
            value = os.path.relpath(Path(value).resolve(), root)
        out.append(key + eq + value)
    return " ".join(shlex.quote(a) for a in out)


PACKAGE_SOURCE = Path(__file__).resolve().parents[1]  # the folder of the imported rbdc package itself


def code_version(source: Path = PACKAGE_SOURCE) -> dict:
    """The code that runs, as a run records it (``manifest.json``'s ``code``), never raising.

    The project replays a run from the commit it records, so where the rbdc package's own folder (``source``) is
    tracked by a git work tree (an editable install: how the project makes its runs) this is that commit and whether
    tracked files differ from it. Anywhere else, e.g. a wheel installed into site-packages (which may itself lie
    inside some unrelated checkout), there is no commit to read: ``commit`` and ``dirty`` are None and ``version``
    is the installed distribution's version, so a run never fails for lack of git."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=30)

    try:
        tracked = git("ls-files", "--error-unmatch", "__init__.py").returncode == 0
        commit = git("rev-parse", "HEAD").stdout.strip() if tracked else ""
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip() if commit else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    if commit:
        return {"commit": commit, "dirty": bool(dirty)}
    try:
        version = metadata.version("rbdc")
    except metadata.PackageNotFoundError:
        version = None
    return {"commit": None, "dirty": None, "version": version}


def read_manifest(run_dir: str | os.PathLike) -> dict:
    """``manifest.json`` as written (:class:`rbdc.runs.manifest.Manifest` reads it through here)."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return {"stages": {}, "rows": [], "ledger": {}}
    return read_json(path, f"restore it from a copy, or {NEW_RUN}")


# The readers' functions (rbdc.report, rbdc.studies.study, rbdc.detection, benchmarks): each is RunDir(path).<method>.


def run_dir(output: str | os.PathLike, name: str, seed: int) -> Path:
    return RunDir.of(output, name, seed).path


def stage_dir(run_dir: str | os.PathLike, stage: str) -> Path:
    return RunDir(run_dir).stage(stage)


def stage_log(run_dir: str | os.PathLike, stage: str) -> Path:
    return RunDir(run_dir).stage_log(stage)


def read_failed(run_dir: str | os.PathLike) -> dict | None:
    return RunDir(run_dir).failed()


def recorded_envs(run_dir: str | os.PathLike) -> list[dict]:
    return RunDir(run_dir).recorded_envs()


def recorded_threads(run_dir: str | os.PathLike) -> int | None:
    return RunDir(run_dir).recorded_threads()


def copy_light(src: str | os.PathLike, dest: Path, names: tuple[str, ...] = LIGHT) -> Path:
    return RunDir(src).copy_light(dest, names)


def append_command(run_dir: str | os.PathLike, command: str, env: dict) -> None:
    RunDir(run_dir).append_command(command, env)
