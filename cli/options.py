"""Command-line options shared by commands that load a scenario (validate, run, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from actors.scenario import Scenario
from cli.app import fail_config
from cli.config import ConfigError, Overrides, load_scenario

ProfileOption = Annotated[str | None, typer.Option(
    "--profile", help="Kernel profile: legacy (4.13, prequeue) or modern.")]
SeedOption = Annotated[int | None, typer.Option(
    "--seed", help="Seed for every random decision of the run.")]
DurationOption = Annotated[float | None, typer.Option(
    "--duration", help="Upper bound of the run, in seconds.")]
SysctlOption = Annotated[list[str] | None, typer.Option(
    "--sysctl", "-s", metavar="KEY=VALUE",
    help="Set a sysctl, e.g. tcp_low_latency=1 or tcp_rmem=4096,131072,6291456 "
         "(repeatable).")]


def make_overrides(profile: str | None = None, seed: int | None = None,
                   duration: float | None = None,
                   sysctl: list[str] | None = None) -> Overrides:
    return Overrides(profile=profile, seed=seed, duration=duration,
                     sysctl=tuple(sysctl or ()))


def load_or_exit(config: Path | None, overrides: Overrides | None = None) -> Scenario:
    """Load a scenario (None: the embedded default) or print the error and exit 2."""
    try:
        return load_scenario(config, overrides)
    except ConfigError as err:
        fail_config(err)
