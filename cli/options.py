"""Command-line options shared by commands: the ones that load a scenario (validate, run,
chaos, compose...) and the run directory the commands that read a run take."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from actors.scenario import Scenario
from cli.app import CONFIG_ERROR_EXIT, fail_config
from cli.config import ConfigError, Overrides, load_scenario

ProfileOption = Annotated[str | None, typer.Option(
    "--profile", metavar="legacy|modern",
    help="Kernel profile: legacy (4.13, prequeue) or modern.")]
SeedOption = Annotated[int | None, typer.Option(
    "--seed", metavar="N",
    help="Seed of the run's random draws: the wire impairments' draws (loss, duplicate, "
         "reorder, corrupt, jitter; the Nth frame on the wire gets the Nth draws, on the "
         "data and the ACK path), the ISNs the peer and the stack draw, and the chaos "
         "plan's kills (unless [chaos] seed is set). It does not fix the interleaving "
         "of the cpu, stack and reader processes, nor which frames the peer sends when "
         "(that follows the ACKs' timing), so "
         "counters such as TcpExtTCPHPHits vary from run to run with one seed; "
         "`rxpath replay RUN_DIR` reproduces one given run exactly.")]
DurationOption = Annotated[float | None, typer.Option(
    "--duration", metavar="SECONDS", help="Upper bound of the run, in seconds.")]
SysctlOption = Annotated[list[str] | None, typer.Option(
    "--sysctl", "-s", metavar="KEY=VALUE",
    help="Set a sysctl, e.g. tcp_low_latency=1 or tcp_rmem=4096,131072,6291456 "
         "(repeatable).")]
SetOption = Annotated[list[str] | None, typer.Option(
    "--set", metavar="KEY.PATH=VALUE",
    help="Set any scenario key, the value as TOML writes it: nic.queues=4, "
         "readers[0].think_us=50, impairments.loss=0.01, log.level=debug (repeatable; "
         "applied after the file and the other options).")]


def make_overrides(profile: str | None = None, seed: int | None = None,
                   duration: float | None = None,
                   sysctl: list[str] | None = None,
                   sets: list[str] | None = None) -> Overrides:
    return Overrides(profile=profile, seed=seed, duration=duration,
                     sysctl=tuple(sysctl or ()), sets=tuple(sets or ()))


def load_or_exit(config: Path | None, overrides: Overrides | None = None) -> Scenario:
    """Load a scenario (None: the embedded default) or print the error and exit 2."""
    try:
        return load_scenario(config, overrides)
    except ConfigError as err:
        fail_config(err)


# -- run directories ---------------------------------------------------------------------

RUNS_DIR = Path("runs")
# A symlink to the newest run under runs/, which stat, ss, trace, report... read by default.
LATEST_RUN = RUNS_DIR / "latest"


def new_run_dir() -> Path:
    """A fresh run directory name, ``runs/<UTC time>``."""
    return RUNS_DIR / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def mark_latest(run_dir: Path) -> None:
    """Point ``runs/latest`` at ``run_dir`` if the run lives under ``runs/`` (a run
    written elsewhere, such as a test's temporary directory, leaves it alone)."""
    try:
        runs = RUNS_DIR.resolve()
        target = run_dir.resolve()
        if target.parent != runs or target.name == LATEST_RUN.name:
            return
        tmp = runs / f".latest.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target.name)  # relative: the runs/ tree can move
        tmp.replace(runs / LATEST_RUN.name)  # atomic: a reader never sees no link
    except OSError:
        pass  # a convenience: a filesystem without symlinks still runs


def _existing_run_dir(value: Path) -> Path:
    if value.is_dir():
        return value
    if value == LATEST_RUN:
        typer.echo(f"rxpath: no run to read: {LATEST_RUN} does not exist (it points to "
                   "the newest run under runs/; start one with `rxpath run`, or name a "
                   "run directory)", err=True)
    elif value.exists():
        typer.echo(f"rxpath: {value}: not a directory (expected a run directory written "
                   "by rxpath run)", err=True)
    else:
        typer.echo(f"rxpath: {value}: no such run directory", err=True)
    raise typer.Exit(CONFIG_ERROR_EXIT)


# A run directory argument that defaults to the newest run (give ``= LATEST_RUN``) and
# exits 2 with a clear message if it does not exist.
RunDirArgument = Annotated[Path, typer.Argument(
    metavar="[RUN_DIR]", callback=_existing_run_dir, show_default=False,
    help="A run directory written by rxpath run (default: the newest, runs/latest).")]
