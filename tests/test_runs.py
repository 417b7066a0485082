"""What a run directory guarantees: divergence stops and marks the run failed, everything read back is checksummed,
the recipe is validated before anything is written, stale and orphaned files are repaired on resume."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import interrupt_after  # tests/conftest.py
from safetensors.torch import load_file

from rbdc import cli, files
from rbdc.runs import rundir
from rbdc import recipe as recipes
from rbdc import report
from rbdc.runs import train
from rbdc.errors import UserError
from rbdc.studies.spec import StudyRun

CI = Path(__file__).resolve().parents[1] / "configs" / "recipes" / "ci"
QUIET = {"log": lambda *a, **k: None}


def run(recipe, out, overrides=(), **kw):
    return train.run_recipe(str(CI / f"{recipe}.yaml"), str(out), list(overrides), **QUIET, **kw)


def run_dir(out, name):
    return Path(out) / "ci" / name / "seed0"


def flip_byte(path: Path, at: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def scratch(ci_reference):
    return ci_reference("scratch")[0]


def same_final(a: Path, b: Path) -> bool:
    x, y = load_file(str(a / "final.safetensors")), load_file(str(b / "final.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


# ----------------------------------------------------------------------------------------------------------------
# 1. Divergence


def test_a_diverging_stage_stops_marks_the_run_failed_and_is_refused_everywhere(tmp_path, capsys):
    argv = ["train", "-c", str(CI / "scratch.yaml"), "-o", str(tmp_path), "--set", "lr_base=1e9"]
    assert cli.main(argv) == 2
    assert "diverged" in capsys.readouterr().err
    d = run_dir(tmp_path, "scratch")
    failed = json.loads((d / "failed.json").read_text())
    assert failed["stage"] == "scratch" and failed["step"] >= 1 and failed["diverged"]
    assert "lr_base" in failed["reason"] and "clip_grad" in failed["reason"] and "\n" not in failed["reason"]
    assert "command" in failed
    assert not list(d.rglob("*.safetensors")) and not (d / "results.json").exists()  # no final weights
    assert StudyRun("ci/scratch", str(CI / "scratch.yaml")).status(tmp_path) == "failed"
    with pytest.raises(UserError, match="diverged in stage scratch.*another --name"):
        run("scratch", tmp_path, ["lr_base=1e9"])  # resuming replays the same steps: refused
    with pytest.raises(UserError, match="failed at stage scratch"):
        report.generate_report([tmp_path], tmp_path / "rep")


# ----------------------------------------------------------------------------------------------------------------
# 2. Checksums on everything read back


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_last_pt_is_never_loaded_and_a_rerun_after_deleting_it_clears_the_failure(
    scratch, tmp_path, monkeypatch, damage
):
    interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run("scratch", tmp_path)
    monkeypatch.undo()
    d = run_dir(tmp_path, "scratch")
    last = d / "stages" / "scratch" / "last.pt"
    if damage == "flip":
        flip_byte(last)
    else:
        last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(UserError, match=f"{last} is damaged.*delete it to restart stage scratch"):
        run("scratch", tmp_path)
    assert json.loads((d / "failed.json").read_text())["stage"] == "scratch"
    last.unlink()
    run("scratch", tmp_path)
    assert not (d / "failed.json").exists() and same_final(scratch, d)


def test_the_carried_optimizer_state_is_in_the_manifest_and_checked(tmp_path, monkeypatch):
    over = ["rbdc.optimizer=carried"]
    interrupt_after(monkeypatch, 3)  # inside L0.1: L0.0 is done
    with pytest.raises(KeyboardInterrupt):
        run("rbdc", tmp_path, over)
    monkeypatch.undo()
    d = run_dir(tmp_path, "rbdc-d1")
    entry = json.loads((d / "manifest.json").read_text())["stages"]["L0.0"]["optimizer"]
    opt = d / entry["path"]
    assert entry["sha256"] == rundir.sha256(opt)
    flip_byte(opt)
    with pytest.raises(UserError, match=f"{opt} changed since stage L0.0 wrote it"):
        run("rbdc", tmp_path, over)


def test_rerunning_a_finished_run_checks_the_weights_it_copies(scratch, tmp_path):
    import shutil

    d = tmp_path / "ci" / "scratch" / "seed0"
    shutil.copytree(scratch, d)
    flip_byte(d / "stages" / "scratch" / "final.safetensors")
    before = (d / "final.safetensors").read_bytes()
    with pytest.raises(UserError, match="final.safetensors changed since stage scratch wrote it"):
        run("scratch", tmp_path)
    assert (d / "final.safetensors").read_bytes() == before


# ----------------------------------------------------------------------------------------------------------------
# 3, 4. Validate before writing; numbers


@pytest.mark.parametrize(
    "override, message",
    [
        ("aug.auto_augmnt=rand", "aug: unknown augmentation option"),
        ("model_kwargs.depht=3", "model_kwargs"),
        ("model=no_such_model", "unknown model 'no_such_model'"),
        ("lr_base=fast", "lr_base: must be a number"),
        ("epochs=three", "epochs: must be a number"),
        ("epochs=0", "epochs: must be > 0"),
        ("epochs=-2", "epochs: must be > 0"),
        ("batch_size=0", "batch_size: must be >= 1"),
        ("budget=0", "budget: must be > 0"),
        ("budget=1e3", "less than one"),
        ("epochs=0.001", "less than one"),
        ("data.in_memory=maybe", "data.in_memory: must be true/false"),
        ("rbdc.head=max", "must be one of mean, sum"),
        ("workers=-1", "workers: must be >= 0"),
    ],
)
def test_a_bad_recipe_is_refused_before_anything_is_written(tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        run("scratch", tmp_path, [override])
    assert not tmp_path.joinpath("ci").exists()


def test_yaml_1_2_floats_are_numbers_in_recipes_and_overrides(tmp_path):
    (tmp_path / "r.yaml").write_text(f"base: {CI / 'scratch.yaml'}\nlr_base: 1e-3\nmin_lr: 5E-6\n")
    rec = recipes.resolve(tmp_path / "r.yaml", ["budget=1e9", "opt_eps=+1.5e-7"])
    assert (rec.lr_base, rec.min_lr, rec.budget, rec.opt_eps) == (1e-3, 5e-6, 1e9, 1.5e-7)
    assert recipes.parse_override("clip_grad=5e-1")[1] == 0.5
    assert recipes.parse_override("name=e5")[1] == "e5"  # not a number


# ----------------------------------------------------------------------------------------------------------------
# 5. Stale files and orphans


def test_a_kill_after_the_last_checkpoint_leaves_no_stale_summary_or_ledger(scratch, tmp_path, monkeypatch):
    real = rundir.write_summary
    rows_at_end = len((scratch / "summary.csv").read_text().splitlines()) - 1

    def killed_before_writing(path, rows):
        if len(rows) == rows_at_end:  # the stage's last epoch: last.pt is already renamed into place
            raise KeyboardInterrupt("kill -9")
        real(path, rows)

    monkeypatch.setattr(rundir, "write_summary", killed_before_writing)
    with pytest.raises(KeyboardInterrupt):
        run("scratch", tmp_path)
    monkeypatch.undo()
    run("scratch", tmp_path)
    d = run_dir(tmp_path, "scratch")
    assert len((d / "summary.csv").read_text().splitlines()) == rows_at_end + 1
    assert json.loads((d / "ledger.json").read_text()) == json.loads((scratch / "ledger.json").read_text())
    assert same_final(scratch, d)


def test_orphans_of_killed_writes_are_removed_on_resume(tmp_path, monkeypatch):
    interrupt_after(monkeypatch, 3)  # inside L0.1: L0.0 is done
    with pytest.raises(KeyboardInterrupt):
        run("rbdc", tmp_path)
    monkeypatch.undo()
    d = run_dir(tmp_path, "rbdc-d1")
    done, doing = d / "stages" / "L0.0", d / "stages" / "L0.1"
    orphans = [
        done / ".last.pt.tmp",
        done / ".tmpAb12Cd",
        doing / ".last.pt.x8k2.tmp",
        d / ".manifest.json.tmp",
        doing / ".final.safetensors.tmp",
    ]
    for p in orphans:
        p.write_bytes(b"partial")
    (done / "last.pt").write_bytes((doing / "last.pt").read_bytes())  # killed before the done stage removed it
    run("rbdc", tmp_path)
    assert not any(p.exists() for p in orphans) and not (done / "last.pt").exists()


# ----------------------------------------------------------------------------------------------------------------
# 6. Byte-reproducible weights


def test_the_same_weights_give_the_same_file_in_any_process(tmp_path):
    code = (
        "import sys, timm, torch, rbdc; torch.manual_seed(0); "
        "rbdc.save_weights(timm.create_model('test_rbdc_vit'), sys.argv[1], stage='L0', recipe='r', a='1', b='2')"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], env=env, check=True, timeout=300)
    assert rundir.sha256(tmp_path / "a") == rundir.sha256(tmp_path / "b")


# ----------------------------------------------------------------------------------------------------------------
# 7. Clear errors instead of tracebacks


def test_a_file_where_the_output_should_be_is_one_clear_error(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(UserError, match="a file stands where a folder is needed"):
        run("scratch", tmp_path / "out")


def test_an_unwritable_output_is_one_clear_error(tmp_path, monkeypatch):
    (tmp_path / "ro").mkdir(mode=0o500)
    if os.geteuid() == 0:  # root writes anywhere: refuse as the kernel would

        def refused(*a, **k):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(files.tempfile, "mkstemp", refused)
    with pytest.raises(UserError, match="no permission to write there"):
        run("scratch", tmp_path / "ro")


def test_a_full_disk_is_one_clear_error_and_leaves_no_partial_file(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(UserError, match="disk is full; free space, then rerun the same command to resume"):
        rundir.atomic_write_bytes(tmp_path / "x.json", b"{}")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_parent_file_and_a_damaged_manifest_are_clear_errors(tmp_path, monkeypatch):
    interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run("rbdc", tmp_path)
    monkeypatch.undo()
    d = run_dir(tmp_path, "rbdc-d1")
    manifest = (d / "manifest.json").read_text()
    (d / "manifest.json").write_text(manifest[: len(manifest) // 2])
    with pytest.raises(UserError, match="manifest.json is damaged"):
        run("rbdc", tmp_path)
    (d / "manifest.json").write_text(manifest)
    (d / "stages" / "L0.0" / "final.safetensors").unlink()
    with pytest.raises(UserError, match="L0.0/final.safetensors is missing, but manifest.json says stage L0.0"):
        run("rbdc", tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# 9. Provenance


def test_command_txt_keeps_every_invocation_with_relative_paths(tmp_path, monkeypatch):
    for _ in range(2):
        monkeypatch.setattr(
            sys,
            "argv",
            ["/abs/bin/rbdc", "train", "-c", str(CI / "scratch.yaml"), "-o", str(tmp_path), "--set", "epochs=1"],
        )
        run("scratch", tmp_path, ["epochs=1"])
    text = (run_dir(tmp_path, "scratch") / "command.txt").read_text()
    rel = os.path.relpath(CI / "scratch.yaml", tmp_path)
    assert text.count(f"rbdc train -c {rel} -o . --set epochs=1\n") == 2
    assert str(tmp_path) not in text and '"code"' in text


# ----------------------------------------------------------------------------------------------------------------
# 10. The summary.csv schema (rbdc.runs.rundir) is the one the committed runs were written with


def _as_written(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def test_write_summary_rewrites_every_committed_summary_byte_for_byte(tmp_path):
    committed = sorted((Path(__file__).resolve().parents[1] / "reports" / "runs").rglob(rundir.SUMMARY))
    assert len(committed) > 10
    for path in committed:
        _, rows = rundir.read_summary(path)
        out = tmp_path / rundir.SUMMARY
        rundir.write_summary(out, [{k: _as_written(v) for k, v in r.items() if v} for r in rows])
        assert out.read_bytes() == path.read_bytes(), path


def test_the_report_reads_only_columns_the_run_writes():
    from rbdc.report.load import REQUIRED_SUMMARY_COLUMNS

    assert set(REQUIRED_SUMMARY_COLUMNS) <= set(rundir.SUMMARY_COLUMNS) - set(rundir.SUMMARY_OPTIONAL)


def test_copy_light_copies_the_light_files_a_run_holds_and_never_its_weights(tmp_path):
    src, dest = tmp_path / "run", tmp_path / "committed" / "run"
    src.mkdir()
    for name in (rundir.RECIPE, rundir.RESULTS, rundir.FINAL, "train.log"):
        (src / name).write_text(name)
    assert rundir.copy_light(src, dest) == dest
    assert sorted(p.name for p in dest.iterdir()) == sorted([rundir.RECIPE, rundir.RESULTS])
    assert (dest / rundir.RESULTS).read_text() == rundir.RESULTS
    rundir.copy_light(src, dest, names=("train.log",))
    assert (dest / "train.log").is_file()
