"""Rules pinned to the kernel functions that define them (4.13 for legacy, 6.18.y for
modern): the initial window, sk_sndbuf, skb coalescing, tcp_can_ingest, the deferred
delayed ACK. Each test names the function it checks."""

from __future__ import annotations

import pytest

from actors.profiles import MS, get_profile
from actors.stack.net import Transmit
from actors.stack.skb import (
    MAX_SKB_FRAGS,
    RX_BUFFER_SIZE,
    SKB_STRUCT_SIZE,
    Skb,
    device_skb_room,
    skb_try_coalesce,
)
from actors.stack.sock import AckPending
from actors.stack.tcp_input import tcp_can_ingest, tcp_sndbuf_expand
from actors.stack.tcp_output import tcp_default_init_rwnd, tcp_send_ack, tcp_send_delayed_ack
from actors.stack.tcp_timer import tcp_delack_timer, tcp_release_cb
from protocol.segment import Segment, TcpOptions
from protocol.sockops import LockSock, ReleaseSock
from tests.stack_harness import Conn, connect, read_all

PROFILES = ("legacy", "modern")
TRUESIZE_SMALL = RX_BUFFER_SIZE + SKB_STRUCT_SIZE  # one 2 KiB NIC buffer + sk_buff


def payload(n: int, start: int = 0) -> bytes:
    return bytes((start + i) % 251 for i in range(n))


def mib(c: Conn, name: str) -> int:
    return c.stack.net.mib[name]


def acks(c: Conn) -> list[Segment]:
    return c.acks()


def lock(c: Conn) -> None:
    assert c.stack.sock_op("holder", LockSock(c.sock), c.now) is not None
    c.collect()


def release(c: Conn) -> None:
    c.stack.sock_op("holder", ReleaseSock(c.sock), c.now)
    c.collect()


# ---------------------------------------------------------------- tcp_select_initial_window


@pytest.mark.parametrize(("ts", "window"), [(False, 29200), (True, 28960)])
def test_legacy_initial_window_is_tcp_default_init_rwnd(ts: bool, window: int) -> None:
    """4.13 tcp_select_initial_window caps rcv_wnd at tcp_default_init_rwnd(mss) * mss,
    TCP_INIT_CWND * 2 = 20 segments (mss 1460, or 1448 with timestamps), when
    mss > 1 << rcv_wscale; rcv_ssthresh (tcp_openreq_init_rwin), rcvq_space
    (tcp_init_buffer_space) and the first quickack credits (tcp_incr_quickack) follow."""
    c = connect("legacy", ts=ts)
    sk = c.sk
    assert c.sent[0].window == window
    assert sk.rcv_wnd == window and sk.rcv_ssthresh == window and sk.rcvq_space == window
    mss = window // 20
    c.deliver(c.segment(0, payload(mss)))
    # rcv_wnd / (2 * rcv_mss) = 10; tcp_grow_window's quick |= 1 makes 11; one ACK spent
    assert sk.icsk_ack.quick == 10


def test_tcp_default_init_rwnd_scales_down_above_1460() -> None:
    """tcp_default_init_rwnd: 20 segments up to a 1460-byte mss, then
    max(1460 * 20 / mss, 2)."""
    assert tcp_default_init_rwnd(20, 1460) == 20
    assert tcp_default_init_rwnd(20, 536) == 20
    assert tcp_default_init_rwnd(20, 4000) == 7
    assert tcp_default_init_rwnd(20, 65000) == 2


def test_modern_initial_rcv_wnd_is_not_capped_at_64k() -> None:
    """6.10+ tcp_select_initial_window ("tcp: remove 64 KByte limit for initial
    tp->rcv_wnd value"): rcv_wnd = space, rounded to the mss; only the SYN-ACK's
    header field is min(rcv_wnd, 65535) (tcp_make_synack). With SO_RCVBUF 212992 the
    first ACK offers about 211 KB, not 64 KB."""
    c = connect("modern", ts=True, rcvbuf=212992)
    sk = c.sk
    assert c.sent[0].window == 65535
    space = 212992  # tcp_full_space: 425984 * 128 / 256
    assert sk.rcv_wnd == space - space % 1448 == 212856
    # tcp_init_buffer_space: window_clamp one advmss below the full space (advmss is
    # already 1448 there for a timestamp flow: tcp_rcv_state_process, 6.16+)
    assert sk.rcv_ssthresh == sk.window_clamp == space - 1448
    c.deliver(c.segment(0, payload(1448)))
    win = acks(c)[-1].window << sk.rx_opt.rcv_wscale
    assert win > 200_000


