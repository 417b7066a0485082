"""RunDir: one object for a run directory's paths and files; the readers' functions are the same methods."""

import os
from pathlib import Path

from rbdc.runs import rundir
from rbdc.errors import RunFailed, UserError
from rbdc.runs.rundir import RunDir


def test_a_run_dir_is_a_path_under_the_runs_root(tmp_path):
    rd = RunDir.of(tmp_path, "ci/scratch", 3)
    assert rd.path == tmp_path / "ci" / "scratch" / "seed3" == Path(rd) == Path(os.fspath(rd))
    assert rd / rundir.RESULTS == rd.path / "results.json" and str(rd) == str(rd.path)
    assert rd.stage("L0.1") == rd.path / "stages" / "L0.1" and rd.stage_log("L0.1") == rd.path / "stages" / "L0.1.log"
    assert rd.checkpoint("L0.1") == rd.stage("L0.1") / "last.pt"
    assert rundir.run_dir(tmp_path, "ci/scratch", 3) == rd.path and rundir.stage_dir(rd, "A") == rd.stage("A")


def test_failed_json_in_the_run_or_in_a_parallel_childs_stage_folder(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.failed() is None
    rd.write_failed(stage="L0.1", step=7, reason="loss  nan\n", command="rbdc train", child_stage="L0.1")
    assert rd.failed() is None and rd.failed("L0.1")["reason"] == "loss nan"
    rd.write_failed(stage="L0.1", step=7, reason="x", command="rbdc train", diverged=True)
    assert rundir.read_failed(tmp_path)["diverged"]
    try:
        rd.refuse_diverged()
    except UserError as e:
        assert "diverged in stage L0.1 at step 7" in str(e)
    else:
        raise AssertionError("a diverged run was resumed")
    rd.clear_failed("L0.1")
    rd.clear_failed()
    assert rd.failed() is None and rd.failed("L0.1") is None
    (tmp_path / rundir.FAILED).write_text("{")
    assert "unreadable" in rd.failed()["reason"]
    assert issubclass(RunFailed, UserError)


def test_command_records_are_read_back_in_order(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.recorded_envs() == [] and rd.recorded_threads() is None and rd.mixed_with({"torch": "1"}) is None
    rd.append_command("rbdc train -c a.yaml", {"torch": "1", "threads": 2})
    rundir.append_command(tmp_path, "rbdc train -c a.yaml", {"torch": "2", "threads": 1})
    assert [e["torch"] for e in rd.recorded_envs()] == ["1", "2"] and rd.recorded_threads() == 1
    assert rd.mixed_with({"torch": "2"}) == ("torch 1", "torch 2")


def test_orphans_go_and_a_finished_stages_checkpoint_with_them(tmp_path):
    rd = RunDir(tmp_path)
    for sid in ("A", "B"):
        rd.stage(sid).mkdir(parents=True)
        rd.checkpoint(sid).write_bytes(b"state")
        (rd.stage(sid) / ".final.safetensors.x1.tmp").write_bytes(b"part")
    (tmp_path / ".summary.csv.x2.tmp").write_bytes(b"part")
    rd.remove_orphans(["B"], {}, top=False)  # a parallel child: its own folder only
    assert (tmp_path / ".summary.csv.x2.tmp").exists() and (rd.stage("A") / ".final.safetensors.x1.tmp").exists()
    assert not (rd.stage("B") / ".final.safetensors.x1.tmp").exists() and rd.checkpoint("B").exists()
    rd.remove_orphans(["A", "B"], {"A": {}})
    assert not rd.checkpoint("A").exists() and rd.checkpoint("B").exists()  # A is done, B in progress
    assert not list(tmp_path.rglob("*.tmp"))
