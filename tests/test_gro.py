"""NAPI GRO (actors.cpu.gro): which frames merge, the merged packet, the softirq's
counters with GRO on, and the stack taking GRO skbs."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from actors.cpu.gro import MAX_GRO_SKBS, GroSkb, napi_gro_receive
from actors.cpu.napi import RcvBatch, Softirq
from actors.profiles import LEGACY, Sysctls
from actors.scenario import Scenario
from actors.stack.skb import MAX_SKB_FRAGS, SKB_STRUCT_SIZE, gro_skb, rx_truesize
from cli.config import Overrides, load_scenario
from cli.main import app
from cli.run import run_scenario
from protocol.envelope import MalformedMessage
from protocol.messages import check_segs
from protocol.segment import Segment, TcpFlags, TcpOptions
from protocol.wire import decode_ipv4, decode_tcp, encode, tcp_checksum_ok
from tests.stack_harness import LOCAL, PORT, REMOTE, SPORT, connect, read_all

MSS = 1448
ACK_SEQ = 77


def seg(i: int, *, n: int = MSS, sport: int = SPORT, flags: int = TcpFlags.ACK,
        ts: int = 5, window: int = 1000, seq0: int = 1_000, ip_id: int | None = None,
        ttl: int = 64) -> Segment:
    """Segment ``i`` of a flow of full-sized segments (``n`` payload bytes)."""
    return Segment(src=REMOTE, sport=sport, dst=LOCAL, dport=PORT, seq=seq0 + i * MSS,
                   ack=ACK_SEQ, flags=flags, window=window,
                   options=TcpOptions(timestamp=(ts, 9)), payload=bytes([i % 251]) * n,
                   ip_id=i if ip_id is None else ip_id, ttl=ttl)


def frames(*segs: Segment) -> list[bytes]:
    return [encode(s) for s in segs]


def decoded(skb: GroSkb) -> Segment:
    pkt = decode_ipv4(skb.frame)
    assert tcp_checksum_ok(pkt), "a merged packet carries a correct TCP checksum"
    return decode_tcp(pkt)


def test_a_flows_in_order_full_segments_become_one_skb() -> None:
    segs = [seg(i) for i in range(5)]
    (skb,) = napi_gro_receive(frames(*segs))
    assert skb.gso_size == MSS and list(skb.indices) == [0, 1, 2, 3, 4]
    merged = decoded(skb)
    assert merged.seq == segs[0].seq and merged.ack == ACK_SEQ
    assert merged.payload == b"".join(s.payload for s in segs)
    assert merged.options.timestamp == (5, 9)


def test_psh_ends_the_skb_and_is_kept_in_its_header() -> None:
    segs = [seg(0), seg(1), seg(2, flags=TcpFlags.ACK | TcpFlags.PSH), seg(3), seg(4)]
    first, second = napi_gro_receive(frames(*segs))
    assert list(first.indices) == [0, 1, 2] and decoded(first).flags & TcpFlags.PSH
    assert list(second.indices) == [3, 4] and not decoded(second).flags & TcpFlags.PSH


def test_a_short_segment_is_merged_and_ends_the_skb() -> None:
    out = napi_gro_receive(frames(seg(0), seg(1, n=100), seg(2)))
    assert [list(s.indices) for s in out] == [[0, 1], [2]]
    assert out[1].gso_size == 0 and out[1].frame == encode(seg(2))  # one segment: as it came


def test_a_different_timestamp_window_or_ack_starts_a_new_skb() -> None:
    for other in (seg(1, ts=6), seg(1, window=999), replace(seg(1), ack=ACK_SEQ + 1)):
        out = napi_gro_receive(frames(seg(0), other))
        assert [list(s.indices) for s in out] == [[0], [1]], other


def test_a_gap_in_sequence_flushes_and_restarts() -> None:
    out = napi_gro_receive(frames(seg(0), seg(1), seg(3), seg(4)))
    assert [list(s.indices) for s in out] == [[0, 1], [2, 3]]
    assert decoded(out[1]).seq == seg(3).seq


def test_the_ip_id_must_follow_on_unless_it_stays_fixed_under_df() -> None:
    assert len(napi_gro_receive(frames(seg(0, ip_id=7), seg(1, ip_id=7)))) == 1  # DF: fixed
    assert len(napi_gro_receive(frames(seg(0, ip_id=7), seg(1, ip_id=9)))) == 2
    assert len(napi_gro_receive(frames(seg(0, ttl=64), seg(1, ttl=63)))) == 2


def test_a_bad_checksum_goes_up_alone_at_once_and_the_flow_stays_held() -> None:
    bad = bytearray(encode(seg(2)))
    bad[-1] ^= 0xFF
    out = napi_gro_receive([*frames(seg(0), seg(1)), bytes(bad), encode(seg(2))])
    assert [list(s.indices) for s in out] == [[2], [0, 1, 3]]
    assert out[0].frame == bytes(bad)


def test_a_pure_ack_is_not_held_and_flushes_its_flow_first() -> None:
    ack = seg(2, n=0)
    out = napi_gro_receive(frames(seg(0), seg(1), ack))
    assert [list(s.indices) for s in out] == [[0, 1], [2]]


def test_an_skb_stops_below_64_kb() -> None:
    out = napi_gro_receive(frames(*(seg(i) for i in range(50))))
    assert [len(s.indices) for s in out] == [45, 5]  # 52 + 45 * 1448 < 65536
    assert all(len(s.frame) < 65536 for s in out)


def test_a_ninth_flow_flushes_the_oldest_held() -> None:
    flows = [seg(0, sport=41000 + k) for k in range(MAX_GRO_SKBS + 1)]
    out = napi_gro_receive(frames(*flows, seg(1, sport=41000)))
    # flow 0 was flushed by the ninth; its next segment starts a new skb, flushed last
    assert list(out[0].indices) == [0] and list(out[-1].indices) == [len(flows)]
    assert sorted(i for s in out for i in s.indices) == list(range(len(flows) + 1))


def test_frames_that_already_carry_a_gso_size_bypass_gro() -> None:
    out = napi_gro_receive(frames(seg(0), seg(1)), skip=[True, False])
    assert [list(s.indices) for s in out] == [[0], [1]]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 2), st.booleans()),
                max_size=40))
def test_every_frame_goes_up_exactly_once_and_each_skb_is_contiguous(
        plan: list[tuple[int, int, bool]]) -> None:
    segs = [seg(i, sport=SPORT + f, flags=TcpFlags.ACK | (TcpFlags.PSH if psh else 0))
            for i, f, psh in plan]
    out = napi_gro_receive(frames(*segs))
    assert sorted(i for s in out for i in s.indices) == list(range(len(segs)))
    for skb in out:
        got = decoded(skb)
        assert got.payload == b"".join(segs[i].payload for i in skb.indices)
        assert got.seq == segs[skb.indices[0]].seq


# -- the softirq with GRO on ------------------------------------------------------------


def test_a_gro_poll_counts_skbs_as_ip_rcv_and_processed_and_frames_as_frames() -> None:
    sirq = Softirq(cpu=0, queues=[0], ring_size=256, sysctls=Sysctls(), gro=True,
                   local_addrs=frozenset({LOCAL}))
    fs = frames(*(seg(i) for i in range(10)), seg(10, ts=6))
    assert sirq.rx_dma(0, fs, 0) == 11
    out = sirq.rx_irq(0, 0)
    (batch,) = [o for o in out if isinstance(o, RcvBatch)]
    assert len(batch.frames) == 2 and batch.gso == [MSS, 0] and batch.segs == [10, 1]
    assert sirq.mib.get("IpInReceives") == 2 and sirq.softnet.processed == 2
    assert sirq.frames_to_stack == 11 and sirq.gro_merged == 9
    assert sirq.stats(LEGACY)["in_flight_frames"] == 11  # descriptors count wire frames


def test_a_gro_poll_of_single_frames_sends_no_segs() -> None:
    sirq = Softirq(cpu=0, queues=[0], ring_size=256, sysctls=Sysctls(), gro=True,
                   local_addrs=frozenset({LOCAL}))
    sirq.rx_dma(0, frames(seg(0, ts=1), seg(1, ts=2)), 0)  # timestamps differ: no merge
    (batch,) = [o for o in sirq.rx_irq(0, 0) if isinstance(o, RcvBatch)]
    assert len(batch.frames) == 2 and batch.segs is None


@pytest.mark.parametrize(("segs", "gso"), [([2], [0]), ([0], [MSS]), ([2, 1], [MSS]),
                                           ([2], None)])
def test_a_bad_segs_list_is_refused(segs: list[int], gso: list[int] | None) -> None:
    with pytest.raises(MalformedMessage, match="bad_segs"):
        check_segs(segs, gso, 1)


# -- the stack takes a GRO skb ----------------------------------------------------------


def test_gro_skb_truesize_steals_heads_then_chains_the_frag_list() -> None:
    one = rx_truesize(14 + 20 + 32 + MSS)
    assert gro_skb(32, 3 * MSS, MSS) == (3 * one - 2 * SKB_STRUCT_SIZE, 2)
    n = MAX_SKB_FRAGS + 3
    t, frags = gro_skb(32, n * MSS, MSS)
    assert frags == MAX_SKB_FRAGS
    assert t == n * one - MAX_SKB_FRAGS * SKB_STRUCT_SIZE


@settings(max_examples=300, deadline=None)
@given(st.integers(20, 60), st.integers(1, 70_000), st.integers(1, 9000))
def test_gro_skb_charges_each_frame_after_the_head_as_skb_gro_receive_does(
        header_len: int, payload_len: int, gso_size: int) -> None:
    hdr = 14 + 20 + header_len
    sizes = [min(gso_size, payload_len - o) for o in range(0, payload_len, gso_size)]
    truesize, frags = rx_truesize(hdr + sizes[0]), 0
    for size in sizes[1:]:  # frame by frame: a page fragment while there is room
        frag = frags < MAX_SKB_FRAGS
        frags += frag
        truesize += rx_truesize(hdr + size) - (SKB_STRUCT_SIZE if frag else 0)
    assert gro_skb(header_len, payload_len, gso_size) == (truesize, frags)


def test_the_stack_reads_a_gro_skb_as_its_wire_segments() -> None:
    conn = connect("legacy", ts=True)
    segs = [conn.segment(i * MSS, bytes([i]) * MSS) for i in range(8)]
    (skb,) = napi_gro_receive(frames(*segs))
    conn.stack.tcp_v4_rcv_frame(skb.frame, conn.now, gso_size=skb.gso_size,
                                gro_segs=len(skb.indices))
    conn.collect()
    sk = conn.sk
    assert sk.segs_in >= 8 and sk.data_segs_in == 8
    assert len(conn.acks()) == 1  # one skb, one ACK
    assert read_all(conn).data == b"".join(s.payload for s in segs)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_any_order_loss_and_duplication_through_gro_reaches_the_reader_exactly(
        seed: int) -> None:
    rnd = random.Random(seed)
    conn = connect("legacy", ts=True)
    data = bytes(rnd.randrange(256) for _ in range(MSS * 12))
    segs = [conn.segment(o, data[o:o + MSS]) for o in range(0, len(data), MSS)]
    wire = [s for s in segs if rnd.random() > 0.15] + [s for s in segs if rnd.random() < 0.2]
    rnd.shuffle(wire)
    wire += segs  # the retransmissions that fill every hole, in order
    for lo in range(0, len(wire), 7):  # polls of 7 frames
        for skb in napi_gro_receive(frames(*wire[lo:lo + 7])):
            conn.stack.tcp_v4_rcv_frame(skb.frame, conn.now, gso_size=skb.gso_size,
                                        gro_segs=len(skb.indices))
            conn.collect()
    assert read_all(conn).data == data


@pytest.mark.parametrize("gro_segs", [1, 2])
def test_a_gro_skb_is_checksum_unnecessary_and_anything_else_is_checked(
        gro_segs: int) -> None:
    """GRO merged only frames whose checksum it validated: the skb it builds is
    CHECKSUM_UNNECESSARY and the stack does not read it again. A frame that did not come
    out of GRO is checked: here one whose checksum field was damaged on the way."""
    conn = connect("legacy", ts=True)
    segs = [conn.segment(i * MSS, bytes([i]) * MSS) for i in range(gro_segs)]
    (skb,) = napi_gro_receive(frames(*segs))
    damaged = bytearray(skb.frame)
    damaged[36] ^= 0xFF  # the TCP checksum's first byte
    conn.stack.tcp_v4_rcv_frame(bytes(damaged), conn.now, gso_size=skb.gso_size,
                                gro_segs=len(skb.indices))
    conn.collect()
    mib = conn.stack.net.mib
    if gro_segs > 1:
        assert mib["TcpInCsumErrors"] == 0
        assert read_all(conn).data == b"".join(s.payload for s in segs)
    else:
        assert mib["TcpInCsumErrors"] == 1 and conn.sk.rcv_nxt == segs[0].seq


# -- configuration and a real run -------------------------------------------------------


def test_nic_gro_parses_and_survives_the_topology_round_trip() -> None:
    sc = load_scenario(None, Overrides(sets=("nic.gro=false",)))
    assert sc.nic.gro is False
    assert Scenario.from_dict(sc.to_dict()).nic.gro is False
    assert load_scenario(None).nic.gro is True  # on unless turned off, as in Linux


@pytest.mark.integration
@pytest.mark.timeout(180)
@pytest.mark.parametrize("profile", ["legacy", "modern"])
def test_a_run_with_gro_on_the_impaired_default_wire_is_intact_and_accounted(
        tmp_path: Path, profile: str) -> None:
    base = load_scenario(None, Overrides(profile=profile, sets=("nic.gro=true",)))
    sc = replace(base, flows=tuple(replace(f, bytes=1_000_000) for f in base.flows))
    summary = run_scenario(sc, tmp_path, progress=False)
    assert summary["reason"] == "complete" and summary["integrity"], summary["errors"][:5]
    assert summary["checker"]["ok"], summary.get("checker_text")  # conservation included
    counters = json.loads((tmp_path / "counters.json").read_text())
    cpus = [c["role"] for n, c in counters.items() if n.startswith("cpu")]
    merged = sum(int(c["gro_merged"]) for c in cpus)
    rx = int(counters["nic"]["role"]["ethtool"]["rx_packets"])
    ip_in = sum(int(c["mib"].get("IpInReceives", 0)) for c in cpus)
    assert merged > 0 and ip_in + merged == rx  # ip_rcv ran once per skb
    assert int(counters["stack"]["role"]["segments"]) == rx  # the stack counts wire frames
    # The trace says where a merged frame went: into the skb of an earlier frame.
    polls = [json.loads(line)[5] for cpu in tmp_path.glob("trace/cpu*.jsonl")
             for line in cpu.read_text().splitlines() if '"napi_poll"' in line]
    fid = next(a["gro_merged"][0] for a in polls if a and a.get("gro_merged"))
    res = CliRunner().invoke(app, ["explain", str(tmp_path), "--segment", str(fid)])
    assert res.exit_code == 0, res.output
    assert "GRO merged it into the skb of an earlier frame" in res.stdout
    assert "dropped" not in res.stdout
