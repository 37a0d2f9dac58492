"""Click's usage errors (a bad option value, an unknown option, a missing argument) as the one
`Error: ...` line and exit 2 that every other error of the CLI gets, instead of a usage box."""

from __future__ import annotations

import contextlib
import re

import typer
from typer.core import TyperGroup

from . import console
from .errors import clip
from .help_format import plain_commands, plain_flags

try:  # typer >= 0.2x carries its own copy of click
    from typer._click.exceptions import BadOptionUsage, MissingParameter, NoSuchOption, UsageError
except ImportError:  # pragma: no cover - a typer that runs on click itself
    from click.exceptions import BadOptionUsage, MissingParameter, NoSuchOption, UsageError


class OneLineUsageErrors(TyperGroup):
    """The root command: click's usage errors (a bad value, an unknown option, a missing
    argument, for every subcommand) become one `Error:` line and exit 2, like every other
    error, instead of a usage box. Parsing happens in make_context (the root's options) and in
    invoke (the subcommand's), so both are wrapped; this holds for the `cifar2l` entry point
    and for typer's CliRunner alike, which both call the group's main(). Its help, and every
    subcommand's, shows flags without a value and plain usage lines (help_format)."""

    def __init__(self, **attrs):
        super().__init__(**attrs)
        plain_commands(self.commands)

    def get_params(self, ctx):
        return plain_flags(super().get_params(ctx))

    def make_context(self, info_name, args, parent=None, **extra):
        with _usage_errors_as_one_line(None):
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx):
        with _usage_errors_as_one_line(ctx):
            return super().invoke(ctx)


@contextlib.contextmanager
def _usage_errors_as_one_line(root_ctx):
    try:
        yield
    except UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare `cifar2l`: the help, as before
            raise
        # The option parser raises some errors (a missing option value) without a context:
        # then the subcommand is the one the root resolved.
        sub = getattr(root_ctx, "invoked_subcommand", None)
        command = _command_path(e.ctx) if e.ctx else " ".join(["cifar2l", *[sub] * bool(sub)])
        console.error(usage_line(e, command))
        raise typer.Exit(2) from None


def usage_line(e: UsageError, command: str) -> str:
    """`<option>: <what is wrong> (see cifar2l <command> --help)` for a click usage error."""
    who, what = _usage_parts(e)
    line = f"{clip(who, 80)}: {clip(what, 200)}" if who else clip(what, 200)
    return f"{line} (see {command} --help)"


def _usage_parts(e: UsageError) -> tuple[str | None, str]:
    """(the option or argument at fault, what is wrong with it)."""
    message = e.message.strip().rstrip(".")
    param = getattr(e, "param", None)
    if param is not None:
        argument = param.param_type_name == "argument"
        who = param.name.upper() if argument else max(param.opts, key=len)
        missing = isinstance(e, MissingParameter)
        return who, f"missing {param.param_type_name}" if missing else message
    if isinstance(e, NoSuchOption):
        close = e.possibilities and f"; did you mean {' or '.join(sorted(e.possibilities))}?"
        return e.option_name, f"no such option{close or ''}"
    if isinstance(e, BadOptionUsage):  # "Option '--jobs' requires an argument."
        return e.option_name, re.sub(r"^Option '[^']*' ", "", message)
    if m := re.fullmatch(r"No such command '(.*)'", message, re.S):
        return m.group(1), "no such command"
    if m := re.fullmatch(r"Got unexpected extra argument(?:s|\(s\))? \((.*)\)", message, re.S):
        return m.group(1), "unexpected extra argument" + "s" * (" " in m.group(1))
    return None, message


def _command_path(ctx) -> str:
    names = []  # the subcommand names below the root (whatever the program was called)
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    return " ".join(["cifar2l", *reversed(names)])
