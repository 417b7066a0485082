"""The run directory: its layout and schema (every file name, the summary.csv columns), atomic writes, checksummed
training state, the failed marker, command.txt, orphans. Writers (``rbdc.train``, ``rbdc.jobs``) and readers
(``rbdc.report``, ``rbdc.study``) name its files through this module only.

Run directory (``<output>/<name>/seed<seed>/``)::

    recipe.yaml        resolved recipe: `rbdc train --recipe recipe.yaml` replays the run
    command.txt        every command line that ran it (paths relative to the runs root) and its environment
    summary.csv        one row per epoch of every stage (:data:`SUMMARY_COLUMNS`, then any extra ones, sorted)
    ledger.json        training FLOPs per stage (every narrow model counts)
    manifest.json      stages done, their final weights (and carried optimizer state) with sha256, their parents
    failed.json        only after a failure (divergence, an error): stage, step, reason, command
    train.log          output of the process, when a study's pool ran it (:data:`LOG`)
    stages/<id>/last.pt            resumable training state of the stage in progress (sha256-checked)
    stages/<id>/final.safetensors  the stage's final weights;  stages/<id>/optimizer.pt  its carried AdamW state
    stages/<id>/stage.json         a stage trained by a child process of ``rbdc.jobs``, before it is merged
    stages/<id>.log                that child's output
    final.safetensors  the final model;  results.json  the final numbers

Every file the suite writes goes through :func:`atomic_write`: a temporary file in the same folder, fsync, then
``os.replace``, so a reader (or a resume after kill -9) sees the old file or the new one, never a part.
"""
from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import re
import shlex
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

__all__ = ["RunFailed", "append_command", "atomic_write", "atomic_write_bytes", "clear_failed", "code_version",
           "copy_light", "load_checkpoint", "load_state", "mixed_with", "read_failed", "read_json", "read_manifest",
           "read_summary", "recorded_envs", "recorded_threads", "refuse_diverged", "relative_argv", "remove_orphans",
           "run_dir", "save_state", "sha256", "stage_dir", "stage_log", "user_errors", "verified", "write_failed",
           "write_json", "write_manifest", "write_progress", "write_results", "write_summary"]

_UMASK = os.umask(0)
os.umask(_UMASK)
TMP_SUFFIX = ".tmp"  # temporary files are hidden: .<name>.<random>.tmp (safetensors' and older ones: .<name>.tmp)

RECIPE, COMMAND, SUMMARY, LEDGER = "recipe.yaml", "command.txt", "summary.csv", "ledger.json"
MANIFEST, RESULTS, FINAL, FAILED = "manifest.json", "results.json", "final.safetensors", "failed.json"
STAGES, CHECKPOINT, OPTIMIZER, STAGE_DONE = "stages", "last.pt", "optimizer.pt", "stage.json"
LOG = "train.log"
LIGHT = (RECIPE, SUMMARY, RESULTS, LEDGER, MANIFEST, COMMAND)  # what a committed copy of a run keeps (no weights)

# summary.csv: these columns first, in this order, then any other a row has, sorted
SUMMARY_COLUMNS = ("stage", "model", "epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr",
                   "images_seen", "train_flops", "cum_train_flops", "wall_s", "img_per_s", "model_tflops_per_s", "mfu",
                   "peak_mem_mb")
