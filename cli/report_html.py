"""``rxpath report RUN_DIR``: one self-contained HTML page with plots and counter tables.

Everything is inline (SVG drawn here, CSS in a ``<style>``, no script, nothing fetched):
the page opens from a file anywhere.  Plots come from the run's own records:

- per flow, a time-sequence graph (tcptrace's / Wireshark's Stevens graph) of what reached
  the stack: data segments as bars (in order, out of order, retransmitted), the ACK line
  and the advertised window's right edge, SACK and D-SACK blocks, drops by reason, and the
  zero-window periods shaded; with a zoom on the first retransmission or drop;
- per flow, the peer's sender state (cwnd, ssthresh, packets in flight, srtt), one panel
  each; for a real Linux sender, the same from its socket's ``ss -tin`` samples
  (``ss-sender.txt``), with its send window and retransmissions;
- socket queues (backlog, prequeue, out-of-order) and the receive queue against the
  advertised window, per flow, from the stack's trace counters;
- RX ring occupancy per queue (nic descriptors in use, frames waiting for NAPI);
- bytes delivered to the readers per flow over time;
- drops by reason (wire impairments, rx_missed_errors, ip_rcv, SKB_DROP_REASON_*);
- busy time per actor (from the final counters) and utilisation over time;

then the tables ``rxpath run`` prints (nstat, drops, ethtool -S, softnet_stat, ss, flows,
and with real senders each flow's two ends as ``rxpath ss`` prints them),
from the same summary data.  Series that could hide each other get panels of their own
(small multiples on one time axis), and every time plot marks on its axis the drops (from
the actors' drop instants) and the kills and restarts (the supervisor's events in
``summary.json``).
"""

from __future__ import annotations

import bisect
import html
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from actors.mib import ALL_NAMES
from actors.stack.net import drop_reason
from actors.tunwire.netns import SS_FILE, in_flight, parse_ss_samples
from cli import formats
from cli.app import app
from cli.checker import FAIL, INCOMPLETE, PASS, flow_state, summary_verdict
from cli.options import LATEST_RUN, RunDirArgument
from cli.report import real_senders, sender_rows, socket_lines
from cli.trace import (
    ActorFile,
    TraceError,
    actor_order,
    read_run,
    split_counter,
    supervision_marks,
)

REPORT_FILE = "report.html"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
MAX_POINTS_PER_SERIES = 1200  # after reduction: min and max kept per pixel column


# --- data ------------------------------------------------------------------------------------


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]  # (seconds since run start, value), time-ordered
    color: str = ""


@dataclass
class RunData:
    run_dir: Path
    summary: dict[str, Any]
    counters: dict[str, Any]
    scenario: dict[str, Any]
    # (actor, counter track, unit) -> [(t_s, value)]
    samples: dict[tuple[str, str, str], list[tuple[float, float]]] = field(default_factory=dict)
    actors: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    trace_note: str = ""
    pictures: dict[str, FlowPicture] = field(default_factory=dict)  # flow -> its seq graph
    marks: list[TimeMark] = field(default_factory=list)  # drops, kills, restarts
    # a real Linux sender's ss -tin samples (ss-sender.txt): (t_s, that sample's sockets)
    ss_samples: list[tuple[float, list[dict[str, Any]]]] = field(default_factory=list)


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_run(run_dir: Path) -> RunData:
    run_dir = Path(run_dir)
    summary = _load_json(run_dir / "summary.json")
    if not summary:
        raise FileNotFoundError(f"{run_dir}: no summary.json (is this a run directory?)")
    summary = formats.current_names(summary)
    data = RunData(run_dir, summary, _load_json(run_dir / "counters.json"),
                   _load_json(run_dir / "scenario.json"))
    try:
        files = read_run(run_dir)
    except TraceError as err:
        data.trace_note = str(err)
        files = []
    data.actors = actor_order(files) if files else sorted(data.counters)
    data.samples, data.duration_s = counter_samples(files)
    data.pictures, data.marks = picture_data(files, summary, data.scenario, data.duration_s)
    try:
        data.ss_samples = parse_ss_samples((run_dir / SS_FILE).read_text(errors="replace"))
    except OSError:
        data.ss_samples = []
    return data


def counter_samples(files: Sequence[ActorFile]
                    ) -> tuple[dict[tuple[str, str, str], list[tuple[float, float]]], float]:
    """Every counter sample of the trace, in seconds since the run start; and the run's
    traced length."""
    starts = [af.t0_ns for af in files if af.t0_ns is not None]
    firsts = [rec[1] for af in files for rec in af.records[:1]]
    if not starts and not firsts:
        return {}, 0.0
    t0 = min(starts + firsts)
    last = t0
    samples: dict[tuple[str, str, str], list[tuple[float, float]]] = defaultdict(list)
    for af in files:
        for rec in af.records:
            if rec[0] == "X":
                last = max(last, rec[1] + rec[2])
                continue
            if rec[0] != "C" or len(rec) < 4 or not isinstance(rec[3], dict):
                continue
            owner = rec[4] if len(rec) > 4 and rec[4] else af.name
            ts = (rec[1] - t0) / 1e9
            last = max(last, rec[1])
            for track, values in split_counter(rec[2], rec[3]).items():
                for unit, value in values.items():
                    if isinstance(value, int | float):
                        samples[(owner, track, unit)].append((ts, float(value)))
    for pts in samples.values():
        pts.sort(key=lambda p: p[0])
    return dict(samples), (last - t0) / 1e9


def _role(counters: dict[str, Any], name: str) -> dict[str, Any]:
    return (counters.get(name) or {}).get("role") or {}


def flow_names(data: RunData) -> list[str]:
    return [f["flow"] for f in data.summary.get("flows", [])]


def queue_series(data: RunData, flow: str) -> list[Series]:
    want = [("backlog", "segments", "backlog (segments)"),
            ("prequeue", "segments", "prequeue (segments)"),
            ("ofo queue", "segments", "out-of-order queue (segments)")]
    out = []
    for counter, series, label in want:
        pts = data.samples.get(("stack", f"{flow} {counter}", series))
        if pts:
            out.append(Series(label, pts))
    return out


