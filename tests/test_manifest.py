"""The manifest is a value: adding a stage (trained here or by a parallel child) returns a new manifest and leaves
the one the caller holds as it was; it saves and loads as the same JSON; it verifies what it lists."""

import json

import pytest

from rbdc.runs import rundir
from rbdc.errors import UserError
from rbdc.flops import Ledger
from rbdc.runs.manifest import Manifest, child_done, save_child_result


def _ledger(*entries) -> Ledger:
    ledger = Ledger()
    for stage, images in entries:
        ledger.add(stage, "m", images, 10)
    return ledger


def test_adding_a_stage_returns_a_new_manifest_and_keeps_the_old_one(tmp_path):
    man = Manifest({"A": {"sha256": "x"}}, [{"stage": "A", "cum_train_flops": 10}], _ledger(("A", 1)))
    before = json.dumps([man.stages, man.rows, man.ledger.to_dict()])
    rows = man.rows + [{"stage": "B", "cum_train_flops": 30}]
    ledger = _ledger(("A", 1), ("B", 2))
    new = man.with_stage("B", {"sha256": "y"}, rows, ledger)
    ledger.add("C", "m", 5, 10)  # the caller's ledger and rows stay theirs
    rows.append({"stage": "C"})
    assert json.dumps([man.stages, man.rows, man.ledger.to_dict()]) == before
    assert new.done("B") and not man.done("B")
    assert [r["stage"] for r in new.rows] == ["A", "B"] and new.ledger.total == 30


def test_a_child_result_continues_the_running_totals_without_changing_the_manifest_it_joins(tmp_path):
    man = Manifest({"L0.0": {"sha256": "x"}}, [{"stage": "L0.0", "cum_train_flops": 10}], _ledger(("L0.0", 1)))
    assert not child_done(tmp_path, "L0.1")
    save_child_result(
        tmp_path, "L0.1", {"sha256": "y"}, [{"stage": "L0.1", "cum_train_flops": 20}], _ledger(("L0.1", 2))
    )
    assert child_done(tmp_path, "L0.1")
    merged = man.with_child_result(tmp_path, "L0.1")
    assert [r["cum_train_flops"] for r in merged.rows] == [10, 30]  # offset by the run's 10 FLOPs before it
    assert merged.ledger.total == 30 and merged.stages["L0.1"] == {"sha256": "y"}
    assert not man.done("L0.1") and len(man.rows) == 1 and man.ledger.total == 10


def test_a_manifest_saves_and_loads_as_the_same_json(tmp_path):
    assert Manifest.load(tmp_path) == Manifest()  # before the first stage
    man = Manifest({"A": {"model": "m", "sha256": "x"}}, [{"stage": "A", "cum_train_flops": 10}], _ledger(("A", 1)))
    path = man.save(tmp_path)
    assert json.loads(path.read_text()) == {"stages": man.stages, "rows": man.rows, "ledger": man.ledger.to_dict()}
    assert Manifest.load(tmp_path) == man
    path.write_text("{")
    with pytest.raises(UserError, match="manifest.json is damaged"):
        Manifest.load(tmp_path)


def test_a_listed_file_is_verified_against_its_sha256(tmp_path):
    final = rundir.stage_dir(tmp_path, "A") / rundir.FINAL
    final.parent.mkdir(parents=True)
    final.write_bytes(b"weights")
    entry = Manifest.entry(tmp_path, "m", final, [], 3)
    man = Manifest({"A": entry})
    assert man.verified(tmp_path, "A") == final
    final.write_bytes(b"other")
    with pytest.raises(UserError, match="changed since stage A wrote it"):
        man.verified(tmp_path, "A")
    final.unlink()
    with pytest.raises(UserError, match="is missing, but manifest.json says stage A wrote it"):
        man.verified(tmp_path, "A")
