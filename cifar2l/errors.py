"""Errors that the CLI turns into one-line messages and exit codes."""

import reprlib

MAX_MESSAGE = 2000  # characters: a message quoting user input never grows with it

# Everything str.splitlines() breaks at: a key or path holding one must not split the message.
_LINE_BREAKS = str.maketrans({c: repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"})


def one_line(message: str) -> str:
    """`message` with its line breaks escaped (\\n, \\x85, ...)."""
    return str(message).translate(_LINE_BREAKS)


def shown(value, limit: int = 160) -> str:
    """`value` (a path, a name) as an error line quotes it: at most `limit` characters, the
    middle elided (a 5,000-byte path would bury the message)."""
    text = str(value)
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]}[...]{text[-half:]}"


def os_reason(e: OSError) -> str:
    """What went wrong in an OSError, without its errno prefix or file name: "No space left on
    device" (the caller names the file the user knows, not a temp file)."""
    return e.strerror or str(e) or type(e).__name__


def describe_os_error(e: OSError) -> str:
    """An OSError as one line: the file (and the second file of a rename) and the reason."""
    names = [shown(n) for n in (e.filename, e.filename2) if n is not None]
    return ": ".join([*names[:1], os_reason(e)]) + (f" (-> {names[1]})" if len(names) > 1 else "")


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text`, or its start and end around `...` when longer than `limit` characters."""
    text = str(text)
    if len(text) <= limit:
        return text
    head = (limit - 3) * 2 // 3
    return f"{text[:head]}...{text[len(text) - (limit - 3 - head):]}"


def brief(value, limit: int = 80) -> str:
    """repr(value) cut to about `limit` characters (a 1 MB string or a 100k-element list is
    quoted by its start); never builds the full repr."""
    short = reprlib.Repr()
    short.maxstring = short.maxother = limit
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = 8
    short.maxlevel = 3
    return clip(short.repr(value), limit)


class Cifar2lError(Exception):
    """Base class: a failure with a message meant for the user (always one line, bounded)."""

    exit_code = 1

    def __init__(self, message: str = ""):
        super().__init__(one_line(clip(message)))


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
