"""The remote TCP sender (actors/peer/sender.py): handshake, windows, congestion control,
loss recovery, SACK/DSACK, RTO, zero-window probes, FIN, RST, and loopback properties."""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.peer.congestion import CaState
from actors.peer.host import Peer
from actors.peer.impairments import ScriptedEvent, WireImpairments
from actors.peer.payload import payload_bytes
from actors.peer.scoreboard import IntervalSet
from actors.peer.sender import SENDER_COUNTERS, SenderConfig, TcpSender, TcpState
from actors.profiles import MS
from protocol import wire
from protocol.constants import TCP_RTO_MIN
from protocol.segment import Segment, TcpFlags, TcpOptions
from protocol.seq import SEQ_MASK, seq_add, seq_sub

TX = ("10.0.0.2", 40000)  # the peer (sender)
RX = ("10.0.0.1", 5001)  # the emulated receiver
IRS = 3_000_000_000  # the receiver's ISS: close to 2**32 so its sequence space wraps
MSS = 1448  # 1460 less the 12 bytes of timestamp option
FLOW = 1
ACK = TcpFlags.ACK
BIG = 0xFFFF  # a window field that, scaled by 7, is ~8 MB


def new_sender(total: int = 1_000_000, seed: int = 7, **cfg: object) -> TcpSender:
    return TcpSender(FLOW, TX[0], TX[1], RX[0], RX[1], total, random.Random(seed),
                     SenderConfig(**cfg))  # type: ignore[arg-type]


