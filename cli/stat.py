"""``rxpath stat`` and ``rxpath ss``: a run's figures as nstat, ss, ethtool print them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cli import formats
from cli.app import app
from cli.options import LATEST_RUN, RunDirArgument

RunDir = RunDirArgument  # default LATEST_RUN: the newest run, runs/latest


def load_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    if not path.is_file():
        typer.echo(f"{run_dir}: no summary.json (is this a run directory?)", err=True)
        raise typer.Exit(2)
    return formats.current_names(json.loads(path.read_text()))


def stack_counters(run_dir: Path, s: dict[str, Any]) -> dict[str, int]:
    """The stack's plain counters (backlog_enqueued, lock_waits, ...): from the summary,
    or for a run written before it carried them, from counters.json's stack.role."""
    if isinstance(s.get("stack"), dict):
        return {k: int(v) for k, v in s["stack"].items()}
    try:
        counters = json.loads((run_dir / "counters.json").read_text())
    except (OSError, ValueError):
        return {}
    return formats.plain_counters(((counters.get("stack") or {}).get("role")) or {})


@app.command()
def stat(
    run_dir: RunDir = LATEST_RUN,
    absolute: Annotated[bool, typer.Option(
        "-a", "--ignore", help="Absolute values (nstat -a). A run has no nstat history, "
        "so its counters are always absolute; accepted for nstat's sake.")] = False,
    zeros: Annotated[bool, typer.Option(
        "-z", "--zeros", help="Show counters that are zero too (nstat -z).")] = False,
    noupdate: Annotated[bool, typer.Option(
        "-s", "--noupdate", help="Accepted for nstat's sake: there is no history to "
        "update.")] = False,
    json_out: Annotated[bool, typer.Option(
        "-j", "--json", help='JSON as nstat -j prints it: {"kernel": {...}}, in the '
        "kernel's order.")] = False,
    pretty: Annotated[bool, typer.Option(
        "-p", "--pretty", help="Indented JSON (nstat -p).")] = False,
    softnet: Annotated[bool, typer.Option(
        "--softnet", help="/proc/net/softnet_stat as the kernel prints it.")] = False,
    nic: Annotated[bool, typer.Option("--nic", help="ethtool -S of the NIC.")] = False,
    drops: Annotated[bool, typer.Option(
        "--drops", help="Drops by SKB_DROP_REASON_* and the counter each one moves.")]
        = False,
    stack: Annotated[bool, typer.Option(
        "--stack", help="The stack's own figures that have no Linux counter "
        "(backlog_enqueued, lock_waits, ...).")] = False,
    all_groups: Annotated[bool, typer.Option(
        "--all-groups", help="The kernel counters and every group above.")] = False,
) -> None:
    """MIB counters as nstat prints them; other groups with --softnet, --nic, --drops,
    --stack or --all-groups."""
    del absolute, noupdate  # nstat's flags for history, which a run does not have
    s = load_summary(run_dir)
    groups = {"softnet": softnet, "nic": nic, "drops": drops, "stack": stack}
    if all_groups:
        groups = dict.fromkeys(groups, True)
    kernel = all_groups or not any(groups.values())
    if json_out:
        extra: dict[str, Any] = {}
        if groups["softnet"]:
            extra["softnet_stat"] = s.get("softnet_stat", {})
        if groups["nic"]:
            extra["nic"] = s.get("nic", {})
        if groups["drops"]:
            extra["drops"] = {r: {"segments": n, "counter": None if c == "-" else c}
                              for r, n, c in formats.drop_rows(s.get("drops", {}),
                                                               s.get("profile"))}
        if groups["stack"]:
            extra["stack"] = stack_counters(run_dir, s)
        if kernel:
            typer.echo(formats.nstat_json(s["nstat"], zeros=zeros, pretty=pretty,
                                          extra=extra))
        else:
            typer.echo(json.dumps(extra, indent=4 if pretty else None,
                                  separators=None if pretty else (",", ":")))
        return
    blocks: list[list[str]] = []
    if kernel:
        blocks.append(formats.nstat_lines(s["nstat"], zeros=zeros))
    if groups["drops"]:
        blocks.append(formats.drop_lines(s.get("drops", {}), s.get("profile")))
    if groups["nic"]:
        blocks.append(formats.ethtool_lines(s.get("nic", {})))
    if groups["softnet"]:
        blocks.append(formats.softnet_lines(s.get("softnet_stat", {})))
    if groups["stack"]:
        blocks.append(formats.counter_lines(stack_counters(run_dir, s)))
    typer.echo("\n\n".join("\n".join(b) for b in blocks if b))


@app.command()
def ss(run_dir: RunDir = LATEST_RUN,
       json_out: Annotated[bool, typer.Option(
           "--json", help="The sockets as JSON; a socket a real Linux sender connected "
           "has its sender's last ss -tin view under linux_sender.")] = False) -> None:
    """Every socket at the end of the run, as ss -tmi shows it; with [[linux_senders]],
    under each flow's socket the real sender's, as ss -tin showed it in the run's
    namespace, and the two side by side."""
    from cli.report import sender_views, socket_lines

    s = load_summary(run_dir)
    if json_out:
        socks = [dict(sk) for sk in s.get("sockets", [])]
        for flow, view in sender_views(s, run_dir).items():
            for sk in socks:
                if view and sk.get("local") == view.get("peer") \
                        and sk.get("peer") == view.get("local"):
                    sk["linux_sender"] = {"flow": flow, **view}
        typer.echo(json.dumps(socks, indent=2))
        return
    typer.echo("\n".join(socket_lines(s, run_dir)))
