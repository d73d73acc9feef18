"""``rxpath diff`` and ``rxpath explain``: two runs side by side, and one segment's path."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from actors.peer.impairments import ScriptedEvent, WireImpairments
from actors.runtime.trace import (
    HOP_END,
    HOP_NAPI,
    HOP_NIC,
    HOP_PROCESS_CONTEXT,
    HOP_SOURCE,
    HOP_TCP_V4_RCV,
    ORIGIN_PEER,
    FlowIds,
)
from cli.config import parse_scenario
from cli.diff import columns, delta_text
from cli.main import app
from cli.run import run_scenario
from protocol.segment import Segment, TcpFlags
from protocol.wire import encode

runner = CliRunner()
PEER = FlowIds(ORIGIN_PEER).base
T0 = 1_000_000_000
ISN = 5000  # irs: the flow's first byte is seq 5001


def write(run_dir: Path, actor: str, records: list[list[Any]]) -> None:
    d = run_dir / "trace"
    d.mkdir(parents=True, exist_ok=True)
    lines = [["M", {"name": actor}], ["M", {"t0_ns": T0}], *records]
    (d / f"{actor}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def x(start_ms: float, dur_ms: float, name: str, tid: str, args: dict[str, Any] | None,
      flows: list[list[Any]] | None, pid: str | None = None) -> list[Any]:
    start = T0 + int(start_ms * 1e6)
    return ["X", start, int(dur_ms * 1e6), tid, name, args, flows, pid]


def rcv(at: float, fid: int, offset: int, to: str, **extra: Any) -> list[Any]:
    args = {"seq": ISN + 1 + offset, "len": 1448, "flags": ".", "to": to, "flow": "f1",
            "offset": offset, "id": fid, **extra}
    hop = HOP_END if to.startswith("drop:") else HOP_TCP_V4_RCV
    return x(at, 0.1, "tcp_v4_rcv", "softirq", args, [[hop, [fid]]])


def synthetic_run(run_dir: Path) -> tuple[int, int]:
    """Byte 1448..2895 of f1 arrives twice: the wire duplicated it; the first copy waits
    in the backlog until r1's release_sock, the second is dropped as old data."""
    a, b = PEER + 1, PEER + 2
    (run_dir / "scenario.json").write_text(json.dumps({"flows": [{"name": "f1",
                                                                  "sport": 40001}]}))
    write(run_dir, "peer", [
        x(1.0, 0, "wire: duplicated", "wire",
          {"wire": ["duplicated"], "sport": 40001, "seq": ISN + 1 + 1448, "len": 1448}, None),
        x(1.5, 0.1, "wire xmit", "wire", {"frames": 2}, [[HOP_SOURCE, [a, b]]])])
    write(run_dir, "nic", [x(2.0, 0.1, "rx: DMA to ring", "rx", {"frames": 2},
                             [[HOP_NIC, [a, b]]])])
    write(run_dir, "cpu1", [x(2.5, 0.01, "hardirq", "cpu", {"queue": 1}, None),
                            x(3.0, 1.0, "napi_poll", "cpu", {"queue": 1}, [[HOP_NAPI, [a, b]]])])
    write(run_dir, "stack", [
        rcv(0.5, PEER + 9, 0, "receive_queue"),  # an earlier segment: sets the offsets
        rcv(3.2, a, 1448, "backlog"),
        rcv(3.4, b, 1448, "drop:TCP_OLD_DATA"),
        x(5.0, 0.5, "__release_sock (backlog)", "main", {"backlog_segments": 1},
          [[HOP_PROCESS_CONTEXT, [a]]], pid="r1"),
        x(7.0, 0.2, "skb_copy_datagram_msg", "main", None, [[HOP_END, [a]]], pid="r1")])
    write(run_dir, "r1", [["C", T0 + 8_000_000, "f1 read", {"bytes": 1448}, None],
                          ["C", T0 + 9_000_000, "f1 read", {"bytes": 4096}, None]])
    return a, b