SUMMARY_OPTIONAL = ("model_tflops_per_s", "mfu")  # only when a row has them (mfu: on a GPU); the rest always
_SUMMARY_ALWAYS = tuple(c for c in SUMMARY_COLUMNS if c not in SUMMARY_OPTIONAL)
# measured by the clock or the allocator: they differ between two runs of the same recipe (e.g. a resumed one)
TIMING_COLUMNS = ("wall_s", "img_per_s", "model_tflops_per_s", "mfu", "peak_mem_mb")
_STATE_MAGIC = b"rbdc-state sha256="


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def user_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn the OS errors of writing ``path`` (full disk, no permission, a file where a folder should be) into one
    line naming the path and the fix."""
    try:
        yield
    except OSError as e:
        if isinstance(e, (FileExistsError, NotADirectoryError)) or e.errno in (errno.ENOTDIR, errno.EEXIST):
            fix = "a file stands where a folder is needed; move it away or pick another --output"
        elif e.errno == errno.ENOSPC:
            fix = "the disk is full; free space, then rerun the same command to resume"
        elif e.errno in (errno.EDQUOT, errno.EFBIG):
            fix = "a disk quota or file-size limit is reached (the disk is full for this run); free space or raise " \
                  "the limit, then rerun the same command to resume"
        elif isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            fix = "no permission to write there; pick another --output or fix the folder's permissions"
        else:
            fix = "check the disk and the path, then rerun the same command to resume"
        raise UserError(f"cannot write {path}: {e.strerror or e}; {fix}") from e


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file in the same folder, which is fsynced and then
    renamed over ``path``. Creates missing parent folders."""
    path = Path(path)
    with user_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; keep the permissions a plain open() gives
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def read_json(path: Path, fix: str) -> dict:
    """A JSON object from ``path``, or a one-line error naming the file and ``fix``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is damaged ({e}); {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is damaged (not a JSON object); {fix}")
    return data


def save_state(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` behind a header holding the sha256 of the payload, so that a damaged file is found
    before it is unpickled (torch's own format checks nothing)."""
    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    return atomic_write_bytes(path, _STATE_MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n" + data)


def load_state(path: str | os.PathLike, fix: str):
    """What :func:`save_state` wrote to ``path``, after checking its sha256; a damaged file is never loaded: the
    error names it and ``fix`` (how to recover)."""
    import torch
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}; {fix}") from e
    if data.startswith(_STATE_MAGIC):
        head, _, body = data.partition(b"\n")
        if head[len(_STATE_MAGIC):].decode(errors="replace") != hashlib.sha256(body).hexdigest():
            raise UserError(f"{path} is damaged (sha256 mismatch: truncated or changed on disk); {fix}")
    elif data.startswith(b"PK"):  # a zip from torch.save, written before the checksum header existed
        body = data
    else:
        raise UserError(f"{path} is damaged (not a checkpoint written by rbdc); {fix}")
    try:
        return torch.load(io.BytesIO(body), weights_only=False)
    except Exception as e:  # torch raises many types for a damaged zip or pickle
        raise UserError(f"{path} is damaged ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                        f"{fix}") from e


class RunFailed(UserError):
    """A run stopped for good at ``stage`` (and ``step``); ``diverged``: its loss went non-finite."""

    def __init__(self, message: str, *, stage: str | None = None, step: int | None = None, diverged: bool = False):
        super().__init__(message)
        self.stage, self.step, self.diverged = stage, step, diverged


def write_failed(run_dir: Path, *, stage: str | None, step: int | None, reason: str, command: str,
                 diverged: bool = False) -> None:
    """Mark the run failed: the study runner and ``rbdc report`` refuse a run directory holding ``failed.json``."""
    info = {"stage": stage, "step": step, "reason": " ".join(reason.split()), "command": command,
            "diverged": diverged}
    atomic_write_bytes(run_dir / FAILED, (json.dumps(info, indent=1) + "\n").encode())


def read_failed(run_dir: Path) -> dict | None:
    path = Path(run_dir) / FAILED
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        info = None
    return info if isinstance(info, dict) else {"stage": None, "step": None, "reason": f"{path} is unreadable"}


def clear_failed(run_dir: Path) -> None:
    (Path(run_dir) / FAILED).unlink(missing_ok=True)


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


def code_version() -> dict:
    """The git commit of the code that runs (the rbdc package's checkout) and whether tracked files differ from it."""
    import subprocess
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(dirty) if commit else None}


