"""``rxpath drill``: run packetdrill scripts against the emulated receiver.

Each script runs against rxpath's kernel model on a virtual clock (deterministic,
exact timing), or with ``--pipeline`` through the real actor processes (nic, cpu0,
stack) in real time: there a packet or a return may be later than the script's tolerance
by what the run measured of its own transport delays, never earlier (see
:mod:`cli.drill.pipeline`). For every script the
command prints ``PASS``, ``SKIP`` with the reason (something the script needs is not
modelled), or ``FAIL`` with the first mismatch: the script line, what it expected
and what rxpath did. The last line is
``N passed, N failed, N skipped``; the exit status is 1 if any script failed or
could not be parsed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from actors.profiles import HZ_CHOICES, PROFILES, Sysctls, get_profile, sysctl_write
from cli.app import app
from cli.config import ConfigError, parse_sysctl_assignment
from cli.drill.model import ModelReceiver
from cli.drill.packetdrill import ParseError, Script, parse_file
from cli.drill.pipeline import PipelineReceiver
from cli.drill.runner import DrillRunner, Mismatch, Outcome, ScriptResult

DEFAULT_PROFILE = "modern"
# A comment line such as ``// rxpath: profile=legacy`` declares what the script needs.
_DECLARATION = re.compile(r"^\s*//\s*rxpath:\s*(?P<body>.*)$")


def declared_profile(script: Script) -> str | None:
    """The profile a ``// rxpath: profile=NAME`` comment declares, or None; ValueError
    for a name that is not a profile."""
    for line in script.lines:
        m = _DECLARATION.match(line)
        if m is None:
            continue
        for item in re.split(r"[\s,]+", m.group("body").strip()):
            key, _, value = item.partition("=")
            if key == "profile":
                if value not in PROFILES:
                    raise ValueError(f"rxpath: profile={value!r}: expected one of "
                                     f"{', '.join(sorted(PROFILES))}")
                return value
    return None


def run_script(path: str | Path, profile: str | None = None, *, verbose: bool = False,
               seed: int = 1, sysctls: dict[str, str] | None = None,
               pipeline: bool = False, hz: int | None = None) -> ScriptResult:
    """Parse and run one script against the kernel model (or, with ``pipeline``, the
    actor processes); a parse error is a failure.

    ``profile``: the kernel to run it against. None takes the one the script declares
    (``// rxpath: profile=legacy``), else :data:`DEFAULT_PROFILE`; a profile given that
    differs from the script's declaration skips the script. ``sysctls`` are the host's
    settings before the script starts (its own commands may change them further);
    ``hz`` the kernel's CONFIG_HZ (None: the profile's, 250).
    """
    try:
        script = parse_file(path)
        declared = declared_profile(script)
    except ParseError as err:
        return ScriptResult(str(path), Outcome.FAIL,
                            Mismatch(err.line, f"parse error: {err.message}"))
    except ValueError as err:
        return ScriptResult(str(path), Outcome.FAIL, Mismatch(0, str(err)))
    if profile is None:
        profile = declared or DEFAULT_PROFILE
    elif declared is not None and declared != profile:
        return ScriptResult(str(path), Outcome.SKIP,
                            skip_reason=f"the script declares profile={declared}")
    if pipeline:
        with PipelineReceiver(get_profile(profile), seed=seed, hz=hz) as rx:
            _apply_sysctls(rx, sysctls)
            res = DrillRunner(script, rx, verbose=verbose).run()
            if verbose:
                res.log += [f"pipeline: {e}" for e in rx.errors]
            return res
    receiver = ModelReceiver(get_profile(profile), seed=seed, hz=hz)
    _apply_sysctls(receiver, sysctls)
    return DrillRunner(script, receiver, verbose=verbose).run()


def _apply_sysctls(rx: ModelReceiver | PipelineReceiver, sysctls: dict[str, str] | None) -> None:
    for name, value in (sysctls or {}).items():
        if not rx.set_sysctl(name, value):
            raise ValueError(f"sysctl {name}={value!r} is not modelled")


def format_result(res: ScriptResult, *, verbose: bool = False) -> str:
    lines: list[str] = []
    if res.outcome is Outcome.PASS:
        lines.append(f"PASS {res.path}")
    elif res.outcome is Outcome.SKIP:
        lines.append(f"SKIP {res.path}: {res.skip_reason}")
    else:
        assert res.mismatch is not None
        lines.append(f"FAIL {res.mismatch.format(res.path)}")
    if verbose:
        lines += [f"    skipped line {n}: {text}" for n, text in res.skipped_lines]
        lines += [f"    {entry}" for entry in res.log]
    return "\n".join(lines)


def summary(results: list[ScriptResult]) -> str:
    counts = {o: sum(1 for r in results if r.outcome is o) for o in Outcome}
    return (f"{counts[Outcome.PASS]} passed, {counts[Outcome.FAIL]} failed, "
            f"{counts[Outcome.SKIP]} skipped")


@app.command()
def drill(
    scripts: Annotated[list[Path], typer.Argument(help="packetdrill scripts (.pkt) to run.")],
    profile: Annotated[str | None, typer.Option(
        "--profile", help="Kernel profile: modern or legacy (4.13, prequeue). Default: "
        "what the script declares (a '// rxpath: profile=legacy' comment), else modern, "
        "since packetdrill scripts are written against current kernels (rxpath run's "
        "default scenario is the lecture's 4.13, legacy). A script that declares the "
        "other profile is skipped.")] = None,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Show every packet, call and skipped line.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the receiver's ISN.")] = 1,
    sysctl: Annotated[list[str] | None, typer.Option(
        "--sysctl", "-s", metavar="NAME=VALUE",
        help="Host setting before each script, e.g. "
             "net.ipv4.tcp_rmem='4096 87380 3732736' (repeatable).")] = None,
    pipeline: Annotated[bool, typer.Option(
        "--pipeline", help="Run through the real actor processes (nic, cpu0, stack) in "
        "real time instead of the kernel model on a virtual clock.")] = False,
    hz: Annotated[int | None, typer.Option(
        "--hz", help="The kernel's CONFIG_HZ: " + ", ".join(map(str, HZ_CHOICES))
        + " (default 250, Kconfig's). Delayed-ACK and RTO timing rounds to its jiffies; "
        "match the kernel a script was recorded on (grep CONFIG_HZ= /boot/config-*).",
        show_default=False)] = None,
) -> None:
    """Run packetdrill scripts against the emulated receiver (kernel model in virtual
    time, or the actor processes in real time with --pipeline)."""
    try:
        get_profile(profile or DEFAULT_PROFILE)
        # Reject an unknown name or a malformed value before any script runs.
        settings = dict(_sysctl_setting(s) for s in sysctl or ())
        if hz is not None and hz not in HZ_CHOICES:
            raise ValueError(f"--hz {hz}: expected one of "
                             + ", ".join(map(str, HZ_CHOICES)))
    except ValueError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    results = []
    for path in scripts:
        res = run_script(path, profile, verbose=verbose, seed=seed, sysctls=settings,
                         pipeline=pipeline, hz=hz)
        results.append(res)
        typer.echo(format_result(res, verbose=verbose))
    typer.echo(summary(results))
    if any(r.outcome is Outcome.FAIL for r in results):
        raise typer.Exit(1)


def _sysctl_setting(text: str) -> tuple[str, str]:
    """NAME=VALUE as ``rxpath run --sysctl`` takes it (the one parser, cli.config's), as
    (Sysctls field, its values separated by blanks) for the receiver's set_sysctl."""
    try:
        key, value = parse_sysctl_assignment(text)
    except ConfigError as err:
        raise ValueError(f"--sysctl {text}: {err.detail}") from None
    values = value if isinstance(value, tuple) else (value,)
    try:
        sysctl_write(Sysctls(), key, values)  # the shape: one value, or three for tcp_rmem
    except ValueError as err:
        raise ValueError(f"--sysctl {text}: {err}") from None
    return key, " ".join(str(v) for v in values)
