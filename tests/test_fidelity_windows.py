"""Advertised-window rules found by running packetdrill on Linux 6.18.44 (issue 13):
each test pins the kernel function whose rule it checks. The scripts that showed them
are tests/drill/{tun_small_head_window,collapse_tailroom_window,ts_advmss_window,
sack_compress_window,rmem_at_socket_time}.pkt."""

from __future__ import annotations

import pytest

from actors.profiles import LEGACY, MODERN, get_profile, sysctls_for
from actors.stack.net import Transmit
from actors.stack.skb import (
    SKB_MAX_ORDER0,
    SKB_SHINFO_SIZE,
    SKB_STRUCT_SIZE,
    device_skb,
    device_skb_room,
    skb_head_object,
    tun_skb,
)
from actors.stack.tcp_ipv4 import Stack
from actors.stack.tcp_output import tcp_full_space
from protocol.segment import Segment, TcpFlags, TcpOptions
from protocol.seq import seq_add
from protocol.sockops import InetListen, Opened, TcpV4Connect
from tests.stack_harness import LOCAL, PORT, REMOTE, Conn, connect

PROFILES = ("legacy", "modern")


def windows(c: Conn, sizes: list[int], start: int = 0) -> list[int | None]:
    """Deliver segments of ``sizes`` bytes in order; the window of the ACK each one drew
    at once (None: no immediate ACK)."""
    out: list[int | None] = []
    off = start
    for n in sizes:
        before = len(c.acks())
        c.deliver(c.segment(off, bytes(n)))
        off += n
        out.append(c.acks()[-1].window if len(c.acks()) > before else None)
    return out


# ------------------------------------------------------- __alloc_skb -> kmalloc_reserve


def test_small_skb_head_comes_from_skb_small_head_cache() -> None:
    """kmalloc_reserve (6.3+): a head of SKB_HEAD_ALIGN(size) up to
    SKB_SMALL_HEAD_CACHE_SIZE comes from skb_small_head_cache at exactly that size;
    a bigger one is rounded up to a kmalloc slab (kmalloc_size_roundup). Measured on
    6.18.44 through tun: 100 and 150-byte payloads cost 832, 172 bytes and more 1280."""
    cache = MODERN.skb_small_head_cache
    assert cache == 576 and LEGACY.skb_small_head_cache == 0
    assert skb_head_object(64 + 140, cache) == 576  # 100-byte payload, IPv4 + TCP
    assert skb_head_object(64 + 190, cache) == 576  # 150 bytes
    assert skb_head_object(64 + 212, cache) == 1024  # 172 bytes: 640 > 576 -> kmalloc-1024
    assert skb_head_object(64 + 140, 0) == 1024  # no small-head cache (4.13)
    assert tun_skb(140, cache) == (576 + SKB_STRUCT_SIZE, False) == (832, False)
    assert tun_skb(140) == (1280, False)
    assert device_skb("tun", 840, cache) == (2304, False)  # 800 bytes: kmalloc-2048
    # tailroom is the head object past NET_SKB_PAD and the packet: 52 bytes is too
    # little for another 100-byte payload, 500 (a kmalloc-1024 head) takes five
    assert device_skb_room("tun", 140, cache) == (0, 52)
    assert device_skb_room("tun", 140) == (0, 500)


def test_tun_small_segments_are_charged_one_small_head_each() -> None:
    """tun_get_user -> tun_alloc_skb on 6.18: each 100-byte segment is its own 832-byte
    skb (nothing fits the 52 bytes of tailroom, so tcp_try_coalesce copies nothing), and
    with no window scaling __tcp_select_window gives up the offered window at the 4th
    segment (tests/drill/tun_small_head_window.pkt)."""
    c = connect("modern", wscale=None)
    c.stack.device = "tun"
    assert c.sent[0].window == 64240
    assert windows(c, [100] * 5) == [64140, 64040, 64040, 63940, 63840]
    sk = c.sk
    assert [s.truesize for s in sk.receive_queue] == [832] * 5
    assert sk.rmem_alloc == 5 * 832


def test_legacy_tun_small_segments_share_a_kmalloc_head() -> None:
    """Without skb_small_head_cache (4.13) the same head is a kmalloc-1024 object whose
    slack takes the next five payloads by copy (skb_try_coalesce's tailroom case)."""
    c = connect("legacy", wscale=None)
    c.stack.device = "tun"
    windows(c, [100] * 5)
    assert [s.truesize for s in c.sk.receive_queue] == [1280]


