"""The CLI's help as a person reads it: flags without a `<bool>` value (`--quiet`, not
`--quiet <bool>`, which invites `--quiet true`), and usage lines in the common form
`Usage: cifar2l train [OPTIONS] [CONFIG]` instead of typer's `{config}` / `<list[Path]>`."""

from __future__ import annotations

from typing import get_args

from typer.core import TyperArgument, TyperCommand


def plain_flags(params: list) -> list:
    """The parameters, their flags (options that take no value) shown without one."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class PlainCommand(TyperCommand):
    """A subcommand with plain flags and a plain usage line."""

    __slots__ = ()  # TyperCommand's layout, so that a command's class may be swapped

    def get_params(self, ctx):
        params = plain_flags(super().get_params(ctx))
        for param in params:
            if type(param) is TyperArgument:
                param.__class__ = PlainArgument
        return params

    def collect_usage_pieces(self, ctx):
        pieces = [self.options_metavar] if self.options_metavar else []
        arguments = (p for p in self.get_params(ctx) if p.param_type_name == "argument")
        return pieces + [usage_name(p) for p in arguments]


class PlainArgument(TyperArgument):
    """An argument named in capitals in the help, as in the usage line; one that takes
    several values shows its element's type (`<path>`, not `<list[Path]>`)."""

    __slots__ = ()

    @property
    def display_name_raw(self) -> str:
        return self.metavar or self.name.upper()

    def display_type_rich(self, ctx):
        if self.type_descriptor.is_list:
            element = get_args(self.type_descriptor.annotation)[0]
            return f"<{getattr(element, '__name__', element)!s}>".lower()
        return super().display_type_rich(ctx)


def usage_name(argument) -> str:
    """CONFIG, [CONFIG] when optional, RUN_DIRS... when it takes several."""
    name = argument.metavar or argument.name.upper()
    name = f"{name}..." if argument.nargs != 1 else name
    return name if argument.required else f"[{name}]"


def plain_commands(commands) -> None:
    """Give every plain typer subcommand of a group the plain help (in place)."""
    for command in commands.values():
        if type(command) is TyperCommand:
            command.__class__ = PlainCommand