def test_explain_follows_each_copy_of_a_byte(tmp_path: Path) -> None:
    a, b = synthetic_run(tmp_path)
    res = runner.invoke(app, ["explain", str(tmp_path), "--flow", "f1", "--seq", "2000"])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "f1: byte 1999 (relative seq 2000, seq 7000)" in out
    assert re.search(r"\+1\.000 ms\s+peer\s+duplicated \(relative seq 1449, 1448 bytes\)", out)
    first, second = out.split("copy 1 of 2")[1].split("copy 2 of 2")
    assert f"segment {a}" in first and f"segment {b}" in second
    # In time order, on the actor that did it.
    steps = [("peer", "wire xmit"), ("nic", "DMA into an RX ring (a burst of 2 frames)"),
             ("cpu1", "hardirq for RX queue 1"), ("cpu1", "napi_poll of RX queue 1"),
             ("stack", "tcp_v4_rcv (softirq): to the backlog"),
             ("r1", "__release_sock (backlog) in r1 context: out of the backlog/prequeue "
                    "after 1.700 ms there"),
             ("r1", "skb freed: r1 read all of it (skb_copy_datagram_msg), 4.000 ms after "
                    "tcp_v4_rcv")]
    positions = [first.index(f"{who:<6} {what}") for who, what in steps]
    assert positions == sorted(positions)
    assert ("tcp_v4_rcv (softirq): dropped: SKB_DROP_REASON_TCP_OLD_DATA (counted in "
            "TcpExtDelayedACKLost)") in second
    assert "read() returned byte 1999 of f1 to r1 at +9.000 ms" in out  # 1448 < 1999 < 4096


def test_explain_by_segment_and_its_errors(tmp_path: Path) -> None:
    a, _ = synthetic_run(tmp_path)
    res = runner.invoke(app, ["explain", str(tmp_path), "--segment", str(a)])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(f"segment {a}: f1 relative seq 1449..2896 (1448 bytes)")
    assert "to the backlog" in res.stdout
    res = runner.invoke(app, ["explain", str(tmp_path), "--segment", str(PEER + 77)])
    assert res.exit_code == 1 and f"no record of segment {PEER + 77}" in res.stderr
    res = runner.invoke(app, ["explain", str(tmp_path), "--flow", "f9", "--seq", "1"])
    assert res.exit_code == 1 and "flows seen: f1" in res.stderr
    assert runner.invoke(app, ["explain", str(tmp_path), "--flow", "f1"]).exit_code == 2
    res = runner.invoke(app, ["explain", str(tmp_path), "--flow", "f1", "--seq", "99999"])
    assert res.exit_code == 1 and "no copy of this byte reached tcp_v4_rcv" in res.stdout


def test_the_wire_records_what_it_did_to_a_frame() -> None:
    frame = encode(Segment("10.0.0.1", 40001, "10.0.0.2", 5001, seq=7, ack=1,
                           flags=TcpFlags.ACK, window=100, payload=b"x" * 100))
    imp = WireImpairments(events=(ScriptedEvent("drop", 1), ScriptedEvent("duplicate", 2)))
    imp.decisions = []
    imp.apply(frame, 10)
    imp.apply(frame, 20)
    imp.apply(frame, 30)  # passes untouched: nothing recorded
    assert [(t, what) for t, _, what in imp.decisions] == [
        (10, ("scripted_dropped",)), (20, ("scripted_duplicated",))]
    quiet = WireImpairments(loss=1.0)
    quiet.apply(frame, 1)
    assert quiet.decisions is None  # off unless a trace asks


# -- diff ------------------------------------------------------------------------------------


def summary(nstat: dict[str, int], intact: bool, **extra: Any) -> dict[str, Any]:
    return {"profile": "legacy", "seed": 1, "reason": "complete", "elapsed_s": 1.0,
            "integrity": intact, "nstat": nstat, "drops": {}, "nic": {},
            "softnet_stat": {"cpu0": [10, 0, 1]},
            "sockets": [{"state": "ESTAB", "peer": "10.0.0.1:40001", "recv_q": 0,
                         "rcv_wnd": 1000, "skmem": {"r": 0, "rb": 100, "f": 0, "bl": 0,
                                                    "d": 0}}],
            "flows": [{"flow": "f1", "received": 10 if intact else 5, "intact": intact}],
            **extra}


def test_delta_and_aligned_columns() -> None:
    assert delta_text(10, 15) == "+5 (+50%)"
    assert delta_text(4, 0) == "-4 (-100%)"
    assert delta_text(0, 3) == "+3" and delta_text(3, 3) == ""
    assert delta_text("legacy", "modern") == "changed"
    lines = columns([("TcpExtTCPPrequeued", 120, 0), ("TcpInSegs", 5, 5000)],
                    ("counter", "A", "B", "delta"))
    assert lines == ["counter               A     B  delta",
                     "TcpExtTCPPrequeued  120     0  -120 (-100%)",
                     "TcpInSegs             5  5000  +4995 (+99900%)"]


