"""The typer app every command registers on, and helpers the commands share.

A command module does ``from cli.app import app`` and decorates its function with
``@app.command()``; :mod:`cli.main` imports each module so the command exists.
"""

from __future__ import annotations

from typing import NoReturn

import typer

from cli.config import ConfigError

app = typer.Typer(
    name="rxpath",
    help="Emulate the Linux TCP receive path as processes exchanging messages over ZeroMQ.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Emulate the Linux TCP receive path: NIC ring, NAPI, tcp_v4_rcv, backlog, prequeue,
    receive and out-of-order queues, tcp_recvmsg."""
    # A callback keeps `rxpath COMMAND` a group even while only one command exists.


# Exit status for a scenario that cannot be used (like a usage error: nothing ran).
CONFIG_ERROR_EXIT = 2


def fail_config(err: ConfigError) -> NoReturn:
    """Print a scenario error to stderr and exit with status 2."""
    typer.echo(str(err), err=True)
    raise typer.Exit(CONFIG_ERROR_EXIT)
