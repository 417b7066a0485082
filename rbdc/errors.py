"""Errors a user can fix; the CLI prints them as one line (no traceback) and exits non-zero."""


class UserError(Exception):
    """Bad input from the user: the message names what is wrong and how to fix it."""


class RunFailed(UserError):
    """A run stopped for good at ``stage`` (and ``step``); ``diverged``: its loss went non-finite. The run directory
    records it in ``failed.json`` (:meth:`rbdc.runs.rundir.RunDir.write_failed`)."""

    def __init__(self, message: str, *, stage: str | None = None, step: int | None = None, diverged: bool = False):
        super().__init__(message)
        self.stage, self.step, self.diverged = stage, step, diverged
