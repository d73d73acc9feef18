"""``rxpath trace RUN_DIR``: merge the actors' trace records into one Chrome/Perfetto trace.

Input: ``RUN_DIR/trace/*.jsonl``, one file per actor incarnation, written by
:mod:`actors.runtime.trace`.  Output (default ``RUN_DIR/trace.json``): a trace-event JSON
object that https://ui.perfetto.dev and chrome://tracing open:

- one process per actor (``process_name`` metadata), ordered along the receive path
  (peer, nic, cpus, stack, readers), one thread track per ``tid`` the actor used;
- ``X`` slices (hardirq, net_rx_action / napi_poll, tcp_v4_rcv, tcp_recvmsg and its
  steps, sk_lock ownership, backlog and prequeue processing on the reader's track);
- ``C`` counters (ring occupancy, backlog, prequeue, receive and out-of-order queues,
  advertised window, bytes read, actor utilisation);
- ``s``/``t``/``f`` flow events, one flow per wire frame (id unique in the run), each
  point placed a few nanoseconds inside the slice it belongs to so that the arrow binds
  to that slice (``"bp": "e"`` on the last).

Timestamps are microseconds since the run start (the launcher's ``start``).  The actors
of one host stamp with the same CLOCK_MONOTONIC, so a flow's points, taken in path
order (hop), must be in time order: that is checked, and a violation is an error rather
than something to paper over.  Files from different boots (actors on other hosts) are
first aligned: each clock domain is shifted by the least amount that makes every arrow
point forward.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from actors.runtime.trace import FLOW_ID_SHIFT, ORIGIN_STACK, TRACE_DIR
from cli.app import app

ROLE_ORDER = {"peer": 0, "nic": 1, "cpu": 2, "stack": 3, "reader": 4}
FIRST_PID = 100
POINT_OFFSET_NS = 5  # a flow point sits this far inside its slice (so it binds to it)
TRACE_FILE = "trace.json"


class TraceError(Exception):
    """The records cannot make a sound trace (an arrow would point backwards...)."""


@dataclass
class ActorFile:
    """The records of one actor incarnation."""

    path: Path
    name: str
    role: str
    incarnation: int = 0
    t0_ns: int | None = None
    clock_domain: str = ""
    records: list[list[Any]] = field(default_factory=list)
    bad_lines: int = 0


@dataclass
class FlowPoint:
    hop: int
    ts: int  # ns, already shifted into the common clock
    pid: int
    tid: int


@dataclass
class MergeStats:
    actors: int = 0
    slices: int = 0
    counters: int = 0
    flows: int = 0
    flow_points: int = 0
    single_point_flows: int = 0  # a frame seen at one hop only (e.g. still in flight)
    bad_lines: int = 0
    clock_shifts_ns: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# --- reading ---------------------------------------------------------------------------


def read_actor_file(path: Path) -> ActorFile:
    stem = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.stem
    name, _, inc = stem.partition(".")
    af = ActorFile(path=path, name=name, role="", incarnation=int(inc) if inc.isdigit() else 0)
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                af.bad_lines += 1  # a line cut short by a killed process
                continue
            if not isinstance(rec, list) or not rec:
                af.bad_lines += 1
                continue
            if rec[0] == "M" and len(rec) > 1 and isinstance(rec[1], dict):
                meta = rec[1]
                af.name = str(meta.get("name", af.name))
                af.role = str(meta.get("role", af.role))
                af.incarnation = int(meta.get("incarnation", af.incarnation))
                if meta.get("t0_ns") is not None:
                    af.t0_ns = int(meta["t0_ns"])
                if meta.get("clock"):
                    af.clock_domain = str(meta["clock"])
                continue
            af.records.append(rec)
    if not af.role:
        af.role = "cpu" if name.startswith("cpu") and name[3:].isdigit() else name
    return af


def read_run(run_dir: Path) -> list[ActorFile]:
    tdir = Path(run_dir) / TRACE_DIR
    if not tdir.is_dir():
        raise TraceError(f"{run_dir}: no {TRACE_DIR}/ directory (was the run traced?)")
    files = [read_actor_file(p) for p in sorted(tdir.glob("*.jsonl"))]
    if not files:
        raise TraceError(f"{tdir}: no trace files")
    return files


def actor_order(files: Iterable[ActorFile]) -> list[str]:
    """Actor names along the receive path: peer, nic, cpus, stack, readers, then the rest."""
    roles: dict[str, str] = {}
    for af in files:
        roles.setdefault(af.name, af.role)

    def key(name: str) -> tuple[int, int, str]:
        digits = "".join(c for c in name if c.isdigit())
        return (ROLE_ORDER.get(roles[name], 9), int(digits) if digits else 0, name)

    return sorted(roles, key=key)


# --- clocks ------------------------------------------------------------------------------


def _raw_points(files: list[ActorFile]) -> dict[int, list[tuple[int, int, int]]]:
    """flow id -> [(hop, ts_ns, file index)] from every slice's flow list."""
    points: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for fi, af in enumerate(files):
        for rec in af.records:
            if rec[0] != "X" or len(rec) < 7 or not rec[6]:
                continue
            ts = point_ts(rec[1], rec[2])
            for hop, ids in rec[6]:
                for fid in ids:
                    points[fid].append((hop, ts, fi))
    return points


