"""Kernel rules behind the conformance scripts (../shared/conformance/packetdrill/), each
pinned against the kernel function that decides it (v6.18 for modern, v4.13 for legacy).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from actors.profiles import get_profile
from actors.stack.skb import SOCK_MIN_RCVBUF, Skb, so_rcvbuf
from actors.stack.tcp_input import tcp_grow_window
from actors.stack.tcp_output import tcp_space, tcp_win_from_space
from tests.stack_harness import Conn, connect

MSS = 1460


def _wscale(c: Conn) -> int:
    synack = c.sent[0]
    assert synack.options.wscale is not None
    return synack.options.wscale


# ----------------------------------------------------------- net.core.rmem_max


def test_rmem_max_is_profile_data() -> None:
    """net.core.rmem_max: SK_RMEM_MAX (212992) in 4.13; 4 MB in 6.18 ("net: set
    net.core.rmem_max and net.core.wmem_max to 4 MB")."""
    assert get_profile("legacy").default_sysctls.rmem_max == 212992
    assert get_profile("modern").default_sysctls.rmem_max == 4 << 20


@pytest.mark.parametrize(("profile", "rcvbuf"), [("legacy", 2 * 212992),
                                                 ("modern", 2 * 1_000_000)])
def test_so_rcvbuf_clamped_to_rmem_max(profile: str, rcvbuf: int) -> None:
    """sock_setsockopt(SO_RCVBUF) -> __sock_set_rcvbuf: min(val, rmem_max), doubled."""
    c = connect(profile, rcvbuf=1_000_000)
    assert c.sk.rcvbuf == rcvbuf
    assert so_rcvbuf(1, 4 << 20) == SOCK_MIN_RCVBUF
    assert so_rcvbuf(10 << 20, 4 << 20) == 8 << 20


def test_wscale_follows_a_large_so_rcvbuf_in_modern() -> None:
    """tcp_openreq_init_rwin clamps the window to tcp_full_space() of a locked buffer;
    tcp_select_initial_window takes wscale = ilog2(min(max(space, tcp_rmem[2],
    rmem_max), window_clamp)) - 15. SO_RCVBUF 1000000: 6.18 keeps 2000000 bytes, half
    of it window, 2^19 <= 1000000 -> wscale 4; 4.13 clamps to 212992 -> wscale 2."""
    rmem = (4096, 540000, 15 << 20)
    assert _wscale(connect("modern", rcvbuf=1_000_000, tcp_rmem=rmem)) == 4
    # legacy: 425984 bytes of buffer, window_clamp its tcp_win_from_space (adv_win_scale 1)
    assert _wscale(connect("legacy", rcvbuf=1_000_000, tcp_rmem=rmem)) == 2
    # without SO_RCVBUF the scale covers tcp_rmem[2] / rmem_max, whichever is larger
    assert _wscale(connect("modern", tcp_rmem=(4096, 131072, 1 << 20))) == 7  # 4 MB


# ----------------------------------------------------------- scaling_ratio, window_clamp


def _full_segment(c: Conn, length: int) -> None:
    c.deliver(c.segment(0, bytes(length)))


def test_window_clamp_follows_scaling_ratio_modern() -> None:
    """tcp_measure_rcv_mss (6.18): a full-sized segment whose length differs from
    rcv_mss re-learns scaling_ratio = len / truesize, and a new ratio re-derives
    window_clamp = tcp_win_from_space(sk_rcvbuf) through tcp_set_window_clamp
    (growing: rcv_ssthresh = max(min(rcv_wnd, clamp), rcv_ssthresh))."""
    c = connect("modern")
    sk = c.sk
    before = sk.window_clamp
    _full_segment(c, MSS)
    assert sk.scaling_ratio == (MSS << 8) // 2304  # one 2 KiB ring buffer + sk_buff
    assert sk.window_clamp == tcp_win_from_space(sk, sk.rcvbuf)
    assert sk.window_clamp > before
    # legacy 4.13 has no scaling_ratio: the clamp stays where tcp_init_buffer_space put it
    c = connect("legacy")
    before = c.sk.window_clamp
    _full_segment(c, MSS)
    assert c.sk.window_clamp == before


def test_set_window_clamp_shrinks_rcv_ssthresh_with_it() -> None:
    """tcp_set_window_clamp: a smaller clamp pulls rcv_ssthresh down with it
    (__tcp_adjust_rcv_ssthresh, no reserved memory), never below SOCK_MIN_RCVBUF / 2."""
    c = connect("modern", rcvbuf=8000)
    sk = c.sk
    sk.icsk_ack.rcv_mss = 100
    skb_len = 200
    c.deliver(c.segment(0, bytes(skb_len)))  # 200 bytes in a 2304-byte buffer: ratio 22
    assert sk.scaling_ratio == (skb_len << 8) // 2304
    assert sk.window_clamp == max(tcp_win_from_space(sk, sk.rcvbuf), SOCK_MIN_RCVBUF // 2)
    assert sk.rcv_ssthresh <= sk.window_clamp


def test_grow_window_room_is_capped_by_tcp_space_modern() -> None:
    """tcp_grow_window (6.18): room = min(window_clamp, tcp_space) - rcv_ssthresh, and
    rcv_ssthresh grows by min(room, max(incr, 2 * len)); 4.13 only caps at
    window_clamp."""
    for profile, capped in (("modern", True), ("legacy", False)):
        c = connect(profile)
        sk = c.sk
        sk.window_clamp = 1 << 20
        sk.rcv_ssthresh = 10_000
        sk.rmem_alloc = sk.rcvbuf - 30_000  # tcp_space well under window_clamp
        space = tcp_space(sk)
        seg = c.segment(0, bytes(20_000))
        skb = Skb.from_segment(seg, 1, 0, header_len=20, csum_ok=True, truesize=20_000)
        tcp_grow_window(sk, skb)
        if capped:
            assert sk.rcv_ssthresh == min(space, 10_000 + 40_000)
        else:
            assert sk.rcv_ssthresh == 10_000 + 40_000


def test_ooo_gso_packet_opens_the_window_modern() -> None:
    """linux tcp_ooo_rcv_mss: a 9000-byte out-of-order GSO packet (gso_size 1000) into a
    131072-byte buffer. tcp_data_queue_ofo measures rcv_mss, the ratio 9000/12544 lifts
    window_clamp to 93696, tcp_grow_window (before the skb is charged) raises
    rcv_ssthresh by min(room, 2 * len) to 82240, and the ACK offers
    ALIGN(82240, 1024) >> 10 = 81."""
    c = connect("modern", sack=True, wscale=7, tcp_rmem=(4096, 131072, 32 << 20))
    sk = c.sk
    seg = c.segment(2000, bytes(9000))
    c.stack.tcp_v4_rcv(seg, c.now, gso_size=1000, truesize=12544)
    c.collect()
    assert sk.icsk_ack.rcv_mss == 1000
    assert sk.window_clamp == (131072 * ((9000 << 8) // 12544)) >> 8
    ack = c.acks()[-1]
    assert ack.window == 81
    assert ack.options.sack_blocks == ((c.seq(2000), c.seq(11000)),)


def test_profiles_differ_only_as_data() -> None:
    legacy, modern = get_profile("legacy"), get_profile("modern")
    assert not legacy.window_clamp_follows_ratio and modern.window_clamp_follows_ratio
    assert not legacy.grow_window_room_capped and modern.grow_window_room_capped
    assert replace(legacy, window_clamp_follows_ratio=True).window_clamp_follows_ratio
