"""Disk and data faults inside a study: a full disk or an unreadable image stops that run with failed.json and one
line, the other runs go on, nothing half-written is counted; a damaged decoded-image cache is decoded again."""

import json
import os

import numpy as np
import yaml
from conftest import CI  # tests/conftest.py
from PIL import Image

from rbdc.runs import rundir
from rbdc.cli import main
from rbdc.data import build_dataset
from rbdc.data.cache import build_memory_cache
from rbdc.studies.study import run_local
from rbdc.studies.spec import load_study


def _image_folder(root, n=6, broken=False):
    """A tiny ImageNet-layout folder: 2 classes x n images in train/ and val/; ``broken``: one train file is junk."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / f"{i}.png")
    if broken:
        (root / "train" / "a" / "0.png").write_bytes(b"not an image")
    return root


def _recipe(tmp_path, root, name):
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "base": str(CI / "base.yaml"),
                "name": name,
                "protocol": "scratch",
                "epochs": 2,
                "batch_size": 4,
                "data": {"source": "imagefolder", "root": str(root), "in_memory": True},
            }
        )
    )
    return path


def test_an_unreadable_image_fails_its_run_in_one_line_and_the_study_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("RBDC_CACHE", str(tmp_path / "cache"))
    good = _recipe(tmp_path, _image_folder(tmp_path / "good"), "good")
    bad = _recipe(tmp_path, _image_folder(tmp_path / "bad", broken=True), "bad")
    study_file = tmp_path / "study.yaml"
    study_file.write_text(
        yaml.safe_dump(
            {
                "name": "faults",
                "seeds": [0],
                "jobs": 1,
                "threads": 1,
                "points": [{"id": "bad", "recipe": str(bad)}, {"id": "good", "recipe": str(good)}],
            }
        )
    )
    study = load_study(study_file)
    out = tmp_path / "runs"
    lines = []
    failed = run_local(study, out, study.runs, 1, 1, log=lambda *a, **k: lines.append(a[0]))
    bad_run, good_run = study.runs
    assert failed == [bad_run] and good_run.status(out) == "done" and bad_run.status(out) == "failed"
    reason = json.loads((bad_run.run_dir(out) / rundir.FAILED).read_text())["reason"]
    assert "cannot decode image" in reason and "0.png" in reason and "delete or replace the file" in reason
    log = (bad_run.run_dir(out) / rundir.LOG).read_text()
    assert "Traceback" not in log and "rbdc train: error: cannot decode image" in log
    assert not (bad_run.run_dir(out) / rundir.RESULTS).exists()


def test_a_full_disk_fails_the_run_in_one_line_and_leaves_nothing_half_written(tmp_path, monkeypatch, capsys):
    import errno
    import tempfile

    real_mkstemp, real_fsync, current = tempfile.mkstemp, os.fsync, {"prefix": ""}

    def mkstemp(*a, **k):
        current["prefix"] = k.get("prefix", "")
        return real_mkstemp(*a, **k)

    def fsync(fd):  # the disk fills up while the first checkpoint is written
        if current["prefix"].startswith(f".{rundir.CHECKPOINT}."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fsync", fsync)
    assert main(["train", "-c", str(CI / "scratch.yaml"), "-o", str(tmp_path), "--set", "epochs=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write" in err[0] and "the disk is full" in err[0], err
    run_dir = tmp_path / "ci" / "scratch" / "seed0"
    assert json.loads((run_dir / rundir.FAILED).read_text())["reason"].startswith("cannot write")
    assert not (run_dir / rundir.RESULTS).exists()
    assert not [f for f in run_dir.rglob("*") if rundir.TMP_SUFFIX in f.name]  # no partial file left
    monkeypatch.undo()
    assert main(["train", "-c", str(CI / "scratch.yaml"), "-o", str(tmp_path), "--set", "epochs=2"]) == 0
    assert not (run_dir / rundir.FAILED).exists()  # space freed: the same command finishes the run


def test_a_damaged_decoded_image_cache_is_decoded_again(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RBDC_CACHE", str(tmp_path / "cache"))
    ds = build_dataset("imagefolder", str(_image_folder(tmp_path / "imgs")), "train", img_size=16)
    images, _, path = build_memory_cache(ds, 16)
    path.write_bytes(path.read_bytes()[:100])  # truncated on disk
    again, _, path2 = build_memory_cache(ds, 16)
    assert path2 == path and again.equal(images)
    assert "is damaged" in capsys.readouterr().err
    assert build_memory_cache(ds, 16)[0].equal(images)  # rewritten whole
