"""Errors that the CLI turns into one-line messages and exit codes."""


class Cifar2lError(Exception):
    """Base class: a failure with a message meant for the user."""

    exit_code = 1


class ConfigError(Cifar2lError):
    """Bad config file, bad override or bad option: a usage error (exit 2)."""

    exit_code = 2


class DataError(Cifar2lError):
    """Missing, unreadable or corrupt dataset (exit 1)."""


class RunError(Cifar2lError):
    """A runtime failure while running a command (exit 1)."""


class DivergedError(RunError):
    """Training produced a non-finite loss."""

    status = "diverged"
