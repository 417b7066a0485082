"""``manifest.json``: the stages of a run that are done (their final weights and carried optimizer state, each with
its sha256, their parents), and the summary rows and FLOPs ledger up to the last of them.

A :class:`Manifest` is a value: adding a stage returns a new one, so that nothing a caller holds changes under it.
A stage trained by a parallel child process (``rbdc.jobs`` > 1, :mod:`rbdc.runs.parallel`) is handed over in the child's
``stages/<id>/stage.json`` (:func:`save_child_result`) and joins the run with :meth:`Manifest.with_child_result`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import rundir
from ..errors import UserError
from ..files import read_json, sha256, write_json
from ..flops import Ledger
from .rundir import RunDir

__all__ = ["Manifest", "save_child_result", "child_done"]


@dataclass(frozen=True)
class Manifest:
    stages: dict[str, dict] = field(default_factory=dict)  # stage id -> entry (see :meth:`entry`)
    rows: list[dict] = field(default_factory=list)  # summary.csv's rows up to the last stage done
    ledger: Ledger = field(default_factory=Ledger)

    @classmethod
    def load(cls, run_dir: RunDir | Path) -> Manifest:
        """The run's manifest; an empty one before its first stage is done."""
        data = rundir.read_manifest(run_dir)
        return cls(data["stages"], data["rows"], Ledger.from_dict(data["ledger"]))

    def save(self, run_dir: RunDir | Path) -> Path:
        data = {"stages": self.stages, "rows": self.rows, "ledger": self.ledger.to_dict()}
        return write_json(Path(run_dir) / rundir.MANIFEST, data)

    def done(self, stage: str) -> bool:
        return stage in self.stages

    @staticmethod
    def entry(
        run_dir: RunDir | Path, model: str, final: Path, parents: list[dict], steps: int, optimizer: Path | None = None
    ) -> dict:
        """A finished stage's entry: its model, final weights and (``optimizer``) carried state with their sha256,
        ``parents`` (``{stage, path, sha256}`` of the weights it started from) and its steps."""
        root = Path(run_dir)
        entry = {
            "model": model,
            "final": str(final.relative_to(root)),
            "sha256": sha256(final),
            "parents": parents,
            "steps": steps,
        }
        if optimizer is not None:
            entry["optimizer"] = {"path": str(optimizer.relative_to(root)), "sha256": sha256(optimizer)}
        return entry

    def with_stage(self, stage: str, entry: dict, rows: list[dict], ledger: Ledger) -> Manifest:
        """This manifest with ``stage`` done; ``rows`` and ``ledger``: the run's, with the stage's."""
        return Manifest({**self.stages, stage: entry}, list(rows), Ledger(list(ledger.entries)))

    def with_child_result(self, run_dir: RunDir | Path, stage: str) -> Manifest:
        """This manifest with the stage a parallel child trained: its rows and ledger continue the running totals."""
        payload = read_json(RunDir(run_dir).stage(stage) / rundir.STAGE_DONE, f"delete it to retrain stage {stage}")
        ledger = Ledger(list(self.ledger.entries))
        offset = ledger.total
        for e in Ledger.from_dict(payload["ledger"]).entries:
            ledger.add(e.stage, e.model, e.images, e.flops_per_image)
        rows = self.rows + [{**r, "cum_train_flops": r["cum_train_flops"] + offset} for r in payload["rows"]]
        return Manifest({**self.stages, stage: payload["entry"]}, rows, ledger)

    def verified(self, run_dir: RunDir | Path, stage: str, key: str = "final") -> Path:
        """The path of a file the entry of ``stage`` lists (``final`` weights, or ``optimizer`` state), after
        checking that it is there with the sha256 recorded when the stage finished."""
        entry = self.stages[stage]
        rel, digest = (
            (entry["final"], entry["sha256"]) if key == "final" else (entry[key]["path"], entry[key]["sha256"])
        )
        path = Path(run_dir) / rel
        if not path.is_file():
            raise UserError(
                f"{path} is missing, but {rundir.MANIFEST} says stage {stage} wrote it; restore it, or {rundir.NEW_RUN}"
            )
        if sha256(path) != digest:
            raise UserError(
                f"{path} changed since stage {stage} wrote it (sha256 mismatch); restore it, or {rundir.NEW_RUN}"
            )
        return path


def save_child_result(run_dir: RunDir | Path, stage: str, entry: dict, rows: list[dict], ledger: Ledger) -> Path:
    """A parallel child's stage, done: its entry, rows and ledger (its own, from zero) for the parent to merge."""
    payload = {"entry": entry, "rows": rows, "ledger": ledger.to_dict()}
    return write_json(RunDir(run_dir).stage(stage) / rundir.STAGE_DONE, payload)


def child_done(run_dir: RunDir | Path, stage: str) -> bool:
    """Whether a parallel child finished ``stage`` (its result waits to be merged)."""
    return (RunDir(run_dir).stage(stage) / rundir.STAGE_DONE).is_file()
