"""``rxpath trace RUN_DIR``: merge the actors' trace records into one Chrome/Perfetto trace.

Input: ``RUN_DIR/trace/*.jsonl``, one file per actor incarnation, written by
:mod:`actors.runtime.trace`.  Output (default ``RUN_DIR/trace.json``): a trace-event JSON
object that https://ui.perfetto.dev and chrome://tracing open:

- one process per actor (``process_name`` metadata), ordered along the receive path
  (peer, nic, cpus, stack, readers), one thread track per ``tid`` the actor used;
- ``X`` slices (hardirq, net_rx_action / napi_poll, tcp_v4_rcv, tcp_recvmsg and its
  steps, sk_lock ownership, backlog and prequeue processing on the reader's track);
- ``C`` counters (ring occupancy, backlog, prequeue, receive and out-of-order queues,
  advertised window, bytes read, actor utilisation; per flow the ACK line and window
  edge the stack sent, and the peer's cwnd, ssthresh, in flight and srtt);
- ``i`` instants: every drop, named after its reason, on the dropping actor's ``drops``
  track; every SACK the stack sent; and (global, from ``summary.json``) every death,
  kill and restart the supervisor recorded;
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
from operator import itemgetter
from pathlib import Path
from typing import Annotated, Any

import typer

from actors.runtime.trace import FLOW_ID_MIN, FLOW_ID_SHIFT, ORIGIN_STACK, TRACE_DIR
from cli.app import app
from cli.options import LATEST_RUN, RunDirArgument

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


# A flow point: (hop, ts in ns on the common clock, pid, tid).
FlowPoint = tuple[int, int, int, int]


@dataclass
class MergeStats:
    actors: int = 0
    slices: int = 0
    counters: int = 0
    instants: int = 0
    flows: int = 0
    flow_points: int = 0
    single_point_flows: int = 0  # a frame seen at one hop only (e.g. still in flight)
    overlapping_slices: int = 0  # moved to an extra track because they did not nest
    bad_lines: int = 0
    clock_shifts_ns: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# --- reading ---------------------------------------------------------------------------


def read_actor_file(path: Path) -> ActorFile:
    stem = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.stem
    name, _, inc = stem.partition(".")
    af = ActorFile(path=path, name=name, role="", incarnation=int(inc) if inc.isdigit() else 0)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:  # one parse for the whole file; line by line only if a line is damaged
        records = json.loads("[" + ",".join(lines) + "]")
        if len(records) != len(lines):  # a cut line swallowed the next one
            raise ValueError
    except ValueError:
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                af.bad_lines += 1  # a line cut short by a killed process
    for rec in records:
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
                    if fid >= FLOW_ID_MIN:  # -1: a frame sent without an id
                        points[fid].append((hop, ts, fi))
    return points


def split_counter(name: str, values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A raw counter sample as counter tracks: series ``"<track>/<unit>"`` goes to track
    ``"<name> <track>"`` as ``{unit: value}``; other series stay on ``name``."""
    return {track: {unit: values[key] for unit, key in units}
            for track, units in counter_layout(name, values)}


