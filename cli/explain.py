"""``rxpath explain RUN_DIR --flow f1 --seq N``: one segment's path through a run.

It reads what the actors recorded in ``RUN_DIR/trace/`` (see :mod:`actors.runtime.trace`):
each frame's run-unique id follows it from the peer's wire send, through the NIC's DMA
into a ring, the cpu's hardirq and ``napi_poll``, ``tcp_v4_rcv`` (and where it put the
segment: backlog, prequeue, out-of-order or receive queue), the process-context work
that took it out of the backlog or the prequeue, to its fate: the skb freed after a
reader read it, consumed, merged into another skb, or dropped (with the reason and the
counter). The peer records what the wire did to the frames it impaired (lost,
duplicated, corrupted, reordered, held), and each reader how many bytes of each flow its
``read()`` calls had returned, which says when the byte itself reached the reader.

A byte may arrive several times (a retransmission, a duplicate): every copy that reached
the receiver is shown, in the order they arrived.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from actors.runtime.trace import (
    HOP_END,
    HOP_NAPI,
    HOP_NIC,
    HOP_PROCESS_CONTEXT,
    HOP_SOURCE,
    TRACE_DIR,
)
from actors.stack.net import drop_counters, drop_reason
from cli.app import app
from cli.options import LATEST_RUN, RunDirArgument

SEQ_MOD = 1 << 32


@dataclass
class Slice:
    """One "X" record of an actor's trace file."""

    actor: str
    start: int
    dur: int
    tid: str
    name: str
    args: dict[str, Any]
    flows: list[list[Any]]
    pid: str | None

    def hop_of(self, fid: int) -> int | None:
        for hop, ids in self.flows:
            if fid in ids:
                return int(hop)
        return None


@dataclass
class RunTrace:
    """The records explain needs, from every actor's trace file."""

    t0: int | None = None
    slices: list[Slice] = field(default_factory=list)  # every slice that carries flows
    arrivals: list[Slice] = field(default_factory=list)  # tcp_v4_rcv with data
    wire: list[Slice] = field(default_factory=list)  # the peer's impaired frames
    hardirqs: dict[str, list[Slice]] = field(default_factory=dict)  # by cpu
    # reader -> flow -> [(time, bytes returned so far)]
    reads: dict[str, dict[str, list[tuple[int, int]]]] = field(default_factory=dict)


class ExplainError(Exception):
    """Nothing to explain: no trace, no such flow or segment."""


def _actor_of(path: Path) -> str:
    return path.name.removesuffix(".jsonl").split(".", 1)[0]


def _records(path: Path) -> Iterator[list[Any]]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut short by a killed actor
            if isinstance(rec, list) and rec:
                yield rec


def load_trace(run_dir: Path) -> RunTrace:
    tdir = run_dir / TRACE_DIR
    files = sorted(tdir.glob("*.jsonl")) if tdir.is_dir() else []
    if not files:
        raise ExplainError(f"{run_dir}: no {TRACE_DIR}/ records (was the run made with "
                           "RXPATH_TRACE=0?)")
    rt = RunTrace()
    for path in files:
        actor = _actor_of(path)
        for rec in _records(path):
            kind = rec[0]
            if kind == "M":
                if isinstance(rec[1], dict) and "t0_ns" in rec[1] and rt.t0 is None:
                    rt.t0 = int(rec[1]["t0_ns"])
            elif kind == "X" and len(rec) >= 8:
                sl = Slice(actor, int(rec[1]), int(rec[2]), str(rec[3]), str(rec[4]),
                           rec[5] or {}, rec[6] or [], rec[7])
                if sl.flows:
                    rt.slices.append(sl)
                if sl.name == "tcp_v4_rcv" and sl.args.get("len"):
                    rt.arrivals.append(sl)
                elif sl.name.startswith("wire: "):
                    rt.wire.append(sl)
                elif sl.name == "hardirq":
                    rt.hardirqs.setdefault(actor, []).append(sl)
            elif kind == "C" and len(rec) >= 4 and isinstance(rec[2], str) \
                    and rec[2].endswith(" read") and isinstance(rec[3], dict):
                flow = rec[2].removesuffix(" read")
                if "bytes" in rec[3]:
                    rt.reads.setdefault(actor, {}).setdefault(flow, []).append(
                        (int(rec[1]), int(rec[3]["bytes"])))
    for slices in (rt.slices, rt.arrivals, rt.wire):
        slices.sort(key=lambda s: s.start)
    return rt


