"""Entry point of the ``rxpath`` console script.

The app lives in :mod:`cli.app`; each command is a module of its own that registers on
it, imported here so that ``rxpath COMMAND`` finds it. To add a command, write
``cli/<name>.py`` with ``@app.command()``, add it to the import below, and give it a
line and examples in :data:`COMMANDS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cli import (  # noqa: F401  (register their commands on app)
    actor_cmd,
    bench,
    chaos,
    compile,
    compose,
    coordinate,
    diff,
    drill,
    explain,
    replay_cmd,
    report_html,
    run,
    stat,
    trace,
    validate,
)
from cli.app import CONFIG_ERROR_EXIT, app, fail_config

__all__ = ["COMMANDS", "CONFIG_ERROR_EXIT", "app", "fail_config", "main"]


@dataclass(frozen=True)
class CommandHelp:
    """What ``rxpath -h`` lists for a command, and the examples its own help ends with."""

    summary: str
    examples: tuple[str, ...] = ()
    hidden: bool = False  # started by other commands or containers, not typed by users


COMMANDS: dict[str, CommandHelp] = {
    "run": CommandHelp("Run a scenario as processes; exit 0 only if every flow is intact.", (
        "rxpath run",
        "rxpath run configs/low-latency-0.toml --seed 7",
        "rxpath run configs/modern.toml --set nic.queues=4 --set cpu.count=4",
        "rxpath run --sysctl tcp_low_latency=1 --run-dir runs/ll1 --json")),
    "chaos": CommandHelp("Run a scenario while killing actors; the checker judges it.", (
        "rxpath chaos --kill cpu,reader --every 1s --seed 3",
        "rxpath chaos configs/backlog-drop.toml --kill stack --set duration=30")),
    "stat": CommandHelp("Counters of a run as nstat prints them.", (
        "rxpath stat",
        "rxpath stat runs/latest -z --json",
        "rxpath stat --drops --stack",
        "rxpath stat --all-groups")),
    "ss": CommandHelp("Sockets of a run as ss -tmi shows them.", (
        "rxpath ss",
        "rxpath ss runs/20250101-120000 --json")),
    "diff": CommandHelp("Two runs side by side: counters with deltas, sockets, verdicts.", (
        "rxpath diff runs/ll0 runs/ll1",
        "rxpath diff runs/legacy runs/modern --zeros")),
    "explain": CommandHelp("One segment's path through a run, from the wire to its fate.", (
        "rxpath explain --flow f1 --seq 1",
        "rxpath explain runs/latest --flow f1 --offset 65536",
        "rxpath explain --segment 17592186044426")),
    "replay": CommandHelp("Replay a run's recorded stack inputs; show it is the same run.", (
        "rxpath replay",
        "rxpath replay runs/latest --incarnation 1",
        "rxpath replay runs/chaos-1 --json")),
    "trace": CommandHelp("Build trace.json of a run for ui.perfetto.dev.", (
        "rxpath trace",
        "rxpath trace runs/latest -o /tmp/run.json")),
    "report": CommandHelp("Write report.html of a run: plots and tables.", (
        "rxpath report",
        "rxpath report runs/latest -o /tmp/report.html")),
    "validate": CommandHelp("Check scenario files without running anything.", (
        "rxpath validate configs/*.toml",
        "rxpath validate configs/modern.toml --show toml",
        "rxpath validate configs/fast-path.toml --set nic.queues=4 --show")),
    "compose": CommandHelp("Write a docker-compose or Swarm stack file: a container per "
                           "actor.", (
        "rxpath compose -o docker-compose.yml",
        "rxpath compose configs/modern.toml --set cpu.count=2 -o /tmp/modern.yml",
        "rxpath compose --swarm --place cpu1='node.hostname == h2' -o stack.yml")),
    "drill": CommandHelp("Run packetdrill scripts against the receiver.", (
        "rxpath drill tests/drill/*.pkt",
        "rxpath drill --pipeline -v tests/drill/*.pkt")),
    "bench": CommandHelp("Measure segments/s end to end and what each actor costs.", (
        "rxpath bench --mbytes 8 --repeat 5 --json",
        "rxpath bench --scale 1000")),
    "compile": CommandHelp("Compile the kernel model with mypyc for speed.", (
        "rxpath compile && rxpath bench",
        "rxpath compile --clean")),
    "actor": CommandHelp("Run one actor of a topology (containers).", hidden=True),
    "coordinate": CommandHelp("Coordinate actors started elsewhere (containers).",
                              hidden=True),
}


def examples_epilog(examples: tuple[str, ...]) -> str:
    # "\b" keeps click from re-wrapping the lines into one paragraph.
    return "\b\nExamples:\n" + "\n".join(f"  {e}" for e in examples)


def _describe_commands() -> None:
    """Give each registered command its summary line, examples and visibility."""
    for info in app.registered_commands:
        callback = info.callback
        name = info.name or (callback.__name__.replace("_", "-") if callback else "")
        entry = COMMANDS.get(name)
        if entry is None:
            continue
        info.short_help = info.short_help or entry.summary
        info.hidden = info.hidden or entry.hidden
        if entry.examples and not info.epilog:
            info.epilog = examples_epilog(entry.examples)


_describe_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
