"""Trace recording, the merge into a Chrome/Perfetto trace, and the HTML report."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.runtime import trace as trace_mod
from actors.runtime.trace import (
    FLOW_ID_MIN,
    HOP_END,
    HOP_NAPI,
    HOP_NIC,
    HOP_SOURCE,
    HOP_TCP_V4_RCV,
    ORIGIN_PEER,
    ORIGIN_STACK,
    FlowIds,
    TraceWriter,
    flow_ids,
    is_flow_id,
    trace_path,
)
from cli.report_html import (
    Series,
    bar_chart,
    line_chart,
    nice_ticks,
    reduce_points,
    write_report,
)
from cli.trace import (
    TraceError,
    build_trace,
    check_trace,
    merge,
    nest,
    read_run,
    split_counter,
    write_trace,
)

PEER_ID = FlowIds(ORIGIN_PEER).base
ACK_ID = FlowIds(ORIGIN_STACK).base


# --- helpers ------------------------------------------------------------------------------


def write_actor(run_dir: Path, name: str, role: str, records: list[list[Any]], *,
                t0: int | None = 1_000, clock: str = "boot-a", incarnation: int = 0) -> None:
    w = TraceWriter(trace_path(run_dir, name, incarnation),
                    meta={"name": name, "role": role, "incarnation": incarnation,
                          "clock": clock})
    if t0 is not None:
        w.meta(t0_ns=t0)
    for rec in records:
        w._add(rec)
    w.close(0)


def x(start: int, end: int, name: str, tid: str = "main", flows: list[list[Any]] | None = None,
      args: dict[str, Any] | None = None, pid: str | None = None) -> list[Any]:
    return ["X", start, end - start, tid, name, args, flows, pid]


def by_phase(trace: dict[str, Any], ph: str) -> list[dict[str, Any]]:
    return [e for e in trace["traceEvents"] if e["ph"] == ph]


def pid_names(trace: dict[str, Any]) -> dict[int, str]:
    return {e["pid"]: e["args"]["name"] for e in trace["traceEvents"]
            if e["ph"] == "M" and e["name"] == "process_name"}


def one_segment_run(run_dir: Path, *, nic_start: int = 3_000) -> int:
    """A frame from the peer through the nic, a cpu and the stack to reader r1."""
    fid = PEER_ID + 7
    write_actor(run_dir, "peer", "peer", [x(2_000, 2_500, "wire xmit", "wire",
                                           [[HOP_SOURCE, [fid]]])])
    write_actor(run_dir, "nic", "nic", [x(nic_start, nic_start + 400, "rx: DMA to ring", "rx",
                                          [[HOP_NIC, [fid]]])])
    write_actor(run_dir, "cpu0", "cpu", [x(4_000, 9_000, "net_rx_action", "cpu"),
                                         x(4_100, 8_900, "napi_poll", "cpu", [[HOP_NAPI, [fid]]])])
    write_actor(run_dir, "stack", "stack", [
        x(5_000, 5_600, "tcp_v4_rcv", "softirq", [[HOP_TCP_V4_RCV, [fid]]]),
        x(12_000, 12_800, "skb_copy_datagram_msg", "main", [[HOP_END, [fid]]], pid="r1"),
        ["C", 5_600, "f1", {"backlog/segments": 0, "receive queue/bytes": 1448}, None]])
    write_actor(run_dir, "r1", "reader", [x(10_000, 20_000, "tcp_recvmsg"),
                                          x(11_000, 13_000, "recv_copy")])
    return fid


# --- the writer ---------------------------------------------------------------------------


def test_writer_buffers_until_close_and_ends_open_slices(tmp_path: Path) -> None:
    path = tmp_path / "trace" / "x.jsonl"
    w = TraceWriter(path, flush_every=1000, meta={"name": "x"})
    w.complete("a", 10, 20, "t")
    w.begin("k", "open", 30, "t", args={"n": 1})
    w.add_flows("k", HOP_NIC, [PEER_ID + 1, 5])  # 5 is not a flow id: left out
    assert not path.exists()  # buffered
    w.close(50)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == ["M", {"name": "x"}]
    assert lines[1] == ["X", 10, 10, "t", "a", None, None, None]
    assert lines[2] == ["X", 30, 20, "t", "open", {"n": 1, "unfinished": True},
                        [[HOP_NIC, [PEER_ID + 1]]], None]
    w.complete("late", 60, 70)  # after close: ignored
    assert len(path.read_text().splitlines()) == 3


def test_writer_flushes_every_n_records(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    w = TraceWriter(path, flush_every=3)
    for i in range(7):
        w.complete("s", i, i + 1)
    assert len(path.read_text().splitlines()) == 6
    w.close(10)
    assert len(path.read_text().splitlines()) == 7


def test_counter_samples_skip_unchanged_values(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    w = TraceWriter(path)
    w.counter("q", 1, {"a": 1})
    w.counter("q", 2, {"a": 1})
    w.counter("q", 3, {"a": 2})
    w.counter("q", 4, {"a": 2}, pid="r1")  # another process's track
    w.close(5)
    ts = [json.loads(line)[1] for line in path.read_text().splitlines()]
    assert ts == [1, 3, 4]


def test_disabled_writer_records_nothing(tmp_path: Path) -> None:
    w = TraceWriter(None, meta={"name": "x"})
    assert not w.on
    w.complete("a", 1, 2)
    w.counter("c", 1, {"v": 1})
    assert w.begin("k", "b", 1) is None
    w.close(3)
    assert w.records == 0


def test_flow_ids_are_unique_per_origin_and_incarnation_and_exact_in_json() -> None:
    ids = set()
    for origin in (ORIGIN_PEER, ORIGIN_STACK):
        for inc in (0, 1, 2):
            gen = FlowIds(origin, inc)
            ids.update(gen.take(1000))
            ids.update(gen.take(3))
    assert len(ids) == 2 * 3 * 1003
    assert all(is_flow_id(i) and i < 2**53 for i in ids)
    assert not is_flow_id(FLOW_ID_MIN - 1)
    assert not is_flow_id(-1)


def test_flow_ids_keeps_only_flow_ids_in_order_in_a_new_list() -> None:
    ids = [FLOW_ID_MIN + 2, FLOW_ID_MIN, FLOW_ID_MIN + 1]
    kept = flow_ids(ids)
    assert kept == ids and kept is not ids
    assert flow_ids([FLOW_ID_MIN + 1, 7, -1, FLOW_ID_MIN]) == [FLOW_ID_MIN + 1, FLOW_ID_MIN]
    assert flow_ids(["x", None, FLOW_ID_MIN]) == [FLOW_ID_MIN]  # type: ignore[list-item]
    assert flow_ids(iter([3, FLOW_ID_MIN])) == [FLOW_ID_MIN]
    assert flow_ids([]) == []


@pytest.mark.parametrize("record", [
    ["X", 123456789012, 5000, "main", "lock_sock", {"sock": 3}, None, None],
    ["C", 1, "f1 read", {"bytes": 10, "rate": 2.5}, "r1"],
    ["i", 1, "drops", "drop: \"x\" é\n", {"n": [1, [FLOW_ID_MIN, -3]]}, None],
    ["M", {"name": "cpu0", "nested": {"ok": True, "nan": float("nan")}}],
    ["X", 1, 2, "t", "n", {"obj": object()}, None, None],  # default=repr
])
def test_the_cached_encoder_writes_what_json_writes(record: list[Any]) -> None:
    text = trace_mod._encode(record)
    assert text == trace_mod._json_encode(record)
    assert "\n" not in text  # one record, one line


def test_split_counter() -> None:
    assert split_counter("f1", {"backlog/segments": 2, "backlog/bytes": 10, "rcv_wnd": 5}) == {
        "f1 backlog": {"segments": 2, "bytes": 10}, "f1": {"rcv_wnd": 5}}


# --- the merge ----------------------------------------------------------------------------


def test_merge_follows_a_segment_across_processes(tmp_path: Path) -> None:
    fid = one_segment_run(tmp_path)
    trace, stats = merge(read_run(tmp_path))
    assert check_trace(trace) == []
    names = pid_names(trace)
    assert list(names.values()) == ["peer", "nic", "cpu0", "stack", "r1"]  # path order
    flow = [e for e in trace["traceEvents"] if e["ph"] in "stf" and e.get("id") == fid]
    assert [e["ph"] for e in flow] == ["s", "t", "t", "t", "f"]
    assert [names[e["pid"]] for e in flow] == ["peer", "nic", "cpu0", "stack", "r1"]
    assert flow[-1]["bp"] == "e"
    assert {e["name"] for e in flow} == {"segment"} and {e["cat"] for e in flow} == {"flow"}
    # Each point lies inside the slice it binds to, on the same thread.
    slices = by_phase(trace, "X")
    for point in flow:
        inner = [s for s in slices if s["pid"] == point["pid"] and s["tid"] == point["tid"]
                 and s["ts"] < point["ts"] < s["ts"] + s["dur"]]
        assert inner, point
    # The stack's copy on behalf of r1 is on r1's thread, inside its recv_copy step.
    copy = next(s for s in slices if s["name"] == "skb_copy_datagram_msg")
    step = next(s for s in slices if s["name"] == "recv_copy")
    assert (copy["pid"], copy["tid"]) == (step["pid"], step["tid"])
    assert names[copy["pid"]] == "r1"
    # Relative microseconds: the run started at t0 = 1000 ns.
    xmit = next(s for s in slices if s["name"] == "wire xmit")
    assert xmit["ts"] == 1.0 and xmit["dur"] == 0.5
    assert stats.flows == 1 and stats.flow_points == 5


def test_merge_makes_one_counter_track_per_series(tmp_path: Path) -> None:
    one_segment_run(tmp_path)
    trace, _ = merge(read_run(tmp_path))
    counters = {e["name"]: e["args"] for e in by_phase(trace, "C")}
    assert counters == {"f1 backlog": {"segments": 0}, "f1 receive queue": {"bytes": 1448}}


def test_merge_refuses_an_arrow_backwards_in_time(tmp_path: Path) -> None:
    # The nic "receives" the frame before the peer sent it: same clock, so a bug.
    one_segment_run(tmp_path, nic_start=1_500)
    with pytest.raises(TraceError, match="backwards"):
        merge(read_run(tmp_path))


def test_merge_aligns_actors_of_another_boot(tmp_path: Path) -> None:
    fid = PEER_ID + 1
    # The peer's host clock is 1 ms ahead of the receiver's.
    write_actor(tmp_path, "peer", "peer", [x(1_002_000, 1_002_500, "wire xmit", "wire",
                                             [[HOP_SOURCE, [fid]]])], t0=1_001_000,
                clock="boot-b")
    write_actor(tmp_path, "nic", "nic", [x(3_000, 3_400, "rx", "rx", [[HOP_NIC, [fid]]])],
                t0=1_000)
    write_actor(tmp_path, "stack", "stack", [x(5_000, 6_000, "tcp_v4_rcv", "softirq",
                                               [[HOP_END, [fid]]])], t0=1_000)
    trace, stats = merge(read_run(tmp_path))
    assert check_trace(trace) == []
    assert stats.clock_shifts_ns  # one domain moved
    pts = [e for e in trace["traceEvents"] if e.get("id") == fid]
    assert [e["ph"] for e in pts] == ["s", "t", "f"]
    assert pts[0]["ts"] <= pts[1]["ts"] <= pts[2]["ts"]


def test_a_frame_seen_at_one_hop_only_makes_no_arrow(tmp_path: Path) -> None:
    write_actor(tmp_path, "stack", "stack", [x(5_000, 6_000, "tcp_v4_rcv", "softirq",
                                               [[HOP_SOURCE, [ACK_ID]]])])
    trace, stats = merge(read_run(tmp_path))
    assert stats.single_point_flows == 1 and stats.flows == 0
    assert not [e for e in trace["traceEvents"] if e["ph"] in "stf"]


def test_a_flow_still_queued_at_the_end_ends_at_its_last_hop(tmp_path: Path) -> None:
    fid = PEER_ID + 3
    write_actor(tmp_path, "peer", "peer", [x(2_000, 2_500, "wire xmit", "wire",
                                             [[HOP_SOURCE, [fid]]])])
    write_actor(tmp_path, "stack", "stack", [x(5_000, 6_000, "tcp_v4_rcv", "softirq",
                                               [[HOP_TCP_V4_RCV, [fid]]])])
    trace, _ = merge(read_run(tmp_path))
    assert [e["ph"] for e in trace["traceEvents"] if e.get("id") == fid] == ["s", "f"]


def test_frames_without_an_id_make_no_flow(tmp_path: Path) -> None:
    # -1 stands for a frame sent without an id (its sender was not tracing it).
    write_actor(tmp_path, "nic", "nic", [x(7_000, 7_100, "tx", "tx", [[HOP_NIC, [-1, -1]]])])
    write_actor(tmp_path, "peer", "peer", [x(8_000, 8_100, "ACKs received", "wire",
                                             [[HOP_END, [-1, -1]]])])
    trace, stats = merge(read_run(tmp_path))
    assert stats.flows == 0 and stats.single_point_flows == 0
    assert check_trace(trace) == []


def test_ack_flows_are_named_apart_from_data(tmp_path: Path) -> None:
    write_actor(tmp_path, "stack", "stack", [x(5_000, 6_000, "tcp_v4_rcv", "softirq",
                                               [[HOP_SOURCE, [ACK_ID]]])])
    write_actor(tmp_path, "nic", "nic", [x(7_000, 7_100, "tx", "tx", [[HOP_NIC, [ACK_ID]]])])
    write_actor(tmp_path, "peer", "peer", [x(8_000, 8_100, "ACKs received", "wire",
                                             [[HOP_END, [ACK_ID]]])])
    trace, _ = merge(read_run(tmp_path))
    assert {e["name"] for e in trace["traceEvents"] if e.get("id") == ACK_ID} == {"ack"}


def test_restarted_actor_files_share_one_process(tmp_path: Path) -> None:
    write_actor(tmp_path, "cpu0", "cpu", [x(2_000, 3_000, "hardirq", "cpu")])
    write_actor(tmp_path, "cpu0", "cpu", [x(5_000, 6_000, "hardirq", "cpu")], incarnation=1)
    trace, stats = merge(read_run(tmp_path))
    assert stats.actors == 1
    assert len({e["pid"] for e in by_phase(trace, "X")}) == 1
    assert len(by_phase(trace, "X")) == 2


def test_a_line_cut_short_is_skipped(tmp_path: Path) -> None:
    one_segment_run(tmp_path)
    with trace_path(tmp_path, "nic").open("a") as f:
        f.write('["X",1,2,"rx","cut')
    trace, stats = merge(read_run(tmp_path))
    assert stats.bad_lines == 1 and check_trace(trace) == []


def test_no_trace_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError):
        read_run(tmp_path)


def test_write_trace_default_path(tmp_path: Path) -> None:
    one_segment_run(tmp_path)
    path, _ = write_trace(tmp_path)
    assert path == tmp_path / "trace.json"
    assert "traceEvents" in json.loads(path.read_text())


def test_a_slice_that_cannot_nest_moves_to_its_own_track(tmp_path: Path) -> None:
    # A reader step, and the stack's work for a previous life of that reader overlapping it.
    write_actor(tmp_path, "r1", "reader", [x(10_000, 20_000, "lock_sock")])
    write_actor(tmp_path, "stack", "stack", [x(8_000, 12_000, "recv_copy", "main", pid="r1")])
    trace, stats = merge(read_run(tmp_path))
    assert stats.overlapping_slices == 1
    assert check_trace(trace) == []
    threads = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"]
               if e["ph"] == "M" and e["name"] == "thread_name"}
    placed = {e["name"]: threads[e["tid"]] for e in by_phase(trace, "X")}
    assert placed == {"recv_copy": "main", "lock_sock": "main (overlapping 1)"}


@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(1, 300)), max_size=60))
@settings(max_examples=150, deadline=None)
def test_nest_levels_always_nest(raw: list[tuple[int, int]]) -> None:
    spans = [(start, start + dur, i, None, None, None) for i, (start, dur) in enumerate(raw)]
    placed = nest(spans)
    assert sorted(sp[2] for _, sp in placed) == list(range(len(spans)))
    levels: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for level, sp in placed:
        levels[level].append((sp[0], sp[1]))
    for spans_of_level in levels.values():
        trace = {"traceEvents": [_ev("X", a / 1000, dur=(b - a) / 1000) for a, b in
                                 spans_of_level]}
        assert check_trace(trace) == []
    # Properly nested input stays on one level.
    assert {lvl for lvl, _ in nest([(0, 10, 0, 0, 0, 0), (2, 5, 1, 0, 0, 0),
                                    (5, 9, 2, 0, 0, 0), (10, 12, 3, 0, 0, 0)])} == {0}


def test_trace_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    one_segment_run(tmp_path)
    out = tmp_path / "elsewhere.json"
    res = CliRunner().invoke(app, ["trace", str(tmp_path), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "1 flows (5 points)" in res.output
    assert json.loads(out.read_text())["traceEvents"]
    res = CliRunner().invoke(app, ["trace", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no such run directory" in res.output


def test_report_of_a_small_run_marks_empty_plots(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    one_segment_run(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({
        "profile": "legacy", "seed": 1, "reason": "complete", "elapsed_s": 0.1,
        "integrity": True, "nstat": {"TcpInSegs": 1}, "drops": {"TCP_CSUM": 2},
        "flows": [{"flow": "f1", "bytes": 1448, "received": 1448, "bad_chunks": 0,
                   "eof": True, "readers": ["r1"], "intact": True}]}))
    (tmp_path / "counters.json").write_text(json.dumps({
        "stack": {"runtime": {"busy_ns": 2_000_000, "uptime_ns": 10_000_000}}}))
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "report.html").read_text()
    assert "f1: receive queue and advertised window" in page
    assert "SKB_DROP_REASON_TCP_CSUM" in page and "TcpInSegs" in page
    # No ring samples in this run: that plot says so instead of drawing nothing.
    assert re.search(r'class="plot empty"[^>]*><text[^>]*>RX ring occupancy', page)
    assert re.search(r'data-points="[1-9]\d*"[^>]*aria-label="f1: receive queue', page)
    assert "20.0" in page  # busy share of the stack's uptime
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert missing.exit_code == 2


# --- the checks themselves ---------------------------------------------------------------------


def _ev(ph: str, ts: float, **kw: Any) -> dict[str, Any]:
    return {"ph": ph, "ts": ts, "pid": 1, "tid": 1, **kw}


def test_check_trace_finds_slices_that_overlap() -> None:
    trace = {"traceEvents": [_ev("X", 0, dur=10, name="a"), _ev("X", 5, dur=10, name="b")]}
    assert check_trace(trace)
    nested = {"traceEvents": [_ev("X", 0, dur=10, name="a"), _ev("X", 2, dur=8, name="b"),
                              _ev("X", 10, dur=1, name="c")]}
    assert check_trace(nested) == []


def test_check_trace_finds_broken_flows() -> None:
    def flow(*points: tuple[str, float]) -> dict[str, Any]:
        return {"traceEvents": [_ev(ph, ts, id=1, name="segment", cat="flow")
                                for ph, ts in points]}
    assert check_trace(flow(("s", 1), ("t", 2), ("f", 3))) == []
    assert check_trace(flow(("s", 1), ("t", 2)))  # never ends
    assert check_trace(flow(("t", 1), ("f", 2)))  # never starts
    assert check_trace(flow(("s", 3), ("f", 2)))  # backwards
    reused = flow(("s", 1), ("f", 2))
    reused["traceEvents"] += [_ev("s", 3, id=1, name="ack", cat="flow"),
                              _ev("f", 4, id=1, name="ack", cat="flow")]
    assert any("two flows" in p for p in check_trace(reused))


# --- the report's drawing ------------------------------------------------------------------------


@given(st.floats(-1e6, 0), st.floats(1e-3, 1e10))
@settings(max_examples=200, deadline=None)
def test_nice_ticks_cover_the_range_evenly(lo: float, span: float) -> None:
    hi = lo + span
    ticks = nice_ticks(lo, hi)
    assert 2 <= len(ticks) <= 12
    steps = {round(b - a, 6) for a, b in itertools.pairwise(ticks)}
    assert len(steps) == 1 or max(steps) - min(steps) <= 1e-6 * max(abs(lo), abs(hi), 1)
    assert ticks[0] >= lo - span * 1e-6 and ticks[0] - lo <= (ticks[1] - ticks[0]) * 1.000001
    assert ticks[-1] <= hi + span * 1e-6


@given(st.lists(st.tuples(st.floats(0, 100), st.integers(-50, 50)), min_size=1, max_size=4000))
@settings(max_examples=60, deadline=None)
def test_reduced_points_keep_extremes_and_order(raw: list[tuple[float, int]]) -> None:
    pts = sorted((t, float(v)) for t, v in raw)
    out = reduce_points(pts, 0.0, 100.0, 200)
    assert len(out) <= max(len(pts), 4 * 201)
    assert [p[0] for p in out] == sorted(p[0] for p in out)
    assert max(p[1] for p in out) == max(p[1] for p in pts)
    assert min(p[1] for p in out) == min(p[1] for p in pts)
    assert out[0] == pts[0] and out[-1] == pts[-1]


def test_line_chart_draws_each_series_as_steps() -> None:
    svg = line_chart("t", [Series("a", [(0.0, 1.0), (1.0, 3.0)]),
                           Series("b", [(0.5, 2.0)])], y_label="x", x_end=2.0)
    lines = re.findall(r'<polyline[^>]*points="([^"]+)"', svg)
    assert len(lines) == 2
    # a: (0,1) then a step to (1,1), (1,3), held to the end of the run: 4 vertices
    assert len(lines[0].split()) == 4 and len(lines[1].split()) == 2
    assert 'data-points="3"' in svg


def test_empty_plots_say_so() -> None:
    assert 'data-points="0"' in line_chart("t", [], y_label="x")
    assert 'data-points="0"' in bar_chart("t", [("a", 0)])
    assert "<rect class=\"bar\"" in bar_chart("t", [("a", 2), ("b", 1)])


# --- a real run ----------------------------------------------------------------------------------

SMALL_SCENARIO = """\
seed = 3
duration = 60.0
description = "trace test: two 1 MB flows over the default impaired wire"