def _scenario(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "scenario.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _sport(scenario: dict[str, Any], flow: str) -> int | None:
    for i, f in enumerate(scenario.get("flows") or []):
        if f.get("name") == flow:
            return int(f.get("sport", 40001 + i))
    return None


def _data_start(arrival: Slice) -> int:
    """irs + 1, the sequence number of the flow's first byte, from one arrival."""
    return (int(arrival.args["seq"]) - int(arrival.args.get("offset", 0))) % SEQ_MOD


def _covers(offset: int, length: int, byte: int) -> bool:
    return offset <= byte < offset + max(length, 1)


@dataclass
class Story:
    """What explain prints: a heading, the wire's doings, each copy's path, the byte's fate."""

    lines: list[str] = field(default_factory=list)
    found: bool = False


def _ms(rt: RunTrace, t: int) -> str:
    base = rt.t0 if rt.t0 is not None else 0
    return f"{(t - base) / 1e6:+10.3f} ms"


def _dur(ns: int) -> str:
    return f"{ns / 1e6:.3f} ms" if ns >= 1000 else f"{ns} ns"


def _fate_text(fate: str) -> str:
    if fate.startswith("drop:"):
        reason = drop_reason(fate[5:])  # an older run's name as 6.18's
        counter = " or ".join(drop_counters(reason))
        return (f"dropped: SKB_DROP_REASON_{reason}"
                + (f" (counted in {counter})" if counter else " (no MIB counter)"))
    if fate == "merged":
        return "merged: its bytes were coalesced into an skb already queued, and follow it"
    return fate


_WHERE = {"backlog": "to the backlog (the socket was owned by a reader)",
          "prequeue": "to the prequeue (a reader waits in read(); it will process it)",
          "ofo_queue": "to the out-of-order queue (a hole before it)",
          "receive_queue": "to the receive queue",
          "direct_copy": "copied straight to a waiting reader",
          "consumed": "consumed (no data for a queue)"}


def _copy_path(rt: RunTrace, fid: int, arrival: Slice | None) -> list[str]:
    """Every point of one frame's path, in time order, as lines."""
    out: list[str] = []
    points = [(s, s.hop_of(fid)) for s in rt.slices if s.hop_of(fid) is not None]
    points.sort(key=lambda p: (p[0].start, p[1] or 0))
    rcv_at: int | None = arrival.start if arrival is not None else None
    queued_at: int | None = None
    for sl, hop in points:
        when = _ms(rt, sl.start)
        who = f"{sl.pid or sl.actor:<6}"
        if sl.actor == "peer" and hop == HOP_SOURCE:
            out.append(f"  {when}  {who} wire xmit: the frame leaves the wire for the NIC")
        elif sl.actor == "nic" and hop == HOP_NIC:
            out.append(f"  {when}  {who} DMA into an RX ring (a burst of "
                       f"{sl.args.get('frames', '?')} frames)")
        elif sl.actor == "nic" and hop == HOP_END:
            out.append(f"  {when}  {who} dropped: the RX ring was full (rx_missed_errors)")
        elif hop == HOP_NAPI:
            queue = sl.args.get("queue")
            irq = [h for h in rt.hardirqs.get(sl.actor, [])
                   if h.start <= sl.start and h.args.get("queue") == queue]
            if irq:
                out.append(f"  {_ms(rt, irq[-1].start)}  {who} hardirq for RX queue {queue}")
            out.append(f"  {when}  {who} napi_poll of RX queue {queue}: ip_rcv")
        elif sl.name == "napi_poll" and hop == HOP_END and fid in (sl.args.get("gro_merged")
                                                                   or ()):
            out.append(f"  {when}  {who} napi_poll of RX queue {sl.args.get('queue')}: GRO "
                       "merged it into the skb of an earlier frame of its flow, which goes up "
                       "to tcp_v4_rcv whole")
        elif sl.name == "napi_poll" and hop == HOP_END:
            out.append(f"  {when}  {who} dropped in ip_rcv (a bad IP header or checksum)")
        elif sl.name == "dma overrun" and hop == HOP_END:
            out.append(f"  {when}  {who} dropped: the ring overran before NAPI polled it")
        elif sl.name == "tcp_v4_rcv" and sl.args.get("id") == fid:
            to = str(sl.args.get("to", ""))
            where = _fate_text(to) if to.startswith("drop:") else _WHERE.get(to, to)
            out.append(f"  {when}  {who} tcp_v4_rcv (softirq): {where}")
            rcv_at = sl.start
            queued_at = sl.start + sl.dur
            note = (sl.args.get("fates") or {}).get(str(fid))
            if note and not to.startswith("drop:"):
                out.append(f"  {_ms(rt, sl.start + sl.dur)}  {who} {_fate_text(note)}")
        elif hop == HOP_PROCESS_CONTEXT:
            waited = f" after {_dur(sl.start - queued_at)} there" if queued_at else ""
            out.append(f"  {when}  {who} {sl.name} in {sl.pid or 'process'} context: out "
                       f"of the backlog/prequeue{waited}")
            queued_at = sl.start
        elif hop == HOP_END:
            note = (sl.args.get("fates") or {}).get(str(fid))
            end = sl.start + sl.dur
            since = f", {_dur(end - rcv_at)} after tcp_v4_rcv" if rcv_at is not None else ""
            if note:
                out.append(f"  {_ms(rt, end)}  {who} {_fate_text(note)}")
            elif sl.pid:
                out.append(f"  {_ms(rt, end)}  {who} skb freed: {sl.pid} read all of it "
                           f"({sl.name}){since}")
            elif sl.name == "tcp_v4_rcv":
                out.append(f"  {_ms(rt, end)}  {who} done in softirq{since}")
            else:
                out.append(f"  {_ms(rt, end)}  {who} done ({sl.name}){since}")
    return out


def _byte_read(rt: RunTrace, flow: str, byte: int) -> list[str]:
    out = []
    for reader, flows in sorted(rt.reads.items()):
        for t, total in flows.get(flow, []):
            if total > byte:
                out.append(f"read() returned byte {byte} of {flow} to {reader} at "
                           f"{_ms(rt, t).strip()}")
                break
    return out


def explain_byte(run_dir: Path, rt: RunTrace, flow: str, byte: int) -> Story:
    story = Story()
    scenario = _scenario(run_dir)
    arrivals = [a for a in rt.arrivals if a.args.get("flow") == flow]
    if not arrivals:
        flows = sorted({str(a.args.get("flow")) for a in rt.arrivals})
        raise ExplainError(f"no data segment of flow {flow!r} reached tcp_v4_rcv in this "
                           f"run's trace (flows seen: {', '.join(flows) or 'none'})")
    start = _data_start(arrivals[0])
    copies = [a for a in arrivals
              if _covers(int(a.args.get("offset", 0)), int(a.args["len"]), byte)]
    story.lines.append(f"{flow}: byte {byte} (relative seq {byte + 1}, seq "
                       f"{(start + byte) % SEQ_MOD}) in {run_dir}")
    sport = _sport(scenario, flow)
    wire = []
    for w in rt.wire:
        if (sport is not None and w.args.get("sport") != sport) or "seq" not in w.args:
            continue
        off = (int(w.args["seq"]) - start) % SEQ_MOD
        if _covers(off, int(w.args.get("len", 0)), byte) and w.args.get("len"):
            wire.append((w, off))
    if wire:
        story.lines.append("the wire (frames carrying this byte that it impaired):")
        for w, off in wire:
            what = ", ".join(w.args.get("wire", []))
            story.lines.append(f"  {_ms(rt, w.start)}  peer   {what} (relative seq "
                               f"{off + 1}, {w.args.get('len')} bytes)")
    if not copies:
        story.lines.append("no copy of this byte reached tcp_v4_rcv")
    for i, a in enumerate(copies, 1):
        off = int(a.args.get("offset", 0))
        fid = a.args.get("id")
        head = (f"copy {i} of {len(copies)}: relative seq {off + 1}..{off + int(a.args['len'])}"
                f" ({a.args['len']} bytes)")
        story.lines.append(head + (f", segment {fid}" if fid is not None else ""))
        if isinstance(fid, int):
            story.lines.extend(_copy_path(rt, fid, a))
        else:
            to = str(a.args.get("to", ""))
            story.lines.append(f"  {_ms(rt, a.start)}  stack  tcp_v4_rcv (softirq): "
                               f"{_fate_text(to) if to.startswith('drop:') else to}"
                               " (no segment id recorded: the path before it is unknown)")
    story.lines.extend(_byte_read(rt, flow, byte) or
                       [f"no reader's read() returned byte {byte} of {flow}"])
    story.found = bool(copies)
    return story


def explain_segment(run_dir: Path, rt: RunTrace, fid: int) -> Story:
    story = Story()
    arrival = next((a for a in rt.arrivals if a.args.get("id") == fid), None)
    path = _copy_path(rt, fid, arrival)
    if not path:
        raise ExplainError(f"no record of segment {fid} in {run_dir / TRACE_DIR}")
    if arrival is not None:
        off = int(arrival.args.get("offset", 0))
        story.lines.append(f"segment {fid}: {arrival.args.get('flow')} relative seq "
                           f"{off + 1}..{off + int(arrival.args['len'])} "
                           f"({arrival.args['len']} bytes) in {run_dir}")
    else:
        story.lines.append(f"segment {fid} in {run_dir} (it never reached tcp_v4_rcv "
                           "with data)")
    story.lines.extend(path)
    if arrival is not None:
        story.lines.extend(_byte_read(rt, str(arrival.args.get("flow")),
                                      int(arrival.args.get("offset", 0))))
    story.found = True
    return story


@app.command()
def explain(
    run_dir: RunDirArgument = LATEST_RUN,
    flow: Annotated[str | None, typer.Option(
        "--flow", "-f", metavar="NAME", help="The flow, as the scenario names it (f1).")]
        = None,
    seq: Annotated[int | None, typer.Option(
        "--seq", metavar="N", help="Relative sequence number of a byte, as tshark shows it "
        "(1 is the flow's first byte): the segments that carried it.")] = None,
    offset: Annotated[int | None, typer.Option(
        "--offset", metavar="BYTES", help="The same by stream offset (0 is the first byte).")]
        = None,
    segment: Annotated[int | None, typer.Option(
        "--segment", metavar="ID", help="A segment's id, as trace.json's arrows and "
        "tcp_v4_rcv slices show it.")] = None,
) -> None:
    """Follow one segment through a run: wire, NIC ring, NAPI, tcp_v4_rcv, queues, fate.

    Give --flow with --seq or --offset (every copy of that byte that arrived), or
    --segment. Times are milliseconds since the run started.
    """
    if segment is None and (flow is None or (seq is None) == (offset is None)):
        typer.echo("rxpath explain: give --flow NAME with --seq N or --offset BYTES, or "
                   "--segment ID", err=True)
        raise typer.Exit(2)
    if (seq is not None and seq < 1) or (offset is not None and offset < 0):
        typer.echo("rxpath explain: --seq counts from 1, --offset from 0", err=True)
        raise typer.Exit(2)
    try:
        rt = load_trace(run_dir)
        if segment is not None:
            story = explain_segment(run_dir, rt, segment)
        else:
            assert flow is not None
            byte = offset if offset is not None else (seq or 1) - 1
            story = explain_byte(run_dir, rt, flow, byte)
    except ExplainError as err:
        typer.echo(f"rxpath explain: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo("\n".join(story.lines))
    if not story.found:
        raise typer.Exit(1)
