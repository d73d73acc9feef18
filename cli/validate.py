"""``rxpath validate CONFIG...``: check scenario files without running anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.app import CONFIG_ERROR_EXIT, app
from cli.config import ConfigError, load_scenario
from cli.options import (
    DurationOption,
    ProfileOption,
    SeedOption,
    SysctlOption,
    make_overrides,
)


@app.command()
def validate(
    configs: Annotated[list[Path], typer.Argument(
        metavar="CONFIG", help="Scenario TOML files to check.")],
    show: Annotated[bool, typer.Option(
        "--show", help="Print each effective scenario (defaults filled in) as JSON.")] = False,
    profile: ProfileOption = None,
    seed: SeedOption = None,
    duration: DurationOption = None,
    sysctl: SysctlOption = None,
) -> None:
    """Check scenario files without running anything.

    Prints "ok FILE: DESCRIPTION" per good file, the error per bad one; exits 2 if any is bad.
    """
    overrides = make_overrides(profile, seed, duration, sysctl)
    failed = False
    for path in configs:
        try:
            scenario = load_scenario(path, overrides)
        except ConfigError as err:
            typer.echo(str(err), err=True)
            failed = True
            continue
        line = f"ok {path}"
        typer.echo(f"{line}: {scenario.description}" if scenario.description else line)
        if show:
            typer.echo(json.dumps(scenario.to_dict(), indent=2))
    if failed:
        raise typer.Exit(CONFIG_ERROR_EXIT)
