"""rbdc.studies.pool: K processes at a time, a log per job with its own start time, failures reported, the others
go on."""

import re
from pathlib import Path

from rbdc.studies import pool


def _job(tmp: Path, key: str, argv: tuple, outcome=lambda: (True, "ok"), **kw) -> pool.Job:
    return pool.Job(
        key=key, label=key, argv=argv, log=tmp / key / "job.log", cost=1.0, outcome=outcome, title=f"test {key}:", **kw
    )


def test_failures_and_unreadable_results_fail_their_job_and_the_others_finish(tmp_path):
    (tmp_path / "show_env.py").write_text("import os\nprint('SCALE', os.environ['BALLOON_SCALE'])\n")

    def broken():
        raise ValueError("results.json is half written")

    jobs = [
        _job(tmp_path, "ok", ("show_env",), env=(("BALLOON_SCALE", "32,16"), ("PYTHONPATH", str(tmp_path)))),
        _job(tmp_path, "exit1", ("no_such_module_here",)),
        _job(
            tmp_path,
            "unreadable",
            ("show_env",),
            outcome=broken,
            env=(("BALLOON_SCALE", "1,1"), ("PYTHONPATH", str(tmp_path))),
        ),
    ]
    lines = []
    failed = pool.run(jobs, jobs=2, threads=1, total=3, log=lambda s, **kw: lines.append(s))
    assert sorted(j.key for j in failed) == ["exit1", "unreadable"]
    assert len(lines) == 3 and {re.match(r"\[(\d)/3\]", ln).group(1) for ln in lines} == {"1", "2", "3"}
    text = {ln.split(":")[0].split("] ")[1]: ln for ln in lines}
    assert "ok in" in text["ok"]
    assert "FAILED (exit 1)" in text["exit1"] and "No module named no_such_module_here" in text["exit1"]
    assert "FAILED (exit 0): ValueError: results.json is half written" in text["unreadable"]
    log = (tmp_path / "ok" / "job.log").read_text()
    assert re.match(r"\n=== test ok: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d ===\n", log) and "SCALE 32,16" in log
    assert "SCALE 1,1" in (tmp_path / "unreadable" / "job.log").read_text()


def test_the_extra_environment_does_not_leak_into_this_process(monkeypatch):
    monkeypatch.delenv("BALLOON_SCALE", raising=False)
    env = pool.child_env(3, 0, 1, extra={"BALLOON_SCALE": "8,8"})
    assert env["BALLOON_SCALE"] == "8,8" and env["OMP_NUM_THREADS"] == "3"
    import os

    assert "BALLOON_SCALE" not in os.environ