def synack(s: TcpSender, now: int, *, window: int = 65535, mss: int | None = 1460,
           wscale: int | None = 7, sack: bool = True, ts: bool = True) -> Segment:
    opts = TcpOptions(mss=mss, wscale=wscale, sack_permitted=sack,
                      timestamp=(now // MS, 0) if ts else None)
    return Segment(RX[0], RX[1], TX[0], TX[1], seq=IRS, ack=seq_add(s.iss, 1),
                   flags=TcpFlags.SYN | ACK, window=window, options=opts)


def from_rx(s: TcpSender, ack_off: int, *, window: int = BIG, flags: int = ACK,
            seq: int | None = None, sack: tuple[tuple[int, int], ...] = (),
            ts: tuple[int, int] | None = None, payload: bytes = b"") -> Segment:
    """A segment from the receiver acknowledging stream offset ``ack_off``.

    ``sack`` blocks are given as stream offsets. ``window`` is the raw 16-bit field.
    """
    blocks = tuple((s.seq_of(a), s.seq_of(b)) for a, b in sack)
    if ts is None and s.ts_ok:
        ts = (1, 0)
    return Segment(RX[0], RX[1], TX[0], TX[1], seq=s.rcv_nxt if seq is None else seq,
                   ack=s.seq_of(ack_off), flags=flags, window=window,
                   options=TcpOptions(timestamp=ts, sack_blocks=blocks), payload=payload)


def established(total: int = 1_000_000, *, rtt: int = 20 * MS, window: int = 65535,
                rx_sack: bool = True, rx_ts: bool = True, rx_wscale: int | None = 7,
                **cfg: object) -> tuple[TcpSender, list[Segment]]:
    """A sender whose SYN went out at 0 and whose SYN-ACK arrived at ``rtt``."""
    s = new_sender(total, **cfg)  # type: ignore[arg-type]
    s.connect(0)
    out = s.on_segment(synack(s, rtt, window=window, sack=rx_sack, ts=rx_ts,
                              wscale=rx_wscale), rtt)
    assert out[0].payload == b"" and out[0].flags == ACK  # the handshake's ACK
    return s, out[1:]


def offsets(s: TcpSender, segs: list[Segment]) -> list[tuple[int, int]]:
    """(stream offset, payload length) of each segment."""
    return [(seq_sub(g.seq, seq_add(s.iss, 1)), len(g.payload)) for g in segs]


def data_of(segs: list[Segment]) -> list[Segment]:
    return [g for g in segs if g.payload or g.has(TcpFlags.FIN)]


def check_payload(s: TcpSender, seg: Segment) -> None:
    off = seq_sub(seg.seq, seq_add(s.iss, 1))
    assert seg.payload == payload_bytes(FLOW, off, len(seg.payload))


# --------------------------------------------------------------------------- handshake


def test_syn_carries_linux_options_and_a_seeded_iss() -> None:
    s = new_sender(seed=3)
    (syn,) = s.connect(5 * MS + 123)
    assert s.iss == random.Random(3).getrandbits(32)
    assert syn.seq == s.iss and syn.flags == TcpFlags.SYN and syn.ack == 0
    assert syn.four_tuple == (*TX, *RX)
    opts = syn.options
    assert (opts.mss, opts.wscale, opts.sack_permitted) == (1460, 7, True)
    assert opts.timestamp == (5, 0)  # TSval is the millisecond clock
    assert syn.window == 65535
    assert s.state == TcpState.SYN_SENT
    assert s.next_deadline() == 5 * MS + 123 + 1000 * MS
    back = wire.decode(wire.encode(syn))
    assert (back.options.mss, back.options.wscale, back.options.sack_permitted,
            back.options.timestamp) == (1460, 7, True, (5, 0))
    assert new_sender(seed=3).connect(0)[0].seq == syn.seq  # deterministic per seed


def test_syn_options_follow_the_config() -> None:
    s = new_sender(mss=1000, wscale=None, sack=False, timestamps=False, ts_offset=9)
    (syn,) = s.connect(0)
    assert syn.options == TcpOptions(mss=1000)
    s = new_sender(wscale=2, ts_offset=1000)
    assert s.connect(7 * MS)[0].options.timestamp == (1007, 0)
    with pytest.raises(ValueError):
        SenderConfig(probe_style="bsd")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SenderConfig(wscale=15)


def test_syn_retransmits_with_exponential_backoff_then_gives_up() -> None:
    s = new_sender()
    (syn,) = s.connect(0)
    for expected_s in (1, 3, 7, 15, 31, 63):
        t = s.next_deadline()
        assert t == expected_s * 1000 * MS
        assert s.on_timer(t - 1) == []
        (again,) = s.on_timer(t)
        assert again.flags == TcpFlags.SYN and again.seq == syn.seq
        assert again.options.timestamp == (t // MS, 0)
    assert s.next_deadline() == 127 * 1000 * MS  # tcp_syn_retries=6: 127 s in all
    assert s.on_timer(127 * 1000 * MS) == []
    assert s.aborted and s.error == "ETIMEDOUT" and s.state == TcpState.CLOSE
    assert s.next_deadline() is None
    assert s.stats()["syn_retrans"] == 6


def test_synack_establishes_then_ack_then_initial_window_of_data() -> None:
    s = new_sender()
    s.connect(0)
    out = s.on_segment(synack(s, 20 * MS), 20 * MS)
    ack, *data = out
    assert ack.flags == ACK and ack.payload == b""
    assert ack.seq == seq_add(s.iss, 1) and ack.ack == seq_add(IRS, 1)
    assert ack.options.timestamp == (20, 20)  # TSecr echoes the SYN-ACK's TSval
    assert ack.window == 65535 >> 7  # our window, scaled by our shift
    assert s.state == TcpState.ESTABLISHED
    assert (s.sack_ok, s.ts_ok, s.snd_wscale, s.mss_now) == (True, True, 7, MSS)
    assert len(data) == 10  # IW10
    assert offsets(s, data) == [(i * MSS, MSS) for i in range(10)]
    for seg in data:
        check_payload(s, seg)
        assert seg.flags == ACK and seg.ack == seq_add(IRS, 1)
        assert seg.options.timestamp == (20, 20)
    # RTT of the SYN (never retransmitted): 20 ms; RTO = max(srtt + 4 rttvar, 200 ms).
    assert s.srtt == 20 * MS and s.rto == TCP_RTO_MIN
    assert s.next_deadline() == 20 * MS + TCP_RTO_MIN


def test_synack_without_options_falls_back() -> None:
    s = new_sender()
    s.connect(0)
    out = s.on_segment(synack(s, 5 * MS, mss=None, wscale=None, sack=False, ts=False),
                       5 * MS)
    assert (s.sack_ok, s.ts_ok, s.snd_wscale, s.rcv_wscale) == (False, False, 0, 0)
    assert s.mss_now == 536  # RFC 9293 default MSS
    assert out[0].options == TcpOptions() and out[0].window == 65535
    assert [len(g.payload) for g in out[1:]] == [536] * 10


def test_unacceptable_synack_is_ignored_and_rst_refuses() -> None:
    s = new_sender()
    s.connect(0)
    bad = synack(s, 5 * MS).with_(ack=seq_add(s.iss, 2))
    assert s.on_segment(bad, 5 * MS) == []
    assert s.state == TcpState.SYN_SENT and s.stats()["invalid_acks"] == 1
    rst = Segment(*RX, *TX, seq=0, ack=seq_add(s.iss, 1), flags=TcpFlags.RST | ACK)
    assert s.on_segment(rst, 6 * MS) == []
    assert s.error == "ECONNREFUSED" and s.next_deadline() is None


def test_retransmitted_synack_is_answered_with_an_ack() -> None:
    s, _ = established()
    out = s.on_segment(synack(s, 40 * MS), 40 * MS)
    assert len(out) == 1 and out[0].flags == ACK and out[0].ack == seq_add(IRS, 1)
    assert s.stats()["dup_syn"] == 1 and s.state == TcpState.ESTABLISHED


def test_lost_syns_start_with_one_segment_and_fallback_rto() -> None:
    # Two SYN retransmissions, no timestamps: no RTT sample is possible (Karn), so the
    # RTO falls back to 3 s and the first window is one segment (RFC 5681, RFC 6298).
    s = new_sender(timestamps=False)
    s.connect(0)
    s.on_timer(1000 * MS)
    s.on_timer(3000 * MS)
    out = s.on_segment(synack(s, 3050 * MS, ts=False), 3050 * MS)
    assert len(data_of(out)) == 1
    assert s.rto == 3000 * MS and s.srtt == 0


# --------------------------------------------------------------------------- windows


def test_sending_is_limited_by_the_receivers_window() -> None:
    s, data = established(window=4 * MSS)
    assert len(data) == 4  # cwnd allows 10; the window four
    assert s.in_flight == 4 and s.next_deadline() == 20 * MS + TCP_RTO_MIN
    # The next ACK's window is scaled by the receiver's shift (7): 113 << 7 = 14464.
    out = s.on_segment(from_rx(s, 4 * MSS, window=113), 30 * MS)
    assert s.snd_wnd == 113 << 7
    assert len(out) == (113 << 7) // MSS == 9
    # Window-limited, not cwnd-limited: cwnd does not grow (tcp_is_cwnd_limited).
    assert s.cwnd == 10
    assert offsets(s, out)[0] == (4 * MSS, MSS)


def test_a_segment_is_sent_only_when_it_fits_the_window_whole() -> None:
    s, data = established(window=3 * MSS + 1000)
    # Three full segments; the remaining 1000 bytes are not enough for a fourth.
    assert offsets(s, data) == [(0, MSS), (MSS, MSS), (2 * MSS, MSS)]


def test_mss_is_bounded_to_half_the_largest_window() -> None:
    s, data = established(window=2000)
    assert s.mss_now == 1000  # tcp_bound_to_half_wnd
    assert offsets(s, data) == [(0, 1000), (1000, 1000)]


def test_push_flag_on_forced_push_and_on_the_last_segment() -> None:
    s, data = established(total=40 * MSS)
    # max_window is 65535: a PSH once more than half of it was written since the last.
    pushed = [i for i, g in enumerate(data) if g.has(TcpFlags.PSH)]
    assert pushed == []
    out = s.on_segment(from_rx(s, 10 * MSS), 40 * MS)
    out += s.on_segment(from_rx(s, 20 * MSS), 41 * MS)
    psh = [off for (off, _), g in zip(offsets(s, out), out, strict=True)
           if g.has(TcpFlags.PSH)]
    # 65535 << 7 is now the largest window: no forced push before the end of the data.
    assert psh and psh[-1] == 39 * MSS
    assert out[-1].has(TcpFlags.FIN)


# --------------------------------------------------------------------------- cwnd


def test_slow_start_doubles_cwnd_every_round_trip() -> None:
    s, data = established(total=10**8)
    assert s.cwnd == 10 and s.ssthresh > 10**6
    now = 40 * MS
    sent = len(data)
    acked = 0
    for round_ in range(3):
        in_this_round = sent - acked
        new: list[Segment] = []
        for _ in range(in_this_round):
            acked += 1
            new += s.on_segment(from_rx(s, acked * MSS), now)
        sent += len(new)
        # Each ACK of one segment grows cwnd by one and releases two segments.
        assert len(new) == 2 * in_this_round
        assert s.cwnd == 10 * 2 ** (round_ + 1)
        now += 20 * MS
        s.check_invariants()


def test_congestion_avoidance_adds_one_segment_per_window() -> None:
    s, _ = established(total=10**8)
    s.ssthresh = 10  # as if a loss had set it
    for i in range(1, 11):
        s.on_segment(from_rx(s, i * MSS), 40 * MS + i)
        assert s.cwnd == (10 if i < 10 else 11)
    assert s.cwnd_cnt == 0


def test_delayed_acks_grow_cwnd_by_packets_acked() -> None:
    s, _ = established(total=10**8)
    s.on_segment(from_rx(s, 2 * MSS), 40 * MS)
    assert s.cwnd == 12


# --------------------------------------------------------------------------- loss recovery


def dupack(s: TcpSender, ack_off: int = 0) -> Segment:
    """An ACK whose window (511 << 7) equals the SYN-ACK's 65408: a window change would
    disqualify a duplicate ACK (RFC 5681 §2)."""
    return from_rx(s, ack_off, window=511)


def test_fast_retransmit_after_three_dupacks_without_sack() -> None:
    s, _ = established(total=10**7, rx_sack=False, window=65408)
    assert not s.sack_ok
    # Segment 0 is lost; segments 1.. each draw a duplicate ACK for offset 0.
    out1 = s.on_segment(dupack(s), 40 * MS)
    out2 = s.on_segment(dupack(s), 41 * MS)
    # Limited transmit: each early dupack lets one new segment out (RFC 3042).
    assert offsets(s, out1) == [(10 * MSS, MSS)] and offsets(s, out2) == [(11 * MSS, MSS)]
    assert s.ca_state == CaState.DISORDER
    out3 = s.on_segment(dupack(s), 42 * MS)
    assert offsets(s, out3) == [(0, MSS)]  # the retransmission, whatever cwnd says
    check_payload(s, out3[0])
    st_ = s.stats()
    assert (st_["dupacks"], st_["retrans_fast"], st_["recoveries"]) == (3, 1, 1)
    assert s.ca_state == CaState.RECOVERY
    assert s.ssthresh == 5 and s.cwnd == 5
    # More dupacks do not retransmit segment 0 again.
    more: list[Segment] = []
    for i in range(6):
        more += s.on_segment(dupack(s), 43 * MS + i)
    assert (0, MSS) not in offsets(s, more)
    assert s.stats()["retrans_fast"] == 1
    # The ACK covering everything sent before recovery began ends it: cwnd = ssthresh.
    s.on_segment(dupack(s, 12 * MSS), 60 * MS)
    assert s.ca_state == CaState.OPEN and s.cwnd == 5
    s.check_invariants()


def test_newreno_partial_ack_retransmits_the_next_hole_at_once() -> None:
    s, _ = established(total=10**7, rx_sack=False, window=65408)
    for i in range(3):
        s.on_segment(dupack(s), 40 * MS + i)
    assert s.ca_state == CaState.RECOVERY
    # Segments 0 and 3 were lost: the retransmitted 0 fills the first hole only.
    out = s.on_segment(dupack(s, 3 * MSS), 60 * MS)
    assert offsets(s, out)[0] == (3 * MSS, MSS)
    assert s.stats()["partial_acks"] == 1 and s.stats()["retrans_fast"] == 2
    assert s.ca_state == CaState.RECOVERY


def test_one_sack_showing_three_segments_above_a_hole_triggers_recovery() -> None:
    s, _ = established(total=10**7)
    # The first dupacks were lost: one ACK SACKs segments 1-3.
    out = s.on_segment(from_rx(s, 0, sack=((MSS, 4 * MSS),)), 40 * MS)
    assert offsets(s, out)[0] == (0, MSS)
    assert s.ca_state == CaState.RECOVERY
    assert s.stats()["dupacks"] == 1 and s.stats()["sacks"] == 1
    assert s.sacked_out == 3 and list(s.sacked_ranges) == [(MSS, 4 * MSS)]
    s.check_invariants()


def test_sack_with_fewer_than_three_segments_above_waits() -> None:
    s, _ = established(total=10**7)
    out = s.on_segment(from_rx(s, 0, sack=((MSS, 3 * MSS),)), 40 * MS)
    assert s.ca_state == CaState.DISORDER and s.stats()["retrans_fast"] == 0
    # Two segments SACKed left the network: two new segments may go (in_flight < cwnd).
    assert offsets(s, out) == [(10 * MSS, MSS), (11 * MSS, MSS)]


def test_sack_retransmits_only_the_holes() -> None:
    s, _ = established(total=10**7)
    # Segments 0 and 2 lost; 1 and 3-7 SACKed (most recent block first).
    out = s.on_segment(from_rx(s, 0, sack=((3 * MSS, 8 * MSS), (MSS, 2 * MSS))), 40 * MS)
    # Both holes lie below three SACKed segments: both are lost. cwnd is halved to 5;
    # in flight: 10 sent - 6 SACKed - 2 lost = 2, +2 retransmitted, +1 new = 5.
    assert offsets(s, out) == [(0, MSS), (2 * MSS, MSS), (10 * MSS, MSS)]
    assert s.lost_out == 2 and s.retrans_out == 2 and s.in_flight == 5
    s.check_invariants()


def test_sack_block_cutting_a_segment_splits_it() -> None:
    s, _ = established(total=10**7)
    s.on_segment(from_rx(s, 0, sack=((MSS + 500, 3 * MSS),)), 40 * MS)
    assert list(s.sacked_ranges) == [(MSS + 500, 3 * MSS)]
    s.check_invariants()


def test_invalid_and_old_sack_blocks_are_ignored() -> None:
    s, _ = established(total=10**7)
    # Beyond snd_nxt: invalid. Not counted as SACKed.
    s.on_segment(from_rx(s, 0, sack=((5 * MSS, 20 * MSS),)), 40 * MS)
    assert s.sacked_out == 0 and s.stats()["sack_blocks_invalid"] == 1


def test_dsack_is_counted_not_taken_as_loss() -> None:
    s, _ = established(total=10**7)
    s.on_segment(from_rx(s, 10 * MSS), 40 * MS)  # everything acked; 20 more in flight
    before = s.stats()
    for i in range(4):
        # A duplicate of segment 0 arrived: the first SACK block lies below the ACK.
        out = s.on_segment(from_rx(s, 10 * MSS, sack=((0, MSS),)), 41 * MS + i)
        assert out == []
    after = s.stats()
    assert after["dsacks"] - before["dsacks"] == 4
    assert after["dupacks"] == before["dupacks"] == 0
    assert after["retrans_fast"] == 0 and s.ca_state == CaState.OPEN
    assert s.sacked_out == 0


def test_dsack_inside_the_second_block_is_recognised() -> None:
    s, _ = established(total=10**7)
    # Segment 0 lost; 1-3 arrived, then 2 once more: blocks [2,3) inside [1,4).
    s.on_segment(from_rx(s, 0, sack=((2 * MSS, 3 * MSS), (MSS, 4 * MSS))), 40 * MS)
    assert s.stats()["dsacks"] == 1
    assert list(s.sacked_ranges) == [(MSS, 4 * MSS)] and s.sacked_out == 3


def test_sack_reneging_is_detected_and_repaired_by_rto() -> None:
    s, _ = established(total=10**7)
    # Segments 0 and 1 missing, 2-5 SACKed: both holes are lost; cwnd (halved to 5)
    # lets only the forced first retransmission go.
    out = s.on_segment(from_rx(s, 0, sack=((2 * MSS, 6 * MSS),)), 40 * MS)
    assert offsets(s, out) == [(0, MSS)] and s.lost_out == 2
    # The receiver pruned its out-of-order queue: the ACK stops at segment 2, which we
    # hold as SACKed. A short timer (max(srtt/2, 10 ms)) instead of the full RTO.
    s.on_segment(from_rx(s, 2 * MSS), 60 * MS)
    assert s.stats()["sack_reneging_suspected"] == 1
    assert s.next_deadline() == 60 * MS + 10 * MS
    out = s.on_timer(70 * MS)
    assert offsets(s, out) == [(2 * MSS, MSS)]  # SACK marks cleared, head resent
    assert s.stats()["sack_reneging"] == 1 and s.sacked_out == 0
    assert list(s.sacked_ranges) == []
    s.check_invariants()


# --------------------------------------------------------------------------- RTO


def test_rto_retransmits_the_head_with_backoff_and_slow_start() -> None:
    s, _ = established(total=10**7)
    t = s.next_deadline()
    assert t == 20 * MS + 200 * MS
    out = s.on_timer(t)
    assert offsets(s, out) == [(0, MSS)]  # cwnd 1: only the head
    assert (s.cwnd, s.ssthresh, s.ca_state) == (1, 5, CaState.LOSS)
    assert s.rto == 400 * MS and s.next_deadline() == t + 400 * MS
    t2 = t + 400 * MS
    assert offsets(s, s.on_timer(t2)) == [(0, MSS)]
    assert s.rto == 800 * MS and s.next_deadline() == t2 + 800 * MS
    assert s.ssthresh == 5  # not lowered again during the same loss episode
    st_ = s.stats()
    assert (st_["rto_count"], st_["retrans_rto"]) == (2, 2)
    # The head's ACK echoes the last retransmission's TSval: a valid RTT sample ends
    # the back-off; slow start from cwnd 1 retransmits the next two lost segments.
    tsval = t2 // MS
    out = s.on_segment(from_rx(s, MSS, ts=(1, tsval)), t2 + 20 * MS)
    assert s.rto == 200 * MS and s.backoff == 0
    assert s.cwnd == 2
    assert offsets(s, out) == [(MSS, MSS), (2 * MSS, MSS)]
    s.check_invariants()


def test_rto_backoff_kept_without_a_valid_sample() -> None:
    s, _ = established(total=10**7, rx_ts=False)
    t = s.next_deadline()
    assert t is not None
    s.on_timer(t)
    s.on_timer(t + 400 * MS)
    # Karn: the ACK covers only retransmitted data and there is no timestamp echo.
    s.on_segment(from_rx(s, MSS), t + 420 * MS)
    assert s.rto == 800 * MS and s.backoff == 2
    assert s.next_deadline() == t + 420 * MS + 800 * MS


def test_rto_gives_up_after_max_retries() -> None:
    s, _ = established(total=10**7, max_retries=3)
    for _ in range(3):
        s.on_timer(s.next_deadline())  # type: ignore[arg-type]
    assert not s.aborted
    assert s.on_timer(s.next_deadline()) == []  # type: ignore[arg-type]
    assert s.error == "ETIMEDOUT"


@pytest.mark.parametrize("resegment", [False, True])
def test_rto_retransmission_after_a_partial_ack(resegment: bool) -> None:
    s, _ = established(total=10**7, resegment=resegment)
    # The receiver acknowledged half of segment 0 (it trimmed what it could not keep).
    s.on_segment(from_rx(s, 724, window=0), 40 * MS)
    s.on_segment(from_rx(s, 724), 41 * MS)  # window reopens; segments 10.. go out
    out = s.on_timer(s.next_deadline())  # type: ignore[arg-type]
    if resegment:
        # A full MSS from snd_una, whatever the original cut.
        assert offsets(s, out) == [(724, MSS)]
    else:
        assert offsets(s, out) == [(724, MSS - 724)]
    check_payload(s, out[0])
    s.check_invariants()


@pytest.mark.parametrize("resegment", [False, True])
def test_resegmented_retransmissions_cover_small_original_segments(resegment: bool) -> None:
    # A 1000-byte first window bounds the MSS to 500; then the window grows.
    s, data = established(total=10**7, window=1000, resegment=resegment)
    assert offsets(s, data) == [(0, 500), (500, 500)]
    s.on_segment(from_rx(s, 0, window=BIG), 40 * MS)  # a pure window update
    assert s.mss_now == MSS
    t = s.next_deadline()
    assert t is not None
    first = s.on_timer(t)
    out = first + s.on_segment(from_rx(s, 0, ts=(1, t // MS)), t + 10 * MS)
    if resegment:
        assert offsets(s, first) == [(0, MSS)]
    else:
        assert offsets(s, first) == [(0, 500)]
    for seg in out:
        check_payload(s, seg)
    s.check_invariants()


# --------------------------------------------------------------------------- zero window


def test_zero_window_linux_probes_with_backoff() -> None:
    s, _ = established(total=10**7, rx_sack=False)
    out = s.on_segment(from_rx(s, 10 * MSS, window=0), 40 * MS)
    assert out == [] and s.packets_out == 0
    t = s.next_deadline()
    assert t == 40 * MS + 200 * MS  # persist timer: max(rto, 200 ms)
    (probe,) = s.on_timer(t)
    assert probe.payload == b"" and probe.flags == ACK
    assert probe.seq == (s.seq_of(10 * MSS) - 1) & SEQ_MASK  # snd_una - 1
    assert s.next_deadline() == t + 400 * MS
    t2 = t + 400 * MS
    s.on_timer(t2)
    assert s.next_deadline() == t2 + 800 * MS
    # The answer to a probe (still zero window) restarts the timer, keeps the back-off,
    # and is not a duplicate ACK.
    assert s.on_segment(from_rx(s, 10 * MSS, window=0), t2 + 20 * MS) == []
    assert s.next_deadline() == t2 + 20 * MS + 800 * MS
    assert s.stats()["dupacks"] == 0 and s.stats()["probes"] == 2
    # The window opens: data again, the retransmission timer replaces the persist timer.
    out = s.on_segment(from_rx(s, 10 * MSS, window=40), t2 + 30 * MS)
    assert offsets(s, out) == [(10 * MSS, MSS), (10 * MSS + MSS, MSS), (12 * MSS, MSS)]
    assert s.probe_backoff == 0 and s.next_deadline() == t2 + 30 * MS + s.rto


def test_zero_window_data_probes_send_the_next_byte() -> None:
    s, _ = established(total=10**7, probe_style="data")
    s.on_segment(from_rx(s, 10 * MSS, window=0), 40 * MS)
    t = s.next_deadline()
    assert t is not None
    (probe,) = s.on_timer(t)
    assert offsets(s, [probe]) == [(10 * MSS, 1)]
    check_payload(s, probe)
    # Unanswered: the same byte again, on the persist timer's back-off.
    t2 = s.next_deadline()
    assert t2 == t + 400 * MS
    (again,) = s.on_timer(t2)
    assert again.seq == probe.seq and again.payload == probe.payload
    assert s.stats()["retrans_probe"] == 1 and s.stats()["rto_count"] == 0
    # The receiver took the byte but its window is still shut: the next probe is the
    # byte after it.
    s.on_segment(from_rx(s, 10 * MSS + 1, window=0), t2 + 10 * MS)
    (third,) = s.on_timer(s.next_deadline())  # type: ignore[arg-type]
    assert offsets(s, [third]) == [(10 * MSS + 1, 1)]
    # Window opens: data resumes after the probe byte.
    out = s.on_segment(from_rx(s, 10 * MSS + 2, window=40), t2 + 2000 * MS)
    assert offsets(s, out)[0] == (10 * MSS + 2, MSS)
    s.check_invariants()


def test_window_smaller_than_a_segment_is_filled_by_the_probe() -> None:
    s, _ = established(total=10**7)
    s.on_segment(from_rx(s, 10 * MSS, window=7), 40 * MS)  # 7 << 7 = 896 bytes
    assert s.packets_out == 0
    (seg,) = s.on_timer(s.next_deadline())  # type: ignore[arg-type]
    assert offsets(s, [seg]) == [(10 * MSS, 896)]
    check_payload(s, seg)
    assert s.next_deadline() == s._rto_at  # now covered by the retransmission timer


def test_probes_unanswered_give_up() -> None:
    s, _ = established(total=10**7, max_retries=2)
    s.on_segment(from_rx(s, 10 * MSS, window=0), 40 * MS)
    s.on_timer(s.next_deadline())  # type: ignore[arg-type]
    s.on_timer(s.next_deadline())  # type: ignore[arg-type]
    assert not s.aborted
    s.on_timer(s.next_deadline())  # type: ignore[arg-type]
    assert s.error == "ETIMEDOUT"


# --------------------------------------------------------------------------- FIN


def test_fin_rides_on_the_last_segment_and_done_after_its_ack() -> None:
    s, data = established(total=3000)
    assert offsets(s, data) == [(0, MSS), (MSS, MSS), (2 * MSS, 3000 - 2 * MSS)]
    last = data[-1]
    assert last.flags == ACK | TcpFlags.PSH | TcpFlags.FIN
    assert s.state == TcpState.FIN_WAIT1 and not s.done
    s.on_segment(from_rx(s, 3000), 40 * MS)  # data acked, FIN not yet
    assert not s.done and s.state == TcpState.FIN_WAIT1
    s.on_segment(from_rx(s, 3001), 41 * MS)
    assert s.done and s.state == TcpState.FIN_WAIT2 and s.next_deadline() is None
    # The receiver closes too: its FIN is acknowledged; TIME_WAIT, then CLOSE.
    fin = from_rx(s, 3001, flags=TcpFlags.FIN | ACK)
    (ack,) = s.on_segment(fin, 50 * MS)
    assert ack.ack == seq_add(IRS, 2) and ack.seq == s.seq_of(3001)
    assert s.state == TcpState.TIME_WAIT
    assert s.next_deadline() == 50 * MS + 60_000 * MS
    # A retransmitted FIN is acknowledged again and restarts the 2MSL wait.
    (again,) = s.on_segment(fin, 60 * MS)
    assert again.ack == seq_add(IRS, 2)
    assert s.next_deadline() == 60 * MS + 60_000 * MS
    s.on_timer(s.next_deadline())  # type: ignore[arg-type]
    assert s.state == TcpState.CLOSE and s.done


def test_fin_goes_alone_when_the_window_has_no_room_for_it() -> None:
    s, data = established(total=2 * MSS, window=2 * MSS)
    assert [g.has(TcpFlags.FIN) for g in data] == [False, False]
    out = s.on_segment(from_rx(s, 2 * MSS, window=BIG), 40 * MS)
    (fin,) = out
    assert fin.payload == b"" and fin.flags == ACK | TcpFlags.FIN
    assert fin.seq == s.seq_of(2 * MSS)


def test_empty_flow_sends_only_a_fin() -> None:
    s, data = established(total=0)
    (fin,) = data
    assert fin.flags == ACK | TcpFlags.FIN and fin.seq == seq_add(s.iss, 1)
    s.on_segment(from_rx(s, 1), 30 * MS)
    assert s.done


def test_receiver_fin_first_then_our_fin_last_ack() -> None:
    s, _ = established(total=12 * MSS)
    (ack,) = s.on_segment(from_rx(s, 0, flags=TcpFlags.FIN | ACK), 30 * MS)
    assert s.state == TcpState.CLOSE_WAIT and ack.ack == seq_add(IRS, 2)
    out = s.on_segment(from_rx(s, 4 * MSS), 40 * MS)  # in CLOSE_WAIT data still flows
    assert offsets(s, out)[-1] == (11 * MSS, MSS) and out[-1].has(TcpFlags.FIN)
    assert s.state == TcpState.LAST_ACK
    s.on_segment(from_rx(s, 12 * MSS + 1), 50 * MS)
    assert s.state == TcpState.CLOSE and s.done


def test_fin_retransmitted_by_rto() -> None:
    s, data = established(total=100)
    (seg,) = data
    assert seg.has(TcpFlags.FIN)
    (again,) = s.on_timer(s.next_deadline())  # type: ignore[arg-type]
    assert again.has(TcpFlags.FIN) and again.payload == seg.payload


# --------------------------------------------------------------------------- RST


def test_rst_at_rcv_nxt_resets_the_flow() -> None:
    s, _ = established()
    assert s.on_segment(from_rx(s, 0, flags=TcpFlags.RST), 30 * MS) == []
    assert s.aborted and s.error == "ECONNRESET" and s.state == TcpState.CLOSE
    assert s.next_deadline() is None and not s.done and s.finished
    assert s.stats()["rst_received"] == 1
    assert s.on_segment(from_rx(s, 10 * MSS), 40 * MS) == []  # nothing more happens


def test_rst_in_window_draws_a_challenge_ack() -> None:
    s, _ = established()
    rst = from_rx(s, 0, flags=TcpFlags.RST, seq=seq_add(s.rcv_nxt, 100))
    (ack,) = s.on_segment(rst, 30 * MS)
    assert ack.flags == ACK and ack.ack == s.rcv_nxt
    assert not s.aborted and s.stats()["challenge_acks"] == 1


def test_rst_out_of_window_is_ignored() -> None:
    s, _ = established()
    rst = from_rx(s, 0, flags=TcpFlags.RST, seq=seq_add(s.rcv_nxt, 1 << 20))
    assert s.on_segment(rst, 30 * MS) == []
    assert not s.aborted and s.stats()["rst_ignored"] == 1


# --------------------------------------------------------------------------- robustness


def test_ack_of_unsent_data_is_discarded() -> None:
    s, _ = established()
    out = s.on_segment(from_rx(s, 50 * MSS, payload=b"x"), 30 * MS)
    assert s.snd_una == 0 and s.stats()["invalid_acks"] == 1
    assert len(out) == 1 and out[0].payload == b""  # a dupack answers the data


def test_old_pure_acks_are_dropped_with_rate_limited_dupacks() -> None:
    s, _ = established()
    old = from_rx(s, 5 * MSS, seq=seq_add(s.rcv_nxt, -10))
    assert len(s.on_segment(old, 30 * MS)) == 1
    assert s.on_segment(old, 31 * MS) == []  # within tcp_invalid_ratelimit
    assert s.snd_una == 0 and s.stats()["oow_acks_skipped"] == 1


def test_misrouted_segment_is_ignored() -> None:
    s, _ = established()
    seg = from_rx(s, MSS).with_(sport=1)
    assert s.on_segment(seg, 30 * MS) == [] and s.stats()["misrouted"] == 1


def test_stats_report_the_state() -> None:
    s, _ = established(total=10**6)
    st_ = s.stats()
    assert st_["state"] == TcpState.ESTABLISHED == 1
    assert st_["cwnd"] == 10 and st_["srtt_us"] == 20_000 and st_["snd_una"] == 0
    assert st_["segments_sent"] == 12 and st_["bytes_sent"] == 10 * MSS
    assert set(st_) >= {"retrans_fast", "retrans_rto", "retrans_probe", "dupacks", "sacks",
                        "dsacks", "rto_count", "ssthresh"}


# --------------------------------------------------------------------------- IntervalSet


def test_interval_set_merges_and_reports_fresh_ranges() -> None:
    iv = IntervalSet()
    assert iv.add(10, 20) == [(10, 20)]
    assert iv.add(30, 40) == [(30, 40)]
    assert iv.add(15, 35) == [(20, 30)]
    assert list(iv) == [(10, 40)]
    assert iv.add(40, 45) == [(40, 45)] and list(iv) == [(10, 45)]
    assert iv.add(12, 13) == []
    iv.trim_below(20)
    assert list(iv) == [(20, 45)] and 20 in iv and 45 not in iv


@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=30),
       st.integers(0, 60))
def test_interval_set_matches_a_set_of_points(ops: list[tuple[int, int]], cut: int) -> None:
    iv = IntervalSet()
    model: set[int] = set()
    for a, b in ops:
        fresh = iv.add(a, b)
        new_points = {p for s, e in fresh for p in range(s, e)}
        assert new_points == set(range(a, b)) - model
        model |= set(range(a, b))
        assert {p for s, e in iv for p in range(s, e)} == model
        pairs = list(iv)
        assert all(e1 < s2 for (_, e1), (s2, _) in itertools.pairwise(pairs))
    iv.trim_below(cut)
    assert {p for s, e in iv for p in range(s, e)} == {p for p in model if p >= cut}


# --------------------------------------------------------------------------- loopback


@dataclass
class TinyReceiver:
    """A minimal, correct receiver: reassembles in order, ACKs every data segment at once.

    ``sack`` adds SACK blocks (and a DSACK for a duplicate). ``capacity`` is its buffer;
    the advertised window is what the application has not read yet subtracted from it,
    so the right edge never moves left. :meth:`read` is the application.
    """

    sack: bool
    capacity: int = 1 << 20
    wscale: int | None = 7
    irs: int = 99
    isn: int | None = None
    data: bytearray = field(default_factory=bytearray)
    read_pos: int = 0
    ofo: dict[int, bytes] = field(default_factory=dict)
    fin_at: int | None = None
    fin: bool = False
    ts_recent: int = 0
    ts_ok: bool = False
    scale: int = 0
    last_window: int = 0
    reply_to: tuple[str, int, str, int] = (*RX, *TX)
    renege: float = 0.0  # chance per data segment of dropping the out-of-order queue
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def window(self) -> int:
        return max(self.capacity - (len(self.data) - self.read_pos), 0)

    def _seg(self, now: int, flags: int, ack: int, blocks: tuple = (),
             options: TcpOptions | None = None) -> Segment:
        assert self.isn is not None
        win = self.window()
        self.last_window = (win >> self.scale) << self.scale
        if options is None:
            options = TcpOptions(
                timestamp=(now // MS, self.ts_recent) if self.ts_ok else None,
                sack_blocks=blocks)
        src, sport, dst, dport = self.reply_to
        return Segment(src, sport, dst, dport, seq=seq_add(self.irs, 1), ack=ack,
                       flags=flags, window=min(win >> self.scale, 0xFFFF), options=options)

    def _ack_seq(self) -> int:
        assert self.isn is not None
        return seq_add(self.isn, 1 + len(self.data) + self.fin)

    def on_segment(self, seg: Segment, now: int) -> list[Segment]:
        if seg.has(TcpFlags.SYN):
            self.isn = seg.seq
            self.reply_to = (seg.dst, seg.dport, seg.src, seg.sport)
            self.ts_ok = seg.options.timestamp is not None
            if self.ts_ok:
                self.ts_recent = seg.options.timestamp[0]  # type: ignore[index]
            if seg.options.wscale is not None and self.wscale is not None:
                self.scale = self.wscale
            opts = TcpOptions(mss=1460, wscale=self.wscale if seg.options.wscale is not None
                              else None, sack_permitted=self.sack and
                              seg.options.sack_permitted,
                              timestamp=(now // MS, self.ts_recent) if self.ts_ok else None)
            out = self._seg(now, TcpFlags.SYN | ACK, seq_add(seg.seq, 1), options=opts)
            return [out.with_(seq=self.irs, window=min(self.window(), 0xFFFF))]
        if self.isn is None:
            return []
        base = seq_add(self.isn, 1)
        off = seq_sub(seg.seq, base)
        if self.ts_ok and seg.options.timestamp and off <= len(self.data):
            self.ts_recent = seg.options.timestamp[0]
        if not seg.payload and not seg.has(TcpFlags.FIN):
            if off == len(self.data) + self.fin:
                return []  # a pure ACK
            return [self._seg(now, ACK, self._ack_seq())]  # e.g. a zero-window probe
        if self.renege and self.rng.random() < self.renege:
            self.ofo.clear()  # like tcp_prune_ofo_queue: SACKed data thrown away
        dsack: tuple[int, int] | None = None
        end = off + len(seg.payload)
        whole = True
        if seg.payload:
            rcv = len(self.data)
            right = rcv + self.window()
            start, stop = max(off, rcv), min(end, right)
            whole = stop == end
            if end <= rcv:
                dsack = (off, end)
            elif start < stop:
                chunk = seg.payload[start - off:stop - off]
                if start == rcv:
                    self.data += chunk
                elif start in self.ofo and len(self.ofo[start]) >= len(chunk):
                    dsack = (start, stop)
                else:
                    self.ofo[start] = chunk
        if seg.has(TcpFlags.FIN) and whole and end <= len(self.data) + self.window():
            self.fin_at = end
        self._drain()
        blocks: list[tuple[int, int]] = []
        if self.sack:
            if dsack is not None:
                blocks.append(dsack)
            ranges = sorted((o, o + len(p)) for o, p in self.ofo.items())
            merged: list[list[int]] = []
            for a, b in ranges:
                if merged and a <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], b)
                else:
                    merged.append([a, b])
            merged.sort(key=lambda r: not (r[0] <= off < r[1]))  # the newest block first
            blocks += [(a, b) for a, b in merged]
            blocks = blocks[:3 if self.ts_ok else 4]
        wire_blocks = tuple((seq_add(base, a), seq_add(base, b)) for a, b in blocks)
        return [self._seg(now, ACK, self._ack_seq(), wire_blocks)]

    def _drain(self) -> None:
        progressed = True
        while progressed:
            progressed = False
            for o in sorted(self.ofo):
                p = self.ofo[o]
                if o <= len(self.data):
                    del self.ofo[o]
                    if o + len(p) > len(self.data):
                        self.data += p[len(self.data) - o:]
                    progressed = True
                    break
        if self.fin_at is not None and self.fin_at == len(self.data):
            self.fin = True

    def read(self, n: int, now: int) -> list[Segment]:
        """The application reads up to ``n`` bytes; a window update when it matters."""
        before_ = self.last_window
        self.read_pos = min(self.read_pos + n, len(self.data))
        after_ = (self.window() >> self.scale) << self.scale
        if self.isn is not None and ((before_ == 0 and after_ > 0) or after_ - before_ >= MSS):
            return [self._seg(now, ACK, self._ack_seq())]
        return []


def run_loopback(sender: TcpSender, rx: TinyReceiver, *, seed: int, loss: float,
                 jitter: int, base_delay: int = 5 * MS, read_every: int | None = None,
                 read_bytes: int = 0, max_steps: int = 40_000) -> int:
    """Drive a sender and a receiver over a lossy, reordering channel on a virtual clock.

    Returns the number of steps taken. Checks the sender's scoreboard after every step.
    """
    rng = random.Random(seed)
    events: list[tuple[int, int, str, Segment | None]] = []
    order = itertools.count()

    def send(segs: list[Segment], now: int, to: str) -> None:
        for seg in segs:
            if rng.random() < loss:
                continue
            delay = base_delay + int(rng.random() * jitter)
            heapq.heappush(events, (now + delay, next(order), to, seg))

    now = 0
    send(sender.connect(now), now, "rx")
    reading = False  # a read is scheduled; the application reads only while data waits
    for step in range(max_steps):
        if sender.finished and rx.fin and not events:
            return step
        deadline = sender.next_deadline()
        if events and (deadline is None or events[0][0] <= deadline):
            now, _, kind, seg = heapq.heappop(events)
            if kind == "rx":
                assert seg is not None
                send(rx.on_segment(seg, now), now, "tx")
            elif kind == "tx":
                assert seg is not None
                send(sender.on_segment(seg, now), now, "rx")
            else:
                reading = False
                send(rx.read(read_bytes, now), now, "tx")
            if read_every is not None and not reading and rx.read_pos < len(rx.data):
                reading = True
                heapq.heappush(events, (now + read_every, next(order), "read", None))
        elif deadline is not None:
            now = deadline
            send(sender.on_timer(now), now, "rx")
        else:
            return step
        sender.check_invariants()
    raise AssertionError(f"no end after {max_steps} steps: {sender.stats()}")


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), loss=st.floats(0.0, 0.2),
       jitter=st.integers(0, 15 * MS), total=st.integers(0, 80_000),
       resegment=st.booleans(), timestamps=st.booleans())
def test_loopback_cumulative_receiver_gets_exactly_the_payload(
        seed: int, loss: float, jitter: int, total: int, resegment: bool,
        timestamps: bool) -> None:
    sender = TcpSender(FLOW, TX[0], TX[1], RX[0], RX[1], total, random.Random(seed),
                       SenderConfig(resegment=resegment, timestamps=timestamps,
                                    max_retries=40, syn_retries=40))
    rx = TinyReceiver(sack=False)
    run_loopback(sender, rx, seed=seed, loss=loss, jitter=jitter)
    assert sender.done, sender.stats()
    assert rx.fin and bytes(rx.data) == payload_bytes(FLOW, 0, total)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), loss=st.floats(0.0, 0.2),
       jitter=st.integers(0, 15 * MS), total=st.integers(1, 80_000),
       resegment=st.booleans(), probe_style=st.sampled_from(["linux", "data"]),
       capacity=st.sampled_from([4096, 20_000, 1 << 20]),
       renege=st.sampled_from([0.0, 0.0, 0.05]))
def test_loopback_sack_receiver_with_a_slow_reader(
        seed: int, loss: float, jitter: int, total: int, resegment: bool,
        probe_style: str, capacity: int, renege: float) -> None:
    sender = TcpSender(FLOW, TX[0], TX[1], RX[0], RX[1], total, random.Random(seed),
                       SenderConfig(resegment=resegment, probe_style=probe_style,  # type: ignore[arg-type]
                                    max_retries=40, syn_retries=40))
    rx = TinyReceiver(sack=True, capacity=capacity, renege=renege,
                      rng=random.Random(seed ^ 0x5A5A))
    run_loopback(sender, rx, seed=seed, loss=loss, jitter=jitter, read_every=30 * MS,
                 read_bytes=3000)
    assert sender.done, sender.stats()
    assert rx.fin and bytes(rx.data) == payload_bytes(FLOW, 0, total)


def test_loopback_without_loss_has_no_retransmissions() -> None:
    sender = new_sender(total=500_000)
    rx = TinyReceiver(sack=True)
    run_loopback(sender, rx, seed=1, loss=0.0, jitter=0)
    st_ = sender.stats()
    assert sender.done and bytes(rx.data) == payload_bytes(FLOW, 0, 500_000)
    assert st_["segments_retransmitted"] == 0 and st_["rto_count"] == 0
    assert st_["bytes_sent"] == 500_000


# --------------------------------------------------------------------------- Peer


def two_flow_peer(**kw: object) -> tuple[Peer, TcpSender, TcpSender]:
    a = TcpSender(1, TX[0], 40000, RX[0], RX[1], 50_000, random.Random(1))
    b = TcpSender(2, TX[0], 40001, RX[0], RX[1], 50_000, random.Random(2))
    return Peer([a, b], **kw), a, b  # type: ignore[arg-type]


def assert_peer_stats_are_the_flows_sums(peer: Peer, senders: list[TcpSender]) -> None:
    """Peer keeps its totals by the difference of the flows that changed; they must be
    what adding up every flow from scratch gives."""
    stats = peer.stats()
    for name in SENDER_COUNTERS:
        assert stats[name] == sum(s.counters[name] for s in senders), name
    assert stats["flows_done"] == sum(s.done for s in senders)
    assert stats["flows_aborted"] == sum(s.aborted for s in senders)
    assert peer.stats_by_name() == {peer.names[s.four_tuple]: s.stats() for s in senders}
    assert peer.done == all(s.finished for s in senders)


def test_peer_hands_the_trace_only_the_flows_that_moved() -> None:
    peer, a, b = two_flow_peer()
    peer.connect(0)
    assert {s for _, s in peer.take_touched()} == {a, b} and peer.take_touched() == []
    peer.on_frame(wire.encode(synack(b, 10 * MS).with_(dport=40001)), 10 * MS)
    assert [s for _, s in peer.take_touched()] == [b]
    assert_peer_stats_are_the_flows_sums(peer, [a, b])
    t = b.next_deadline()
    assert t is not None and t < 1000 * MS  # b's RTO comes before a's SYN retransmission
    peer.on_timer(t)
    assert [s for _, s in peer.take_touched()] == [b]
    peer.on_timer(1000 * MS)
    assert a in {s for _, s in peer.take_touched()}
    assert_peer_stats_are_the_flows_sums(peer, [a, b])


def test_peer_routes_by_four_tuple_and_encodes_frames() -> None:
    peer, a, b = two_flow_peer()
    frames = peer.connect(0)
    assert len(frames) == 2 and peer.next_deadline() == 1000 * MS  # the SYNs' RTO
    syns = [wire.decode(f) for f in frames]
    assert {g.sport for g in syns} == {40000, 40001}
    assert all(g.flags == TcpFlags.SYN for g in syns)
    reply = synack(b, 10 * MS).with_(dport=40001)
    assert peer.route(reply) is b
    out = peer.on_frame(wire.encode(reply), 10 * MS)
    segs = [wire.decode(f) for f in out]
    assert b.state == TcpState.ESTABLISHED and a.state == TcpState.SYN_SENT
    assert all(g.sport == 40001 for g in segs) and len(segs) == 11  # ACK + IW10
    with pytest.raises(ValueError):
        peer.add(TcpSender(3, TX[0], 40000, RX[0], RX[1], 1, random.Random(3)))


def test_peer_counts_bad_and_unknown_frames() -> None:
    peer, a, _ = two_flow_peer()
    peer.connect(0)
    frame = bytearray(wire.encode(synack(a, 10 * MS)))
    frame[-1] ^= 0xFF
    assert peer.on_frame(bytes(frame), 10 * MS) == []
    stranger = synack(a, 10 * MS).with_(dport=999)
    assert peer.on_frame(wire.encode(stranger), 10 * MS) == []
    assert peer.stats()["bad_frames"] == 1 and peer.stats()["unknown_flow"] == 1


def test_peer_applies_data_path_impairments() -> None:
    peer, _, _ = two_flow_peer(impairments=WireImpairments(delay_ns=3 * MS))
    assert peer.connect(100) == []  # delayed: nothing is due yet
    assert peer.next_deadline() == 100 + 3 * MS
    assert peer.on_timer(100 + 3 * MS - 1) == []
    assert len(peer.on_timer(100 + 3 * MS)) == 2 and len(peer.wire) == 0
    peer, _, _ = two_flow_peer(impairments=WireImpairments(
        events=(ScriptedEvent("drop", nth=1, match="any"),)))
    assert len(peer.connect(0)) == 0  # each flow's first frame dropped
    assert peer.stats()["wire_scripted_dropped"] == 2


def test_peer_delays_acks_through_the_ack_path() -> None:
    peer, a, _ = two_flow_peer(ack_impairments=WireImpairments.ack_path(delay_ns=7 * MS))
    peer.connect(0)
    assert peer.on_frame(wire.encode(synack(a, 10 * MS)), 10 * MS) == []
    assert a.state == TcpState.SYN_SENT
    assert peer.next_deadline() == 17 * MS
    out = peer.on_timer(17 * MS)
    assert a.state == TcpState.ESTABLISHED and len(out) == 11


def test_peer_loopback_over_an_impaired_wire() -> None:
    """Frames both ways, loss, duplication, reordering and corruption on the data path."""
    senders = [TcpSender(i, TX[0], 41000 + i, RX[0], RX[1], 60_000, random.Random(i),
                         SenderConfig(max_retries=40)) for i in range(3)]
    peer = Peer(senders, impairments=WireImpairments(
        loss=0.05, duplicate=0.05, reorder=0.1, reorder_gap_ns=2 * MS, corrupt=0.05,
        delay_ns=2 * MS, seed=5), ack_impairments=WireImpairments.ack_path(
        loss=0.05, delay_ns=2 * MS, seed=6))
    receivers = {s.sport: TinyReceiver(sack=True) for s in senders}
    wire_q: list[tuple[int, int, bytes]] = []
    order = itertools.count()
    for f in peer.connect(0):
        heapq.heappush(wire_q, (0, next(order), f))
    now = 0
    bad = 0
    for step in range(50_000):
        if peer.done:
            break
        if step % 97 == 0:
            assert_peer_stats_are_the_flows_sums(peer, senders)
        deadline = peer.next_deadline()
        if wire_q and (deadline is None or wire_q[0][0] <= deadline):
            now, _, frame = heapq.heappop(wire_q)
            try:
                seg = wire.decode(frame)
            except wire.MalformedPacket:
                bad += 1
                continue
            for reply in receivers[seg.sport].on_segment(seg, now):
                for f in peer.on_frame(wire.encode(reply), now):
                    heapq.heappush(wire_q, (now, next(order), f))
        else:
            assert deadline is not None
            now = deadline
            for f in peer.on_timer(now):
                heapq.heappush(wire_q, (now, next(order), f))
    assert peer.done and not any(s.aborted for s in senders)
    for s in senders:
        assert bytes(receivers[s.sport].data) == payload_bytes(s.flow_id, 0, 60_000)
    assert_peer_stats_are_the_flows_sums(peer, senders)
    stats = peer.stats()
    assert stats["flows_done"] == 3 and stats["wire_corrupted"] > 0
    assert bad >= stats["wire_corrupted"] - stats["wire_holding"]


def test_peer_opens_each_flow_at_its_start_offset_and_reports_done_once() -> None:
    a = TcpSender(1, TX[0], 40000, RX[0], RX[1], 0, random.Random(1))
    b = TcpSender(2, TX[0], 40001, RX[0], RX[1], 0, random.Random(2))
    peer = Peer()
    peer.add(a, name="early")
    peer.add(b, start_ns=50 * MS, name="late")
    assert peer.next_deadline() is None  # nothing happens before the host starts
    (syn,) = peer.start(10 * MS)
    assert wire.decode(syn).sport == 40000 and not b.opened
    assert peer.next_deadline() == 60 * MS
    assert peer.on_timer(60 * MS - 1) == []
    (syn,) = peer.on_timer(60 * MS)
    assert wire.decode(syn).sport == 40001 and b.opened
    assert not peer.newly_done() and peer.outcomes() == {"early": "ok", "late": "ok"}
    a._abort("ETIMEDOUT")
    b._abort("ECONNRESET")
    assert peer.newly_done() and not peer.newly_done()
    assert peer.outcomes() == {"early": "ETIMEDOUT", "late": "ECONNRESET"}
    assert set(peer.stats_by_name()) == {"early", "late"}
