"""What the receiver sends: window selection, ACKs with SACK/DSACK and timestamps, RSTs.

Mirrors net/ipv4/tcp_output.c (``tcp_select_window``, ``__tcp_select_window``,
``tcp_send_ack``, ``tcp_send_delayed_ack``, ``tcp_event_ack_sent``) and
``tcp_select_initial_window``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from actors.profiles import MS, timer_fires_at, usecs_to_jiffies
from actors.stack.sock import AckPending, TcpSock, TcpState
from protocol.constants import TCP_MAX_WSCALE, TCP_RTO_MIN
from protocol.segment import Segment, TcpFlags, TcpOptions
from protocol.seq import SEQ_HALF, SEQ_MASK, SEQ_MOD

if TYPE_CHECKING:
    from actors.stack.tcp_minisocks import InetTimewaitSock

U16_MAX = 65535
TCP_ATO_MIN = 40 * MS
TCP_DELACK_MIN = 40 * MS
TCP_DELACK_MAX = 200 * MS
HZ_HALF_SECOND = 500 * MS  # tcp_send_delayed_ack's max_ato, HZ / 2
TCPOLEN_TSTAMP_ALIGNED = 12


def tcp_win_from_space(sk: TcpSock, space: int) -> int:
    return sk.net.profile.win_from_space(space, sk.scaling_ratio)


def tcp_space(sk: TcpSock) -> int:
    """Window the free receive buffer can back."""
    profile = sk.net.profile
    free = sk.rcvbuf - sk.rmem_alloc
    if profile.space_subtracts_backlog:
        free -= sk.backlog_len
    return profile.win_from_space(free, sk.scaling_ratio)  # tcp_win_from_space


def tcp_full_space(sk: TcpSock) -> int:
    return tcp_win_from_space(sk, sk.rcvbuf)


def tcp_receive_window(sk: TcpSock) -> int:
    """What the peer may still send beyond rcv_nxt under the last advertised window."""
    # seq_sub(rcv_wup, rcv_nxt) inline: called several times per segment
    d = (sk.rcv_wup - sk.rcv_nxt) & SEQ_MASK
    win = (d - SEQ_MOD if d >= SEQ_HALF else d) + sk.rcv_wnd
    return win if win > 0 else 0


def tcp_select_initial_window(sk: TcpSock, space: int, mss: int, wscale_ok: bool) -> None:
    """Initial rcv_wnd, window_clamp and rcv_wscale for a new connection."""
    profile = sk.net.profile
    window_clamp = sk.window_clamp or (U16_MAX << TCP_MAX_WSCALE)
    space = min(window_clamp, max(space, 0))
    if space > mss:
        space -= space % mss
    rcv_wnd = space
    rcv_wscale = _wscale_for(sk, space, window_clamp) if wscale_ok else 0
    if profile.initial_rwnd_segs and mss > (1 << rcv_wscale):
        # 4.13: the first window is what tcp_default_init_rwnd segments fill (20, so
        # a 4.13 SYN-ACK offers 29200, or 28960 with timestamps). 6.10+ offers the
        # whole space; only the SYN's own window field stays within 16 bits.
        rcv_wnd = min(rcv_wnd, tcp_default_init_rwnd(profile.initial_rwnd_segs, mss) * mss)
    sk.rcv_wnd = rcv_wnd
    sk.rx_opt.rcv_wscale = rcv_wscale
    sk.window_clamp = min(U16_MAX << rcv_wscale, window_clamp)


def tcp_default_init_rwnd(segs: int, mss: int) -> int:
    """tcp_default_init_rwnd: ``segs`` segments, fewer (at least 2) for an mss above
    1460 so the window stays near segs * 1460 bytes."""
    if mss > 1460:
        return max(1460 * segs // mss, 2)
    return segs


def _wscale_for(sk: TcpSock, space: int, window_clamp: int) -> int:
    space = max(space, sk.net.sysctls.tcp_rmem[2], sk.net.sysctls.rmem_max)
    space = min(space, window_clamp)
    return max(0, min(space.bit_length() - 1 - 15, TCP_MAX_WSCALE))


def __tcp_select_window(sk: TcpSock) -> int:
    mss = sk.icsk_ack.rcv_mss
    free_space = tcp_space(sk)
    allowed_space = sk.net.profile.win_from_space(sk.rcvbuf, sk.scaling_ratio)  # full space
    full_space = min(sk.window_clamp, allowed_space)
    wscale = sk.rx_opt.rcv_wscale
    if mss > full_space:
        mss = full_space
        if mss <= 0:
            return 0
    if sk.net.sysctls.tcp_shrink_window and wscale and sk.net.profile.tcp_shrink_window_sysctl:
        return _shrink_window_allowed(sk, free_space, allowed_space, full_space, mss)
    if free_space < full_space // 2:
        sk.icsk_ack.quick = 0
        free_space = (free_space >> wscale) << wscale
        if free_space < (allowed_space >> 4) or free_space < mss:
            return 0
    free_space = min(free_space, sk.rcv_ssthresh)
    window = sk.rcv_wnd
    if wscale:
        unit = 1 << wscale
        window = -(-free_space // unit) * unit
    elif window <= free_space - mss or window > free_space:
        window = (free_space // mss) * mss
    elif mss == full_space and free_space > window + (full_space >> 1):
        window = free_space
    return window


def _shrink_window_allowed(sk: TcpSock, free_space: int, allowed_space: int,
                           full_space: int, mss: int) -> int:
    """tcp_shrink_window=1: offer what memory allows now, in exact wscale units."""
    unit = 1 << sk.rx_opt.rcv_wscale
    free_space = (free_space // unit) * unit
    if free_space < full_space // 2:
        sk.icsk_ack.quick = 0
        if free_space < (allowed_space >> 4) or free_space < mss or free_space < unit:
            return 0
    if free_space > sk.rcv_ssthresh:
        # rcv_ssthresh is a soft limit: round it up, not down
        free_space = -(-sk.rcv_ssthresh // unit) * unit
    return free_space


def tcp_select_window(sk: TcpSock) -> int:
    """The window for an outgoing segment's header (already shifted by rcv_wscale)."""
    net = sk.net
    wscale = sk.rx_opt.rcv_wscale
    old_win = sk.rcv_wnd
    if sk.icsk_ack.pending & AckPending.NOMEM:
        # Modern: under memory pressure the window may shrink to zero on purpose;
        # this early return counts no TCPToZeroWindowAdv.
        sk.rcv_wnd = 0
        sk.rcv_wup = sk.rcv_nxt
        sk.pred_flags = 0
        return 0
    cur_win = tcp_receive_window(sk)
    new_win = __tcp_select_window(sk)
    if new_win < cur_win:
        shrink_ok = (net.sysctls.tcp_shrink_window and wscale
                     and net.profile.tcp_shrink_window_sysctl)
        if not shrink_ok:
            # Never shrink the offered window; a wanted 0 is what goes unsent.
            if new_win == 0:
                net.inc("TcpExtTCPWantZeroWindowAdv")
            unit = 1 << wscale
            new_win = -(-cur_win // unit) * unit
    sk.rcv_wnd = new_win
    sk.rcv_wup = sk.rcv_nxt
    new_win = min(new_win, U16_MAX << wscale) >> wscale
    if new_win == 0:
        sk.pred_flags = 0
        if old_win:
            net.inc("TcpExtTCPToZeroWindowAdv")
    elif old_win == 0:
        net.inc("TcpExtTCPFromZeroWindowAdv")
    return new_win


def tcp_time_stamp(sk: TcpSock | InetTimewaitSock, now: int) -> int:
    """Our TSval clock: milliseconds since the socket was created (a timewait sock keeps
    its socket's clock, tw_ts_offset)."""
    return ((now - sk.ts_origin) // MS + 1) & 0xFFFFFFFF


def _ack_options(sk: TcpSock, now: int) -> TcpOptions:
    rx = sk.rx_opt
    ts = (tcp_time_stamp(sk, now), rx.ts_recent) if rx.tstamp_ok else None
    blocks: tuple[tuple[int, int], ...] = ()
    if rx.sack_ok:
        if rx.dsack or rx.num_sacks:
            found = [sk.duplicate_sack] if rx.dsack else []
            found.extend(sk.selective_acks[: rx.num_sacks])
            blocks = tuple(found[:3 if ts is not None else 4])  # room left by the timestamp
        rx.dsack = False  # a DSACK is reported once (tcp_options_write)
    # Positional (mss, wscale, sack_permitted, sack_blocks, timestamp): one per ACK sent.
    return TcpOptions(None, None, False, blocks, ts)


def make_segment(sk: TcpSock, now: int, flags: int, seq: int | None = None,
                 window: int | None = None, options: TcpOptions | None = None) -> Segment:
    # Positional, in Segment's field order (src, sport, dst, dport, seq, ack, flags,
    # window, options): every ACK is built here.
    return Segment(
        sk.laddr, sk.lport, sk.raddr, sk.rport,
        sk.snd_nxt if seq is None else seq,
        sk.rcv_nxt if flags & TcpFlags.ACK else 0,
        flags,
        tcp_select_window(sk) if window is None else window,
        _ack_options(sk, now) if options is None else options,
    )


def tcp_event_ack_sent(sk: TcpSock) -> None:
    """After any ACK leaves: consume a quickack credit and clear the delayed-ACK timer."""
    ack = sk.icsk_ack
    net = sk.net
    if (not net.profile.quick_dec_per_ack or ack.pending & AckPending.SCHED) and ack.quick:
        ack.quick -= 1
        if ack.quick == 0:
            ack.ato = TCP_ATO_MIN
    if sk.compressed_ack:
        net.inc("TcpExtTCPAckCompressed", sk.compressed_ack)
        sk.compressed_ack = 0
    sk.sack_compress_deadline = None
    ack.pending = 0
    ack.blocked = False
    ack.timeout = ack.fire_at = 0


def tcp_send_ack(sk: TcpSock, now: int) -> None:
    """Send a pure ACK now (also used for dupacks and window updates)."""
    state = sk.state
    if state is TcpState.CLOSE or state is TcpState.LISTEN:
        return
    seg = make_segment(sk, now, TcpFlags.ACK)
    tcp_event_ack_sent(sk)
    net = sk.net
    net.transmit(seg, sk.sock_id)
    if net.emit_events:  # skip building the event's fields when nobody records them
        net.event("ack_sent", sk.sock_id, ack=seg.ack, win=seg.window,
                  sack=seg.options.sack_blocks)


def tcp_send_delayed_ack(sk: TcpSock, now: int) -> None:
    # All in jiffies, as the kernel has it: ato is a whole number of them (kept in ns),
    # the expiry is jiffies + ato, and the wheel runs the timer a tick or more after it.
    net = sk.net
    j = net.jiffy
    ack = sk.icsk_ack
    ato = ack.ato
    if ato > TCP_DELACK_MIN:
        max_ato = HZ_HALF_SECOND
        if ack.pingpong or ack.pending & AckPending.PUSHED:
            max_ato = TCP_DELACK_MAX
        if sk.srtt_us:
            rtt = max(usecs_to_jiffies(sk.srtt_us >> 3, net.sysctls.hz) * j, TCP_DELACK_MIN)
            max_ato = min(max_ato, rtt)
        ato = min(ato, max_ato)
    if net.profile.delack_max_from_rto_min:
        # tcp_delack_max: min(icsk_delack_max, max(tcp_rto_min, 2 jiffies) - 1 jiffy)
        ato = min(ato, TCP_DELACK_MAX, max(TCP_RTO_MIN, 2 * j) - j)
    jiffies = now - now % j
    timeout = jiffies + ato
    if ack.pending & AckPending.TIMER:
        if (net.profile.delack_blocked_flag and ack.blocked) \
                or ack.timeout <= jiffies + (ato // j >> 2) * j:
            tcp_send_ack(sk, now)
            return
        if ack.timeout <= timeout:
            ack.pending |= AckPending.SCHED
            return  # the timer stands (sk_reset_timer to the same expiry)
    ack.pending |= AckPending.SCHED | AckPending.TIMER
    ack.timeout = timeout
    ack.fire_at = timer_fires_at(now, timeout, j)
    net.arm_timer(sk.sock_id, ack.fire_at)


def tcp_send_rst(net_sk: TcpSock | None, seg: Segment, net: object) -> Segment:
    """RST answering ``seg`` (tcp_v4_send_reset): seq from its ack, or ack its sequence space."""
    if seg.flags & TcpFlags.ACK:
        return Segment(src=seg.dst, sport=seg.dport, dst=seg.src, dport=seg.sport,
                       seq=seg.ack, ack=0, flags=TcpFlags.RST, window=0)
    return Segment(src=seg.dst, sport=seg.dport, dst=seg.src, dport=seg.sport,
                   seq=0, ack=seg.end_seq, flags=TcpFlags.RST | TcpFlags.ACK, window=0)
