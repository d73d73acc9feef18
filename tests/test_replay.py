"""Replaying a capture (``--wire pcap:FILE``): the pcap reader, the mapping of a capture's
connections onto the flows, the ACK/TSecr rewriting, and real runs that replay a capture
made by an earlier run."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from actors.peer.payload import payload_bytes
from actors.replay.model import (
    FlowReplay,
    FlowTarget,
    Stream,
    checksums_ok,
    parse,
    plan,
    rewrite,
)
from actors.scenario import Scenario, WireConfig
from cli.config import ConfigError, Overrides, load_scenario, parse_scenario, scenario_from_data
from cli.run import run_scenario
from protocol.pcap import PcapError, PcapRecord, link_ipv4, read_capture
from protocol.segment import Segment, TcpFlags
from protocol.tcp_options import TcpOptions
from protocol.wire import decode, encode

ROOT = Path(__file__).resolve().parent.parent
FLOW_BYTES = 300_000
SCENARIO = f"""
description = "replay test"
duration = 10.0
[cpu]
count = 1
[nic]
queues = 1
[[flows]]
name = "f1"
bytes = {FLOW_BYTES}
sport = 40001
[impairments]
loss = 0.0
"""
CLIENT, SERVER = "10.0.0.1", "10.0.0.2"
TARGET = FlowTarget("f1", CLIENT, 40001, SERVER, 5001)
# Open loop: a segment that finds a closed window (a reader slowed down by a busy
# machine) is dropped and the capture holds no retransmission of it. The replays in
# these tests get a receive buffer far beyond the flow, so no window ever closes.
ROOMY = '[sysctl]\nrmem_max = 8388608\n[stack]\nrcvbuf = 4000000\n'


# --------------------------------------------------------------------------- helpers


def write_pcap(path: Path, linktype: int, frames: list[bytes], *, big_endian: bool = False,
               nanoseconds: bool = False, stamps_us: list[int] | None = None) -> None:
    """A classic pcap file as other tools write it (default stamps: one a second)."""
    o = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nanoseconds else 0xA1B2C3D4
    out = [struct.pack(o + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)]
    for i, f in enumerate(frames):
        sec, frac = (1000 + i, 500) if stamps_us is None else divmod(stamps_us[i], 1_000_000)
        out.append(struct.pack(o + "IIII", sec, frac, len(f), len(f)) + f)
    path.write_bytes(b"".join(out))


def seg(flags: int, seq: int, ack: int = 0, payload: bytes = b"", *, src: str = CLIENT,
        sport: int = 40001, dst: str = SERVER, dport: int = 5001,
        ts: tuple[int, int] | None = (100, 0)) -> bytes:
    opts = TcpOptions(timestamp=ts) if ts else TcpOptions()
    return encode(Segment(src, sport, dst, dport, seq, ack, flags, 65535, opts, payload))


ETH = b"\x02" * 6 + b"\x04" * 6


def udp_frame() -> bytes:
    ip = bytearray(encode(Segment(CLIENT, 1, SERVER, 2, 0)))
    ip[9] = 17  # the protocol byte: UDP (the checksum is not checked by the replay)
    return bytes(ip)


@pytest.fixture(scope="module")
def capture(module_run_dir: Path) -> Path:
    """A capture made by a normal run of one 300 KB flow."""
    summary = run_scenario(parse_scenario(SCENARIO, "replay-test"), module_run_dir / "orig",
                           progress=False, ready_timeout_s=30)
    assert summary["integrity"] and summary["checker"]["ok"], summary["checker_text"]
    return module_run_dir / "orig" / "wire.pcap"


# --------------------------------------------------------------------------- the reader


@pytest.mark.parametrize(("linktype", "wrap"), [
    (1, lambda p: ETH + b"\x08\x00" + p),                         # Ethernet
    (1, lambda p: ETH + b"\x81\x00\x00\x05\x08\x00" + p),         # Ethernet, 802.1Q tag
    (101, lambda p: p),                                           # raw IP
    (228, lambda p: p),                                           # raw IPv4
    (113, lambda p: b"\x00\x00\x00\x01\x00\x06" + b"\x00" * 8 + b"\x08\x00" + p),  # SLL
    (276, lambda p: b"\x08\x00\x00\x00" + b"\x00" * 16 + p),      # SLL2
])
def test_reader_finds_the_ipv4_packet_for_each_link_type(tmp_path: Path, linktype: int,
                                                          wrap: object) -> None:
    packet = seg(TcpFlags.SYN, 7)
    assert callable(wrap)
    write_pcap(tmp_path / "x.pcap", linktype, [wrap(packet)])
    lt, records = read_capture(tmp_path / "x.pcap")
    assert lt == linktype and len(records) == 1
    assert link_ipv4(lt, records[0].data) == packet


def test_reader_byte_order_nanoseconds_and_what_is_not_ipv4(tmp_path: Path) -> None:
    ipv6 = b"\x60" + b"\x00" * 39
    arp = ETH + b"\x08\x06" + b"\x00" * 28
    write_pcap(tmp_path / "x.pcap", 1, [ETH + b"\x08\x00" + seg(TcpFlags.SYN, 1), arp,
                                        ETH + b"\x86\xdd" + ipv6],
               big_endian=True, nanoseconds=True)
    lt, records = read_capture(tmp_path / "x.pcap")
    assert [r.ts_ns for r in records] == [1000_000_000_500, 1001_000_000_500, 1002_000_000_500]
    assert [link_ipv4(lt, r.data) is not None for r in records] == [True, False, False]
    write_pcap(tmp_path / "raw.pcap", 101, [ipv6])
    assert link_ipv4(101, read_capture(tmp_path / "raw.pcap")[1][0].data) is None


def test_reader_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    cases = {"short": b"\xd4\xc3\xb2\xa1", "garbage": b"hello, this is not a capture" * 2,
             "pcapng": b"\x0a\x0d\x0d\x0a" + b"\x00" * 40,
             "linktype": struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 147)}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(PcapError) as err:
            read_capture(tmp_path / name)
        assert name in str(err.value)
    with pytest.raises(PcapError, match="cannot read"):
        read_capture(tmp_path / "missing.pcap")
    # A last record cut short (a capture still being written) is left out.
    write_pcap(tmp_path / "cut.pcap", 101, [seg(TcpFlags.SYN, 1), seg(TcpFlags.SYN, 2)])
    data = (tmp_path / "cut.pcap").read_bytes()
    (tmp_path / "cut.pcap").write_bytes(data[:-5])
    assert len(read_capture(tmp_path / "cut.pcap")[1]) == 1


# --------------------------------------------------------------------------- the plan


def records(frames: list[bytes], step_ns: int = 1_000_000) -> list[PcapRecord]:
    return [PcapRecord(i * step_ns, len(f), f) for i, f in enumerate(frames)]


def test_plan_maps_connections_and_counts_what_it_ignores() -> None:
    other = dict(src="192.168.0.9", sport=33333, dst="192.168.0.1", dport=80)
    frames = [
        seg(TcpFlags.ACK, 90, 1, b"old"),                         # A's tuple before its SYN
        seg(TcpFlags.SYN, 999, **other),                          # connection B, first SYN
        seg(TcpFlags.SYN, 99),                                    # A: aimed at f1 exactly
        seg(TcpFlags.SYN | TcpFlags.ACK, 5000, 100, src=SERVER, sport=5001, dst=CLIENT,
            dport=40001, ts=(777, 100)),                          # A's SYN-ACK: outbound
        seg(TcpFlags.ACK, 100, 5001, ts=(101, 777)),
        seg(TcpFlags.ACK, 100, 5001, b"abcd"),
        seg(TcpFlags.ACK, 1000, 1, b"xyz", **other),
        seg(TcpFlags.ACK, 5, 6, b"mid", src=CLIENT, sport=40077),  # no SYN: other 4-tuple
        udp_frame(),
        seg(TcpFlags.ACK | TcpFlags.FIN, 104, 5001, b"ef"),
    ]
    p = plan(101, records(frames), [FlowTarget("f0", CLIENT, 40000, SERVER, 5001), TARGET])
    assert p.connections == 2
    by = {fp.target.name: fp for fp in p.flows}
    # Exact match first (A -> f1), then SYN order (B -> f0).
    assert by["f1"].capture_tuple == (CLIENT, 40001, SERVER, 5001)
    assert by["f0"].capture_tuple == ("192.168.0.9", 33333, "192.168.0.1", 80)
    assert by["f1"].stream == b"abcdef" and by["f1"].fin
    assert (by["f1"].orig_iss, by["f1"].orig_tsval) == (5000, 777)
    assert by["f0"].orig_iss == 0 and by["f0"].stream == b"xyz"   # from its first ACK
    assert p.counts["other_tuple"] == 2 and p.counts["not_tcp"] == 1
    assert p.counts["outbound"] == 1 and p.counts["inbound"] == 6
    # Due times from the first inbound frame of any flow (B's SYN), in capture order.
    assert [d for d, _ in by["f1"].frames] == [1_000_000, 3_000_000, 4_000_000, 8_000_000]
    assert by["f0"].frames[0][0] == 0


def test_stream_first_copy_wins_and_stops_at_a_hole() -> None:
    s = Stream()
    s.add(0, b"aaaa")
    s.add(2, b"XXXX")     # overlaps [2, 4): the first copy stays
    s.add(10, b"zz")      # beyond a hole at [6, 8)
    s.add(8, b"YYY")      # overlaps the start of [10, 12)
    assert s.contiguous() == b"aaaaXX"
    assert bytes(s.buf[8:12]) == b"YYzz" and s.covered == [(0, 6), (8, 12)]


# --------------------------------------------------------------------------- rewriting


def test_ack_and_tsecr_rewritten_after_the_synack_with_valid_checksums() -> None:
    fp = plan(101, records([
        seg(TcpFlags.SYN, 99, src="172.16.0.5", sport=51000, dst="172.16.0.1", dport=80),
        seg(TcpFlags.ACK, 100, 5001, ts=(101, 777), src="172.16.0.5", sport=51000,
            dst="172.16.0.1", dport=80),
        seg(TcpFlags.ACK, 100, 5001, b"data", ts=(102, 777), src="172.16.0.5",
            sport=51000, dst="172.16.0.1", dport=80),
        seg(TcpFlags.ACK | TcpFlags.FIN, 104, 5003, ts=(103, 790), src="172.16.0.5",
            sport=51000, dst="172.16.0.1", dport=80),   # acks the original server's FIN
    ]), [TARGET]).flows[0]
    flow = FlowReplay(fp)
    assert not flow.waits(fp.frames[0][1])
    d = decode(flow.outgoing(fp.frames[0][1]))  # decode verifies both checksums
    assert d.four_tuple == (CLIENT, 40001, SERVER, 5001) and d.seq == 99
    # Before the SYN-ACK, nothing else goes: it waits.
    assert flow.waits(fp.frames[1][1]) and flow.waits(fp.frames[2][1])
    assert flow.on_stack_segment(TcpFlags.SYN | TcpFlags.ACK, 0xFFFFFFF0, 0xFFFFFFF1,
                                 tsval=50_000)
    assert not flow.waits(fp.frames[1][1])
    acks = [decode(flow.outgoing(f)) for _, f in fp.frames[1:3]]
    assert [a.ack for a in acks] == [0xFFFFFFF1, 0xFFFFFFF1]        # the stack's ISN + 1
    assert [a.options.tsecr for a in acks] == [50_000, 50_000]
    assert [a.options.tsval for a in acks] == [101, 102]          # the client's own clock
    assert acks[1].payload == b"data" and acks[1].sport == 40001
    # An ACK of data the emulated stack never sent is clamped to what it did send.
    fin = decode(flow.outgoing(fp.frames[3][1]))
    assert fin.ack == 0xFFFFFFF1 and fin.options.tsecr == 50_013
    assert flow.c == {"sent": 4, "held": 0, "rewritten": 4, "ack_clamped": 1}


def test_a_corrupted_segment_stays_corrupted_unless_the_capture_is_offloaded() -> None:
    good = [seg(TcpFlags.SYN, 9), seg(TcpFlags.ACK, 10, 1, b"ab"), seg(TcpFlags.ACK, 12, 1, b"cd")]
    bad = bytearray(good[1])
    bad[-1] ^= 0x40  # a bit flipped on the way: the original receiver dropped it
    p = plan(101, records([good[0], bytes(bad), good[1], good[2]]), [TARGET])
    fp = p.flows[0]
    assert fp.corrupt == {1} and p.counts["bad_checksum"] == 1
    assert fp.stream == b"abcd"  # the corrupted copy is not the flow's bytes
    flow = FlowReplay(fp)
    flow.on_stack_segment(TcpFlags.SYN | TcpFlags.ACK, 500, 501, None)
    assert not checksums_ok(flow.outgoing(fp.frames[1][1], corrupt=True))
    assert checksums_ok(flow.outgoing(fp.frames[2][1]))
    # Every inbound checksum wrong: a capture at the sender with checksum offload.
    unfilled = [bytearray(f) for f in good]
    for f in unfilled:
        f[36:38] = b"\0\0"
    p = plan(101, records([bytes(f) for f in unfilled]), [TARGET])
    assert p.flows[0].corrupt == set() and p.counts["offloaded_flows"] == 1
    assert p.flows[0].stream == b"abcd"


def test_rewrite_keeps_unknown_options_and_sack_blocks() -> None:
    opts = TcpOptions(sack_blocks=((10, 20),), timestamp=(5, 6))
    packet = encode(Segment("1.2.3.4", 1000, "5.6.7.8", 80, 1, 2, TcpFlags.ACK, 100, opts,
                            b"x"))
    out = decode(rewrite(packet, TARGET, ack=42, tsecr=43))
    assert (out.ack, out.options.tsecr, out.options.sack_blocks) == (42, 43, ((10, 20),))
    assert out.four_tuple == (CLIENT, 40001, SERVER, 5001)
    p = parse(packet)
    assert not isinstance(p, str) and p.tsval == 5


# --------------------------------------------------------------------------- real runs


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_replaying_a_run_capture_delivers_exactly_its_bytes(module_run_dir: Path,
                                                           capture: Path) -> None:
    # Another seed: the stack picks another ISN, so every ACK has to be rewritten.
    sc = load_scenario(None, Overrides(seed=2, wire=f"pcap:{capture}",
                                       sysctl=("rmem_max=8388608",)))
    sc = replace(sc, cpu=replace(sc.cpu, count=1), nic=replace(sc.nic, queues=1),
                 stack=replace(sc.stack, rcvbuf=4_000_000))
    assert sc.replay == str(capture.resolve())
    assert [(f.name, f.bytes) for f in sc.flows] == [("f1", FLOW_BYTES)]  # f2 left out
    assert [r.name for r in sc.readers] == ["r1"]
    summary = run_scenario(sc, module_run_dir / "replay", progress=False, ready_timeout_s=30)
    assert summary["reason"] == "complete", why(summary)
    assert summary["integrity"] and summary["checker"]["ok"], why(summary)
    (flow,) = summary["checker"]["flows"]
    assert flow["reference"] == "capture" and flow["delivered"] == FLOW_BYTES
    # The capture's stream is the original run's payload: the same bytes, end to end.
    assert flow["sha256"] == hashlib.sha256(payload_bytes(1, 0, FLOW_BYTES)).hexdigest()
    assert "replay check" in summary["checker_text"]
    r = summary["replay"]
    assert r["connections"] == 1 and r["pending"] == 0
    assert r["sent"] == r["inbound"] > FLOW_BYTES // 1448
    assert r["rewritten"] >= r["sent"] - 1          # all but the SYN (its ack is unused)
    assert r["outbound"] > 0 and r["other_tuple"] == r["not_tcp"] == r["not_ipv4"] == 0
    # tcp_v4_rcv runs once per skb: the frames GRO merged went up inside another's.
    assert summary["nstat"]["TcpInSegs"] + sum(summary["gro_merged"].values()) == r["sent"]
    assert summary["nstat"].get("TcpInErrs", 0) == 0


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_other_tuples_and_non_tcp_are_counted_and_ignored(module_run_dir: Path,
                                                          capture: Path) -> None:
    # The capture taken "elsewhere": other addresses and ports, Ethernet framing, and a
    # UDP frame and a segment of another connection in the middle.
    _, recs = read_capture(capture)
    moved = FlowTarget("x", "192.168.7.10", 51515, "192.168.7.1", 8080)
    back = FlowTarget("x", "192.168.7.1", 8080, "192.168.7.10", 51515)
    frames, stamps = [], []
    for r in recs:
        p = parse(r.data)
        assert not isinstance(p, str)
        out = rewrite(r.data, moved if p.tuple4[0] == CLIENT else back)
        frames.append(ETH + b"\x08\x00" + out)
        stamps.append(r.ts_ns // 1000)
    stranger = seg(TcpFlags.ACK, 1, 1, b"nope", src="192.168.7.99", sport=4444,
                   dst="192.168.7.1", dport=8080)
    frames[5:5] = [ETH + b"\x08\x00" + udp_frame(), ETH + b"\x08\x00" + stranger,
                   ETH + b"\x08\x06" + b"\x00" * 28]
    stamps[5:5] = [stamps[5]] * 3
    pcap = module_run_dir / "elsewhere.pcap"
    write_pcap(pcap, 1, frames, stamps_us=stamps)
    toml = module_run_dir / "elsewhere.toml"
    toml.write_text(SCENARIO + ROOMY + '[wire]\nsource = "pcap:elsewhere.pcap"\n')
    sc = load_scenario(toml, Overrides(seed=3))
    summary = run_scenario(sc, module_run_dir / "elsewhere", progress=False, ready_timeout_s=30)
    assert summary["integrity"] and summary["checker"]["ok"], why(summary)
    r = summary["replay"]
    assert (r["not_tcp"], r["other_tuple"], r["not_ipv4"]) == (1, 1, 1)
    assert r["flows"]["f1"]["capture_tuple"] == "192.168.7.10:51515 > 192.168.7.1:8080"
    assert r["rewritten"] == r["sent"] == r["inbound"]   # addresses changed on every one
    # tcp_v4_rcv runs once per skb: the frames GRO merged went up inside another's.
    assert summary["nstat"]["TcpInSegs"] + sum(summary["gro_merged"].values()) == r["sent"]


def why(summary: dict[str, object]) -> str:
    """What a failed replay's summary says about where the bytes went."""
    keys = ("reason", "checker_text", "replay", "drops", "nic", "nstat")
    return json.dumps({k: summary.get(k) for k in keys}, indent=1, default=str)


