"""``summary.csv``, a run's one row per epoch of every stage: its columns (:data:`SUMMARY_COLUMNS`, which of them
are optional, which are timings) and its writer and reader. The run directory (:mod:`rbdc.runs.rundir`) writes it
through :func:`write_summary`; reports read it through :func:`read_summary`."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..errors import UserError
from ..files import atomic_write_bytes

# summary.csv: these columns first, in this order, then any other a row has, sorted
SUMMARY_COLUMNS = (
    "stage",
    "model",
    "epoch",
    "train_loss",
    "eval_loss",
    "eval_top1",
    "eval_top5",
    "lr",
    "images_seen",
    "train_flops",
    "cum_train_flops",
    "wall_s",
    "img_per_s",
    "model_tflops_per_s",
    "mfu",
    "peak_mem_mb",
    "gemm_gflops",
    "cpu_s",
)
# only when a row has them (mfu: on a GPU; gemm_gflops, cpu_s: on a CPU, rbdc.cost.perf.gemm_probe_gflops and the
# epoch's process CPU seconds); the rest always
SUMMARY_OPTIONAL = ("model_tflops_per_s", "mfu", "gemm_gflops", "cpu_s")
_SUMMARY_ALWAYS = tuple(c for c in SUMMARY_COLUMNS if c not in SUMMARY_OPTIONAL)
# measured by the clock or the allocator: they differ between two runs of the same recipe (e.g. a resumed one)
TIMING_COLUMNS = ("wall_s", "img_per_s", "model_tflops_per_s", "mfu", "peak_mem_mb", "gemm_gflops", "cpu_s")


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
        raise UserError(
            f"{path} is truncated (its last row has no line end); resume the run with the same "
            f"rbdc train command, which rewrites it"
        )
    rows = []
    for i, row in enumerate(raw, start=2):
        if None in row or None in row.values():  # more or fewer fields than the header
            raise UserError(
                f"{path} line {i} does not have the header's {len(columns)} fields; the file is "
                f"damaged: resume the run with the same rbdc train command, which rewrites it"
            )
        rows.append({k.strip(): v.strip() for k, v in row.items()})
    return columns, rows