def counter_layout(name: str, values: Iterable[str]) -> list[tuple[str, list[tuple[str, str]]]]:
    """How :func:`split_counter` lays out a sample with these series: per track, the
    (unit, series) pairs (computed once per shape of sample)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for series in values:
        track, sep, unit = series.partition("/")
        if sep:
            out.setdefault(f"{name} {track}", []).append((unit, series))
        else:
            out.setdefault(name, []).append((series, series))
    return list(out.items())


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


def merge(files: list[ActorFile], marks: Iterable[tuple[int, str, dict[str, Any]]] = ()
          ) -> tuple[dict[str, Any], MergeStats]:
    """The trace-event JSON object for these actor files, and what went into it;
    ``marks`` are run-wide moments (ns on the actors' clock, name, args): see
    :func:`supervision_marks`."""
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

    if len({af.clock_domain for af in files}) > 1:
        offsets = align_clocks(files, _raw_points(files))
    else:
        offsets = {files[0].clock_domain: 0}
    stats.clock_shifts_ns = {d or "local": o for d, o in offsets.items() if o}
    shift = [offsets[af.clock_domain] for af in files]
    starts = [af.t0_ns + shift[i] for i, af in enumerate(files) if af.t0_ns is not None]
    firsts = [rec[1] + shift[i] for i, af in enumerate(files) for rec in af.records[:1]]
    if not starts and not firsts:
        raise TraceError("no trace records")
    t0 = min(starts + firsts)

    events: list[dict[str, Any]] = []
    # Slices per (pid, thread name): (start, end, name, category, args, flows), in ns.
    slices: dict[tuple[int, str], list[tuple[int, int, str, str, Any, Any]]] = defaultdict(list)
    min_dur = 2 * POINT_OFFSET_NS
    layouts: dict[tuple[str, ...], list[tuple[str, list[tuple[str, str]]]]] = {}
    for i, af in enumerate(files):
        own_pid = pids[af.name]
        off = shift[i] - t0
        for rec in af.records:
            kind = rec[0]
            if kind == "X" and len(rec) >= 6:
                target = rec[7] if len(rec) > 7 and rec[7] else None
                pid = pids.get(target, own_pid) if target else own_pid
                start = rec[1] + off
                slices[(pid, str(rec[3]))].append(
                    (start, start + max(rec[2], min_dur), rec[4], af.role, rec[5],
                     rec[6] if len(rec) > 6 else None))
            elif kind == "C" and len(rec) >= 4 and isinstance(rec[3], dict):
                target = rec[4] if len(rec) > 4 and rec[4] else None
                pid = pids.get(target, own_pid) if target else own_pid
                tid = tid_of(pid, "counters")
                ts = _us(rec[1] + off)
                values = rec[3]
                layout_key = (rec[2], *values)
                layout = layouts.get(layout_key)
                if layout is None:
                    layout = layouts[layout_key] = counter_layout(rec[2], values)
                for track, units in layout:
                    events.append({"ph": "C", "name": track, "ts": ts, "pid": pid, "tid": tid,
                                   "args": {unit: values[key] for unit, key in units}})
                stats.counters += 1
            elif kind == "i" and len(rec) >= 4:
                target = rec[5] if len(rec) > 5 and rec[5] else None
                pid = pids.get(target, own_pid) if target else own_pid
                inst: dict[str, Any] = {"ph": "i", "s": "t", "name": rec[3],
                                        "ts": _us(rec[1] + off), "pid": pid,
                                        "tid": tid_of(pid, str(rec[2]))}
                if len(rec) > 4 and rec[4]:
                    inst["args"] = rec[4]
                events.append(inst)
                stats.instants += 1
    for ts_ns, name, args in marks:
        # The supervisor's kills and restarts: global instants (a line across every track).
        events.append({"ph": "i", "s": "g", "name": name, "ts": _us(ts_ns - t0),
                       "pid": FIRST_PID, "tid": FIRST_PID * 100, "args": args})
        stats.instants += 1

    points: dict[int, list[FlowPoint]] = defaultdict(list)
    for (pid, tname), spans in sorted(slices.items()):
        for level, (start, end, name, cat, args, flows) in nest(spans):
            if level:
                stats.overlapping_slices += 1
            tid = tid_of(pid, tname if not level else f"{tname} (overlapping {level})")
            ev: dict[str, Any] = {"ph": "X", "name": name, "cat": cat, "ts": _us(start),
                                  "dur": _us(end - start), "pid": pid, "tid": tid}
            if args:
                ev["args"] = args
            events.append(ev)
            stats.slices += 1
            if flows:
                pts = point_ts(start, end - start)
                for hop, ids in flows:
                    for fid in ids:
                        if fid >= FLOW_ID_MIN:
                            points[fid].append((hop, pts, pid, tid))

    events.extend(flow_events(points, stats))
    # Not sorted globally (viewers sort): each thread's slices are already in nesting
    # order, parents first, and each flow's points in path order.
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
    # No "displayTimeUnit": some Perfetto versions read "ns" there as the unit of `ts`.
    trace = {"traceEvents": meta + events,
             "otherData": {"source": "rxpath", "t0_ns": t0, "actors": order}}
    return trace, stats


def nest(spans: list[tuple[int, int, Any, Any, Any, Any]]) -> list[tuple[int, tuple[Any, ...]]]:
    """Give every slice of one thread a level such that the slices of each level nest.

    Level 0 is the thread itself.  Slices recorded by different processes on one track
    (the stack's work on a reader's behalf, inside the reader's step) nest by causality;
    one that cannot (a step of a reader that died and came back) goes to a further level,
    shown as a separate track, rather than breaking the trace."""
    out: list[tuple[int, tuple[Any, ...]]] = []
    stacks: list[list[int]] = []  # per level: ends of the open slices
    spans = sorted(spans, key=itemgetter(1), reverse=True)
    spans.sort(key=itemgetter(0))  # by start, the longer first (the sorts are stable)
    for span in spans:
        start, end = span[0], span[1]
        for level, stack in enumerate(stacks):
            while stack and stack[-1] <= start:
                stack.pop()
            if not stack or end <= stack[-1]:
                stack.append(end)
                out.append((level, span))
                break
        else:
            stacks.append([end])
            out.append((len(stacks) - 1, span))
    return out


def flow_events(points: dict[int, list[FlowPoint]], stats: MergeStats) -> list[dict[str, Any]]:
    """s/t/f events: each flow's points in path order; checks that time runs forward."""
    out: list[dict[str, Any]] = []
    for fid, pts in points.items():
        pts.sort()  # by hop, then time
        if len(pts) < 2:
            stats.single_point_flows += 1
            continue
        for a, b in itertools.pairwise(pts):
            if b[1] < a[1]:
                raise TraceError(
                    f"flow {fid}: the arrow from hop {a[0]} (pid {a[2]}, {a[1]} ns) to hop "
                    f"{b[0]} (pid {b[2]}, {b[1]} ns) points backwards in time")
        name = "ack" if fid >> FLOW_ID_SHIFT == ORIGIN_STACK else "segment"
        last = len(pts) - 1
        for i, p in enumerate(pts):
            ph = "s" if i == 0 else "f" if i == last else "t"
            ev = {"ph": ph, "id": fid, "name": name, "cat": "flow", "ts": _us(p[1]),
                  "pid": p[2], "tid": p[3]}
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


# Supervisor events that mark the time axis, and how they are named there.
MARK_EVENTS = {"actor_died": "died", "actor_restarted": "restarted", "actor_hung": "hung",
               "actor_hung_killed": "killed (hung)"}


def supervision_marks(summary: dict[str, Any]) -> list[tuple[int, str, dict[str, Any]]]:
    """Kills, deaths and restarts from ``summary.json``'s supervision events, as (ns on
    CLOCK_MONOTONIC, name, args). The supervisor stamps an event when it notices it (a
    death within one poll of the kill)."""
    out = []
    for e in (summary.get("supervision") or {}).get("events") or []:
        what = MARK_EVENTS.get(e.get("event"))
        if what is None or not isinstance(e.get("t"), int | float):
            continue
        args = {k: v for k, v in e.items() if k != "t"}
        out.append((round(e["t"] * 1e9), f"{e.get('actor')} {what}", args))
    return out


def build_trace(run_dir: Path) -> tuple[dict[str, Any], MergeStats]:
    try:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    marks = supervision_marks(summary) if isinstance(summary, dict) else []
    return merge(read_run(Path(run_dir)), marks)


def write_trace(run_dir: Path, out: Path | None = None) -> tuple[Path, MergeStats]:
    """Merge ``run_dir``'s trace records into ``out`` (default ``run_dir/trace.json``)."""
    trace, stats = build_trace(run_dir)
    problems = check_trace(trace)
    if problems:
        raise TraceError("; ".join(problems[:5]))
    path = Path(out) if out is not None else Path(run_dir) / TRACE_FILE
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    # json.dumps, not json.dump: dump streams through the pure-Python encoder (10x slower).
    tmp.write_text(json.dumps(trace, separators=(",", ":")), encoding="utf-8")
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
    run_dir: RunDirArgument = LATEST_RUN,
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