# ----------------------------------------------------------------------- tcp_collapse


@pytest.mark.parametrize("profile", PROFILES)
def test_collapse_allocates_slab_rounded_heads_with_tailroom(profile: str) -> None:
    """tcp_collapse: nskb = alloc_skb(copy) with copy = min(SKB_MAX_ORDER(0, 0), left),
    so even a short last copy gets a kmalloc-4096 head (truesize 4352) and keeps the
    rest as tailroom, into which tcp_queue_rcv -> tcp_try_coalesce copies the next
    segments for free. Kernel: ACK windows 3752 then 4824 (tests/drill/
    collapse_tailroom_window.pkt); an exactly sized head would have said 4288."""
    c = connect(profile, wscale=None, rcvbuf=12000)
    c.stack.device = "tun"
    wins = windows(c, [536] * 21)
    assert wins[:10] == [11144 - 536 * i for i in range(10)]
    assert wins[10:19] == [None] * 9
    assert wins[19:] == [3752, 4824]
    sk = c.sk
    mib = c.stack.net.mib
    assert mib["TcpExtTCPRcvCollapsed"] == 19 and mib["TcpExtTCPRcvCoalesce"] == 2
    last = 19 * 536 - 2 * SKB_MAX_ORDER0  # 2632 bytes copied into the third new skb
    assert skb_head_object(last) == 4096
    assert [(s.truesize, s.len) for s in sk.receive_queue] == [
        (4352, SKB_MAX_ORDER0), (4352, SKB_MAX_ORDER0), (4352, last + 2 * 536)]
    assert sk.receive_queue[-1].tailroom == 4096 - SKB_SHINFO_SIZE - last - 2 * 536
    assert sk.rmem_alloc == 3 * 4352


# --------------------------------------------- tcp_rcv_state_process, SYN_RECV -> ESTABLISHED


def test_modern_passive_ts_flow_sizes_buffers_with_the_reduced_advmss() -> None:
    """tcp_rcv_state_process (6.16+, "fix initial tp->rcvq_space.space value for passive
    TS enabled flows"): advmss loses TCPOLEN_TSTAMP_ALIGNED before tcp_init_transfer, so
    tcp_init_buffer_space reserves one 1448-byte advmss below the full space, and
    tcp_grow_window's 2 * advmss is 2896. ./defaults.sh buffers: rcv_ssthresh 268552,
    then +3672 (up to rcv_wnd by tcp_set_window_clamp, then 2896) and +2896 a segment,
    as ss -tmi shows on 6.18.44; windows 1064, 1075, 1086 (tests/drill/ts_advmss_window.pkt)."""
    c = connect("modern", ts=True, tcp_rmem=(4096, 540000, 15728640))
    sk = c.sk
    assert sk.advmss == 1448
    assert sk.rcv_ssthresh == sk.window_clamp == tcp_full_space(sk) - 1448 == 268552
    assert sk.rcvq_space == 10 * 1448
    seen = []
    for i in range(4):
        c.deliver(c.segment(1448 * i, bytes(1448)))
        seen.append(sk.rcv_ssthresh)
    assert seen == [272224, 275120, 278016, 280912]
    assert [a.window for a in c.acks()[-4:]] == [1064, 1075, 1086, 1098]


def test_legacy_passive_ts_flow_reduces_advmss_after_buffer_space() -> None:
    """4.13 tcp_rcv_state_process takes the 12 bytes off advmss only after
    tcp_init_buffer_space has sized window_clamp with 1460."""
    c = connect("legacy", ts=True, tcp_rmem=(4096, 20000, 4194304))
    sk = c.sk
    assert sk.advmss == 1448
    assert sk.window_clamp == tcp_full_space(sk) - 1460


@pytest.mark.parametrize("profile", PROFILES)
def test_no_timestamps_keeps_the_full_advmss(profile: str) -> None:
    c = connect(profile, ts=False)
    assert c.sk.advmss == 1460


# ----------------------------------------------------------------- tcp_init_buffer_space