[[flows]]
name = "f1"
bytes = 1_000_000

[[flows]]
name = "f2"
bytes = 1_000_000
"""


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cli.config import load_scenario
    from cli.run import run_scenario

    base = tmp_path_factory.mktemp("trace-run")
    cfg = base / "small.toml"
    cfg.write_text(SMALL_SCENARIO)
    run_dir = base / "run"
    summary = run_scenario(load_scenario(cfg), run_dir, progress=False)
    assert summary["integrity"], summary.get("errors")
    return run_dir


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_real_run_trace_is_sound(real_run: Path) -> None:
    path = real_run / "trace.json"
    assert path.is_file(), "rxpath run writes the trace at its end"
    trace = json.loads(path.read_text())
    assert check_trace(trace) == []
    _, stats = build_trace(real_run)
    assert stats.overlapping_slices == 0  # every slice nested where it was recorded
    assert stats.bad_lines == 0
    names = pid_names(trace)
    assert {"peer", "nic", "cpu0", "cpu1", "stack", "r1", "r2"} <= set(names.values())

    slices = Counter(e["name"] for e in by_phase(trace, "X"))
    for name in ("wire xmit", "rx: DMA to ring", "hardirq", "net_rx_action", "napi_poll",
                 "tcp_v4_rcv", "tcp_recvmsg", "lock_sock", "release_sock", "inet_accept",
                 "skb_copy_datagram_msg", "owned by r1", "owned by r2", "tx", "ACKs received"):
        assert slices[name] > 0, name
    # Backlog or prequeue processing runs on the reader's own track.
    on_reader = {e["name"] for e in by_phase(trace, "X") if names[e["pid"]] in ("r1", "r2")}
    assert on_reader & {"__release_sock (backlog)", "tcp_prequeue_process"}

    counters = {(names[e["pid"]], e["name"]) for e in by_phase(trace, "C")}
    for track in ("f1 backlog", "f1 prequeue", "f1 receive queue", "f1 ofo queue",
                  "f1 advertised window", "f2 receive queue"):
        assert ("stack", track) in counters, track
    assert ("nic", "rx ring q0") in counters and ("cpu0", "ring q0") in counters
    assert ("r1", "f1 read") in counters

    flows: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in trace["traceEvents"]:
        if e["ph"] in ("s", "t", "f"):
            flows[e["id"]].append(e)
    assert len(flows) > 500
    ends: Counter[tuple[str, str]] = Counter()
    for pts in flows.values():
        assert pts[0]["ph"] == "s" and pts[-1]["ph"] == "f" and pts[-1]["bp"] == "e"
        assert all(p["ph"] == "t" for p in pts[1:-1])
        assert [p["ts"] for p in pts] == sorted(p["ts"] for p in pts)
        ends[(names[pts[0]["pid"]], names[pts[-1]["pid"]])] += 1
    # Data segments go from the peer to a reader's copy; ACKs to the peer, from softirq
    # (the stack's track) or from a reader's context (tcp_cleanup_rbuf, release_sock).
    assert ends[("peer", "r1")] > 100 and ends[("peer", "r2")] > 100
    assert ends[("stack", "peer")] > 0
    assert ends[("stack", "peer")] + ends[("r1", "peer")] + ends[("r2", "peer")] > 300


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_real_run_report_has_real_plots(real_run: Path) -> None:
    path = write_report(real_run)
    page = path.read_text()
    assert "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    plots = re.findall(r'<svg class="plot[^"]*"[^>]*data-series="(\d+)" data-points="(\d+)"',
                       page)
    assert len(plots) >= 8
    assert all(int(points) > 0 for _, points in plots), plots
    for title in ("f1: backlog, prequeue and out-of-order queue",
                  "f1: receive queue and advertised window", "RX ring occupancy per queue",
                  "Bytes delivered to the readers, per flow", "Drops by reason",
                  "Busy time per actor"):
        assert title in page
    # The delivered curve of each flow ends at its size.
    assert page.count("<polyline") >= 8
    for table in ("Kernel counters (nstat)", "NIC statistics (ethtool -S)", "Flows"):
        assert f"<h2>{table}</h2><table>" in page
    assert "TcpInSegs" in page


def test_delivered_series_adds_the_readers_of_a_flow() -> None:
    from cli.report_html import _sum_steps
    assert _sum_steps([[(0.0, 1.0), (2.0, 3.0)], [(1.0, 10.0)]]) == [
        (0.0, 1.0), (1.0, 11.0), (2.0, 13.0)]