def window_series(data: RunData, flow: str) -> list[Series]:
    want = [("advertised window", "bytes", "advertised window (rcv_wnd)"),
            ("receive queue", "bytes", "receive queue (unread bytes)"),
            ("backlog", "bytes", "backlog (truesize bytes)")]
    out = []
    for counter, series, label in want:
        pts = data.samples.get(("stack", f"{flow} {counter}", series))
        if pts:
            out.append(Series(label, pts))
    return out


def ring_series(data: RunData) -> list[Series]:
    out = []
    for (actor, name, series), pts in sorted(data.samples.items()):
        if actor == "nic" and name.startswith("rx ring q") and series == "descriptors in use":
            out.append(Series(f"nic {name[3:]}: descriptors in use", pts))
        elif actor.startswith("cpu") and name.startswith("ring q") and series == "frames to poll":
            out.append(Series(f"{actor} {name}: frames waiting for napi_poll", pts))
    return out


def delivered_series(data: RunData) -> list[Series]:
    """Bytes read per flow over time: the readers of one flow added up."""
    per_flow: dict[str, list[list[tuple[float, float]]]] = defaultdict(list)
    for (_actor, name, series), pts in data.samples.items():
        if name.endswith(" read") and series == "bytes":
            per_flow[name[: -len(" read")]].append(pts)
    out = []
    for flow in sorted(per_flow):
        out.append(Series(flow, _sum_steps(per_flow[flow])))
    return out


def _sum_steps(curves: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """The sum of several sample-and-hold curves."""
    if len(curves) == 1:
        return curves[0]
    events = sorted((t, i, v) for i, pts in enumerate(curves) for t, v in pts)
    current = [0.0] * len(curves)
    out: list[tuple[float, float]] = []
    for t, i, v in events:
        current[i] = v
        out.append((t, sum(current)))
    return out


def utilisation_series(data: RunData) -> list[Series]:
    out = []
    for actor in data.actors:
        pts = data.samples.get((actor, "actor utilisation", "percent"))
        if pts:
            out.append(Series(actor, pts))
    return out


def drops_by_reason(data: RunData) -> list[tuple[str, float]]:
    """(reason, count) for every place a frame or segment was lost, largest first."""
    s, c = data.summary, data.counters
    rows: list[tuple[str, float]] = []
    peer = _role(c, "peer").get("peer") or {}
    for key, label in (("wire_lost", "wire: lost (impairment)"),
                       ("wire_scripted_dropped", "wire: dropped by script"),
                       ("wire_corrupted", "wire: corrupted (impairment)")):
        if peer.get(key):
            rows.append((label, float(peer[key])))
    nic = s.get("nic") or {}
    if nic.get("rx_missed_errors"):
        rows.append(("nic: rx_missed_errors (ring full)", float(nic["rx_missed_errors"])))
    ip: dict[str, int] = defaultdict(int)
    for name in c:
        for reason, n in (_role(c, name).get("ip_drops") or {}).items():
            ip[reason] += int(n)
    rows += [(f"ip_rcv: {r}", float(n)) for r, n in ip.items() if n]
    rows += [(f"SKB_DROP_REASON_{r}", float(n)) for r, n in (s.get("drops") or {}).items() if n]
    rows.sort(key=lambda r: -r[1])
    return rows


def busy_by_actor(data: RunData) -> list[tuple[str, float, float]]:
    """(actor, busy ms, share of its uptime in %) from the final counters."""
    out = []
    for actor in data.actors:
        rt = (data.counters.get(actor) or {}).get("runtime") or {}
        if "busy_ns" not in rt:
            continue
        busy = float(rt["busy_ns"])
        up = float(rt.get("uptime_ns") or 0)
        out.append((actor, busy / 1e6, 100 * busy / up if up else 0.0))
    return out


# --- SVG -------------------------------------------------------------------------------------


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (1, 2 or 5 times a power of ten) covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 10))
        v += step
    return ticks


def fmt_value(v: float) -> str:
    a = abs(v)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}" if a else "0"


def reduce_points(pts: list[tuple[float, float]], x0: float, x1: float,
                  columns: int) -> list[tuple[float, float]]:
    """Keep a step curve's shape with at most ~4 points per pixel column (first, min, max,
    last), so a long run's plot stays small without losing its peaks."""
    if len(pts) <= MAX_POINTS_PER_SERIES:
        return pts
    width = (x1 - x0) / columns if x1 > x0 else 1.0
    out: list[tuple[float, float]] = []
    bucket: list[tuple[float, float]] = []
    current = None
    for p in pts:
        col = int((p[0] - x0) / width) if width else 0
        if col != current and bucket:
            out.extend(_bucket_shape(bucket))
            bucket = []
        current = col
        bucket.append(p)
    if bucket:
        out.extend(_bucket_shape(bucket))
    return out


def _bucket_shape(bucket: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(bucket) <= 4:
        return bucket
    lo = min(range(len(bucket)), key=lambda i: bucket[i][1])
    hi = max(range(len(bucket)), key=lambda i: bucket[i][1])
    return [bucket[i] for i in sorted({0, lo, hi, len(bucket) - 1})]


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)



def _axes(title: str, y_label: str, height: int, box: tuple[int, int, int, int],
          yt: list[float], xt: list[float], sx: Callable[[float], float],
          sy: Callable[[float], float]) -> list[str]:
    """A plot's title, frame, grid with tick labels and axis labels, for the plot area
    ``box`` (left, top, width, height); ``xt``: time ticks (s) inside the plotted span."""
    ml, mt, pw, ph = box
    parts = [f'<text x="{ml}" y="18" class="title">{_esc(title)}</text>',
             f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" class="frame"/>']
    for v in yt:
        y = sy(v)
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{ml - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">'
                     f'{fmt_value(v)}</text>')
    for v in xt:
        x = sx(v)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt}" y2="{mt + ph}" class="grid"/>'
                     f'<text x="{x:.1f}" y="{mt + ph + 16}" class="tick" text-anchor="middle">'
                     f'{v:g}</text>')
    parts.append(f'<text x="{ml + pw / 2:.0f}" y="{height - 6}" class="axis" '
                 f'text-anchor="middle">time since start (s)</text>')
    parts.append(f'<text x="14" y="{mt + ph / 2:.0f}" class="axis" text-anchor="middle" '
                 f'transform="rotate(-90 14 {mt + ph / 2:.0f})">{_esc(y_label)}</text>')
    return parts