def test_modern_rcvq_space_starts_from_the_clamped_rcv_ssthresh() -> None:
    """tcp_init_buffer_space (5.11+): rcvq_space.space = min3(rcv_ssthresh, rcv_wnd,
    TCP_INIT_CWND * advmss), computed after rcv_ssthresh = min(rcv_ssthresh,
    window_clamp). With tcp_rmem[1] 20000: 8552 (one advmss below the 10000 full space),
    not rcv_wnd's 8688. tcp_rcvbuf_grow starts from it when out-of-order data arrives:
    the third SACK offers 113, not 114 (tests/drill/sack_compress_window.pkt)."""
    c = connect("modern", ts=True, tcp_rmem=(4096, 20000, 4194304))
    sk = c.sk
    assert sk.rcv_wnd == 8688
    assert sk.rcvq_space == sk.rcv_ssthresh == sk.window_clamp == 8552
    c.deliver(c.segment(0, bytes(1000)))
    # the first segment teaches scaling_ratio 111 (1000 / 2304): window_clamp 8671
    assert sk.scaling_ratio == 111 and sk.window_clamp == 8671 and sk.rcvq_space == 8552
    wins = []
    for i in range(2, 5):
        c.deliver(c.segment(1000 * i, bytes(1000)))
        wins.append(c.acks()[-1].window)
    # tcp_rcvbuf_grow: 2 * 8552 + the out-of-order span, in tcp_space_from_win units
    assert sk.rcvbuf == ((2 * 8552 + 4000) << 8) // 111
    assert wins == [68, 91, 113]


def test_legacy_rcvq_space_starts_at_rcv_wnd() -> None:
    """4.13 tcp_init_buffer_space: rcvq_space.space = rcv_wnd."""
    c = connect("legacy", ts=True, tcp_rmem=(4096, 20000, 4194304))
    assert c.sk.rcvq_space == c.sk.rcv_wnd


# --------------------------------------------------------------------- tcp_init_sock


def test_listener_keeps_the_tcp_rmem_of_its_socket_call() -> None:
    """tcp_init_sock (socket()) sets sk_rcvbuf = tcp_rmem[1]; a later tcp_rmem write
    does not reach the socket, nor the child sk_clone_lock copies from the listener
    (tests/drill/rmem_at_socket_time.pkt: SYN-ACK 65535, first ACK 2127 << 7)."""
    prof = MODERN
    stack = Stack(prof, sysctls_for(prof, tcp_rmem=(4096, 20000, 4194304)), seed=1)
    res = stack.sock_op("app", InetListen(LOCAL, PORT, init_rcvbuf=540000), 0)
    assert isinstance(res, Opened)
    assert stack.socks[res.sock].rcvbuf == 540000
    later = stack.sock_op("app", InetListen(LOCAL, PORT + 1), 0)
    assert isinstance(later, Opened)
    assert stack.socks[later.sock].rcvbuf == 20000  # no snapshot: tcp_rmem[1] now


@pytest.mark.parametrize("profile", PROFILES)
def test_active_open_ts_flow_reduces_advmss_before_buffer_space(profile: str) -> None:
    """tcp_rcv_synsent_state_process (both kernels): a SYN-ACK with timestamps takes
    TCPOLEN_TSTAMP_ALIGNED off advmss before tcp_finish_connect -> tcp_init_buffer_space,
    so window_clamp is reserved one 1448-byte advmss below the full space."""
    prof = get_profile(profile)
    stack = Stack(prof, sysctls_for(prof, tcp_rmem=(4096, 540000, 15728640)), seed=1)
    res = stack.sock_op("app", TcpV4Connect(LOCAL, REMOTE, 8080), 0)
    assert isinstance(res, Opened)
    (syn,) = [o.segment for o in stack.take_outputs() if isinstance(o, Transmit)]
    assert syn.options.timestamp is not None
    synack = Segment(src=REMOTE, sport=8080, dst=LOCAL, dport=syn.sport, seq=5000,
                     ack=seq_add(syn.seq, 1), flags=TcpFlags.SYN | TcpFlags.ACK,
                     window=65535, options=TcpOptions(
                         mss=1460, sack_permitted=True, wscale=7,
                         timestamp=(7, syn.options.timestamp[0])))
    stack.tcp_v4_rcv(synack, 1_000_000)
    sk = stack.socks[res.sock]
    assert sk.advmss == 1448
    maxwin = tcp_full_space(sk)
    assert sk.window_clamp == maxwin - 1448
