"""``rxpath report RUN_DIR``: one self-contained HTML page with plots and counter tables.

Everything is inline (SVG drawn here, CSS in a ``<style>``, no script, nothing fetched):
the page opens from a file anywhere.  Plots come from the run's own records:

- socket queues (backlog, prequeue, out-of-order) and the receive queue against the
  advertised window, per flow, from the stack's trace counters;
- RX ring occupancy per queue (nic descriptors in use, frames waiting for NAPI);
- bytes delivered to the readers per flow over time;
- drops by reason (wire impairments, rx_missed_errors, ip_rcv, SKB_DROP_REASON_*);
- busy time per actor (from the final counters) and utilisation over time;

then the tables ``rxpath run`` prints (nstat, drops, ethtool -S, softnet_stat, ss, flows),
from the same summary data.
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from actors.mib import ALL_NAMES
from actors.stack.net import DROP_REASONS
from cli.app import app
from cli.options import LATEST_RUN, RunDirArgument
from cli.trace import ActorFile, TraceError, actor_order, read_run, split_counter

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
    data = RunData(run_dir, summary, _load_json(run_dir / "counters.json"),
                   _load_json(run_dir / "scenario.json"))
    try:
        files = read_run(run_dir)
    except TraceError as err:
        data.trace_note = str(err)
        files = []
    data.actors = actor_order(files) if files else sorted(data.counters)
    data.samples, data.duration_s = counter_samples(files)
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


def line_chart(title: str, series: list[Series], *, y_label: str, x_end: float | None = None,
               width: int = 900, height: int = 260, step: bool = True) -> str:
    """An SVG line chart of sample-and-hold series over time (seconds)."""
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
             f'data-points="{npoints}" role="img" aria-label="{_esc(title)}">',
             f'<text x="{ml}" y="18" class="title">{_esc(title)}</text>',
             f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" class="frame"/>']
    for v in yt:
        y = sy(v)
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{ml - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">'
                     f'{fmt_value(v)}</text>')
    for v in xt:
        if v > x1:
            continue
        x = sx(v)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt}" y2="{mt + ph}" class="grid"/>'
                     f'<text x="{x:.1f}" y="{mt + ph + 16}" class="tick" text-anchor="middle">'
                     f'{v:g}</text>')
    parts.append(f'<text x="{ml + pw / 2:.0f}" y="{height - 6}" class="axis" '
                 f'text-anchor="middle">time since start (s)</text>')
    parts.append(f'<text x="14" y="{mt + ph / 2:.0f}" class="axis" text-anchor="middle" '
                 f'transform="rotate(-90 14 {mt + ph / 2:.0f})">{_esc(y_label)}</text>')
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
                     ",".join(f["readers"]), "intact" if f["intact"] else "BROKEN"))
    out.append(("Flows", html_table(rows, ("flow", "sent", "received", "bad", "eof",
                                           "retransmitted", "readers", "verdict"))))
    nstat = s.get("nstat") or {}
    names = [n for n in ALL_NAMES if nstat.get(n)]
    out.append(("Kernel counters (nstat)", html_table([(n, nstat[n]) for n in names],
                                                      ("counter", "value"))))
    drops = s.get("drops") or {}
    if drops:
        out.append(("Drops by reason (SKB_DROP_REASON_*)", html_table(
            [(f"SKB_DROP_REASON_{r}", n, DROP_REASONS.get(r) or "-")
             for r, n in sorted(drops.items(), key=lambda kv: -kv[1])],
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
    busy = busy_by_actor(data)
    if busy:
        out.append(("Actors", html_table([(a, round(ms, 1), round(p, 1)) for a, ms, p in busy],
                                         ("actor", "busy (ms)", "busy (% of uptime)"))))
    return out


# --- the page --------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:960px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
svg.plot{display:block;margin:10px 0;background:#fff}
.title{font-size:13px;font-weight:600}.tick{font-size:11px;fill:#444}
.axis{font-size:11px;fill:#444}.legend{font-size:11px}
.frame{fill:none;stroke:#999}.grid{stroke:#eee}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
td,th{border:1px solid #ddd;padding:2px 8px;text-align:left}td.num{text-align:right}
.note{color:#666;font-size:13px}.bad{color:#b00;font-weight:600}.ok{color:#070;font-weight:600}
"""


def render(data: RunData) -> str:
    s = data.summary
    end = data.duration_s or None
    sections: list[tuple[str, list[str]]] = []
    for flow in flow_names(data):
        sections.append((f"Flow {flow}: socket queues and window", [
            line_chart(f"{flow}: backlog, prequeue and out-of-order queue", queue_series(
                data, flow), y_label="segments", x_end=end),
            line_chart(f"{flow}: receive queue and advertised window", window_series(
                data, flow), y_label="bytes", x_end=end)]))
    sections.append(("RX rings", [line_chart("RX ring occupancy per queue", ring_series(data),
                                             y_label="frames", x_end=end)]))
    sections.append(("Delivered", [line_chart("Bytes delivered to the readers, per flow",
                                              delivered_series(data), y_label="bytes",
                                              x_end=end)]))
    sections.append(("Drops", [bar_chart("Drops by reason", drops_by_reason(data))]))
    sections.append(("Where the time went", [
        bar_chart("Busy time per actor (time in handlers)",
                  [(a, round(ms, 1)) for a, ms, _ in busy_by_actor(data)], unit=" ms"),
        line_chart("Utilisation over time (share of each heartbeat spent in handlers)",
                   utilisation_series(data), y_label="% busy", x_end=end, step=True)]))
    verdict = ('<span class="ok">integrity holds</span>' if s.get("integrity")
               else '<span class="bad">integrity BROKEN</span>')
    desc = data.scenario.get("description") or ""
    head = (f"<h1>rxpath run {_esc(data.run_dir.name)}</h1>"
            f"<p>{_esc(desc)}</p><p>profile <b>{_esc(s.get('profile'))}</b>, seed "
            f"{_esc(s.get('seed'))}; stopped: {_esc(s.get('reason'))} after "
            f"{_esc(s.get('elapsed_s'))} s; {verdict}</p>")
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
