"""Errors the CLI turns into one line on stderr and an exit status."""


class MriTranslateError(Exception):
    """Base class of every error that is the user's input, not a bug; ``exit_code`` is the CLI's status."""

    exit_code = 2


class InputError(MriTranslateError):
    """A file or folder that cannot be used: missing, unreadable, wrong shape, bad values.

    The message starts with the path so the CLI can print it as one line.
    """

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConstantImageError(InputError):
    """An image with a single intensity: nothing to normalise (training skips it as an empty slice)."""


class ModelError(MriTranslateError):
    """A checkpoint or run directory that cannot be used with the data or configuration given."""


class TrainingError(MriTranslateError):
    """Training stopped for a reason the user must act on (e.g. NaN losses); exit status 3."""

    exit_code = 3