def append_command(run_dir: Path, command: str, env: dict) -> None:
    """Add this invocation (see :func:`relative_argv`) and its environment to ``command.txt``: every rerun that
    resumed the run is there."""
    path = run_dir / COMMAND
    old = path.read_text() if path.is_file() else ""
    block = command + "\n" + json.dumps(env, indent=1) + "\n"
    atomic_write_bytes(path, (old + ("\n" if old else "") + block).encode())


def _mix_keys(env: dict) -> dict:
    """What a resume must not change: the code's commit, torch, and the bf16 matmul path (bf16 runs only)."""
    keys = {"code": (env.get("code") or {}).get("commit"), "torch": env.get("torch"),
            "bf16 matmul": (env.get("cpu") or {}).get("bf16_matmul")}
    return {k: v for k, v in keys.items() if v is not None}


def mixed_with(run_dir: Path, env: dict) -> tuple[str, str] | None:
    """(what the run started under, what ``env`` has) where a resume under ``env`` would mix them, else None.
    Compares the first invocation in ``command.txt``, on the fields both record."""
    envs = recorded_envs(run_dir)
    if not envs:
        return None
    first, now = _mix_keys(envs[0]), _mix_keys(env)
    diff = [k for k in first if k in now and first[k] != now[k]]
    if not diff:
        return None
    return (", ".join(f"{k} {first[k]}" for k in diff), ", ".join(f"{k} {now[k]}" for k in diff))


def copy_light(src: Path, dest: Path, names: tuple[str, ...] = LIGHT) -> Path:
    """Copy the light files ``names`` that ``src`` holds (a run's, by default) to ``dest``, e.g. for reports/runs."""
    for name in names:
        if (Path(src) / name).is_file():
            atomic_write_bytes(Path(dest) / name, (Path(src) / name).read_bytes())
    return Path(dest)


def recorded_threads(run_dir: Path) -> int | None:
    """The threads the last invocation in ``command.txt`` ran with (None without a record)."""
    found = [env["threads"] for env in recorded_envs(run_dir) if "threads" in env]
    return int(found[-1]) if found else None


def recorded_envs(run_dir: Path) -> list[dict]:
    """The environment (see ``rbdc.train``) of every invocation in ``command.txt``, in order."""
    path = Path(run_dir) / COMMAND
    text = path.read_text() if path.is_file() else ""
    envs, decoder = [], json.JSONDecoder()
    for m in re.finditer(r"^\{", text, re.M):
        try:
            envs.append(decoder.raw_decode(text, m.start())[0])
        except ValueError:
            continue
    return envs


def _remove_orphans_in(folder: Path, stale: tuple[str, ...] = ()) -> None:
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_file() and (p.name in stale or (p.name.startswith(".") and TMP_SUFFIX in p.name)):
                p.unlink(missing_ok=True)


def remove_orphans(run_dir: Path, stage_ids: list[str], done: dict, top: bool = True) -> None:
    """Delete what a kill left behind: the temporary files of interrupted writes (of rbdc and of safetensors; on a
    full disk they hold the space), in the run directory (``top``) and in the folders of ``stage_ids``, and the
    ``last.pt`` of stages already done (in ``done``, the manifest's stages, or holding ``stage.json``)."""
    if top:
        _remove_orphans_in(run_dir)
    for sid in stage_ids:
        sdir = stage_dir(run_dir, sid)
        finished = sid in done or (sdir / STAGE_DONE).is_file()
        _remove_orphans_in(sdir, (CHECKPOINT,) if finished else ())


def run_dir(output: str | os.PathLike, name: str, seed: int) -> Path:
    """The run directory of recipe ``name`` at ``seed`` under the runs root ``output``."""
    return Path(output) / name / f"seed{seed}"


def stage_dir(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / STAGES / stage


def stage_log(run_dir: Path, stage: str) -> Path:
    """The output of the child process of ``rbdc.jobs`` that trains ``stage``."""
    return Path(run_dir) / STAGES / f"{stage}.log"


def write_json(path: Path, obj: dict, sort_keys: bool = False) -> Path:
    return atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=sort_keys).encode())


def write_manifest(run_dir: Path, manifest: dict) -> Path:
    return write_json(Path(run_dir) / MANIFEST, manifest)


