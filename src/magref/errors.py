"""User-facing errors.

Every problem a user can fix (a bad path, a bad size, a corrupt image) is raised as
`MagrefInputError` with one sentence naming the problem and one naming the fix. The CLI prints
that line and exits with status 2; library callers get an ordinary `ValueError` subclass.
"""


class MagrefInputError(ValueError):
    """Bad input from the user: the message names the problem and the fix."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem} Fix: {fix}")


class CheckpointError(MagrefInputError):
    """A checkpoint of the wrong kind, truncated or missing keys."""