def split_counter(name: str, values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A raw counter sample as counter tracks: series ``"<track>/<unit>"`` goes to track
    ``"<name> <track>"`` as ``{unit: value}``; other series stay on ``name``."""
    out: dict[str, dict[str, Any]] = {}
    for series, value in values.items():
        track, sep, unit = series.partition("/")
        if sep:
            out.setdefault(f"{name} {track}", {})[unit] = value
        else:
            out.setdefault(name, {})[series] = value
    return out


def point_ts(start: int, dur: int) -> int:
    """Where a flow point bound to the slice (start, dur) sits: just inside it."""
    return start + min(POINT_OFFSET_NS, max(0, dur // 2))


def align_clocks(files: list[ActorFile],
                 points: dict[int, list[tuple[int, int, int]]]) -> dict[str, int]:
    """Offsets (ns) per clock domain so that every arrow points forward.

    Actors that share a boot share CLOCK_MONOTONIC: one domain, offset 0, nothing is
    shifted (and a backward arrow stays an error).  Between domains, each hop that
    crosses from domain A to B requires ``ts_b + off_b >= ts_a + off_a``; offsets are
    raised by relaxation until all hold.
    """
    domains = sorted({af.clock_domain for af in files})
    offsets = dict.fromkeys(domains, 0)
    if len(domains) < 2:
        return offsets
    need: dict[tuple[str, str], int] = {}  # (a, b) -> max(ts_a - ts_b) over crossing hops
    for pts in points.values():
        pts.sort()
        for (_, ta, fa), (_, tb, fb) in itertools.pairwise(pts):
            da, db = files[fa].clock_domain, files[fb].clock_domain
            if da != db:
                need[(da, db)] = max(need.get((da, db), ta - tb), ta - tb)
    for _ in range(len(domains) + 1):
        changed = False
        for (da, db), gap in need.items():
            if offsets[db] < offsets[da] + gap:
                offsets[db] = offsets[da] + gap
                changed = True
        if not changed:
            return offsets
    raise TraceError("clocks cannot be aligned: hops in both directions disagree")


# --- merging -----------------------------------------------------------------------------


def _us(ns: int) -> float:
    return round(ns / 1000, 3)


def merge(files: list[ActorFile]) -> tuple[dict[str, Any], MergeStats]:
    """The trace-event JSON object for these actor files, and what went into it."""
    stats = MergeStats(actors=len({af.name for af in files}),
                       bad_lines=sum(af.bad_lines for af in files))
    order = actor_order(files)
    pids = {name: FIRST_PID + i for i, name in enumerate(order)}
    tids: dict[tuple[int, str], int] = {}

    def tid_of(pid: int, tname: str) -> int:
        key = (pid, tname)
        tid = tids.get(key)
        if tid is None:
            tid = pid * 100 + sum(1 for p, _ in tids if p == pid) + 1
            tids[key] = tid
        return tid

    raw_points = _raw_points(files)
    offsets = align_clocks(files, raw_points)
    stats.clock_shifts_ns = {d or "local": o for d, o in offsets.items() if o}
    shift = [offsets[af.clock_domain] for af in files]
    starts = [af.t0_ns + shift[i] for i, af in enumerate(files) if af.t0_ns is not None]
    firsts = [rec[1] + shift[i] for i, af in enumerate(files) for rec in af.records[:1]]
    if not starts and not firsts:
        raise TraceError("no trace records")
    t0 = min(starts + firsts)

    events: list[dict[str, Any]] = []
    points: dict[int, list[FlowPoint]] = defaultdict(list)
    for i, af in enumerate(files):
        own_pid = pids[af.name]
        off = shift[i] - t0
        for rec in af.records:
            kind = rec[0]
            if kind == "X" and len(rec) >= 6:
                start, dur, tname, name, args = rec[1], rec[2], rec[3], rec[4], rec[5]
                target = rec[7] if len(rec) > 7 and rec[7] else None
                pid = pids.get(target, own_pid) if target else own_pid
                tid = tid_of(pid, str(tname))
                ev: dict[str, Any] = {
                    "ph": "X", "name": name, "cat": af.role, "ts": _us(start + off),
                    "dur": _us(max(dur, 2 * POINT_OFFSET_NS)), "pid": pid, "tid": tid}
                if args:
                    ev["args"] = args
                events.append(ev)
                stats.slices += 1
                if len(rec) > 6 and rec[6]:
                    pts = point_ts(start + off, max(dur, 2 * POINT_OFFSET_NS))
                    for hop, ids in rec[6]:
                        for fid in ids:
                            points[fid].append(FlowPoint(hop, pts, pid, tid))
            elif kind == "C" and len(rec) >= 4 and isinstance(rec[3], dict):
                target = rec[4] if len(rec) > 4 and rec[4] else None
                pid = pids.get(target, own_pid) if target else own_pid
                tid = tid_of(pid, "counters")
                ts = _us(rec[1] + off)
                for track, values in split_counter(rec[2], rec[3]).items():
                    events.append({"ph": "C", "name": track, "ts": ts, "pid": pid, "tid": tid,
                                   "args": values})
                stats.counters += 1

    events.extend(flow_events(points, stats))
    events.sort(key=_sort_key)
    meta: list[dict[str, Any]] = []
    for name, pid in pids.items():
        meta.append({"ph": "M", "name": "process_name", "pid": pid, "tid": pid * 100,
                     "args": {"name": name}})
        meta.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": pid * 100,
                     "args": {"sort_index": pid}})
    for (pid, tname), tid in sorted(tids.items(), key=lambda kv: kv[1]):
        meta.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                     "args": {"name": tname}})
        meta.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid,
                     "args": {"sort_index": tid}})
    trace = {"traceEvents": meta + events, "displayTimeUnit": "ns",
             "otherData": {"source": "rxpath", "t0_ns": t0, "actors": order}}
    return trace, stats


_PHASE_RANK = {"X": 0, "C": 1, "s": 2, "t": 2, "f": 2}


def _sort_key(ev: dict[str, Any]) -> tuple[float, int, float]:
    # Equal start: the enclosing (longer) slice first, flow points after the slices.
    return (ev["ts"], _PHASE_RANK.get(ev["ph"], 3), -ev.get("dur", 0))


def flow_events(points: dict[int, list[FlowPoint]], stats: MergeStats) -> list[dict[str, Any]]:
    """s/t/f events: each flow's points in path order; checks that time runs forward."""
    out: list[dict[str, Any]] = []
    for fid, pts in points.items():
        pts.sort(key=lambda p: (p.hop, p.ts))
        if len(pts) < 2:
            stats.single_point_flows += 1
            continue
        for a, b in itertools.pairwise(pts):
            if b.ts < a.ts:
                raise TraceError(
                    f"flow {fid}: the arrow from hop {a.hop} (pid {a.pid}, {a.ts} ns) to hop "
                    f"{b.hop} (pid {b.pid}, {b.ts} ns) points backwards in time")
        name = "ack" if fid >> FLOW_ID_SHIFT == ORIGIN_STACK else "segment"
        last = len(pts) - 1
        for i, p in enumerate(pts):
            ph = "s" if i == 0 else "f" if i == last else "t"
            ev = {"ph": ph, "id": fid, "name": name, "cat": "flow", "ts": _us(p.ts),
                  "pid": p.pid, "tid": p.tid}
            if ph == "f":
                ev["bp"] = "e"
            out.append(ev)
        stats.flows += 1
        stats.flow_points += len(pts)
    return out


# --- checks --------------------------------------------------------------------------------


def check_trace(trace: dict[str, Any]) -> list[str]:
    """Structural problems of a merged trace (empty when sound): every flow starts once and
    ends once with its steps between, no arrow points backwards, flow ids are not reused,
    and slices nest on every thread."""
    problems: list[str] = []
    flows: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    threads: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for ev in trace.get("traceEvents", []):
        ph = ev.get("ph")
        if ph in ("s", "t", "f"):
            flows[(ev.get("cat"), ev.get("name"), ev["id"])].append(ev)
        elif ph == "X":
            start = round(ev["ts"] * 1000)
            threads[(ev["pid"], ev["tid"])].append((start, start + round(ev["dur"] * 1000)))
    ids_seen: dict[Any, tuple[Any, Any]] = {}
    for (cat, name, fid), evs in flows.items():
        if fid in ids_seen:
            problems.append(f"flow id {fid} used by two flows")
        ids_seen[fid] = (cat, name)
        phases = [e["ph"] for e in evs]
        if phases.count("s") != 1 or phases.count("f") != 1:
            problems.append(f"flow {fid}: {phases.count('s')} starts, {phases.count('f')} ends")
            continue
        if phases[0] != "s" or phases[-1] != "f":
            problems.append(f"flow {fid}: does not start with s and end with f: {phases}")
        times = [e["ts"] for e in evs]
        if any(b < a for a, b in itertools.pairwise(times)):
            problems.append(f"flow {fid}: an arrow points backwards: {times}")
    for (pid, tid), spans in threads.items():
        spans.sort(key=lambda s: (s[0], -s[1]))
        stack: list[int] = []
        for start, end in spans:
            while stack and stack[-1] <= start:
                stack.pop()
            if stack and end > stack[-1]:
                problems.append(f"pid {pid} tid {tid}: slice at {start} ns ends at {end} ns, "
                                f"after its enclosing slice ({stack[-1]} ns)")
                break
            stack.append(end)
    return problems


# --- files and the command -----------------------------------------------------------------


def build_trace(run_dir: Path) -> tuple[dict[str, Any], MergeStats]:
    return merge(read_run(Path(run_dir)))


def write_trace(run_dir: Path, out: Path | None = None) -> tuple[Path, MergeStats]:
    """Merge ``run_dir``'s trace records into ``out`` (default ``run_dir/trace.json``)."""
    trace, stats = build_trace(run_dir)
    problems = check_trace(trace)
    if problems:
        raise TraceError("; ".join(problems[:5]))
    path = Path(out) if out is not None else Path(run_dir) / TRACE_FILE
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(trace, f, separators=(",", ":"))
    tmp.replace(path)
    return path, stats


def write_trace_after_run(run_dir: Path) -> Path | None:
    """What ``rxpath run`` calls at its end: write the trace, never fail the run for it."""
    if not (Path(run_dir) / TRACE_DIR).is_dir():
        return None
    try:
        path, _ = write_trace(run_dir)
    except (TraceError, OSError, ValueError) as err:
        print(f"rxpath: trace not written: {err}", file=sys.stderr)
        return None
    return path


@app.command()
def trace(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by rxpath run.")],
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Where to write the trace (default RUN_DIR/trace.json).")]
        = None,
) -> None:
    """Merge the actors' trace records into one Chrome/Perfetto trace (ui.perfetto.dev)."""
    try:
        path, stats = write_trace(run_dir, output)
    except TraceError as err:
        typer.echo(f"rxpath trace: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{path}: {stats.actors} actors, {stats.slices} slices, {stats.counters} "
               f"counter samples, {stats.flows} flows ({stats.flow_points} points)")