def rxpath(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cli.main", "run", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.timeout(60)
def test_missing_or_malformed_capture_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "bad.pcap").write_bytes(b"not a capture at all, sorry")
    write_pcap(tmp_path / "empty.pcap", 101, [udp_frame()])
    toml = tmp_path / "s.toml"
    toml.write_text(SCENARIO + '\n[wire]\nsource = "pcap:nothere.pcap"\n')
    cases = [
        (["--wire", "pcap:nothere.pcap"], ["command line", "wire.source", "nothere.pcap"]),
        (["--wire", "tcp:x"], ["wire.source", "pcap:FILE"]),
        (["--wire", "pcap:bad.pcap"], ["wire.source", "bad.pcap", "not a pcap file"]),
        (["--wire", "pcap:empty.pcap"], ["no TCP connection", "not_tcp 1"]),
        ([str(toml)], [str(toml), "wire.source", str(tmp_path / "nothere.pcap")]),
    ]
    for args, words in cases:
        out = rxpath(*args, "-q", cwd=tmp_path)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        for w in words:
            assert w in out.stderr, (args, w, out.stderr)
    with pytest.raises(ConfigError, match=r"linux_senders"):
        parse_scenario(SCENARIO + "[[linux_senders]]\n[wire]\n"
                       f'source = "pcap:{tmp_path}/bad.pcap"\n')


def test_the_scenario_keeps_the_wire_key_only_when_it_is_not_the_peer(tmp_path: Path) -> None:
    sc = parse_scenario(SCENARIO)
    assert sc.wire == WireConfig() and "wire" not in sc.to_dict()  # as before for the peer
    write_pcap(tmp_path / "c.pcap", 101, [seg(TcpFlags.SYN, 9), seg(TcpFlags.ACK, 10, 1, b"hi")])
    toml = tmp_path / "s.toml"
    toml.write_text(SCENARIO + '[wire]\nsource = "pcap:c.pcap"\n')
    sc = load_scenario(toml)
    assert sc.replay == str(tmp_path / "c.pcap") and sc.flows[0].bytes == 2
    assert sc.to_dict()["wire"] == {"source": f"pcap:{tmp_path / 'c.pcap'}"}
    assert Scenario.from_dict(sc.to_dict(), sc.source) == sc
    assert scenario_from_data(sc.to_dict(), sc.source) == sc
