"""``rxpath validate CONFIG...``: check scenario files without running anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.app import CONFIG_ERROR_EXIT, app
from cli.config import scenario_errors, to_toml
from cli.options import (
    DurationOption,
    ProfileOption,
    SeedOption,
    SetOption,
    SysctlOption,
    make_overrides,
)

SHOW_FORMATS = ("json", "toml")


@app.command()
def validate(
    configs: Annotated[list[Path] | None, typer.Argument(
        metavar="CONFIG", help="Scenario TOML files to check.", show_default=False)]
        = None,
    show: Annotated[bool, typer.Option(
        "--show", help="Print each effective scenario (defaults filled in): as JSON, or "
        "as TOML that rxpath run accepts with --show toml.")] = False,
    profile: ProfileOption = None,
    seed: SeedOption = None,
    duration: DurationOption = None,
    sysctl: SysctlOption = None,
    sets: SetOption = None,
) -> None:
    """Check scenario files without running anything.

    Prints "ok FILE: DESCRIPTION" per good file, and every error of a bad one (each
    naming the file, the key and what was expected); exits 2 if any is bad.
    """
    paths = list(configs or [])
    fmt = "json"
    if show and paths and str(paths[0]) in SHOW_FORMATS and not paths[0].exists():
        fmt = str(paths.pop(0))  # "--show toml": the format, not a file
    if not paths:
        typer.echo("rxpath validate: give at least one scenario file (CONFIG...)", err=True)
        raise typer.Exit(CONFIG_ERROR_EXIT)
    overrides = make_overrides(profile, seed, duration, sysctl, sets)
    failed = False
    for path in paths:
        scenario, errors = scenario_errors(path, overrides)
        for err in errors:
            typer.echo(str(err), err=True)
        if scenario is None:
            failed = True
            continue
        line = f"ok {path}"
        typer.echo(f"{line}: {scenario.description}" if scenario.description else line)
        if show and fmt == "toml":
            typer.echo(to_toml(scenario.to_dict()))
        elif show:
            typer.echo(json.dumps(scenario.to_dict(), indent=2))
    if failed:
        raise typer.Exit(CONFIG_ERROR_EXIT)
