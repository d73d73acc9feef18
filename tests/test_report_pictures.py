"""The report's pictures: time-sequence graphs, sender panels and time-axis marks; the
trace records they are drawn from (ACK samples, SACK and drop instants, the peer's sender
counters, kills and restarts); and the page rendered in a real browser."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from actors.peer.host import Peer
from actors.peer.sender import SenderConfig, TcpSender
from actors.peer.trace import PeerTrace
from actors.runtime.trace import FLOW_ID_MIN, TraceWriter
from actors.stack.trace_observer import StackTrace
from cli.report_html import (
    FlowPicture,
    load_run,
    render,
    seq_chart,
    write_report,
    zero_window_periods,
)
from cli.trace import check_trace, merge, read_run, supervision_marks
from tests.stack_harness import SPORT, connect

T0 = 1_000_000_000  # the run start of the synthetic runs (ns)
MSS = 1448


def records(path: Path) -> list[list[Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- what the actors record ------------------------------------------------------------------


def test_stack_trace_records_acks_sack_blocks_and_drops(tmp_path: Path) -> None:
    conn = connect(sack=True)
    conn.stack.net.emit_events = True  # as the stack actor runs its model when tracing
    clock = iter(range(10_000, 10_000_000, 1_000))
    writer = TraceWriter(tmp_path / "stack.jsonl")
    obs = StackTrace(writer, lambda: next(clock), conn.stack, {SPORT: "f1"}, 0)

    def arrive(offset: int, fid: int) -> None:
        seg = conn.segment(offset, b"x" * MSS)
        n0 = len(obs.outputs())
        conn.stack.tcp_v4_rcv(seg, conn.now, seg_id=fid)
        obs.segment(seg, fid, conn.now, n0)  # records the ACKs it caused
        conn.collect()

    arrive(0, FLOW_ID_MIN + 1)
    arrive(2 * MSS, FLOW_ID_MIN + 2)  # a hole before it: out of order, SACKed
    arrive(0, FLOW_ID_MIN + 3)  # seen already: dropped, D-SACKed
    writer.close(20_000_000)
    recs = records(tmp_path / "stack.jsonl")
    acks = [r[3] for r in recs if r[0] == "C" and "ACK/byte offset" in r[3]]
    assert [a["ACK/byte offset"] for a in acks][:2] == [MSS, MSS]
    assert all(a["window edge/byte offset"] > a["ACK/byte offset"] for a in acks)
    sacks = [r[4] for r in recs if r[0] == "i" and r[3] == "SACK"]
    assert sacks[0]["flow"] == "f1" and sacks[0]["blocks"] == [[2 * MSS, 3 * MSS]]
    assert sacks[-1]["blocks"][0] == [0, MSS]  # the D-SACK of the duplicate comes first
    drops = [r for r in recs if r[0] == "i" and r[3].startswith("drop: ")]
    assert len(drops) == 1 and drops[0][2] == "drops"
    assert drops[0][4]["flow"] == "f1" and drops[0][4]["offset"] == 0
    assert drops[0][4]["len"] == MSS and drops[0][4]["reason"].startswith("SKB_DROP_REASON_")


def test_peer_trace_samples_each_senders_state(tmp_path: Path) -> None:
    import random

    writer = TraceWriter(tmp_path / "peer.jsonl")
    peer = Peer()
    peer.add(TcpSender(1, "10.0.0.1", 40001, "10.0.0.2", 5001, 100_000, random.Random(1),
                       SenderConfig()), name="f1")
    tracer = PeerTrace(writer, lambda: 0, 0)
    tracer.sender_samples(peer, 5)  # not opened yet: nothing to say
    peer.start(10)
    tracer.sender_samples(peer, 10)
    tracer.sender_samples(peer, 11)  # unchanged: no second sample
    writer.close(20)
    recs = [r for r in records(tmp_path / "peer.jsonl") if r[0] == "C"]
    assert len(recs) == 1
    assert recs[0][1] == 10 and recs[0][2] == "f1"
    values = recs[0][3]
    assert values["cwnd/segments"] >= 1 and "in flight/segments" in values
    assert "srtt/us" in values and "ssthresh/segments" not in values  # still infinite


def write_actor(run_dir: Path, name: str, role: str, recs: list[list[Any]]) -> None:
    tdir = run_dir / "trace"
    tdir.mkdir(parents=True, exist_ok=True)
    lines = [["M", {"name": name, "role": role}], ["M", {"t0_ns": T0}], *recs]
    (tdir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def ms(n: float) -> int:
    return T0 + int(n * 1e6)


def synthetic_run(run_dir: Path) -> None:
    """A flow f1 (the stack's ISN base 5000): five segments, ACKs, a zero window, a SACK,
    a D-SACK, a drop at the stack and one on the wire; cpu0 killed and restarted."""
    def seg(t: float, off: int, to: str = "receive_queue") -> list[Any]:
        return ["X", ms(t), 1000, "softirq", "tcp_v4_rcv",
                {"seq": 5001 + off, "len": MSS, "flags": "A", "to": to, "flow": "f1",
                 "offset": off}, None, None]

    def ack(t: float, a: int, edge: int) -> list[Any]:
        return ["C", ms(t), "f1", {"ACK/byte offset": a, "window edge/byte offset": edge}, None]

    write_actor(run_dir, "stack", "stack", [
        seg(1, 0), ack(1.1, MSS, 20 * MSS),
        seg(2, 2 * MSS, "ofo_queue"), ack(2.1, MSS, 20 * MSS),
        ["i", ms(2.1), "ACKs sent", "SACK", {"flow": "f1", "ack": MSS,
                                             "blocks": [[2 * MSS, 3 * MSS]]}, None],
        seg(3, MSS), ack(3.1, 3 * MSS, 3 * MSS),  # the window closes
        seg(4, MSS, "drop:TCP_OLD_DATA"),
        ["i", ms(4), "drops", "drop: TCP_OLD_DATA",
         {"reason": "SKB_DROP_REASON_TCP_OLD_DATA", "flow": "f1", "offset": MSS, "len": MSS},
         None],
        ["i", ms(4.1), "ACKs sent", "SACK", {"flow": "f1", "ack": 3 * MSS,
                                             "blocks": [[MSS, 2 * MSS]]}, None],
        ack(5, 3 * MSS, 30 * MSS),  # and opens again
        seg(6, 3 * MSS), seg(6.5, 2 * MSS),  # the second: bytes seen already
        ["C", ms(6.5), "f1", {"backlog/segments": 1, "receive queue/bytes": MSS}, None]])
    write_actor(run_dir, "peer", "peer", [
        ["C", ms(0.5), "f1", {"cwnd/segments": 10, "in flight/segments": 1, "srtt/us": 0},
         None],
        ["C", ms(3), "f1", {"cwnd/segments": 5, "in flight/segments": 3, "srtt/us": 900,
                            "ssthresh/segments": 5}, None],
        ["i", ms(1.5), "drops", "drop: wire lost",
         {"wire": ["lost"], "sport": 40001, "seq": 5001 + 4 * MSS, "len": MSS}, None]])
    write_actor(run_dir, "nic", "nic", [
        ["i", ms(2.5), "drops", "drop: rx_missed_errors", {"reason": "ring full"}, None]])
    (run_dir / "summary.json").write_text(json.dumps({
        "profile": "legacy", "seed": 1, "reason": "complete", "elapsed_s": 0.1,
        "integrity": True, "nstat": {}, "drops": {"TCP_OLD_DATA": 1},
        "flows": [{"flow": "f1", "bytes": 5 * MSS, "received": 5 * MSS, "bad_chunks": 0,
                   "eof": True, "readers": ["r1"], "intact": True}],
        "supervision": {"events": [
            {"t": ms(2.2) / 1e9, "event": "actor_died", "actor": "cpu0", "code": -9},
            {"t": ms(2.8) / 1e9, "event": "actor_restarted", "actor": "cpu0"},
            {"t": ms(2.9) / 1e9, "event": "not_restarted", "actor": "x"}]}}))
    (run_dir / "scenario.json").write_text(json.dumps(
        {"flows": [{"name": "f1", "sport": 40001}]}))


def test_merge_turns_instants_and_kills_into_instant_events(tmp_path: Path) -> None:
    synthetic_run(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    marks = supervision_marks(summary)
    assert [m[1] for m in marks] == ["cpu0 died", "cpu0 restarted"]  # not_restarted: no mark
    trace, stats = merge(read_run(tmp_path), marks)
    assert check_trace(trace) == []
    inst = [e for e in trace["traceEvents"] if e["ph"] == "i"]
    assert stats.instants == len(inst) == 7
    drop = next(e for e in inst if e["name"] == "drop: TCP_OLD_DATA")
    assert drop["s"] == "t" and drop["ts"] == 4000.0 and drop["args"]["offset"] == MSS
    died = next(e for e in inst if e["name"] == "cpu0 died")
    assert died["s"] == "g" and died["ts"] == 2200.0 and died["args"]["code"] == -9
    names = {e["args"]["name"] for e in trace["traceEvents"] if e.get("name") == "thread_name"}
    assert {"drops", "ACKs sent"} <= names
    counters = {e["name"] for e in trace["traceEvents"] if e["ph"] == "C"}
    assert {"f1 ACK", "f1 window edge", "f1 cwnd", "f1 srtt", "f1 ssthresh"} <= counters


def test_zero_window_periods() -> None:
    acks = [(1.0, 10.0), (2.0, 20.0), (3.0, 20.0), (4.0, 30.0), (5.0, 40.0)]
    edges = [(1.0, 50.0), (2.0, 20.0), (3.0, 20.0), (4.0, 60.0), (5.0, 40.0)]
    assert zero_window_periods(acks, edges, 9.0) == [(2.0, 4.0), (5.0, 9.0)]
    assert zero_window_periods([], [], 1.0) == []


def test_pictures_of_a_synthetic_run(tmp_path: Path) -> None:
    synthetic_run(tmp_path)
    data = load_run(tmp_path)
    p = data.pictures["f1"]
    assert [(round(t, 4), off, kind) for t, off, _, kind in p.segments] == [
        (0.001, 0, "new"), (0.002, 2 * MSS, "ofo"), (0.003, MSS, "new"),
        (0.006, 3 * MSS, "new"), (0.0065, 2 * MSS, "retrans")]
    # The wire drop is placed by the stack's ISN base; the stack's drop by its instant.
    assert [(round(t, 4), off, r) for t, off, _, r in p.drops] == [
        (0.0015, 4 * MSS, "wire lost"), (0.004, MSS, "TCP_OLD_DATA")]
    assert [(round(a, 4), round(b, 4)) for a, b in p.zero_windows] == [(0.0031, 0.005)]
    assert [(lo, hi, d) for _, lo, hi, d in p.sacks] == [(2 * MSS, 3 * MSS, False),
                                                        (MSS, 2 * MSS, True)]
    kinds = [(m.kind, m.flow) for m in data.marks]
    assert kinds == [("drop", "f1"), ("died", None), ("drop", None), ("restart", None),
                     ("drop", "f1")]
    page = render(data)
    seq = re.search(r'<svg class="plot seq"[^>]*>', page)
    assert seq is not None
    tag = seq.group(0)
    for attr, n in (("segments", 5), ("acks", 4), ("sacks", 2), ("drops", 2),
                    ("zero-windows", 1)):
        assert f'data-{attr}="{n}"' in tag, (attr, tag)
    for title in ("f1: congestion window (cwnd)", "f1: slow-start threshold (ssthresh)",
                  "f1: packets in flight", "f1: smoothed RTT (srtt)"):
        assert f'aria-label="{title}"' in page
    # the whole graph and its detail around the first drop both shade the zero window
    assert page.count('class="plot seq"') == 2 and page.count('class="zero-window"') == 2
    assert page.count('<g class="mark died">') >= 1 and '<g class="mark restart">' in page
    assert "cpu0 died at 0.002 s" in page
    assert "dropped: TCP_OLD_DATA (1)" in page and "D-SACK block (1)" in page


def test_seq_chart_of_a_flow_without_segments_says_so() -> None:
    svg = seq_chart("f9: time-sequence graph", FlowPicture("f9"))
    assert 'class="plot empty"' in svg and "no segments of this flow" in svg


# --- in a browser ----------------------------------------------------------------------------

# Run in the page by the test (the report itself has no script): for each plot, the
# number of its marks that the browser laid out with a non-empty box.
PROBE = """<script>
for (const svg of document.querySelectorAll('svg.plot')) {
  let n = 0;
  for (const el of svg.querySelectorAll('path, polyline, rect.bar, rect.zero-window, line.mark')) {
    const b = el.getBBox();
    if (b.width > 0 || b.height > 0) n++;
  }
  svg.setAttribute('data-drawn', String(n));
}
document.body.setAttribute('data-probed', '1');
</script>"""


class PlotParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.plots: list[dict[str, str | None]] = []
        self.probed = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "svg" and "plot" in (a.get("class") or "").split():
            self.plots.append(a)
        elif tag == "body" and a.get("data-probed") == "1":
            self.probed = True


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (docker/install-host-deps.sh installs it)")
    return exe


def dump_dom(page: Path, timeout_s: float = 120.0) -> str:
    """The page's DOM after its scripts ran, from headless Chromium (own profile dir; the
    whole process group is killed if it hangs)."""
    exe = chromium()
    with tempfile.TemporaryDirectory(prefix="rxchrome") as profile:
        proc = subprocess.Popen(
            [exe, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
             "--disable-extensions", f"--user-data-dir={profile}", "--dump-dom",
             page.resolve().as_uri()],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its helpers, if any outlived it
    assert proc.returncode == 0, err[-2000:]
    return out


def probed_plots(report: Path, tmp: Path) -> tuple[list[dict[str, str | None]], int]:
    html = report.read_text()
    assert "<script" not in html  # the report opens anywhere: no script of its own
    probe = tmp / "probe.html"
    probe.write_text(html.replace("</body>", PROBE + "</body>"))
    parser = PlotParser()
    parser.feed(dump_dom(probe))
    assert parser.probed, "the probe did not run"
    return parser.plots, html.count('<svg class="plot')


def assert_every_plot_drawn(plots: list[dict[str, str | None]], expected: int) -> None:
    assert len(plots) == expected
    for a in plots:
        if "empty" in (a.get("class") or "").split():
            continue  # says why in its text (e.g. no samples)
        assert int(a.get("data-drawn") or 0) > 0, a


def test_synthetic_report_renders_in_chromium(tmp_path: Path) -> None:
    chromium()
    synthetic_run(tmp_path)
    plots, n = probed_plots(write_report(tmp_path), tmp_path)
    assert_every_plot_drawn(plots, n)
    seq = next(a for a in plots if "seq" in (a.get("class") or ""))
    # segments (3 kinds), SACK, D-SACK, ACK and window lines, a drop, the zero window
    assert int(seq["data-drawn"] or 0) >= 9, seq


PICTURE_SCENARIO = """\
seed = 5
duration = 60.0
description = "pictures test: loss, reordering, a duplicate and a slow reader"

