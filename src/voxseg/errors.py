"""Errors a user can fix. The CLI prints them as one line and exits with `exit_code`."""


class VoxsegError(Exception):
    """A problem with the user's input or environment, worded as what is wrong and how to fix it."""

    exit_code = 2


class InputError(VoxsegError):
    """An input file or folder cannot be used (missing, corrupt, wrong shape, wrong values)."""


class OutputExistsError(VoxsegError):
    """An output already exists and `--overwrite` was not given."""


class ConfigError(VoxsegError):
    """An option or a saved configuration is invalid."""