def write_results(run_dir: Path, results: dict) -> Path:
    return write_json(Path(run_dir) / RESULTS, results, sort_keys=True)


def write_summary(path: Path, rows: list[dict]) -> None:
    """``summary.csv``: :data:`SUMMARY_COLUMNS` (the optional ones only when a row has them), then the other keys
    of the rows, sorted; floats as ``%.6g``, a key a row lacks left blank."""
    cols = list(SUMMARY_COLUMNS) + sorted({k for r in rows for k in r} - set(SUMMARY_COLUMNS))
    cols = [c for c in cols if any(c in r for r in rows) or c in _SUMMARY_ALWAYS]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_bytes(path, buf.getvalue().encode())


def write_progress(run_dir: Path, rows: list[dict], ledger) -> None:
    """The rows and the FLOPs ledger (:class:`rbdc.flops.Ledger`) so far: ``summary.csv`` and ``ledger.json``."""
    write_summary(Path(run_dir) / SUMMARY, rows)
    ledger.save(Path(run_dir) / LEDGER)


def read_summary(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and the rows (values as written, blank where a row had no value) of a ``summary.csv``, or a
    one-line error naming the file: unreadable, truncated, or a row with more or fewer fields than the header."""
    try:
        text = path.read_text(encoding="utf-8")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = [c.strip() for c in reader.fieldnames or ()]
        raw = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path} is not a readable CSV ({e})") from None
    if text and not text.endswith("\n"):
        raise UserError(f"{path} is truncated (its last row has no line end); resume the run with the same "
                        f"rbdc train command, which rewrites it")
    rows = []
    for i, row in enumerate(raw, start=2):
        if None in row or None in row.values():  # more or fewer fields than the header
            raise UserError(f"{path} line {i} does not have the header's {len(columns)} fields; the file is "
                            f"damaged: resume the run with the same rbdc train command, which rewrites it")
        rows.append({k.strip(): v.strip() for k, v in row.items()})
    return columns, rows


NEW_RUN = "start a new run (another --name or --output)"


def read_manifest(run_dir: Path) -> dict:
    path = run_dir / MANIFEST
    if not path.is_file():
        return {"stages": {}, "rows": [], "ledger": {}}
    return read_json(path, f"restore it from a copy, or {NEW_RUN}")


def verified(run_dir: Path, entry: dict, stage: str, key: str = "final") -> Path:
    """The path of a file a manifest entry lists (``final`` weights, or ``optimizer`` state), after checking that
    it is there with the sha256 recorded when its stage finished."""
    rel, digest = (entry["final"], entry["sha256"]) if key == "final" else (entry[key]["path"], entry[key]["sha256"])
    path = run_dir / rel
    if not path.is_file():
        raise UserError(f"{path} is missing, but {MANIFEST} says stage {stage} wrote it; restore it, or {NEW_RUN}")
    if sha256(path) != digest:
        raise UserError(f"{path} changed since stage {stage} wrote it (sha256 mismatch); restore it, or {NEW_RUN}")
    return path


def load_checkpoint(sdir: Path) -> dict | None:
    """The resumable state of a stage in progress (``last.pt``), checked; None when the stage has not started."""
    path = sdir / CHECKPOINT
    if not path.is_file():
        return None
    return load_state(path, f"delete it to restart stage {sdir.name} from its beginning (the run stays "
                            f"exact), or {NEW_RUN}")


def refuse_diverged(run_dir: Path) -> None:
    """Resuming a diverged run replays the same steps bit for bit, so it would diverge again; and a run that only
    survives a retry must not enter a report either."""
    failed = read_failed(run_dir)
    if failed and failed.get("diverged"):
        raise UserError(f"{run_dir} diverged in stage {failed['stage']} at step {failed['step']}: rerunning the same "
                        f"recipe diverges again; lower lr_base or set clip_grad and train it under another --name or "
                        f"--output (or delete {run_dir} to retrain it as it is)")
