"""Every tox env shares one installed virtualenv: switching env names must not recreate it (toxfile.py)."""

import configparser
import sys

import pytest
from conftest import REPO


def test_every_env_uses_the_shared_runner_and_folder():
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(REPO / "tox.ini")
    assert ini["testenv"]["runner"] == "rbdc-shared-virtualenv" and ini["testenv"]["env_dir"] == "{work_dir}/rbdc"
    overriding = [s for s in ini.sections() if s.startswith("testenv:") and {"runner", "env_dir"} & set(ini[s])]
    assert not overriding, f"these envs would install torch again: {overriding}"


def test_switching_env_names_keeps_the_setup_record(tmp_path):
    pytest.importorskip("tox")
    sys.path.insert(0, str(REPO))
    try:
        import toxfile
    finally:
        sys.path.remove(str(REPO))
    first = toxfile._SharedInfo(tmp_path)
    with first.compare({"name": "quickstart", "type": "SharedVirtualEnv"}, "ToxEnv") as (eq, old):
        assert eq is False and old is None  # a new env folder: set up once
    with toxfile._SharedInfo(tmp_path).compare({"name": "tests", "type": "SharedVirtualEnv"}, "ToxEnv") as (eq, _):
        assert eq is True  # another env name reuses it (tox's own Info would say False: "env type changed")
