"""tox plugin (loaded by tox from this file): one virtualenv that every env of tox.ini shares.

tox records the env name in the env folder and deletes the folder when another name uses it ("env type changed"),
so envs that share ``env_dir`` would reinstall torch at each switch. This runner records one fixed name instead: the
shared folder is set up once and reused by every env whose deps and extras match (tox still recreates it when those
change).
"""

from __future__ import annotations

from tox.plugin import impl
from tox.tox_env.info import Info
from tox.tox_env.python.virtual_env.runner import VirtualEnvRunner

SHARED_NAME = "rbdc"


class _SharedInfo(Info):
    def compare(self, value, section, sub_section=None):
        if section == "ToxEnv" and isinstance(value, dict) and "name" in value:
            value = {**value, "name": SHARED_NAME}
        return super().compare(value, section, sub_section)


class SharedVirtualEnv(VirtualEnvRunner):
    """A virtualenv runner whose setup record does not depend on the env name."""

    @staticmethod
    def id() -> str:
        return "rbdc-shared-virtualenv"

    @property
    def cache(self) -> Info:
        return _SharedInfo(self.env_dir)


@impl
def tox_register_tox_env(register) -> None:
    register.add_run_env(SharedVirtualEnv)