def test_diff_command(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "summary.json").write_text(json.dumps(summary(
        {"TcpInSegs": 10, "TcpExtTCPPrequeued": 4}, True)))
    (b / "summary.json").write_text(json.dumps(summary(
        {"TcpInSegs": 12, "TcpExtTCPBacklogDrop": 1}, False, drops={"SOCKET_BACKLOG": 1})))
    res = runner.invoke(app, ["diff", str(a), str(b)])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert re.search(r"^TcpInSegs\s+10\s+12\s+\+2 \(\+20%\)$", out, re.M)
    assert re.search(r"^TcpExtTCPPrequeued\s+4\s+0\s+-4 \(-100%\)$", out, re.M)
    assert re.search(r"^SKB_DROP_REASON_SOCKET_BACKLOG\s+0\s+1\s+\+1$", out, re.M)
    assert re.search(r"^f1 verdict\s+intact\s+BROKEN\s+changed$", out, re.M)
    assert "#socket 10.0.0.1:40001 (ss -tmi)" in out
    assert "\x1b[" not in out  # no colour into a pipe
    res = runner.invoke(app, ["diff", str(a), str(b), "--json", "--changed"])
    data = json.loads(res.stdout)
    assert data["nstat"] == {"TcpExtTCPPrequeued": [4, 0], "TcpExtTCPBacklogDrop": [0, 1],
                             "TcpInSegs": [10, 12]}
    res = runner.invoke(app, ["diff", str(tmp_path / "none"), str(b)])
    assert res.exit_code == 2 and "no such run directory" in res.stderr


# -- a real run ----------------------------------------------------------------------------

SCENARIO = """
duration = 20.0
description = "one flow; the wire drops its 10th data frame and duplicates its 20th"
[[flows]]
name = "f1"
bytes = 150_000
[impairments]
events = [{action = "drop", index = 10}, {action = "duplicate", index = 20}]
"""


def test_explain_a_real_run(run_dir: Path) -> None:
    sc = parse_scenario(SCENARIO, "explain.toml")
    summary_ = run_scenario(sc, run_dir, progress=False, ready_timeout_s=30)
    assert summary_["integrity"], summary_
    records = [json.loads(line) for line in
               (run_dir / "trace" / "peer.jsonl").read_text().splitlines()]
    wire = [r[5] for r in records if r[0] == "X" and r[4].startswith("wire: ")]
    dropped = next(w for w in wire if w["wire"] == ["dropped (scripted)"])
    dup = next(w for w in wire if w["wire"] == ["duplicated (scripted)"])
    stack = [json.loads(line) for line in
             (run_dir / "trace" / "stack.jsonl").read_text().splitlines()]
    first = next(r[5] for r in stack if r[0] == "X" and r[4] == "tcp_v4_rcv"
                 and r[5].get("len"))
    start = first["seq"] - first["offset"]
    # The dropped frame's bytes arrived once, by retransmission.
    seq = (dropped["seq"] - start) % 2**32 + 1
    res = runner.invoke(app, ["explain", str(run_dir), "--flow", "f1", "--seq", str(seq)])
    assert res.exit_code == 0, res.output
    assert "dropped (scripted)" in res.stdout and "copy 1 of 1" in res.stdout
    assert "DMA into an RX ring" in res.stdout and "napi_poll of RX queue" in res.stdout
    assert re.search(r"read\(\) returned byte \d+ of f1 to r1 at", res.stdout)
    # The duplicated frame arrived twice; one copy was not needed.
    seq = (dup["seq"] - start) % 2**32 + 1
    res = runner.invoke(app, ["explain", str(run_dir), "--flow", "f1", "--seq", str(seq)])
    assert res.exit_code == 0, res.output
    assert "duplicated (scripted)" in res.stdout and "copy 2 of 2" in res.stdout
    assert "dropped: SKB_DROP_REASON_" in res.stdout
    # A run against itself: no deltas at all.
    res = runner.invoke(app, ["diff", str(run_dir), str(run_dir), "--changed"])
    assert res.exit_code == 0
    assert re.findall(r"[+-]\d+ \(", res.stdout) == []
