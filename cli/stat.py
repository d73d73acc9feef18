"""``rxpath stat`` and ``rxpath ss``: a run's figures in the shapes nstat, ss, ethtool print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from actors.mib import ALL_NAMES
from actors.stack.net import DROP_REASONS
from cli.app import app
from cli.options import LATEST_RUN, RunDirArgument
from cli.report import table

RunDir = RunDirArgument  # default LATEST_RUN: the newest run, runs/latest


def load_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    if not path.is_file():
        typer.echo(f"{run_dir}: no summary.json (is this a run directory?)", err=True)
        raise typer.Exit(2)
    return json.loads(path.read_text())


def nstat_lines(nstat: dict[str, int], *, zeros: bool) -> list[tuple[str, str]]:
    return [(n, str(nstat.get(n, 0))) for n in ALL_NAMES if zeros or nstat.get(n)]


@app.command()
def stat(
    run_dir: RunDir = LATEST_RUN,
    all_: Annotated[bool, typer.Option("-a", "--all", help="Every counter group.")] = False,
    zeros: Annotated[bool, typer.Option("-z", "--zeros", help="Show zero counters.")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
    drops: Annotated[bool, typer.Option("--drops", help="Drops by reason.")] = False,
) -> None:
    """MIB counters as nstat prints them (plus softnet_stat and ethtool -S with -a)."""
    s = load_summary(run_dir)
    nstat = s["nstat"]
    if drops:
        rows = [(f"SKB_DROP_REASON_{r}", str(n), DROP_REASONS.get(r) or "-")
                for r, n in sorted(s.get("drops", {}).items(), key=lambda kv: -kv[1])]
        if json_out:
            typer.echo(json.dumps(s.get("drops", {}), indent=2))
        else:
            typer.echo(table(rows, ("reason", "segments", "counter")))
        return
    if json_out:
        out: dict[str, Any] = {n: v for n, v in nstat.items() if zeros or v}
        if all_:
            out = {"nstat": out, "softnet_stat": s.get("softnet_stat"), "ethtool": s.get("nic")}
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo("#kernel")
    typer.echo(table([(n, v, "0.0") for n, v in nstat_lines(nstat, zeros=zeros)]))
    if all_:
        typer.echo("\n#/proc/net/softnet_stat")
        for cols in s.get("softnet_stat", {}).values():
            typer.echo(" ".join(f"{int(v):08x}" for v in cols))
        typer.echo("\n#ethtool -S nic")
        typer.echo(table([(f"     {k}:", str(v)) for k, v in s.get("nic", {}).items()
                          if zeros or v]))


def ss_line(sk: dict[str, Any]) -> str:
    m = sk["skmem"]
    skmem = (f"skmem:(r{m['r']},rb{m['rb']},t{m['t']},tb{m['tb']},f{m['f']},w{m['w']},"
             f"o{m['o']},bl{m['bl']},d{m['d']})")
    info = [f"wscale:{sk['snd_wscale']},{sk['rcv_wscale']}", f"rcv_mss:{sk['rcv_mss']}",
            f"advmss:{sk['advmss']}", f"ato:{sk['ato_ms']:g}",
            f"rcv_rtt:{sk['rcv_rtt_ms']:g}", f"rcv_space:{sk['rcv_space']}",
            f"rcv_ssthresh:{sk['rcv_ssthresh']}", f"rcv_wnd:{sk['rcv_wnd']}",
            f"segs_in:{sk['segs_in']}", f"data_segs_in:{sk['data_segs_in']}"]
    return "\t " + skmem + " " + " ".join(info)


@app.command()
def ss(run_dir: RunDir = LATEST_RUN,
       json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every socket at the end of the run, as ss -tmi shows it."""
    socks = load_summary(run_dir).get("sockets", [])
    if json_out:
        typer.echo(json.dumps(socks, indent=2))
        return
    rows = [(sk["state"], str(sk["recv_q"]), str(sk.get("send_q", 0)), sk["local"], sk["peer"])
            for sk in socks]
    lines = table(rows, ("State", "Recv-Q", "Send-Q", "Local Address:Port",
                         "Peer Address:Port")).split("\n")
    typer.echo(lines[0])
    for line, sk in zip(lines[1:], socks, strict=True):
        typer.echo(line)
        typer.echo(ss_line(sk))



