"""The typer app every command registers on, and helpers the commands share.

A command module does ``from cli.app import app`` and decorates its function with
``@app.command()``; :mod:`cli.main` imports each module so the command exists.
"""

from __future__ import annotations

import os
import re
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, NoReturn, TextIO

import typer

from cli.config import ConfigError

app = typer.Typer(
    name="rxpath",
    help="Emulate the Linux TCP receive path as processes exchanging messages over ZeroMQ.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: paragraphs re-wrapped to the terminal, no markup that would eat
    # "[wire]" or show "<bool>" after a flag.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _click_style_help() -> None:
    """Help as click writes it: ``--seed INTEGER``, ``RUN_DIR``, a flag without a type.

    Recent typer releases label every parameter with a type in angle brackets
    (``--json <bool>``, ``CONFIG <list[Path]>``); these hooks, where they exist, put the
    plain click spelling back. Older releases already print it.
    """
    from typer import core

    option, argument = getattr(core, "TyperOption", None), getattr(core, "TyperArgument", None)
    if option is None or argument is None or not hasattr(option, "display_type_rich"):
        return
    words = {"int": "INTEGER", "float": "NUMBER", "str": "TEXT", "Path": "PATH",
             "path": "PATH", "file": "FILE", "directory": "DIR", "bool": ""}

    def option_type(self: Any, ctx: Any) -> str | None:
        if self.metavar is not None:
            return str(self.metavar)
        if self.is_flag or self.count:
            return None
        label = str(self.display_type(ctx)).strip("<>")
        if "|" in label:
            return label  # choices, as they are
        label = re.sub(r"^list\[(.*)\]$", r"\1", label).removesuffix(" range")
        return words.get(label, label.upper()) or None

    def argument_name(self: Any) -> str:
        return str(self.metavar) if self.metavar is not None else str(self.name).upper()

    def argument_usage(self: Any) -> str:
        name = argument_name(self)
        if not self.required and not name.startswith("["):
            name = f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")

    option.display_type_rich = option_type
    argument.display_type_rich = lambda self, ctx: None
    if isinstance(getattr(argument, "display_name_raw", None), property):
        argument.display_name_raw = property(argument_name)
    if hasattr(argument, "_usage_display_name"):
        argument._usage_display_name = argument_usage


_click_style_help()


def package_version() -> str:
    try:
        return version("rxpath")
    except PackageNotFoundError:
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"rxpath {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    """Emulate the Linux TCP receive path: NIC ring, NAPI, tcp_v4_rcv, backlog, prequeue,
    receive and out-of-order queues, tcp_recvmsg, as processes exchanging messages over
    ZeroMQ."""
    # A callback keeps `rxpath COMMAND` a group even while only one command exists.


# -- colour -------------------------------------------------------------------------------

_GOOD = re.compile(r"\b(PASS|intact|holds)\b")
_BAD = re.compile(r"\b(BROKEN|FAIL|FAILED)\b")
# Nothing wrong so far, but not every flow ended: the run's INCOMPLETE, a flow's incomplete.
_UNFINISHED = re.compile(r"\b(INCOMPLETE|incomplete)\b")


def colour_on(stream: TextIO | None = None) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    stream = stream if stream is not None else sys.stdout
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def paint(text: str, stream: TextIO | None = None) -> str:
    """Verdict words coloured: PASS / intact / holds green, BROKEN / FAIL red,
    INCOMPLETE / incomplete yellow."""
    if not colour_on(stream):
        return text
    text = _GOOD.sub(lambda m: typer.style(m.group(1), fg="green", bold=True), text)
    text = _UNFINISHED.sub(lambda m: typer.style(m.group(1), fg="yellow", bold=True), text)
    return _BAD.sub(lambda m: typer.style(m.group(1), fg="red", bold=True), text)


# Exit status for a scenario that cannot be used (like a usage error: nothing ran).
CONFIG_ERROR_EXIT = 2


def fail_config(err: ConfigError) -> NoReturn:
    """Print a scenario error to stderr and exit with status 2."""
    typer.echo(str(err), err=True)
    raise typer.Exit(CONFIG_ERROR_EXIT)