[[flows]]
name = "f1"
bytes = 300_000

[[readers]]
name = "r1"
flow = "f1"
read_size = 65536
think_us = 400000

[stack]
rcvbuf = 65536

[impairments]
loss = 0.01

[[impairments.events]]
index = 4
action = "duplicate"

[[impairments.events]]
index = 8
action = "hold"
hold_segments = 3

[[impairments.events]]
index = 16
action = "drop"
"""


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_real_run_report_renders_in_chromium(module_run_dir: Path) -> None:
    chromium()
    from cli.config import load_scenario
    from cli.run import run_scenario

    cfg = module_run_dir / "pictures.toml"
    cfg.write_text(PICTURE_SCENARIO)
    run_dir = module_run_dir / "run"
    summary = run_scenario(load_scenario(cfg), run_dir, progress=False)
    assert summary["integrity"], summary.get("errors")
    plots, n = probed_plots(write_report(run_dir), module_run_dir)
    assert_every_plot_drawn(plots, n)
    seq = next(a for a in plots if "seq" in (a.get("class") or ""))
    for attr in ("data-segments", "data-acks", "data-sacks", "data-drops"):
        assert int(seq[attr] or 0) > 0, (attr, seq)
    # Whether the slow reader's window closed depends on timing: the shading says so
    # exactly when the stack counted a window going to zero.
    closed = (summary.get("nstat") or {}).get("TcpExtTCPToZeroWindowAdv", 0)
    assert int(seq["data-zero-windows"] or 0) == closed, (closed, seq)
    labels = {a.get("aria-label") for a in plots}
    for title in ("f1: congestion window (cwnd)", "f1: packets in flight",
                  "f1: smoothed RTT (srtt)"):
        assert title in labels
    trace = json.loads((run_dir / "trace.json").read_text())
    drops = [e for e in trace["traceEvents"] if e["ph"] == "i"
             and e["name"].startswith("drop: ")]
    stack_drops = sum((summary.get("drops") or {}).values())
    wire = summary["flows"][0]["sender"]  # a loss or the scripted drop: at least one
    assert wire["segments_retransmitted"] > 0
    # every drop at the stack is an instant, and the wire's losses are too
    assert len(drops) >= stack_drops + 1