def line_chart(title: str, series: list[Series], *, y_label: str, x_end: float | None = None,
               width: int = 900, height: int = 260, step: bool = True,
               marks: Sequence[TimeMark] = ()) -> str:
    """An SVG line chart of sample-and-hold series over time (seconds); ``marks`` (drops,
    kills, restarts) go on its time axis."""
    series = [s for s in series if s.points]
    npoints = sum(len(s.points) for s in series)
    if not series:
        return _empty_plot(title, "no samples were recorded for this plot")
    legend_rows = (len(series) + 2) // 3
    ml, mr, mb = 64, 16, 40
    mt = 28 + 15 * legend_rows  # the legend sits between the title and the plot
    height += 15 * legend_rows
    pw, ph = width - ml - mr, height - mt - mb
    x0 = 0.0
    x1 = max(max(p[0] for s in series for p in s.points), x_end or 0.0) or 1.0
    y_hi = max(p[1] for s in series for p in s.points)
    y_lo = min(0.0, min(p[1] for s in series for p in s.points))
    if y_hi <= y_lo:
        y_hi = y_lo + 1
    yt = nice_ticks(y_lo, y_hi)
    if yt[-1] < y_hi and len(yt) > 1:  # headroom: the top tick above the highest value
        yt.append(yt[-1] + (yt[1] - yt[0]))
    y_hi = max(y_hi, yt[-1])
    xt = nice_ticks(x0, x1, 8)

    def sx(x: float) -> float:
        return ml + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return mt + ph - (y - y_lo) / (y_hi - y_lo) * ph

    parts = [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" data-series="{len(series)}" '
             f'data-points="{npoints}" role="img" aria-label="{_esc(title)}">']
    parts += _axes(title, y_label, height, (ml, mt, pw, ph), yt, [v for v in xt if v <= x1],
                   sx, sy)
    for i, s in enumerate(series):
        color = s.color or PALETTE[i % len(PALETTE)]
        pts = reduce_points(s.points, x0, x1, pw)
        coords: list[str] = []
        prev_y: float | None = None
        for x, y in pts:
            if step and prev_y is not None:
                coords.append(f"{sx(x):.1f},{sy(prev_y):.1f}")
            coords.append(f"{sx(x):.1f},{sy(y):.1f}")
            prev_y = y
        if step and prev_y is not None:
            coords.append(f"{sx(x1):.1f},{sy(prev_y):.1f}")  # the last value holds
        parts.append(f'<polyline class="series" fill="none" stroke="{color}" stroke-width="1.5" '
                     f'points="{" ".join(coords)}"><title>{_esc(s.label)}</title></polyline>')
        lx = ml + (i % 3) * 280
        ly = 38 + (i // 3) * 15
        parts.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{lx + 14}" y="{ly}" class="legend">{_esc(s.label)}</text>')
    if marks:
        parts.append(_marks_svg(marks, sx, x1, mt + ph, mt)[0])
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(title: str, rows: list[tuple[str, float]], *, unit: str = "",
              width: int = 900, bar_h: int = 18) -> str:
    """A horizontal SVG bar chart."""
    rows = [r for r in rows if r[1] > 0]
    if not rows:
        return _empty_plot(title, "nothing to show: every value is zero")
    label_w = 300
    height = 40 + bar_h * len(rows) + 10
    pw = width - label_w - 90
    top = max(v for _, v in rows)
    parts = [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" data-series="1" '
             f'data-points="{len(rows)}" role="img" aria-label="{_esc(title)}">',
             f'<text x="10" y="18" class="title">{_esc(title)}</text>']
    for i, (label, value) in enumerate(rows):
        y = 32 + i * bar_h
        w = max(1.0, value / top * pw)
        color = PALETTE[i % len(PALETTE)]
        parts.append(f'<text x="{label_w - 8}" y="{y + bar_h * 0.7:.1f}" class="tick" '
                     f'text-anchor="end">{_esc(label)}</text>'
                     f'<rect class="bar" x="{label_w}" y="{y + 2}" width="{w:.1f}" '
                     f'height="{bar_h - 4}" fill="{color}"><title>{_esc(label)}: {value:g}'
                     f'</title></rect>'
                     f'<text x="{label_w + w + 6:.1f}" y="{y + bar_h * 0.7:.1f}" class="tick">'
                     f'{value:,.6g}{_esc(unit)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _empty_plot(title: str, why: str) -> str:
    return (f'<svg class="plot empty" xmlns="http://www.w3.org/2000/svg" width="900" height="50" '
            f'data-series="0" data-points="0"><text x="10" y="18" class="title">{_esc(title)}'
            f'</text><text x="10" y="38" class="tick">{_esc(why)}</text></svg>')


# --- time-sequence graphs: what each flow's segments and ACKs did ----------------------------

SEQ_MASK = 0xFFFFFFFF
# Data segment classes of the time-sequence graph: (key, legend, colour).
SEGMENT_KINDS = (("new", "data segment, in order", "#1f77b4"),
                 ("ofo", "data segment, out of order (to the ofo queue)", "#17becf"),
                 ("retrans", "retransmission (bytes received or lost before)", "#d62728"))
DROP_COLORS = ("#000000", "#8c564b", "#ff7f0e", "#7f7f7f", "#6a3d9a", "#b15928")
MARK_COLORS = {"drop": "#d62728", "died": "#000000", "restart": "#2ca02c", "hung": "#8c564b"}


@dataclass
class TimeMark:
    """A moment on the run's time axis: a drop (with its reason), a kill or a restart."""

    t: float
    kind: str  # "drop", "died", "restart", "hung"
    label: str
    flow: str | None = None  # the flow a drop belongs to, when known


@dataclass
class FlowPicture:
    """One flow's time-sequence data, in seconds since the run start and stream offsets
    (bytes after the SYN), as the stack saw it."""

    flow: str
    segments: list[tuple[float, int, int, str]] = field(default_factory=list)  # t, off, len, kind
    drops: list[tuple[float, int, int, str]] = field(default_factory=list)  # t, off, len, reason
    acks: list[tuple[float, float]] = field(default_factory=list)  # t, ACK number
    edges: list[tuple[float, float]] = field(default_factory=list)  # t, ack + window
    sacks: list[tuple[float, int, int, bool]] = field(default_factory=list)  # t, l, r, D-SACK
    zero_windows: list[tuple[float, float]] = field(default_factory=list)  # from, to


def run_t0(files: Sequence[ActorFile]) -> int | None:
    """The run start in ns (the launcher's start; else the earliest record)."""
    starts = [af.t0_ns for af in files if af.t0_ns is not None]
    firsts = [rec[1] for af in files for rec in af.records[:1]]
    return min(starts + firsts) if starts or firsts else None


def picture_data(files: Sequence[ActorFile], summary: dict[str, Any], scenario: dict[str, Any],
                 duration_s: float) -> tuple[dict[str, FlowPicture], list[TimeMark]]:
    """Every flow's time-sequence data and the run's time marks, from the trace records
    (the stack's tcp_v4_rcv slices, ACK samples, SACK and drop instants; the other
    actors' drop instants) and the supervisor's events in the summary."""
    t0 = run_t0(files)
    pics: dict[str, FlowPicture] = {}
    marks: list[TimeMark] = []
    if t0 is None:
        return pics, marks

    def pic(flow: str) -> FlowPicture:
        p = pics.get(flow)
        if p is None:
            p = pics[flow] = FlowPicture(flow)
        return p

    base: dict[str, int] = {}  # flow -> sequence number of stream offset 0
    sport_flow = {f.get("sport"): f.get("name") for f in scenario.get("flows") or []}
    wire_drops: list[tuple[float, dict[str, Any], str]] = []
    for af in sorted(files, key=lambda f: f.role != "stack"):  # the stack first: bases
        stack = af.role == "stack"
        for rec in af.records:
            kind = rec[0]
            if stack and kind == "X" and len(rec) > 5 and rec[4] == "tcp_v4_rcv":
                args = rec[5]
                if not isinstance(args, dict) or "offset" not in args or "flow" not in args:
                    continue
                flow, off, n = args["flow"], int(args["offset"]), int(args.get("len") or 0)
                base.setdefault(flow, (int(args["seq"]) - off) & SEQ_MASK)
                t = (rec[1] + rec[2] - t0) / 1e9
                p = pic(flow)
                to = str(args.get("to", ""))
                if to.startswith("drop:"):
                    continue  # its drop instant marks it (drops in process context too)
                p.segments.append((t, off, n, "ofo" if to == "ofo_queue" else "new"))
            elif stack and kind == "C" and len(rec) > 3 and isinstance(rec[3], dict):
                values = rec[3]
                if "ACK/byte offset" in values:
                    t = (rec[1] - t0) / 1e9
                    p = pic(str(rec[2]))
                    ack, edge = values["ACK/byte offset"], values["window edge/byte offset"]
                    p.acks.append((t, float(ack)))
                    p.edges.append((t, float(edge)))
            elif kind == "i" and len(rec) > 4:
                name, args = str(rec[3]), rec[4] if isinstance(rec[4], dict) else {}
                t = (rec[1] - t0) / 1e9
                if name == "SACK" and stack:
                    ack = int(args.get("ack", 0))
                    blocks = args.get("blocks") or []
                    for i, (left, right) in enumerate(blocks):
                        # RFC 2883: a first block below the ACK, or inside the second, is a D-SACK.
                        dsack = i == 0 and (right <= ack or (
                            len(blocks) > 1 and blocks[1][0] <= left and right <= blocks[1][1]))
                        pic(str(args.get("flow"))).sacks.append((t, left, right, dsack))
                elif name.startswith("drop: "):
                    what = drop_reason(name[6:])  # an older run's name as 6.18's
                    flow = args.get("flow") or sport_flow.get(args.get("sport"))
                    marks.append(TimeMark(t, "drop", f"{af.name}: {what}",
                                          str(flow) if flow else None))
                    if af.role == "peer" and "seq" in args:
                        wire_drops.append((t, args, what))
                    elif stack and flow and "offset" in args:
                        pic(str(flow)).drops.append(
                            (t, int(args["offset"]), int(args.get("len") or 0), what))
    for t, args, reason in wire_drops:  # lost on the wire: placed by the stack's ISN
        flow = sport_flow.get(args.get("sport"))
        if flow in base:
            off = (int(args["seq"]) - base[flow]) & SEQ_MASK
            pic(flow).drops.append((t, off, int(args.get("len") or 0), reason))
    for p in pics.values():
        p.drops.sort()
        p.segments = mark_retransmissions(p.segments, p.drops)
        p.zero_windows = zero_window_periods(p.acks, p.edges, duration_s)
    for ts_ns, name, _args in supervision_marks(summary):
        kind = ("restart" if name.endswith("restarted") else
                "hung" if name.endswith("hung") else "died")
        marks.append(TimeMark((ts_ns - t0) / 1e9, kind, name))
    marks.sort(key=lambda m: m.t)
    return pics, marks


class ByteRanges:
    """Disjoint half-open byte ranges, merged as they are added."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def overlaps(self, lo: int, hi: int) -> bool:
        i = bisect.bisect_right(self.starts, lo) - 1
        if i >= 0 and self.ends[i] > lo:
            return True
        return i + 1 < len(self.starts) and self.starts[i + 1] < hi

    def add(self, lo: int, hi: int) -> None:
        i = bisect.bisect_left(self.ends, lo)  # the first range that ends at or after lo
        j = bisect.bisect_right(self.starts, hi)  # past the last that starts at or before hi
        if i < j:
            lo, hi = min(lo, self.starts[i]), max(hi, self.ends[j - 1])
        self.starts[i:j] = [lo]
        self.ends[i:j] = [hi]


def mark_retransmissions(segments: list[tuple[float, int, int, str]],
                         drops: list[tuple[float, int, int, str]]
                         ) -> list[tuple[float, int, int, str]]:
    """Segments whose bytes had reached the stack, or been lost on the wire, before:
    sent again (without the drops the receiver could not tell a retransmission filling
    a hole from a reordered original)."""
    sent = ByteRanges()
    events = sorted([(t, 0, o, n, "") for t, o, n, _ in drops]
                    + [(t, 1, o, n, k) for t, o, n, k in segments])
    out = []
    for t, is_seg, o, n, kind in events:
        if is_seg:
            out.append((t, o, n, "retrans" if n and sent.overlaps(o, o + n) else kind))
        if n:
            sent.add(o, o + n)
    return out


def zero_window_periods(acks: list[tuple[float, float]], edges: list[tuple[float, float]],
                        end: float) -> list[tuple[float, float]]:
    """When the advertised window was zero: from an ACK whose window edge is its ACK
    number to the next ACK that opens it (or the end of the run)."""
    out: list[tuple[float, float]] = []
    since: float | None = None
    for (t, ack), (_, edge) in zip(acks, edges, strict=True):
        closed = edge <= ack
        if closed and since is None:
            since = t
        elif not closed and since is not None:
            out.append((since, t))
            since = None
    if since is not None:
        out.append((since, max(end, since)))
    return out


def sender_series(data: RunData, flow: str) -> list[tuple[str, Series, str]]:
    """The sender state of one flow: (title, series, unit) per panel; the peer's, or a
    real Linux sender's from its ss -tin samples."""
    want = (("cwnd", "segments", "congestion window (cwnd)", "segments", 1.0),
            ("ssthresh", "segments", "slow-start threshold (ssthresh)", "segments", 1.0),
            ("in flight", "segments", "packets in flight", "segments", 1.0),
            ("srtt", "us", "smoothed RTT (srtt)", "ms", 1e-3))
    out = []
    for track, unit, label, shown, scale in want:
        pts = data.samples.get(("peer", f"{flow} {track}", unit))
        if pts:
            out.append((label, Series(label, [(t, v * scale) for t, v in pts]), shown))
    return out or linux_sender_series(data, flow)


def linux_sender_address(data: RunData, flow: str) -> tuple[str, str] | None:
    """(local, peer) of the flow's socket on the real sender's side, as ss prints them."""
    sc = data.scenario
    f = next((f for f in sc.get("flows") or [] if f.get("name") == flow), None)
    stack = sc.get("stack") or {}
    src = (sc.get("peer") or {}).get("address")
    if f is None or src is None or stack.get("address") is None:
        return None
    return f"{src}:{f.get('sport')}", f"{stack['address']}:{stack.get('listen_port', 5001)}"


def linux_sender_series(data: RunData, flow: str) -> list[tuple[str, Series, str]]:
    """A real Linux sender's state over time, from each ss -tin sample of its socket:
    cwnd, ssthresh, packets in flight (tcp_packets_in_flight from unacked, sacked, lost
    and retrans), srtt, the send window and the retransmissions so far."""
    key = linux_sender_address(data, flow)
    if key is None or not data.ss_samples:
        return []
    socks = [(t, sk) for t, sample in data.ss_samples for sk in sample
             if (sk["local"], sk["peer"]) == key and "cwnd" in sk]
    # ss leaves snd_wnd out when it is 0, and a kernel before 5.4 has none at all.
    has_snd_wnd = any("snd_wnd" in sk for _, sample in data.ss_samples for sk in sample)
    panels: tuple[tuple[str, str, Callable[[dict[str, Any]], float | None]], ...] = (
        ("congestion window (cwnd)", "segments", lambda sk: sk["cwnd"]),
        ("slow-start threshold (ssthresh)", "segments", lambda sk: sk.get("ssthresh")),
        ("packets in flight", "segments", in_flight),
        ("smoothed RTT (srtt)", "ms", lambda sk: sk.get("rtt_ms")),
        ("send window (snd_wnd, as the receiver advertised it)", "bytes",
         lambda sk: sk.get("snd_wnd", 0) if has_snd_wnd else None),
        ("segments retransmitted (total)", "segments", lambda sk: sk.get("retrans", 0)))
    out = []
    for label, unit, get in panels:
        pts = [(t, float(v)) for t, sk in socks if (v := get(sk)) is not None]
        if pts:
            out.append((label, Series(label, pts), unit))
    return out


def _marks_svg(marks: Sequence[TimeMark], sx: Callable[[float], float], x_hi: float,
               y_axis: float, y_top: float) -> tuple[str, int]:
    """Drops, kills and restarts on a plot's time axis: a short tick per drop (one per
    pixel column, the count in its tooltip), a dashed line across the plot per death or
    restart. Returns the SVG and the number of marks drawn."""
    parts: list[str] = []
    drops: dict[int, list[str]] = defaultdict(list)
    n = 0
    for m in marks:
        if m.t < 0 or m.t > x_hi:
            continue
        x = sx(m.t)
        if m.kind == "drop":
            drops[round(x)].append(m.label)
            continue
        color = MARK_COLORS.get(m.kind, "#000")
        parts.append(f'<g class="mark {m.kind}"><line x1="{x:.1f}" x2="{x:.1f}" y1="{y_top}" '
                     f'y2="{y_axis}" stroke="{color}" stroke-dasharray="4 3"/>'
                     f'<path d="M{x:.1f} {y_axis}l-4 7h8z" fill="{color}"/>'
                     f'<title>{_esc(m.label)} at {m.t:.3f} s</title></g>')
        n += 1
    for col, labels in sorted(drops.items()):
        reasons: dict[str, int] = defaultdict(int)
        for label in labels:
            reasons[label] += 1
        tip = "; ".join(f"{r} x{c}" for r, c in sorted(reasons.items()))
        parts.append(f'<line class="mark drop" x1="{col}" x2="{col}" y1="{y_axis - 7:.1f}" '
                     f'y2="{y_axis:.1f}" stroke="{MARK_COLORS["drop"]}" stroke-width="1.5">'
                     f'<title>{len(labels)} dropped: {_esc(tip)}</title></line>')
        n += 1
    return "".join(parts), n


def marks_legend(marks: Sequence[TimeMark]) -> str:
    """What the time-axis marks mean (under the plots that carry them)."""
    kinds = {m.kind for m in marks}
    if not kinds:
        return ""
    words = {"drop": "red tick on the time axis: frames or segments dropped there (tooltip: "
                     "where and why)",
             "died": "black dashed line: an actor died (killed)",
             "restart": "green dashed line: an actor restarted",
             "hung": "brown dashed line: an actor went silent (hung)"}
    return ('<p class="note">' + "; ".join(words[k] for k in ("drop", "died", "restart", "hung")
                                         if k in kinds) + ".</p>")


def clip_picture(p: FlowPicture, a: float, b: float) -> FlowPicture:
    """The part of a flow's picture between times ``a`` and ``b`` (the ACK and window
    lines start with the value they held at ``a``)."""
    def steps(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
        before = [q for q in pts if q[0] < a]
        inside = [q for q in pts if a <= q[0] <= b]
        return ([(a, before[-1][1])] if before else []) + inside
    return FlowPicture(
        p.flow, [q for q in p.segments if a <= q[0] <= b], [q for q in p.drops if a <= q[0] <= b],
        steps(p.acks), steps(p.edges), [q for q in p.sacks if a <= q[0] <= b],
        [(max(a, u), min(b, v)) for u, v in p.zero_windows if v >= a and u <= b])


def detail_window(p: FlowPicture, around: int = 60) -> tuple[float, float] | None:
    """A time window of about ``2 * around`` segments around the flow's first
    retransmission or drop at the stack (where a time-sequence graph is worth a zoom)."""
    firsts = [t for t, *_ in p.drops[:1]] + [t for t, _, _, k in p.segments if k == "retrans"][:1]
    if not firsts or len(p.segments) < 2:
        return None
    t = min(firsts)
    times = [q[0] for q in p.segments]
    i = min(range(len(times)), key=lambda j: abs(times[j] - t))
    a, b = times[max(0, i - around)], times[min(len(times) - 1, i + around)]
    return (a, b) if b > a else None


def seq_chart(title: str, p: FlowPicture, *, x_end: float | None = None,
              marks: Sequence[TimeMark] = (), width: int = 900, height: int = 380,
              window: tuple[float, float] | None = None) -> str:
    """A time-sequence (Stevens) graph of one flow, as tcptrace draws it: stream offset
    against time; each data segment a vertical bar from its first to its last byte; the
    ACK line and the advertised window's right edge as steps; SACK blocks as bars at
    their ACK's time; drops as crosses; zero-window periods shaded. ``window`` (a, b)
    zooms on that time span, the offsets on what it shows."""
    x0 = 0.0
    if window is not None:
        x0, x_end = window
        p = clip_picture(p, x0, x_end)
        marks = [m for m in marks if x0 <= m.t <= x_end]
    if not (p.segments or p.acks or p.drops):
        return _empty_plot(title, "no segments of this flow were traced")
    counts: dict[str, int] = defaultdict(int)
    for _, _, _, k in p.segments:
        counts[k] += 1
    drop_reasons: dict[str, int] = defaultdict(int)
    for _, _, _, r in p.drops:
        drop_reasons[r] += 1
    legend: list[tuple[str, str]] = [(c, f"{label} ({counts[k]})")
                                     for k, label, c in SEGMENT_KINDS if counts[k]]
    if p.acks:
        legend.append(("#2ca02c", "ACK line (ACK number sent)"))
        legend.append(("#bcbd22", "window edge (ACK + advertised window)"))
    nsack = sum(1 for s in p.sacks if not s[3])
    ndsack = len(p.sacks) - nsack
    if nsack:
        legend.append(("#9467bd", f"SACK block ({nsack})"))
    if ndsack:
        legend.append(("#e377c2", f"D-SACK block ({ndsack})"))
    if p.zero_windows:
        legend.append(("#fdae6b", f"zero window advertised ({len(p.zero_windows)} periods)"))
    reason_color = {r: DROP_COLORS[i % len(DROP_COLORS)]
                    for i, r in enumerate(sorted(drop_reasons))}
    legend += [(reason_color[r], f"dropped: {r} ({n})") for r, n in sorted(drop_reasons.items())]
    legend_rows = (len(legend) + 1) // 2
    ml, mr, mb = 70, 16, 40
    mt = 28 + 15 * legend_rows
    height += 15 * legend_rows
    pw, ph = width - ml - mr, height - mt - mb
    times = [s[0] for s in p.segments] + [a[0] for a in p.acks] + [d[0] for d in p.drops]
    x1 = max(max(times), x_end or 0.0) or 1.0
    if x1 <= x0:
        x1 = x0 + 1e-6
    y_hi = float(max([s[1] + s[2] for s in p.segments] + [e[1] for e in p.edges]
                     + [d[1] + d[2] for d in p.drops] + [1]))
    y_lo = 0.0
    if window is not None:  # the offsets the data shows; the window edge may leave the top
        y_lo = float(min([s[1] for s in p.segments] + [a[1] for a in p.acks]
                         + [d[1] for d in p.drops]))
        y_hi = float(max([s[1] + s[2] for s in p.segments] + [a[1] for a in p.acks]
                         + [d[1] + d[2] for d in p.drops] + [r for _, _, r, _ in p.sacks]))
        y_hi += (y_hi - y_lo) * 0.1
        p = FlowPicture(p.flow, p.segments, p.drops, p.acks,
                        [(t, min(e, y_hi)) for t, e in p.edges], p.sacks, p.zero_windows)
    yt = [v for v in nice_ticks(y_lo, y_hi) if v >= y_lo]
    y_hi = max(y_hi, yt[-1]) if yt else y_hi
    if y_hi <= y_lo:
        y_hi = y_lo + 1

    def sx(x: float) -> float:
        return ml + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return mt + ph - (y - y_lo) / (y_hi - y_lo) * ph

    nmarks = len(p.segments) + len(p.acks) + len(p.sacks) + len(p.drops) + len(p.zero_windows)
    parts = [f'<svg class="plot seq" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" data-series="{len(legend)}" '
             f'data-points="{nmarks}" data-segments="{len(p.segments)}" '
             f'data-acks="{len(p.acks)}" data-sacks="{len(p.sacks)}" '
             f'data-drops="{len(p.drops)}" data-zero-windows="{len(p.zero_windows)}" '
             f'role="img" aria-label="{_esc(title)}">']
    parts += _axes(title, "stream offset (bytes)", height, (ml, mt, pw, ph), yt,
                   [v for v in nice_ticks(x0, x1, 8) if x0 <= v <= x1], sx, sy)
    for a, b in p.zero_windows:  # shaded first: everything else draws over it
        xa = sx(a)
        parts.append(f'<rect class="zero-window" x="{xa:.1f}" y="{mt}" '
                     f'width="{max(1.5, sx(b) - xa):.1f}" height="{ph}" fill="#fdae6b" '
                     f'fill-opacity="0.45"><title>zero window from {a:.3f} s to {b:.3f} s'
                     f'</title></rect>')

    def bars(items: Iterable[tuple[float, float, float]], color: str, cls: str,
             dx: float = 0.0, w: float = 1.2) -> None:
        d = []
        for t, lo, hi in items:
            y_lo, y_top = sy(lo), sy(hi)
            if y_lo - y_top < 1.5:  # a segment is often thinner than a pixel
                y_top = y_lo - 1.5
            d.append(f"M{sx(t) + dx:.1f} {y_lo:.1f}V{y_top:.1f}")
        if d:
            parts.append(f'<path class="{cls}" d="{"".join(d)}" stroke="{color}" '
                         f'stroke-width="{w}" fill="none"/>')

    for k, _label, color in SEGMENT_KINDS:
        bars(((t, o, o + n) for t, o, n, kind in p.segments if kind == k), color, f"seg {k}")
    for color, dsack in (("#9467bd", False), ("#e377c2", True)):
        bars(((t, lo, hi) for t, lo, hi, d in p.sacks if d == dsack), color,
             "dsack" if dsack else "sack", dx=2.0, w=2.0)
    for pts, color, cls in ((p.edges, "#bcbd22", "window-edge"), (p.acks, "#2ca02c", "ack")):
        if not pts:
            continue
        coords: list[str] = []
        prev: float | None = None
        for x, y in reduce_points(pts, x0, x1, pw):
            if prev is not None:
                coords.append(f"{sx(x):.1f},{sy(prev):.1f}")
            coords.append(f"{sx(x):.1f},{sy(y):.1f}")
            prev = y
        parts.append(f'<polyline class="{cls}" fill="none" stroke="{color}" stroke-width="1.2" '
                     f'points="{" ".join(coords)}"/>')
    for reason, color in reason_color.items():
        d = []
        for t, o, n, r in p.drops:
            if r == reason:
                x, y = sx(t), sy(o + n / 2)
                d.append(f"M{x - 3:.1f} {y - 3:.1f}l6 6m0 -6l-6 6")
        parts.append(f'<path class="drop" d="{"".join(d)}" stroke="{color}" stroke-width="1.5"'
                     f' fill="none"><title>dropped: {_esc(reason)}</title></path>')
    strip, _ = _marks_svg(marks, sx, x1, mt + ph, mt)
    parts.append(strip)
    for i, (color, label) in enumerate(legend):
        lx = ml + (i % 2) * 420
        ly = 38 + (i // 2) * 15
        parts.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{lx + 14}" y="{ly}" class="legend">{_esc(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def small_multiples(heading: str, series: list[Series], *, y_label: str,
                    x_end: float | None, marks: Sequence[TimeMark] = (),
                    prefix: str = "", step: bool = True) -> str:
    """One small panel per series under a heading, on the same time axis, so that no
    series hides another; one empty plot saying so when there is none."""
    series = [s for s in series if s.points]
    if not series:
        return line_chart(heading, [], y_label=y_label)
    return (f'<h3>{_esc(heading)}</h3>' + "".join(
        line_chart(f"{prefix}{s.label}", [s], y_label=y_label, x_end=x_end, height=140,
                   step=step, marks=marks) for s in series))


def sender_panels(data: RunData, flow: str, *, x_end: float | None,
                  marks: Sequence[TimeMark]) -> list[str]:
    """Small multiples of the peer's sender state of one flow: one panel per track, so
    that none hides another."""
    panels = sender_series(data, flow)
    if not panels:
        return [_empty_plot(f"{flow}: sender state", "the peer recorded no sender samples")]
    linux = not data.samples.get(("peer", f"{flow} cwnd", "segments"))
    who = "the Linux sender (ss -tin), " if linux else ""
    charts = [line_chart(f"{flow}: {who}{label}", [series], y_label=unit, x_end=x_end,
                         height=150, marks=marks) for label, series, unit in panels]
    if linux:
        charts.insert(0, '<p class="note">The real Linux sender\'s socket as <code>ss -tin'
                         '</code> showed it inside the run\'s namespace, sampled every '
                         f'100 ms ({SS_FILE}): {len(panels[0][1].points)} samples. Packets in '
                         'flight is tcp_packets_in_flight(): unacked - (sacked + lost) + '
                         'retrans.</p>')
    return charts


# --- tables ----------------------------------------------------------------------------------


def html_table(rows: Iterable[Sequence[object]], header: Sequence[str] | None = None) -> str:
    out = ['<table>']
    if header:
        out.append("<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = []
        for v in row:
            num = isinstance(v, int | float) and not isinstance(v, bool)
            cells.append(f'<td class="num">{v:,}</td>' if num else f"<td>{_esc(v)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def tables(data: RunData) -> list[tuple[str, str]]:
    """(heading, HTML) of the tables ``rxpath run`` prints, from the same summary."""
    s = data.summary
    out: list[tuple[str, str]] = []
    rows = []
    for f in s.get("flows", []):
        snd = f.get("sender") or {}
        rows.append((f["flow"], f["bytes"], f["received"], f["bad_chunks"],
                     "yes" if f["eof"] else "no", snd.get("segments_retransmitted", ""),
                     ",".join(f["readers"]), flow_state(f)))
    out.append(("Flows", html_table(rows, ("flow", "sent", "received", "bad", "eof",
                                           "retransmitted", "readers", "verdict"))))
    nstat = s.get("nstat") or {}
    names = [n for n in ALL_NAMES if nstat.get(n)]
    out.append(("Kernel counters (nstat)", html_table([(n, nstat[n]) for n in names],
                                                      ("counter", "value"))))
    drops = s.get("drops") or {}
    if drops:
        out.append(("Drops by reason (SKB_DROP_REASON_*)", html_table(
            formats.drop_rows(drops, s.get("profile")),
            ("reason", "segments", "counter"))))
    nic = {k: v for k, v in (s.get("nic") or {}).items() if v}
    if nic:
        out.append(("NIC statistics (ethtool -S)", html_table(list(nic.items()),
                                                              ("statistic", "value"))))
    softnet = s.get("softnet_stat") or {}
    if softnet:
        softnet_rows = [(cpu, " ".join(f"{int(v):08x}" for v in cols))
                        for cpu, cols in softnet.items()]
        out.append(("/proc/net/softnet_stat", html_table(softnet_rows,
                                                         ("cpu", "columns (hex)"))))
    socks = s.get("sockets") or []
    if socks:
        sock_rows: list[tuple[object, ...]] = []
        for sk in socks:
            m = sk["skmem"]
            sock_rows.append((sk["state"], sk["peer"], sk["recv_q"],
                         f"skmem:(r{m['r']},rb{m['rb']},f{m['f']},bl{m['bl']},d{m['d']})",
                         sk["rcv_wnd"], sk["rcv_space"], sk["rcv_mss"]))
        out.append(("Sockets (ss -tmi)", html_table(sock_rows, ("state", "peer", "Recv-Q", "skmem",
                                                           "rcv_wnd", "rcv_space", "rcv_mss"))))
    if real_senders(s):
        # Each connection's two ends, as rxpath ss prints them.
        out.append(("Sockets, both ends: rxpath's receiver (ss -tmi) and the real Linux sender "
                    f"(ss -tin in {s.get('netns', 'its namespace')})",
                    f'<pre class="ss">{_esc(chr(10).join(socket_lines(s, data.run_dir)))}'
                    "</pre>"))
        rows_, header = sender_rows(s)
        out.append(("Linux sender (its final TCP_INFO, and peaks over the ss -tin samples)",
                    html_table(rows_, header)))
    busy = busy_by_actor(data)
    if busy:
        out.append(("Actors", html_table([(a, round(ms, 1), round(p, 1)) for a, ms, p in busy],
                                         ("actor", "busy (ms)", "busy (% of uptime)"))))
    return out


# --- the page --------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:960px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:14px 0 0}
svg.plot{display:block;margin:10px 0;background:#fff}
.title{font-size:13px;font-weight:600}.tick{font-size:11px;fill:#444}
.axis{font-size:11px;fill:#444}.legend{font-size:11px}
.frame{fill:none;stroke:#999}.grid{stroke:#eee}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
td,th{border:1px solid #ddd;padding:2px 8px;text-align:left}td.num{text-align:right}
.note{color:#666;font-size:13px}.bad{color:#b00;font-weight:600}.ok{color:#070;font-weight:600}
.warn{color:#a67c00;background:#fff3a0;font-weight:600;padding:0 3px}
pre.ss{font-size:12px;background:#f7f7f7;padding:6px;overflow-x:auto}
"""

# The verdict badge's class: PASS green, FAIL red, INCOMPLETE yellow (as on a terminal).
VERDICT_CLASS = {PASS: "ok", FAIL: "bad", INCOMPLETE: "warn"}


def render(data: RunData) -> str:
    s = data.summary
    end = data.duration_s or None
    sections: list[tuple[str, list[str]]] = []
    marks = data.marks
    for flow in flow_names(data):
        pic = data.pictures.get(flow) or FlowPicture(flow)
        own = [m for m in marks if m.flow in (None, flow)]  # this flow's drops, every kill
        zoom = detail_window(pic)
        detail = [] if zoom is None else [seq_chart(
            f"{flow}: detail, {zoom[0]:.3f} s to {zoom[1]:.3f} s (around the first "
            f"retransmission or drop)", pic, marks=own, window=zoom)]
        sections.append((f"Flow {flow}: time-sequence graph and sender state", [
            seq_chart(f"{flow}: time-sequence graph (stream offset against time)", pic,
                      x_end=end, marks=own), *detail,
            *sender_panels(data, flow, x_end=end, marks=own), marks_legend(own)]))
        sections.append((f"Flow {flow}: socket queues and window", [
            small_multiples(f"{flow}: backlog, prequeue and out-of-order queue",
                            queue_series(data, flow), y_label="segments", x_end=end,
                            marks=own, prefix=f"{flow}: "),
            small_multiples(f"{flow}: receive queue and advertised window",
                            window_series(data, flow), y_label="bytes", x_end=end,
                            marks=own, prefix=f"{flow}: ")]))
    sections.append(("RX rings", [small_multiples(
        "RX ring occupancy per queue", ring_series(data), y_label="frames", x_end=end,
        marks=marks)]))
    sections.append(("Delivered", [small_multiples(
        "Bytes delivered to the readers, per flow", delivered_series(data), y_label="bytes",
        x_end=end, marks=marks, prefix="bytes delivered: ")]))
    sections.append(("Drops", [bar_chart("Drops by reason", drops_by_reason(data))]))
    sections.append(("Where the time went", [
        bar_chart("Busy time per actor (time in handlers)",
                  [(a, round(ms, 1)) for a, ms, _ in busy_by_actor(data)], unit=" ms"),
        small_multiples("Utilisation over time (share of each heartbeat spent in handlers)",
                        utilisation_series(data), y_label="% busy", x_end=end, marks=marks,
                        prefix="utilisation: ")]))
    v = summary_verdict(s)  # the run's one verdict (cli.checker), as summary.json holds it
    verdict = (f'<span class="{VERDICT_CLASS.get(v["state"], "bad")}" id="verdict">verdict '
               f'{_esc(v["state"])}</span>' + (f": {_esc(v['why'])}" if v["why"] else ""))
    desc = data.scenario.get("description") or ""
    head = (f"<h1>rxpath run {_esc(data.run_dir.name)}</h1>"
            f"<p>{_esc(desc)}</p><p>profile <b>{_esc(s.get('profile'))}</b>, seed "
            f"{_esc(s.get('seed'))}; stopped: {_esc(formats.stopped_after(s))}; "
            f"{verdict}</p>")
    if data.trace_note:
        head += f'<p class="note">No time series: {_esc(data.trace_note)}</p>'
    body = [head]
    for title, plots in sections:
        body.append(f"<h2>{_esc(title)}</h2>" + "".join(plots))
    for title, table in tables(data):
        body.append(f"<h2>{_esc(title)}</h2>{table}")
    errors = s.get("errors") or []
    if errors:
        body.append("<h2>Errors</h2>" + html_table([(json.dumps(e, default=str),)
                                                   for e in errors]))
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>rxpath report "
            f"{_esc(data.run_dir.name)}</title><style>{CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    data = load_run(run_dir)
    path = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    path.write_text(render(data), encoding="utf-8")
    return path


@app.command("report")
def report(
    run_dir: RunDirArgument = LATEST_RUN,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Where to write the page (default RUN_DIR/report.html).")]
        = None,
) -> None:
    """Write a self-contained HTML report of a run: plots over time and counter tables."""
    try:
        path = write_report(run_dir, output)
    except FileNotFoundError as err:
        typer.echo(f"rxpath report: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(str(path))