# ---------------------------------------------------------------- tcp_sndbuf_expand


@pytest.mark.parametrize("profile", PROFILES)
def test_sndbuf_expanded_at_established(profile: str) -> None:
    """tcp_init_buffer_space calls tcp_sndbuf_expand in both kernels: 2 * TCP_INIT_CWND
    * (roundup_pow_of_two(mss_clamp + MAX_TCP_HEADER + shinfo) + sk_buff)
    = 20 * (4096 + 256) = 87040 for a 1460-byte mss; the backlog limit counts it."""
    c = connect(profile)
    sk = c.sk
    assert sk.sndbuf == 87040
    prof = get_profile(profile)
    limit = prof.backlog_limit(sk.rcvbuf, sk.sndbuf)
    expect = (sk.rcvbuf + 87040 + 65536 if profile == "legacy"
              else 2 * sk.rcvbuf + 87040 // 2 + 65536)
    assert limit == expect


def test_sndbuf_expand_never_shrinks_and_respects_wmem_max() -> None:
    """tcp_sndbuf_expand only raises sk_sndbuf, and at most to tcp_wmem[2]."""
    assert connect("modern", tcp_wmem=(4096, 262144, 4194304)).sk.sndbuf == 262144
    assert connect("modern", tcp_wmem=(4096, 16384, 65536)).sk.sndbuf == 65536


def test_sndbuf_expand_follows_the_peer_mss() -> None:
    """per_mss from max(mss_clamp, mss_cache): a 536-byte peer MSS needs 2 KiB skbs,
    20 * (2048 + 256) = 46080."""
    c = connect("legacy")
    sk = c.sk
    sk.sndbuf = 16384
    sk.rx_opt.mss_clamp = sk.mss_cache = 536
    tcp_sndbuf_expand(sk)
    assert sk.sndbuf == 46080


# ---------------------------------------------------------------- skb_try_coalesce


def test_skb_try_coalesce_copies_into_tailroom_for_free() -> None:
    """skb_try_coalesce: a payload no larger than skb_tailroom(to) is copied there and
    *delta_truesize is 0; once a head is stolen the skb is non-linear (tailroom 0)."""
    nr, room = device_skb_room("nic", 20 + 20 + 100)
    assert nr == 0 and room == RX_BUFFER_SIZE - 320 - 64 - (14 + 140)
    c = connect("modern")
    sk = c.sk
    off = 0
    for _ in range(15):
        c.deliver(c.segment(off, payload(100, off)))
        off += 100
    # 15 x 100 bytes share the first frame's 2 KiB buffer
    assert len(sk.receive_queue) == 1 and sk.rmem_alloc == TRUESIZE_SMALL
    assert mib(c, "TcpExtTCPRcvCoalesce") == 14
    assert read_all(c).data == payload(1500)


@pytest.mark.parametrize("profile", PROFILES)
def test_receive_queue_skb_holds_at_most_max_skb_frags_heads(profile: str) -> None:
    """skb_try_coalesce steals a head only while to.nr_frags + from.nr_frags <
    MAX_SKB_FRAGS: one skb carries its own buffer plus 17 stolen ones (18 segments),
    each stolen one charged truesize - sizeof(struct sk_buff)."""
    c = connect(profile)
    sk = c.sk
    off = 0
    for _ in range(20):
        c.deliver(c.segment(off, payload(1460, off)))
        off += 1460
    first = sk.receive_queue[0]
    assert first.frags == MAX_SKB_FRAGS and first.len == 18 * 1460
    assert first.truesize == TRUESIZE_SMALL + 17 * (TRUESIZE_SMALL - SKB_STRUCT_SIZE)
    assert len(sk.receive_queue) == 2
    assert read_all(c).data == payload(off)


def test_tun_kmalloc_head_coalesces_only_by_copy() -> None:
    """tun's kmalloc'd head is locked (skb_head_is_locked), but its slab slack is
    tailroom: a small payload is still copied into it."""
    a = Skb(0, 100, 0x10, 0, 0, TcpOptions(), b"a" * 100, 1280, head_frag=False)
    a.frags, a.tailroom = device_skb_room("tun", 140)
    b = Skb(100, 200, 0x10, 0, 0, TcpOptions(), b"b" * 100, 1280, head_frag=False)
    assert a.tailroom >= 100
    assert skb_try_coalesce(a, b) == 0
    big = Skb(200, 1200, 0x10, 0, 0, TcpOptions(), b"c" * 1000, 2304, head_frag=False)
    assert skb_try_coalesce(a, big) is None


def test_modern_backlog_coalescing_is_bounded_by_max_skb_frags() -> None:
    """6.18 tcp_add_backlog coalesces into the backlog tail even above the limit,
    relying on skb_try_coalesce to stop at MAX_SKB_FRAGS: 400 contiguous segments
    make skbs of 18 segments, the limit still bites (TCPBacklogDrop), and every byte
    accepted is delivered."""
    c = connect("modern")
    sk = c.sk
    lock(c)
    off = 0
    for _ in range(400):
        c.deliver(c.segment(off, payload(1460, off)))
        off += 1460
    assert all(s.frags <= MAX_SKB_FRAGS and s.gso_segs <= 18 for s in sk.backlog)
    assert len(sk.backlog) > 1
    assert mib(c, "TcpExtTCPBacklogDrop") > 0
    limit = get_profile("modern").backlog_limit(sk.rcvbuf, sk.sndbuf)
    # above the limit only by the last skb admitted below it and what it took in
    # afterwards (at most 17 stolen buffers)
    assert sk.backlog_len <= limit + TRUESIZE_SMALL + 17 * (TRUESIZE_SMALL - SKB_STRUCT_SIZE)
    release(c)
    got = read_all(c).data
    assert got == payload(len(got)) and len(got) % 1460 == 0


# ---------------------------------------------------------------- tcp_can_ingest


@pytest.mark.parametrize("profile", PROFILES)
def test_tcp_can_ingest_ignores_the_incoming_length(profile: str) -> None:
    """tcp_can_ingest is sk_rmem_alloc <= sk_rcvbuf in 4.13 and in 6.18.y ("tcp: give
    up on stronger sk_rcvbuf checks (for now)"): the skb's own length is not added."""
    c = connect(profile)
    sk = c.sk
    skb = Skb(0, 1460, 0x10, 0, 0, TcpOptions(), b"x" * 1460, TRUESIZE_SMALL)
    sk.rmem_alloc = sk.rcvbuf - 10
    assert tcp_can_ingest(sk, skb)
    sk.rmem_alloc = sk.rcvbuf + 1
    assert not tcp_can_ingest(sk, skb)
    sk.rmem_alloc = 0


@pytest.mark.parametrize("profile", PROFILES)
def test_slow_reader_near_the_limit_is_not_pruned(profile: str) -> None:
    """With rmem just under sk_rcvbuf, the next in-order segment is queued without
    tcp_prune_queue (no PruneCalled, RcvPruned or TCPRcvQDrop)."""
    c = connect(profile, rcvbuf=16384)  # sk_rcvbuf 32768
    sk = c.sk
    off = 0
    while sk.rmem_alloc + TRUESIZE_SMALL <= sk.rcvbuf:
        c.stack.tcp_v4_rcv(c.segment(off, payload(1000, off)), c.now,
                           truesize=TRUESIZE_SMALL)
        c.collect()
        off += 1000
    assert sk.rmem_alloc <= sk.rcvbuf
    c.stack.tcp_v4_rcv(c.segment(off, payload(1000, off)), c.now, truesize=TRUESIZE_SMALL)
    c.collect()
    assert mib(c, "TcpExtPruneCalled") == 0 and mib(c, "TcpExtRcvPruned") == 0
    assert mib(c, "TcpExtTCPRcvQDrop") == 0 and sk.sk_drops == 0


# ---------------------------------------------------------------- tcp_release_cb


def _delayed_ack_pending(c: Conn) -> None:
    sk = c.sk
    sk.icsk_ack.quick = 0
    sk.icsk_ack.ato = 40 * MS
    sk.icsk_ack.pending |= AckPending.SCHED
    tcp_send_delayed_ack(sk, c.now)
    assert sk.icsk_ack.pending & AckPending.TIMER


def _sent(c: Conn) -> int:
    return sum(1 for o in c.stack.net.outputs if isinstance(o, Transmit))


@pytest.mark.parametrize("profile", PROFILES)
def test_release_cb_runs_the_deferred_delack_timer(profile: str) -> None:
    """tcp_delack_timer on an owned socket defers to tcp_release_cb, which calls
    tcp_delack_timer_handler: the ACK still due goes out (DelayedACKs)."""
    c = connect(profile)
    sk = c.sk
    sk.owner = "holder"
    _delayed_ack_pending(c)
    c.now = sk.icsk_ack.timeout
    tcp_delack_timer(sk, c.now)
    assert mib(c, "TcpExtDelayedACKLocked") == 1
    before = _sent(c)
    tcp_release_cb(sk, c.now)
    assert _sent(c) == before + 1 and mib(c, "TcpExtDelayedACKs") == 1
    sk.owner = None


@pytest.mark.parametrize("profile", PROFILES)
def test_release_cb_after_an_ack_cleared_the_timer_sends_nothing(profile: str) -> None:
    """tcp_delack_timer_handler returns when ICSK_ACK_TIMER is clear: an ACK sent while
    the socket was owned (tcp_event_ack_sent) already did the deferred timer's job."""
    c = connect(profile)
    sk = c.sk
    sk.owner = "holder"
    _delayed_ack_pending(c)
    c.now = sk.icsk_ack.timeout
    tcp_delack_timer(sk, c.now)
    tcp_send_ack(sk, c.now)
    before = _sent(c)
    tcp_release_cb(sk, c.now)
    assert _sent(c) == before and mib(c, "TcpExtDelayedACKs") == 0
    sk.owner = None


@pytest.mark.parametrize("profile", PROFILES)
def test_release_cb_keeps_a_future_delayed_ack_armed(profile: str) -> None:
    """tcp_delack_timer_handler re-arms (sk_reset_timer) when icsk_ack.timeout is still
    ahead: a delayed ACK scheduled after the deferred one fires at its own deadline,
    not at release_sock."""
    c = connect(profile)
    sk = c.sk
    sk.owner = "holder"
    _delayed_ack_pending(c)
    c.now = sk.icsk_ack.timeout
    tcp_delack_timer(sk, c.now)
    tcp_send_ack(sk, c.now)
    _delayed_ack_pending(c)  # new data while owned: a fresh 40 ms timer
    deadline = sk.icsk_ack.timeout
    assert deadline > c.now
    before = _sent(c)
    tcp_release_cb(sk, c.now)
    sk.owner = None
    assert _sent(c) == before
    assert sk.icsk_ack.pending & AckPending.TIMER and sk.icsk_ack.timeout == deadline
    c.stack.net.outputs.clear()
    c.advance(sk.icsk_ack.fire_at - 1 - c.now)
    assert mib(c, "TcpExtDelayedACKs") == 0
    c.advance(1)  # the wheel's bucket after the expiry jiffy
    assert mib(c, "TcpExtDelayedACKs") == 1


# ---------------------------------------------------------------- smaller rules


@pytest.mark.parametrize(("profile", "cap"), [("legacy", 300 * MS), ("modern", 196 * MS)])
def test_delayed_ack_capped_at_tcp_delack_max(profile: str, cap: int) -> None:
    """6.9+ tcp_send_delayed_ack caps ato at tcp_delack_max(): min(icsk_delack_max,
    rto_min - 1 jiffy) = 49 jiffies, 196 ms at HZ=250; 4.13 has no such cap (500 ms
    max_ato)."""
    c = connect(profile)
    sk = c.sk
    ack = sk.icsk_ack
    ack.ato, ack.pingpong = 300 * MS, 0
    ack.pending = AckPending.SCHED
    sk.srtt_us = 0  # no srtt cap (max(srtt, 40 ms)): only the ato caps are under test
    tcp_send_delayed_ack(sk, c.now)
    assert ack.timeout == c.now - c.now % (4 * MS) + cap


def test_tcp_collapse_copies_into_one_page_skbs() -> None:
    """tcp_collapse copies at most SKB_MAX_ORDER(0, 0) = PAGE_SIZE - shinfo = 3776 bytes
    per new skb, whose truesize is then SKB_TRUESIZE(3776) = 4352 (one page)."""
    from actors.stack.skb import SKB_MAX_ORDER0, skb_truesize
    from actors.stack.tcp_input import skb_set_owner_r, tcp_collapse

    assert SKB_MAX_ORDER0 == 3776 and skb_truesize(3776) == 4352
    c = connect("legacy")
    sk = c.sk
    skbs = []
    for i in range(40):
        seq = c.seq(100 * i)
        skb = Skb(seq, c.seq(100 * i + 100), 0x10, 0, 0, TcpOptions(),
                  payload(100, 100 * i), TRUESIZE_SMALL)
        skb_set_owner_r(sk, skb)
        skbs.append(skb)
    out = tcp_collapse(sk, skbs, c.seq(0), c.seq(4000))
    assert out[0].len == 3776 and out[0].truesize == 4352
    assert b"".join(s.data for s in out) == payload(4000)


@pytest.mark.parametrize(("profile", "dsack"), [("legacy", (1000, 6000)),
                                                ("modern", (1000, 3000))])
def test_ofo_queue_dsack_upper_edge(profile: str, dsack: tuple[int, int]) -> None:
    """tcp_ofo_queue, queued data that the filling segment duplicated: 6.x reports
    [seq, min(end_seq, dsack_high)); 4.13 reports up to dsack_high (rcv_nxt when the
    queue is walked) and lowers dsack_high instead."""
    c = connect(profile)
    for off in (1000, 2000, 4000, 7000):
        c.deliver(c.segment(off, payload(1000, off)))
    c.deliver(c.segment(0, payload(6000)))
    blocks = acks(c)[-1].options.sack_blocks
    assert blocks[0] == (c.seq(dsack[0]), c.seq(dsack[1]))
    assert read_all(c).data == payload(6000)


@pytest.mark.parametrize("profile", PROFILES)
def test_active_open_with_window_scaling_disables_prediction(profile: str) -> None:
    """tcp_rcv_synsent_state_process: header prediction only if snd_wscale is 0 (the
    SYN-ACK's window is unscaled); otherwise pred_flags = 0 until tcp_ack learns it."""
    from actors.profiles import sysctls_for
    from actors.stack.tcp_ipv4 import Stack

    for wscale, predicted in ((None, True), (7, False)):
        prof = get_profile(profile)
        stack = Stack(prof, sysctls_for(prof), seed=1)
        sid = stack.connect("10.0.0.2", "10.0.0.1", 80, 0)
        syn = next(o.segment for o in stack.take_outputs() if isinstance(o, Transmit))
        synack = Segment(src="10.0.0.1", sport=80, dst="10.0.0.2", dport=syn.sport, seq=5000,
                         ack=syn.seq + 1, flags=0x12, window=65535,
                         options=TcpOptions(mss=1460, wscale=wscale, sack_permitted=True))
        stack.tcp_v4_rcv(synack, MS)
        assert (stack.socks[sid].pred_flags != 0) is predicted


@pytest.mark.parametrize("profile", PROFILES)
def test_fast_path_sends_an_older_tsval_to_the_slow_path(profile: str) -> None:
    """tcp_rcv_established: (s32)(rcv_tsval - ts_recent) < 0 leaves header prediction
    for the slow path, even inside the PAWS window where tcp_paws_discard accepts it."""
    from dataclasses import replace

    c = connect(profile, ts=True)
    c.now = 10 * MS
    off = 0
    for _ in range(3):  # until prepaid memory lets the fast path queue
        c.deliver(c.segment(off, payload(1448, off)))
        off += 1448
    assert mib(c, "TcpExtTCPHPHits") >= 1  # the path is predicted for in-order data
    ts_recent = c.sk.rx_opt.ts_recent
    hits = mib(c, "TcpExtTCPHPHits")
    seg = c.segment(off, payload(1448, off))
    seg = replace(seg, options=replace(seg.options, timestamp=(ts_recent - 1, 0)))
    c.deliver(seg)
    assert mib(c, "TcpExtTCPHPHits") == hits  # not predicted
    assert c.sk.rcv_nxt == c.seq(off + 1448)  # the slow path still takes it (PAWS window 1)


def test_compressed_ack_deferred_while_owned_is_counted_once() -> None:
    """6.x tcp_compressed_ack_kick on an owned socket sets TCP_DELACK_TIMER_DEFERRED;
    tcp_release_cb's tcp_delack_timer_handler flushes it with
    tcp_sack_compress_send_ack, which counts all but the ACK that leaves."""
    from actors.stack.tcp_timer import run_timers

    c = connect("modern")
    sk = c.sk
    sk.owner = "holder"
    sk.icsk_ack.pending |= AckPending.SCHED
    sk.compressed_ack = 3
    sk.sack_compress_deadline = c.now
    c.stack.net.arm_timer(sk.sock_id, c.now)
    c.stack.net.outputs.clear()
    run_timers(c.stack.net, c.now)
    assert _sent(c) == 0  # owned: deferred
    tcp_release_cb(sk, c.now)
    sk.owner = None
    assert _sent(c) == 1
    assert mib(c, "TcpExtTCPAckCompressed") == 2 and sk.compressed_ack == 0


@pytest.mark.parametrize(("rcv_rtt_us", "srtt_us", "delay"),
                         [(100_000, 0, 1 * MS),  # capped at tcp_comp_sack_delay_ns
                          (200, 0, 200 * 8 * 125 * 33 // 100),  # 1.25 * x8 rtt * 33 %
                          (0, 50_000, 0)])  # no receive RTT yet: no delay
def test_sack_compression_delay(rcv_rtt_us: int, srtt_us: int, delay: int) -> None:
    """6.18 __tcp_ack_snd_check: the compressed-ACK hrtimer runs for
    min(rtt * 1.25 * tcp_comp_sack_rtt_percent ns, tcp_comp_sack_delay_ns), rtt being
    rcv_rtt_est.rtt_us (x8) unless srtt is smaller, plus tcp_comp_sack_slack_ns
    (10 us) of range."""
    c = connect("modern")
    sk = c.sk
    sk.rcv_rtt_us, sk.srtt_us = rcv_rtt_us << 3, srtt_us << 3
    off = 10_000  # a hole at the start: every segment goes out of order
    for _ in range(3):  # three duplicate ACKs go out at once
        c.deliver(c.segment(off, payload(1000, off)))
        off += 1000
    assert sk.sack_compress_deadline is None
    c.deliver(c.segment(off, payload(1000, off)))
    assert sk.sack_compress_deadline == c.now + delay + 10_000


def test_zero_window_counters_follow_tcp_select_window() -> None:
    """6.18 tcp_select_window: the ICSK_ACK_NOMEM early return advertises 0 without
    TCPToZeroWindowAdv; TCPWantZeroWindowAdv counts only where the window may not
    shrink (tcp_shrink_window off, or no window scaling)."""
    from actors.stack.tcp_output import tcp_select_window

    c = connect("modern")
    sk = c.sk
    sk.icsk_ack.pending |= AckPending.NOMEM
    assert tcp_select_window(sk) == 0
    assert mib(c, "TcpExtTCPToZeroWindowAdv") == 0
    sk.icsk_ack.pending = 0
    assert tcp_select_window(sk) > 0
    assert mib(c, "TcpExtTCPFromZeroWindowAdv") == 1

    for shrink, counted in ((0, 1), (1, 0)):
        c = connect("modern", tcp_shrink_window=shrink)
        sk = c.sk
        sk.rmem_alloc = sk.rcvbuf  # no free space: __tcp_select_window wants 0
        tcp_select_window(sk)
        assert mib(c, "TcpExtTCPWantZeroWindowAdv") == counted
        sk.rmem_alloc = 0
