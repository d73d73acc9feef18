"""``rxpath bench``: the emulator's speed, side by side with the raw transport it runs on.

Both figures come from the same run on the same machine: the default topology on a clean
wire (segments/s end to end, one-way delay of each hop), then a plain pyzmq + msgpack chain
with as many hops as a segment crosses (peer -> nic -> cpu -> stack), unbatched and in
NAPI-sized batches. The ratios say what the emulation costs over the bare transport.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from actors.runtime.hopbench import run_hop_benchmark
from cli.app import app
from cli.config import AckImpairmentsConfig, ImpairmentsConfig, Scenario
from cli.options import ProfileOption, load_or_exit, make_overrides
from cli.report import table
from cli.run import default_run_dir, run_scenario

DATA_HOPS = 3  # peer -> nic -> cpu -> stack
HOP_LINKS = [("nic", "peer"), ("cpu*", "nic"), ("stack", "cpu*"), ("nic", "stack"),
             ("peer", "nic"), ("reader*", "stack"), ("stack", "reader*")]


def bench_scenario(mbytes: float, profile: str | None) -> Scenario:
    sc = load_or_exit(None, make_overrides(profile=profile, duration=120.0))
    flows = tuple(replace(f, bytes=int(mbytes * 1e6)) for f in sc.flows)
    return replace(sc, flows=flows, impairments=ImpairmentsConfig(),
                   ack_impairments=AckImpairmentsConfig(),
                   description=f"bench: {len(flows)} flows x {mbytes:g} MB, clean wire")


def hop_latencies(counters: dict[str, Any]) -> list[tuple[str, float, int]]:
    """Mean one-way delay per hop kind, from every receiver's runtime counters."""
    out = []
    for dst_pat, src_pat in HOP_LINKS:
        total = n = 0.0
        for dst, c in counters.items():
            if not _match(dst, dst_pat):
                continue
            for src, lat in ((c.get("runtime") or {}).get("link_latency_us") or {}).items():
                if _match(src, src_pat):
                    total += lat["mean"] * lat["messages"]
                    n += lat["messages"]
        if n:
            out.append((f"{src_pat} -> {dst_pat}", total / n, int(n)))
    return out


def _match(name: str, pat: str) -> bool:
    if pat == "reader*":
        return name.startswith("r") and name not in ("run",)
    return name.startswith(pat[:-1]) if pat.endswith("*") else name == pat


@app.command()
def bench(
    mbytes: Annotated[float, typer.Option("--mbytes", help="MB per flow.")] = 16.0,
    profile: ProfileOption = None,
    messages: Annotated[int, typer.Option(help="Messages for the raw chain.")] = 100_000,
    run_dir: Annotated[Path | None, typer.Option("--run-dir")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Measure segments/s and per-hop delay, and the raw pyzmq chain beside them."""
    sc = bench_scenario(mbytes, profile)
    rd = run_dir or default_run_dir()
    summary = run_scenario(sc, rd, progress=not json_out and sys.stderr.isatty())
    counters = json.loads((rd / "counters.json").read_text())
    segs = int(summary["segments"])
    seconds = float(summary["transfer_s"])
    seg_rate = segs / seconds if seconds else 0.0
    raw1 = run_hop_benchmark(DATA_HOPS, messages, batch=1)
    raw64 = run_hop_benchmark(DATA_HOPS, messages * 4, batch=64)
    result = {
        "integrity": summary["integrity"],
        "segments": segs, "seconds": seconds, "segments_per_s": round(seg_rate),
        "mbit_per_s": round(sum(f["received"] for f in summary["flows"]) * 8 / seconds / 1e6, 1)
        if seconds else 0.0,
        "hops": [{"hop": h, "mean_us": round(m, 1), "messages": n}
                 for h, m, n in hop_latencies(counters)],
        "raw_chain": {"hops": DATA_HOPS,
                      "unbatched_msgs_per_s": round(raw1["messages_per_s"]),
                      "batched64_items_per_s": round(raw64["messages_per_s"]),
                      "per_hop_us": raw1["per_hop_us"]},
    }
    result["ratio_vs_unbatched"] = round(seg_rate / raw1["messages_per_s"], 3)
    result["ratio_vs_batched64"] = round(seg_rate / raw64["messages_per_s"], 4)
    (rd / "bench.json").write_text(json.dumps(result, indent=2))
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"\nemulator: {segs} segments in {seconds:.2f} s = {seg_rate:,.0f} segments/s "
               f"({result['mbit_per_s']} Mbit/s of payload), integrity "
               f"{'holds' if summary['integrity'] else 'BROKEN'}")
    typer.echo(table([(h["hop"], f"{h['mean_us']:.1f}", str(h["messages"]))
                      for h in result["hops"]], ("hop", "mean one-way us", "messages")))
    rc = result["raw_chain"]
    typer.echo(f"\nraw pyzmq+msgpack chain, {DATA_HOPS} hops, same machine, same run:")
    typer.echo(table([
        ("unbatched", f"{rc['unbatched_msgs_per_s']:,}", f"{rc['per_hop_us']:.1f}"),
        ("batches of 64", f"{rc['batched64_items_per_s']:,}", "")],
        ("chain", "items/s", "per-hop us")))
    typer.echo(f"\nratio emulator / raw chain: {result['ratio_vs_unbatched']:.3f} of the "
               f"unbatched rate, {result['ratio_vs_batched64']:.4f} of the batched rate")
    if not summary["integrity"]:
        raise typer.Exit(1)
