"""Segment processing for a connected socket: net/ipv4/tcp_input.c.

``tcp_rcv_established`` (header prediction and the slow path), ``tcp_data_queue``
with its cases A-E (docs/receive-path.md §3), the out-of-order queue with SACK/DSACK, receive
memory and pruning, the ACK decisions and receive autotuning. Every function takes
the socket and, where time matters, ``now`` in nanoseconds; outputs (ACKs, events)
go to ``sk.net``. Where the legacy and modern kernels differ, the code reads a field
of ``sk.net.profile``.

Modelling choices, stated once: there is no global TCP memory pressure (one host,
few sockets), so ``sk_rmem_schedule`` always succeeds and only the per-socket
``sk_rcvbuf`` limit bites; ECN is not modelled; urgent data is not modelled.
"""

from __future__ import annotations

from actors.profiles import MS, US, usecs_to_jiffies
from actors.stack.net import CONSUMED, DELIVERED
from actors.stack.skb import (
    MAX_TCP_HEADER,
    SKB_MAX_ORDER0,
    SKB_SHINFO_SIZE,
    SKB_STRUCT_SIZE,
    SOCK_MIN_RCVBUF,
    Skb,
    skb_head_object,
    skb_truesize,
    skb_try_coalesce,
)
from actors.stack.sock import AckPending, TcpSock, TcpState, inet_unhash, sk_wakeups
from actors.stack.tcp_minisocks import (
    ADVMSS,
    TCP_TIMEWAIT_LEN,
    inet_csk_reqsk_queue_add,
    tcp_oow_rate_limited,
    tcp_v4_send_synack,
)
from actors.stack.tcp_minisocks import tcp_time_wait as inet_twsk_hashdance
from actors.stack.tcp_output import (
    TCP_ATO_MIN,
    TCPOLEN_TSTAMP_ALIGNED,
    __tcp_select_window,
    tcp_full_space,
    tcp_receive_window,
    tcp_send_ack,
    tcp_send_delayed_ack,
    tcp_space,
    tcp_time_stamp,
    tcp_win_from_space,
)
from protocol.constants import (
    ECONNREFUSED,
    ECONNRESET,
    EPIPE,
    TCP_INIT_CWND,
    TCP_MIN_MSS,
    TCP_MSS_DEFAULT,
    TCP_RTO_MAX,
    TCP_RTO_MIN,
    TCP_TIMEOUT_FALLBACK,
)
from protocol.segment import Segment, TcpFlags
from protocol.seq import after, before, seq_add, seq_sub

TCP_NUM_SACKS = 4
TCP_SACK_BLOCKS_EXPECTED = 2
TCP_FASTRETRANS_THRESH = 3
TCP_PAWS_WINDOW = 1
TCP_RCVBUF_LOW_RTT_US = 1000
TCP_COMP_SACK_RTT_PERCENT = 33  # net.ipv4.tcp_comp_sack_rtt_percent
TCP_COMP_SACK_SLACK_NS = 10 * US  # net.ipv4.tcp_comp_sack_slack_ns
TCP_INIT_RWND_SEGS = 20  # tcp_default_init_rwnd
TCP_REMNANT = TcpFlags.FIN | TcpFlags.URG | TcpFlags.SYN | TcpFlags.PSH
_SYN_OR_FIN = TcpFlags.SYN | TcpFlags.FIN
_NOT_PSH = 0xFF & ~TcpFlags.PSH  # header prediction ignores PSH
PAGE_SIZE = 4096
SK_RECLAIM_THRESHOLD = PAGE_SIZE  # sk_mem_uncharge returns whole unused pages at once


# ---------------------------------------------------------------------------------
# skb ownership and fates


def skb_set_owner_r(sk: TcpSock, skb: Skb) -> None:
    """Charge an skb to the socket's receive memory."""
    skb.charged = True
    sk.rmem_alloc += skb.truesize
    sk_mem_charge(sk, skb.truesize)


def sk_mem_charge(sk: TcpSock, size: int) -> None:
    # forward_alloc is a prepaid quota taken in whole pages (sk_mem_schedule).
    if size > sk.forward_alloc:
        need = size - sk.forward_alloc
        sk.forward_alloc += -(-need // PAGE_SIZE) * PAGE_SIZE
    sk.forward_alloc -= size


def _uncharge(sk: TcpSock, skb: Skb) -> None:
    if skb.charged:
        skb.charged = False
        sk.rmem_alloc -= skb.truesize
        sk.forward_alloc += skb.truesize
        if sk.forward_alloc >= SK_RECLAIM_THRESHOLD:
            sk_mem_reclaim(sk)


def sk_mem_reclaim(sk: TcpSock) -> None:
    """Give whole unused pages of the quota back."""
    sk.forward_alloc %= PAGE_SIZE


def tcp_drop(sk: TcpSock, skb: Skb, reason: str) -> None:
    """Free a segment that will not reach a reader; Linux counts it in sk_drops."""
    sk.sk_drops += 1
    net = sk.net
    net.drop_counts[reason] += 1
    net.set_fate(skb.ids, "drop:" + reason)
    if net.emit_events:  # the fields are built only when someone records them
        net.event("drop", sk.sock_id, reason=reason, seq=skb.seq, end_seq=skb.end_seq)
    _uncharge(sk, skb)


def kfree_skb_consumed(sk: TcpSock, skb: Skb, fate: str = CONSUMED) -> None:
    """Free an skb whose job is done: its bytes were read, or it carried none."""
    sk.net.set_fate(skb.ids, fate)
    _uncharge(sk, skb)


def tcp_eat_recv_skb(sk: TcpSock, skb: Skb) -> None:
    """A reader consumed the whole skb (sk_eat_skb)."""
    kfree_skb_consumed(sk, skb, DELIVERED)


# ---------------------------------------------------------------------------------
# coalescing


def tcp_try_coalesce(sk: TcpSock, to: Skb, frm: Skb) -> bool:
    """Append ``frm``'s bytes to ``to`` when they are contiguous (skb_try_coalesce)."""
    # Flag tests and lengths inline: this runs for nearly every in-order segment.
    if frm.seq != to.end_seq or (to.flags | (frm.flags & ~TcpFlags.FIN)) & _SYN_OR_FIN:
        return False
    delta = skb_try_coalesce(to, frm)
    if delta is None:
        return False
    to.append_data(frm.data)
    to.end_seq = frm.end_seq
    to.ack_seq = frm.ack_seq
    to.window = frm.window
    to.flags |= frm.flags
    to.truesize += delta
    to.gso_segs += frm.gso_segs
    to.ids.extend(frm.ids)
    if to.charged and delta:
        sk.rmem_alloc += delta
        sk_mem_charge(sk, delta)
    sk.net.inc("TcpExtTCPRcvCoalesce")
    _uncharge(sk, frm)
    frm.ids = []
    return True


# ---------------------------------------------------------------------------------
# ACK state


def inet_csk_schedule_ack(sk: TcpSock) -> None:
    sk.icsk_ack.pending |= AckPending.SCHED


def inet_csk_ack_scheduled(sk: TcpSock) -> bool:
    return bool(sk.icsk_ack.pending & AckPending.SCHED)


def in_pingpong(sk: TcpSock) -> bool:
    return sk.icsk_ack.pingpong >= 1


def tcp_incr_quickack(sk: TcpSock, max_quickacks: int) -> None:
    quickacks = sk.rcv_wnd // (2 * max(sk.icsk_ack.rcv_mss, 1))
    if quickacks == 0:
        quickacks = 2
    quickacks = min(quickacks, max_quickacks)
    sk.icsk_ack.quick = max(sk.icsk_ack.quick, quickacks)


def tcp_enter_quickack_mode(sk: TcpSock, max_quickacks: int | None = None) -> None:
    tcp_incr_quickack(sk, sk.net.profile.quickack_cap if max_quickacks is None else max_quickacks)
    sk.icsk_ack.pingpong = 0
    sk.icsk_ack.ato = TCP_ATO_MIN


def tcp_in_quickack_mode(sk: TcpSock) -> bool:
    return sk.icsk_ack.quick > 0 and not in_pingpong(sk)


def tcp_measure_rcv_mss(sk: TcpSock, skb: Skb) -> None:
    ack = sk.icsk_ack
    lss = ack.last_seg_size
    ack.last_seg_size = 0
    length = skb.gso_size or len(skb.data)
    if length >= ack.rcv_mss:
        if sk.net.profile.rcv_mss_learns_scaling_ratio and length != ack.rcv_mss \
                and skb.truesize:
            # Learn how much of the buffer memory is payload (tcp_win_from_space).
            old_ratio = sk.scaling_ratio
            sk.scaling_ratio = max(1, min(255, (skb.len << 8) // skb.truesize))
            if sk.net.profile.window_clamp_follows_ratio and sk.scaling_ratio != old_ratio:
                # The clamp was derived from sk_rcvbuf with the old ratio; re-derive it
                # so the window offered matches what the buffer can really hold.
                tcp_set_window_clamp(sk, tcp_win_from_space(sk, sk.rcvbuf))
                # Autotuning must not start from more than the window we may offer.
                sk.rcvq_space = min(sk.rcvq_space, sk.window_clamp)
        ack.rcv_mss = min(length, sk.advmss)
        if sk.net.profile.rcv_mss_push_sets_pushed and skb.has(TcpFlags.PSH):
            ack.pending |= AckPending.PUSHED
        return
    length += skb.doff
    if length >= TCP_MSS_DEFAULT + 20 or (
            length >= TCP_MIN_MSS + 20 and not skb.flags & TCP_REMNANT):
        length -= tcp_header_len(sk)
        ack.last_seg_size = length
        if length == lss:
            ack.rcv_mss = length
            return
    if ack.pending & AckPending.PUSHED:
        ack.pending |= AckPending.PUSHED2
    ack.pending |= AckPending.PUSHED


def tcp_set_window_clamp(sk: TcpSock, val: int) -> None:
    """Set window_clamp (floored at SOCK_MIN_RCVBUF / 2) and keep rcv_ssthresh consistent.

    A shrinking clamp pulls rcv_ssthresh down with it; a growing clamp may raise
    rcv_ssthresh up to the current rcv_wnd but never lowers it. Reserved memory
    (SO_RESERVE_MEM) is not modelled, so the shrink case is a plain min.
    """
    new_clamp = max(val, SOCK_MIN_RCVBUF // 2)
    old_clamp = sk.window_clamp
    if new_clamp == old_clamp:
        return
    sk.window_clamp = new_clamp
    if new_clamp < old_clamp:
        sk.rcv_ssthresh = min(sk.rcv_ssthresh, new_clamp)
    else:
        sk.rcv_ssthresh = max(min(sk.rcv_wnd, new_clamp), sk.rcv_ssthresh)


def tcp_header_len(sk: TcpSock) -> int:
    return 32 if sk.rx_opt.tstamp_ok else 20


def tcp_grow_window(sk: TcpSock, skb: Skb) -> None:
    """Raise rcv_ssthresh (the window we are willing to offer) as data arrives."""
    if sk.rcv_ssthresh >= sk.window_clamp or sk.rcv_ssthresh >= tcp_space(sk):
        return
    if tcp_win_from_space(sk, skb.truesize) <= skb.len:
        incr = 2 * sk.advmss
    else:
        incr = _tcp_grow_window_search(sk, skb)
    if incr:
        incr = max(incr, 2 * skb.len)
        if sk.net.profile.grow_window_room_capped:
            # 6.18: room = min(window_clamp, tcp_space) - rcv_ssthresh, checked > 0 above
            room = min(sk.window_clamp, tcp_space(sk)) - sk.rcv_ssthresh
            sk.rcv_ssthresh += min(room, incr)
        else:
            sk.rcv_ssthresh = min(sk.rcv_ssthresh + incr, sk.window_clamp)
        sk.icsk_ack.quick |= 1


def _tcp_grow_window_search(sk: TcpSock, skb: Skb) -> int:
    truesize = tcp_win_from_space(sk, skb.truesize) >> 1
    window = tcp_win_from_space(sk, sk.net.sysctls.tcp_rmem[2]) >> 1
    while sk.rcv_ssthresh <= window:
        if truesize <= skb.len:
            return 2 * sk.icsk_ack.rcv_mss
        truesize >>= 1
        window >>= 1
    return 0


def tcp_event_data_recv(sk: TcpSock, skb: Skb, now: int) -> None:
    """Bookkeeping for every accepted in-order segment with payload."""
    ack = sk.icsk_ack
    ack.pending |= AckPending.SCHED  # inet_csk_schedule_ack
    tcp_measure_rcv_mss(sk, skb)
    tcp_rcv_rtt_measure(sk, now)
    if not ack.ato:
        # First data: start in quickack mode so slow start is not held back.
        tcp_incr_quickack(sk, sk.net.profile.quickack_cap)
        ack.ato = TCP_ATO_MIN
    else:
        # In jiffies, as the kernel counts ato, rto and lrcvtime (so the edges move
        # with HZ): a gap longer than the RTO means the sender had to restart, so ACK
        # quickly again.
        j = sk.net.jiffy
        m = now // j - ack.lrcvtime // j
        ato = ack.ato // j
        ato_min = TCP_ATO_MIN // j
        rto = sk.rto // j
        if m <= ato_min // 2:
            ack.ato = ((ato >> 1) + ato_min // 2) * j
        elif m < ato:
            ack.ato = min((ato >> 1) + m, rto) * j
        elif m > rto:
            tcp_incr_quickack(sk, sk.net.profile.quickack_cap)
    ack.lrcvtime = now
    if len(skb.data) >= 128:
        tcp_grow_window(sk, skb)


def __tcp_ack_snd_check(sk: TcpSock, ofo_possible: bool, now: int) -> None:
    """Send an ACK now, or arm the delayed ACK (modern: or compress SACKs)."""
    profile = sk.net.profile
    ack = sk.icsk_ack
    full_frames = seq_sub(sk.rcv_nxt, sk.rcv_wup) > ack.rcv_mss
    if profile.ofo_sack_compression:
        # Modern evaluates the SO_RCVLOWAT test before calling __tcp_select_window.
        send_now = (full_frames and (seq_sub(sk.rcv_nxt, sk.copied_seq) < sk.rcvlowat
                                     or __tcp_select_window(sk) >= sk.rcv_wnd)) \
            or tcp_in_quickack_mode(sk) or bool(ack.pending & AckPending.NOW)
    else:
        send_now = (full_frames and __tcp_select_window(sk) >= sk.rcv_wnd) \
            or tcp_in_quickack_mode(sk) or (ofo_possible and bool(sk.ofo))
    if send_now:
        if profile.ack_deferred_while_owned and sk.owned and sk.net.sysctls.tcp_backlog_ack_defer:
            # Running from __release_sock: one ACK goes out from tcp_release_cb.
            ack.ack_deferred = True
            return
        tcp_send_ack(sk, now)
        return
    if not profile.ofo_sack_compression or not ofo_possible or not sk.ofo:
        tcp_send_delayed_ack(sk, now)
        return
    _sack_compress(sk, now)


def _sack_compress(sk: TcpSock, now: int) -> None:
    net = sk.net
    if not sk.rx_opt.sack_ok or sk.compressed_ack >= net.sysctls.tcp_comp_sack_nr:
        tcp_send_ack(sk, now)
        return
    if sk.compressed_ack_rcv_nxt != sk.rcv_nxt:
        sk.compressed_ack_rcv_nxt = sk.rcv_nxt
        sk.dup_ack_counter = 0
    if sk.dup_ack_counter < TCP_FASTRETRANS_THRESH:
        sk.dup_ack_counter += 1
        tcp_send_ack(sk, now)
        return
    sk.compressed_ack += 1
    if sk.sack_compress_deadline is not None:
        return
    # The receive RTT (x8 us), or srtt if smaller; none measured yet: no delay at all.
    rtt = sk.rcv_rtt_us
    if sk.srtt_us and sk.srtt_us < rtt:
        rtt = sk.srtt_us
    # (rtt / 8) us * 1000 * percent / 100 = rtt * 1.25 * percent ns
    delay = min((rtt + (rtt >> 2)) * TCP_COMP_SACK_RTT_PERCENT,
                net.sysctls.tcp_comp_sack_delay_ns)
    # hrtimer_start_range_ns: the timer fires at the end of its slack range
    sk.sack_compress_deadline = now + delay + TCP_COMP_SACK_SLACK_NS
    net.arm_timer(sk.sock_id, sk.sack_compress_deadline)


def tcp_sack_compress_send_ack(sk: TcpSock, now: int) -> None:
    """Flush a pending compressed SACK (modern)."""
    if not sk.compressed_ack:
        return
    sk.sack_compress_deadline = None
    # The ACK about to go out carries the compressed ones: count all but itself.
    sk.compressed_ack -= 1
    tcp_send_ack(sk, now)


def tcp_ack_snd_check(sk: TcpSock, now: int) -> None:
    if not sk.icsk_ack.pending & AckPending.SCHED:  # inet_csk_ack_scheduled
        return
    __tcp_ack_snd_check(sk, True, now)


def tcp_send_dupack(sk: TcpSock, skb: Skb, now: int) -> None:
    if skb.end_seq != skb.seq and before(skb.seq, sk.rcv_nxt):
        sk.net.inc("TcpExtDelayedACKLost")
        tcp_enter_quickack_mode(sk)
        end_seq = skb.end_seq if not after(skb.end_seq, sk.rcv_nxt) else sk.rcv_nxt
        tcp_dsack_set(sk, skb.seq, end_seq)
    tcp_send_ack(sk, now)


def tcp_send_challenge_ack(sk: TcpSock, skb: Skb, now: int) -> None:
    if tcp_oow_rate_limited(sk, skb, "TcpExtTCPACKSkippedChallenge", now):
        return
    sk.net.inc("TcpExtTCPChallengeACK")
    tcp_send_ack(sk, now)


# ---------------------------------------------------------------------------------
# SACK and DSACK


def tcp_dsack_set(sk: TcpSock, seq: int, end_seq: int) -> None:
    if not (sk.rx_opt.sack_ok and sk.net.sysctls.tcp_dsack):
        return
    sk.net.inc("TcpExtTCPDSACKOldSent" if before(seq, sk.rcv_nxt) else "TcpExtTCPDSACKOfoSent")
    sk.rx_opt.dsack = True
    sk.duplicate_sack = (seq, end_seq)


def tcp_dsack_extend(sk: TcpSock, seq: int, end_seq: int) -> None:
    if not sk.rx_opt.dsack:
        tcp_dsack_set(sk, seq, end_seq)
        return
    extended = _sack_extend(sk.duplicate_sack, seq, end_seq)
    if extended is not None:
        sk.duplicate_sack = extended


def _sack_extend(block: tuple[int, int], seq: int, end_seq: int) -> tuple[int, int] | None:
    """tcp_sack_extend: the union if [seq, end_seq) touches ``block``, else None."""
    start, end = block
    if after(seq, end) or after(start, end_seq):
        return None
    if before(seq, start):
        start = seq
    if after(end_seq, end):
        end = end_seq
    return (start, end)


def tcp_sack_new_ofo_skb(sk: TcpSock, seq: int, end_seq: int, now: int) -> None:
    """Record a new out-of-order range: most recent block first."""
    sacks = sk.selective_acks
    del sacks[sk.rx_opt.num_sacks:]
    modern = sk.net.profile.ofo_sack_compression
    for i, block in enumerate(sacks):
        ext = _sack_extend(block, seq, end_seq)
        if ext is not None:
            if modern and i >= TCP_SACK_BLOCKS_EXPECTED:
                tcp_sack_compress_send_ack(sk, now)
            del sacks[i]
            sacks.insert(0, ext)
            if len(sacks) > 1:
                _sack_maybe_coalesce(sacks)
            sk.rx_opt.num_sacks = len(sacks)
            return
    if modern and len(sacks) >= TCP_SACK_BLOCKS_EXPECTED:
        tcp_sack_compress_send_ack(sk, now)
    if len(sacks) >= TCP_NUM_SACKS:
        sacks.pop()
    sacks.insert(0, (seq, end_seq))
    sk.rx_opt.num_sacks = len(sacks)


def _sack_maybe_coalesce(sacks: list[tuple[int, int]]) -> None:
    i = 1
    while i < len(sacks):
        ext = _sack_extend(sacks[0], *sacks[i])
        if ext is not None:
            sacks[0] = ext
            del sacks[i]
            continue
        i += 1


def tcp_sack_remove(sk: TcpSock) -> None:
    """Forget SACK blocks that rcv_nxt has passed."""
    if not sk.ofo:
        sk.rx_opt.num_sacks = 0
        sk.selective_acks.clear()
        return
    kept = [b for b in sk.selective_acks[: sk.rx_opt.num_sacks] if before(sk.rcv_nxt, b[0])]
    sk.selective_acks[:] = kept
    sk.rx_opt.num_sacks = len(kept)


def tcp_sack_reset(sk: TcpSock) -> None:
    sk.rx_opt.dsack = False
    sk.rx_opt.num_sacks = 0
    sk.selective_acks.clear()


# ---------------------------------------------------------------------------------
# receive RTT and autotuning


def tcp_rcv_rtt_update(sk: TcpSock, sample_us: int, win_dep: bool) -> None:
    if sk.net.profile.rcv_rtt_keeps_minimum:
        old = sk.rcv_rtt_us
        m = max(sample_us, 1) << 3
        if old == 0 or m < old:
            sk.rcv_rtt_us = m
        elif not win_dep and not sk.receive_queue:
            sk.rcv_rtt_us = old - (old >> 3) + max(sample_us, 1)
        return
    m = max(sample_us, 1)
    new = sk.rcv_rtt_us
    if new:
        if not win_dep:
            m -= new >> 3
            new += m
        else:
            m <<= 3
            new = min(new, m)
    else:
        new = m << 3
    sk.rcv_rtt_us = new


def tcp_rcv_rtt_measure(sk: TcpSock, now: int) -> None:
    """One RTT sample per window of data, for connections without timestamps."""
    if sk.rcv_rtt_time and before(sk.rcv_nxt, sk.rcv_rtt_seq):
        return
    if sk.rcv_rtt_time:
        tcp_rcv_rtt_update(sk, (now - sk.rcv_rtt_time) // US, True)
    sk.rcv_rtt_seq = seq_add(sk.rcv_nxt, sk.rcv_wnd)
    sk.rcv_rtt_time = now


def tcp_rtt_tsopt_us(sk: TcpSock, now: int, min_delta: int) -> int:
    """The RTT the echoed timestamp gives, in us; -1 for none."""
    delta = (tcp_time_stamp(sk, now) - sk.rx_opt.rcv_tsecr) & 0xFFFFFFFF
    if not sk.net.profile.ts_rtt_via_tsopt_us:
        return (delta * 1000) & 0xFFFFFFFF  # 4.13: a u32 product, 0 ms kept as 0 us
    if delta >= 0x7FFFFFFF // 1000:
        return -1
    return (delta or min_delta) * 1000


def tcp_rcv_rtt_measure_ts(sk: TcpSock, skb: Skb, now: int) -> None:
    # Both kernels read rcv_tsecr without looking at saw_tstamp: a segment without
    # the option reuses the last echo seen.
    tsecr = sk.rx_opt.rcv_tsecr
    if sk.net.profile.rcv_rtt_once_per_tsecr:
        # 6.x: the same-tsecr test (and the update) comes before the length test, so
        # a short segment also uses up its tsecr
        if tsecr == sk.rcv_rtt_last_tsecr:
            return
        sk.rcv_rtt_last_tsecr = tsecr
    # 4.13 tests rcv_tsecr != 0; 6.x would measure from the raw clock, which
    # tcp_rtt_tsopt_us refuses once the host is up more than 35 minutes
    if not tsecr:
        return
    if seq_sub(skb.end_seq, skb.seq) < sk.icsk_ack.rcv_mss:
        return
    delta_us = tcp_rtt_tsopt_us(sk, now, 0)
    if sk.net.profile.ts_rtt_via_tsopt_us and delta_us <= 0:
        return  # 6.x: a 0 ms sample is dropped
    tcp_rcv_rtt_update(sk, delta_us, False)


# ---------------------------------------------------------------------------------
# the sender's RTT (srtt, rto): here only the handshake's sample


def tcp_rtt_estimator(sk: TcpSock, mrtt_us: int) -> None:
    """The first sample (the only one a receiver gets): srtt = m, rto = 3 m but at
    least rtt + tcp_rto_min."""
    sk.mdev_us = mrtt_us << 1
    sk.rttvar_us = max(sk.mdev_us, TCP_RTO_MIN // US)
    sk.srtt_us = max(1, (mrtt_us << 3) & 0xFFFFFFFF)


def tcp_set_rto(sk: TcpSock) -> None:
    # __tcp_set_rto: usecs_to_jiffies rounds up; tcp_bound_rto
    rto_us = (sk.srtt_us >> 3) + sk.rttvar_us
    hz = sk.net.sysctls.hz
    sk.rto = min(usecs_to_jiffies(rto_us, hz) * sk.net.jiffy, TCP_RTO_MAX)


def tcp_ack_update_rtt(sk: TcpSock, seq_rtt_us: int, now: int) -> bool:
    """For an ACK that acked something (FLAG_ACKED): the ACK's own timing, else the
    echoed timestamp (RFC 7323 RTTM)."""
    ro = sk.rx_opt
    if seq_rtt_us < 0 and ro.saw_tstamp and ro.rcv_tsecr:
        seq_rtt_us = tcp_rtt_tsopt_us(sk, now, 1)
    if seq_rtt_us < 0:
        return False
    tcp_rtt_estimator(sk, seq_rtt_us)
    tcp_set_rto(sk)
    return True


def tcp_synack_rtt_meas(sk: TcpSock, now: int) -> None:
    """The ACK of our SYN-ACK (tcp_check_req, then tcp_rcv_state_process while srtt is
    still 0) or of our SYN (tcp_clean_rtx_queue from tcp_rcv_synsent_state_process):
    the time since it left, when it left only once; else the timestamp echo."""
    rtt_us = -1
    if sk.snt_synack is not None and not sk.synack_num_retrans:
        rtt_us = (now - sk.snt_synack) // US
    # Without it, tcp_check_req's try has the listener's options, not this ACK's; the
    # try in tcp_rcv_state_process (no req outside fastopen) uses this ACK's echo.
    tcp_ack_update_rtt(sk, rtt_us, now)


def tcp_init_metrics(sk: TcpSock) -> None:
    """No cached metrics: with no RTT from the handshake, RFC 6298 5.7's 3 s RTO."""
    if sk.srtt_us == 0:
        sk.rttvar_us = sk.mdev_us = TCP_TIMEOUT_FALLBACK // US
        sk.rto = TCP_TIMEOUT_FALLBACK


def tcp_rcv_space_adjust(sk: TcpSock, now: int) -> None:
    """Dynamic right-sizing: grow sk_rcvbuf to what the reader drains per RTT."""
    rtt = sk.rcv_rtt_us
    if rtt == 0 or (now - sk.rcvq_time) // US < (rtt >> 3):
        return
    net = sk.net
    profile = net.profile
    copied = seq_sub(sk.copied_seq, sk.rcvq_seq)
    tunable = net.sysctls.tcp_moderate_rcvbuf and not sk.rcvbuf_locked
    if profile.rcv_space_subtracts_inq:
        copied -= seq_sub(sk.rcv_nxt, sk.copied_seq)
    if profile.tcp_rcvbuf_grow:
        if copied > sk.rcvq_space:
            if tunable:
                tcp_rcvbuf_grow(sk, copied)
            sk.rcvq_space = copied
    elif copied > sk.rcvq_space:
        if tunable:
            space = sk.rcvq_space
            rcvwin = (copied << 1) + 16 * sk.advmss
            if copied >= space + (space >> 2):
                rcvwin = rcvwin << 1 if copied >= space + (space >> 1) else rcvwin + (rcvwin >> 1)
            rcvmem = skb_truesize(sk.advmss + 320)
            while tcp_win_from_space(sk, rcvmem) < sk.advmss:
                rcvmem += 128
            rcvbuf = min(rcvwin // sk.advmss * rcvmem, net.sysctls.tcp_rmem[2])
            if rcvbuf > sk.rcvbuf:
                sk.rcvbuf = rcvbuf
                sk.window_clamp = rcvwin
        sk.rcvq_space = copied
    sk.rcvq_seq = sk.copied_seq
    sk.rcvq_time = now


def tcp_rcvbuf_grow(sk: TcpSock, newval: int) -> None:
    oldval = max(sk.rcvq_space, 1)
    rcvwin = newval << 1
    rtt_us = sk.rcv_rtt_us >> 3
    if rtt_us < TCP_RCVBUF_LOW_RTT_US:
        grow = rcvwin * rtt_us // TCP_RCVBUF_LOW_RTT_US
    else:
        grow = 2 * rcvwin * (newval - oldval) // oldval
    rcvwin += grow
    last = sk.ofo.last()
    if last is not None:
        rcvwin += seq_sub(last.end_seq, sk.rcv_nxt)
    profile = sk.net.profile
    rcvbuf = min(profile.space_from_win(rcvwin, sk.scaling_ratio), sk.net.sysctls.tcp_rmem[2])
    if rcvbuf > sk.rcvbuf:
        sk.rcvbuf = rcvbuf
        sk.window_clamp = tcp_win_from_space(sk, rcvbuf)


# ---------------------------------------------------------------------------------
# memory: schedule, prune, collapse


def tcp_can_ingest(sk: TcpSock, skb: Skb) -> bool:
    """Room while sk_rmem_alloc <= sk_rcvbuf, the incoming skb not counted: 4.13's test,
    and 6.18.y's again since "tcp: give up on stronger sk_rcvbuf checks (for now)"
    (rmem + len made a slow reader prune and drop far too early)."""
    return sk.rmem_alloc <= sk.rcvbuf


def tcp_try_rmem_schedule(sk: TcpSock, skb: Skb) -> bool:
    """False when the segment does not fit even after pruning (the caller drops it)."""
    if tcp_can_ingest(sk, skb):
        return True
    return tcp_prune_queue(sk, skb) >= 0


def tcp_clamp_window(sk: TcpSock) -> None:
    sk.icsk_ack.quick = 0
    rmem_max = sk.net.sysctls.tcp_rmem[2]
    if sk.rcvbuf < rmem_max and not sk.rcvbuf_locked:
        sk.rcvbuf = min(sk.rmem_alloc, rmem_max)
    if sk.rmem_alloc > sk.rcvbuf:
        sk.rcv_ssthresh = min(sk.window_clamp, 2 * sk.advmss)


def tcp_prune_queue(sk: TcpSock, in_skb: Skb) -> int:
    profile = sk.net.profile
    if profile.prune_requires_rmem and sk.rmem_alloc == 0:
        return -1
    sk.net.inc("TcpExtPruneCalled")
    over = sk.rmem_alloc > sk.rcvbuf if profile.prune_over_rcvbuf_strict \
        else sk.rmem_alloc >= sk.rcvbuf
    if over:
        tcp_clamp_window(sk)
    if profile.prune_requires_rmem and tcp_can_ingest(sk, in_skb):
        return 0
    tcp_collapse_ofo_queue(sk)
    if sk.receive_queue:
        _collapse_receive_queue(sk)
    sk_mem_reclaim(sk)
    if tcp_can_ingest(sk, in_skb):
        return 0
    tcp_prune_ofo_queue(sk, in_skb)
    if tcp_can_ingest(sk, in_skb):
        return 0
    sk.net.inc("TcpExtRcvPruned")
    sk.pred_flags = 0
    return -1


def _collapsible_start(sk: TcpSock, skbs: list[Skb], start: int) -> tuple[int, int] | None:
    """Where tcp_collapse begins copying: (index, start seq), or None if not worth it."""
    for i, skb in enumerate(skbs):
        if skb.fin or skb.syn:
            return None
        if tcp_win_from_space(sk, skb.truesize) > skb.len or before(skb.seq, start):
            return i, start
        nxt = skbs[i + 1] if i + 1 < len(skbs) else None
        if nxt is not None and skb.end_seq != nxt.seq:
            return i, start
        start = skb.end_seq
    return None


def tcp_collapse(sk: TcpSock, skbs: list[Skb], start: int, end: int) -> list[Skb]:
    """Copy a run of skbs into dense one-page skbs; returns the new run.

    ``skbs`` are contiguous and charged; bytes before ``start`` (already read) and
    skbs that bring nothing new are dropped from the copy.
    """
    net = sk.net
    kept: list[Skb] = []
    # skbs entirely below start carry no new bits
    while skbs and not before(start, skbs[0].end_seq):
        old = skbs.pop(0)  # every byte of it was read already
        net.inc("TcpExtTCPRcvCollapsed")
        kfree_skb_consumed(sk, old, DELIVERED)
    found = _collapsible_start(sk, skbs, start)
    if found is None:
        return skbs
    idx, start = found
    kept.extend(skbs[:idx])
    rest = skbs[idx:]
    out: list[Skb] = []
    while rest and before(start, end):
        head = rest[0]
        if head.fin or head.syn:
            break
        copy = min(SKB_MAX_ORDER0, seq_sub(end, start))
        # alloc_skb(copy): the head object kmalloc_reserve gives (slab-rounded, or the
        # small-head cache's), all of it in truesize; what the copy leaves unused is
        # tailroom that tcp_try_coalesce can later fill with arriving payload
        head_obj = skb_head_object(copy, sk.net.profile.skb_small_head_cache)
        data = bytearray()
        ids: list[int] = []
        nseq = start
        while copy > 0 and rest:
            skb = rest[0]
            if skb.fin or skb.syn:
                break
            offset = seq_sub(start, skb.seq)
            size = seq_sub(skb.end_seq, start)
            if size > 0:
                size = min(copy, size)
                data += skb.data[offset:offset + size]
                copy -= size
                start = seq_add(start, size)
                ids.extend(i for i in skb.ids if i not in ids)
            if not before(start, skb.end_seq):
                rest.pop(0)
                net.inc("TcpExtTCPRcvCollapsed")
                _uncharge(sk, skb)
        if not data:
            break
        nskb = Skb(seq=nseq, end_seq=start, flags=head.flags & ~(TcpFlags.FIN | TcpFlags.SYN),
                   ack_seq=head.ack_seq, window=head.window, options=head.options,
                   data=bytes(data), truesize=head_obj + SKB_STRUCT_SIZE, doff=head.doff,
                   ids=ids, arrived_ns=head.arrived_ns, head_frag=False,
                   tailroom=head_obj - SKB_SHINFO_SIZE - len(data))
        skb_set_owner_r(sk, nskb)
        out.append(nskb)
    # A partly copied skb stays, trimmed from the front by the copy already made.
    if rest and before(rest[0].seq, start) and not rest[0].fin:
        skb = rest[0]
        cut = seq_sub(start, skb.seq)
        skb.data = skb.data[cut:]
        skb.seq = start
    return kept + out + rest


def _collapse_receive_queue(sk: TcpSock) -> None:
    skbs = list(sk.receive_queue)
    new = tcp_collapse(sk, skbs, sk.copied_seq, sk.rcv_nxt)
    sk.receive_queue.clear()
    sk.receive_queue.extend(new)


def tcp_collapse_ofo_queue(sk: TcpSock) -> None:
    skbs = list(sk.ofo)
    if not skbs:
        return
    modern = sk.net.profile.prune_ofo_spare_lower
    # contiguous (or overlapping) runs: (skbs, start, end)
    ranges: list[tuple[list[Skb], int, int]] = []
    for skb in skbs:
        if ranges and not after(skb.seq, ranges[-1][2]):
            run, start, end = ranges[-1]
            run.append(skb)
            ranges[-1] = (run, start, skb.end_seq if after(skb.end_seq, end) else end)
        else:
            ranges.append(([skb], skb.seq, skb.end_seq))
    result: list[Skb] = []
    sum_tiny = 0
    for i, (run, start, stop) in enumerate(ranges):
        if modern and len(run) == 1 and seq_sub(stop, start) < SKB_MAX_ORDER0:
            # Do not attempt collapsing tiny ranges; give up when they add up.
            sum_tiny += run[0].truesize
            result.extend(run)
            if sum_tiny > sk.rcvbuf >> 3:
                for later, _, _ in ranges[i + 1:]:
                    result.extend(later)
                break
            continue
        result.extend(tcp_collapse(sk, list(run), start, stop))
    sk.ofo.purge()
    for skb in result:
        sk.ofo.insert(skb)


def tcp_prune_ofo_queue(sk: TcpSock, in_skb: Skb) -> bool:
    """Free out-of-order data from the highest sequence down to make room."""
    if not sk.ofo:
        return False
    net = sk.net
    pruned = False
    if net.profile.prune_ofo_spare_lower:
        goal = sk.rcvbuf >> 3
        while sk.ofo:
            skb = sk.ofo.last()
            assert skb is not None
            if after(in_skb.seq, skb.seq):
                break  # the incoming skb would land last: keep what precedes it
            pruned = True
            sk.ofo.erase(skb)
            goal -= skb.truesize
            tcp_drop(sk, skb, "TCP_OFO_QUEUE_PRUNE")
            if not sk.ofo or goal <= 0:
                if tcp_can_ingest(sk, in_skb):
                    break
                goal = sk.rcvbuf >> 3
    else:
        pruned = True
        while sk.ofo:
            skb = sk.ofo.last()
            assert skb is not None
            sk.ofo.erase(skb)
            tcp_drop(sk, skb, "TCP_OFO_QUEUE_PRUNE")
            sk_mem_reclaim(sk)
            if sk.rmem_alloc <= sk.rcvbuf:
                break
    if pruned:
        net.inc("TcpExtOfoPruned")
        if sk.rx_opt.sack_ok:
            tcp_sack_reset(sk)
    return pruned


# ---------------------------------------------------------------------------------
# the receive queue


def tcp_queue_rcv(sk: TcpSock, skb: Skb) -> bool:
    """Append (or coalesce into the tail); returns True if the skb was merged away."""
    queue = sk.receive_queue
    eaten = bool(queue) and tcp_try_coalesce(sk, queue[-1], skb)
    sk.rcv_nxt = skb.end_seq
    if not eaten:
        sk.receive_queue.append(skb)
        if not skb.charged:
            skb_set_owner_r(sk, skb)
    return eaten


def tcp_fast_path_on(sk: TcpSock) -> None:
    sk.pred_flags = (tcp_header_len(sk) >> 2) << 28 | TcpFlags.ACK << 16 | \
        ((sk.snd_wnd >> sk.rx_opt.snd_wscale) & 0xFFFF)


def tcp_fast_path_check(sk: TcpSock) -> None:
    if not sk.ofo and sk.rcv_wnd and sk.rmem_alloc < sk.rcvbuf:
        tcp_fast_path_on(sk)


def tcp_rmem_pressure(sk: TcpSock) -> bool:
    """tcp_rmem_pressure: rmem above 7/8 of sk_rcvbuf, as rcvbuf - (rcvbuf >> 3)
    (global memory pressure is not modelled)."""
    rcvbuf = sk.rcvbuf
    return sk.rmem_alloc > rcvbuf - (rcvbuf >> 3)


def tcp_epollin_ready(sk: TcpSock, target: int) -> bool:
    """tcp_epollin_ready (4.19+): something queued, and ``target`` bytes of it, or the
    buffer nearly full, or a window of at most one rcv_mss left (waiting for more
    would stall the sender). ``avail`` is rcv_nxt - copied_seq, a FIN included."""
    avail = seq_sub(sk.rcv_nxt, sk.copied_seq)
    if avail <= 0:
        return False
    return (avail >= target or tcp_rmem_pressure(sk)
            or tcp_receive_window(sk) <= sk.icsk_ack.rcv_mss)


def tcp_data_ready(sk: TcpSock, now: int) -> None:
    """Wake readers (sk_data_ready); modern only when tcp_epollin_ready(sk_rcvlowat)
    or SOCK_DONE (a FIN)."""
    profile = sk.net.profile
    if profile.data_ready_honours_rcvlowat and not (
            tcp_epollin_ready(sk, sk.rcvlowat) or sk.sock_done):
        return
    sk.data_ready = True


def tcp_data_queue(sk: TcpSock, skb: Skb, now: int) -> None:
    """Place a validated segment: receive queue, out-of-order queue, or drop (§3)."""
    net = sk.net
    profile = net.profile
    if skb.seq == skb.end_seq:
        kfree_skb_consumed(sk, skb)
        return
    sk.rx_opt.dsack = False

    if skb.seq == sk.rcv_nxt:
        length = len(skb.data)
        # Modern accepts a bare FIN into a zero window.
        if tcp_receive_window(sk) == 0 and not (
                profile.zero_window_counters and length == 0 and skb.fin):
            if profile.zero_window_counters:
                net.inc("TcpExtTCPZeroWindowDrop")
            _out_of_window(sk, skb, "TCP_ZEROWINDOW")
            return
        eaten_all = length > 0 and _direct_copy(sk, skb, now) == length
        if eaten_all:
            kfree_skb_consumed(sk, skb, DELIVERED)
        else:
            if not _queue_and_out_mem(sk, skb):
                return
            tcp_queue_rcv(sk, skb)
        sk.rcv_nxt = skb.end_seq
        _after_in_order(sk, skb, now)
        return

    if not after(skb.end_seq, sk.rcv_nxt):
        # Case B: a retransmission of data already received.
        net.inc("TcpExtDelayedACKLost")
        tcp_dsack_set(sk, skb.seq, skb.end_seq)
        _out_of_window(sk, skb, "TCP_OLD_DATA")
        return

    if not before(skb.seq, seq_add(sk.rcv_nxt, tcp_receive_window(sk))):
        # Case C: beyond the right edge (e.g. a zero-window probe with data).
        _out_of_window(sk, skb, "TCP_OVERWINDOW")
        return

    if profile.quickack_on_ofo_and_partial:
        tcp_enter_quickack_mode(sk)

    if before(skb.seq, sk.rcv_nxt):
        # Case D: partial overlap; the head is a duplicate.
        tcp_dsack_set(sk, skb.seq, sk.rcv_nxt)
        if tcp_receive_window(sk) == 0:
            if profile.zero_window_counters:
                net.inc("TcpExtTCPZeroWindowDrop")
            _out_of_window(sk, skb, "TCP_ZEROWINDOW")
            return
        if not _queue_and_out_mem(sk, skb):
            return
        tcp_queue_rcv(sk, skb)
        _after_in_order(sk, skb, now)
        return

    # Case E: out of order, inside the window.
    tcp_data_queue_ofo(sk, skb, now)


def _direct_copy(sk: TcpSock, skb: Skb, now: int) -> int:
    """Legacy A2: copy into the installed reader's buffer when running in its context."""
    uc = sk.ucopy
    if not (sk.net.profile.hp_direct_copy and uc.task is not None and uc.task == sk.net.current
            and sk.copied_seq == sk.rcv_nxt and uc.len > 0 and sk.owned and skb.len):
        return 0
    chunk = min(skb.len, uc.len)
    if not uc.iov:
        uc.iov_seq = sk.copied_seq
    uc.iov += skb.data[:chunk]
    uc.len -= chunk
    sk.copied_seq = seq_add(sk.copied_seq, chunk)
    tcp_rcv_space_adjust(sk, now)
    sk.net.event("direct_copy", sk.sock_id, task=uc.task, bytes=chunk)
    return chunk


def _queue_and_out_mem(sk: TcpSock, skb: Skb) -> bool:
    """Receive memory for an in-order skb; False if it was dropped."""
    net = sk.net
    if not net.profile.inorder_nomem_ack:
        if not sk.receive_queue:
            return True  # sk_forced_mem_schedule: an empty queue always accepts
        if not tcp_try_rmem_schedule(sk, skb):
            tcp_drop(sk, skb, "PROTO_MEM")
            return False
        return True
    if not tcp_try_rmem_schedule(sk, skb):
        sk.icsk_ack.pending |= AckPending.NOMEM | AckPending.NOW
        inet_csk_schedule_ack(sk)
        sk.data_ready = True
        if sk.receive_queue and skb.len:
            net.inc("TcpExtTCPRcvQDrop")
            tcp_drop(sk, skb, "PROTO_MEM")
            return False
    return True


def _after_in_order(sk: TcpSock, skb: Skb, now: int) -> None:
    profile = sk.net.profile
    if skb.data:
        tcp_event_data_recv(sk, skb, now)
    if skb.flags & TcpFlags.FIN:
        tcp_fin(sk, now)
    if sk.ofo:
        tcp_ofo_queue(sk, now)
        if not sk.ofo:
            # A hole was filled: RFC 5681 4.2 wants an immediate ACK.
            if profile.gap_filled_ack_now:
                sk.icsk_ack.pending |= AckPending.NOW
            else:
                sk.icsk_ack.pingpong = 0
    if sk.rx_opt.num_sacks:
        tcp_sack_remove(sk)
    tcp_fast_path_check(sk)
    if not sk.sock_dead:
        tcp_data_ready(sk, now)


def _out_of_window(sk: TcpSock, skb: Skb, reason: str) -> None:
    tcp_enter_quickack_mode(sk, 16)
    inet_csk_schedule_ack(sk)
    tcp_drop(sk, skb, reason)


def tcp_data_queue_ofo(sk: TcpSock, skb: Skb, now: int) -> None:
    """Insert into the out-of-order queue with Linux's merge rules (§4)."""
    net = sk.net
    profile = net.profile
    if not tcp_try_rmem_schedule(sk, skb):
        net.inc("TcpExtTCPOFODrop")
        if profile.inorder_nomem_ack:
            sk.data_ready = True
        tcp_drop(sk, skb, "PROTO_MEM")  # 6.18: the reason tcp_data_queue uses too
        return
    _ofo_insert(sk, skb, now)
    if profile.ofo_grows_rcvbuf:
        # Whatever became of the skb (kept, merged, a duplicate), autotuning now
        # sees the out-of-order span.
        tcp_rcvbuf_grow_from_ofo(sk)


def _ofo_insert(sk: TcpSock, skb: Skb, now: int) -> None:
    net = sk.net
    profile = net.profile
    if profile.ofo_measures_rcv_mss:
        tcp_measure_rcv_mss(sk, skb)
    sk.pred_flags = 0
    inet_csk_schedule_ack(sk)
    net.inc("TcpExtTCPOFOQueue")
    seq, end_seq = skb.seq, skb.end_seq
    if net.emit_events:
        net.event("ofo_queue", sk.sock_id, seq=seq, end_seq=end_seq)
    grow = not profile.ofo_grow_window_sack_only or sk.rx_opt.sack_ok
    ofo = sk.ofo

    if not ofo:
        ofo.reset_base(sk.rcv_nxt)
        if sk.rx_opt.sack_ok:
            sk.selective_acks[:] = [(seq, end_seq)]
            sk.rx_opt.num_sacks = 1
        ofo.insert(skb)
        _ofo_keep(sk, skb, grow)
        return

    last = ofo.last()
    assert last is not None
    if seq == last.end_seq and tcp_try_coalesce(sk, last, skb):
        if grow:
            tcp_grow_window(sk, skb)
        _ofo_add_sack(sk, seq, end_seq, now)
        return

    kept: Skb | None = skb
    if not before(seq, last.end_seq):
        ofo.insert(skb)
    else:
        # The rbtree descent: every node at or below seq, lowest first, as the path
        # would meet them; nodes have increasing seq and end_seq. Only the last of
        # them (the predecessor, always on the path) is tried for coalescing: one that
        # ends at seq while its successor starts there would swallow a duplicate
        # (skb_try_coalesce copies small payloads into tailroom).
        below = [n for n in ofo if not after(n.seq, seq)]
        for node in below:
            if before(seq, node.end_seq):
                if not after(end_seq, node.end_seq):
                    net.inc("TcpExtTCPOFOMerge")
                    tcp_drop(sk, skb, "TCP_OFOMERGE")
                    tcp_dsack_set(sk, seq, end_seq)
                    _ofo_add_sack(sk, seq, end_seq, now)
                    return
                if after(seq, node.seq):
                    tcp_dsack_set(sk, seq, node.end_seq)
                else:
                    ofo.replace(node, skb)
                    tcp_dsack_extend(sk, node.seq, node.end_seq)
                    net.inc("TcpExtTCPOFOMerge")
                    tcp_drop(sk, node, "TCP_OFOMERGE")
                    kept = skb
                    break
            elif node is below[-1] and tcp_try_coalesce(sk, node, skb):
                if grow:
                    tcp_grow_window(sk, skb)
                _ofo_add_sack(sk, seq, end_seq, now)
                return
        else:
            ofo.insert(skb)

    # merge_right: drop successors the new skb covers
    nxt = ofo.next(skb)
    while nxt is not None and after(end_seq, nxt.seq):
        if before(end_seq, nxt.end_seq):
            tcp_dsack_extend(sk, nxt.seq, end_seq)
            break
        ofo.erase(nxt)
        tcp_dsack_extend(sk, nxt.seq, nxt.end_seq)
        net.inc("TcpExtTCPOFOMerge")
        tcp_drop(sk, nxt, "TCP_OFOMERGE")
        nxt = ofo.next(skb)
    _ofo_add_sack(sk, seq, end_seq, now)
    if kept is not None:
        _ofo_keep(sk, kept, grow)


def _ofo_add_sack(sk: TcpSock, seq: int, end_seq: int, now: int) -> None:
    if sk.rx_opt.sack_ok:
        tcp_sack_new_ofo_skb(sk, seq, end_seq, now)


def _ofo_keep(sk: TcpSock, skb: Skb, grow: bool) -> None:
    if grow:
        tcp_grow_window(sk, skb)
    skb_set_owner_r(sk, skb)


def tcp_rcvbuf_grow_from_ofo(sk: TcpSock) -> None:
    """Modern: let autotuning see the out-of-order span too (only once a process
    holds the socket: not before accept(), not after close())."""
    if not sk.attached or sk.sock_dead:
        return
    if sk.net.sysctls.tcp_moderate_rcvbuf and not sk.rcvbuf_locked and sk.rcvq_space:
        tcp_rcvbuf_grow(sk, sk.rcvq_space)


def tcp_ofo_queue(sk: TcpSock, now: int) -> None:
    """Move out-of-order data that rcv_nxt has reached into sk_receive_queue."""
    dsack_high = sk.rcv_nxt
    clips_end = sk.net.profile.ofo_queue_dsack_clips_end
    while sk.ofo:
        skb = sk.ofo.first()
        assert skb is not None
        if after(skb.seq, sk.rcv_nxt):
            break
        if before(skb.seq, dsack_high):
            dsack = dsack_high
            if before(skb.end_seq, dsack_high):
                if clips_end:
                    dsack = skb.end_seq
                else:
                    dsack_high = skb.end_seq  # 4.13: the mark moves, this block does not
            tcp_dsack_extend(sk, skb.seq, dsack)
        sk.ofo.erase(skb)
        if not after(skb.end_seq, sk.rcv_nxt):
            tcp_drop(sk, skb, "TCP_OFO_DROP")
            continue
        tail = sk.tail()
        if tail is None or not tcp_try_coalesce(sk, tail, skb):
            sk.receive_queue.append(skb)
        sk.rcv_nxt = skb.end_seq
        if sk.net.emit_events:
            sk.net.event("ofo_to_receive_queue", sk.sock_id, seq=skb.seq, end_seq=skb.end_seq)
        if skb.fin:
            tcp_fin(sk, now)
            break


def tcp_fin(sk: TcpSock, now: int) -> None:
    """The peer closed its side: EOF for readers once the queue is drained."""
    inet_csk_schedule_ack(sk)
    sk.rcv_shutdown = True
    sk.sock_done = True
    state = sk.state
    if state in (TcpState.SYN_RECV, TcpState.ESTABLISHED):
        set_state(sk, TcpState.CLOSE_WAIT)
        sk.icsk_ack.pingpong = 1
    elif state == TcpState.FIN_WAIT1:
        tcp_send_ack(sk, now)
        set_state(sk, TcpState.CLOSING)
    elif state == TcpState.FIN_WAIT2:
        tcp_send_ack(sk, now)
        tcp_time_wait(sk, TcpState.TIME_WAIT, 0, now)
    for skb in sk.ofo.purge():
        tcp_drop(sk, skb, "NOT_SPECIFIED")  # skb_rbtree_purge: kfree_skb, no reason
    if sk.rx_opt.sack_ok:
        tcp_sack_reset(sk)
    sk.data_ready = True
    sk.net.event("fin", sk.sock_id, state=sk.state.value)


def set_state(sk: TcpSock, state: TcpState) -> None:
    """tcp_set_state with its MIB side effects."""
    old = sk.state
    net = sk.net
    if state == TcpState.ESTABLISHED and old != TcpState.ESTABLISHED:
        net.mib.add("TcpCurrEstab")
    elif old in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT) and state not in (
            TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
        if state == TcpState.CLOSE:
            net.mib.add("TcpEstabResets")
        if old == TcpState.ESTABLISHED or state != TcpState.ESTABLISHED:
            net.mib.add("TcpCurrEstab", -1)
    sk.state = state
    net.event("state", sk.sock_id, old=old.value, new=state.value)


def tcp_time_wait(sk: TcpSock, state: TcpState, timeo: int, now: int) -> None:
    """tcp_time_wait (tcp_minisocks.c): a timewait sock takes over the connection (its
    ``tw_substate`` is ``state``), then tcp_done closes the full socket."""
    set_state(sk, state)  # what the event trace shows; tcp_done moves it to CLOSE
    inet_twsk_hashdance(sk, state, timeo, now)
    tcp_done(sk)
    if sk.sock_dead:
        # tcp_done: inet_csk_destroy_sock -> sk_stream_kill_queues purges what an
        # orphan still queued (the FIN that got it here)
        for skb in list(sk.receive_queue):
            tcp_drop(sk, skb, "QUEUE_PURGE")
        sk.receive_queue.clear()


def tcp_fin_time(sk: TcpSock) -> int:
    """tcp_fin_time: tcp_fin_timeout (no TCP_LINGER2 set), at least 3.5 RTO."""
    fin_timeout = sk.net.sysctls.tcp_fin_timeout * 1000 * MS
    rto = sk.rto
    return max(fin_timeout, (rto << 2) - (rto >> 1))


def tcp_reset(sk: TcpSock, now: int) -> None:
    """An acceptable RST: the connection is gone; readers see the error."""
    if sk.state == TcpState.SYN_SENT:
        sk.sk_err = ECONNREFUSED
    elif sk.state == TcpState.CLOSE_WAIT:
        sk.sk_err = EPIPE
    elif sk.state != TcpState.CLOSE:
        sk.sk_err = ECONNRESET
    tcp_done(sk)


def tcp_done(sk: TcpSock) -> None:
    set_state(sk, TcpState.CLOSE)
    sk.rcv_shutdown = True
    sk.snd_shutdown = True
    sk.icsk_ack.pending = 0
    sk.icsk_ack.timeout = sk.icsk_ack.fire_at = 0
    sk.data_ready = True


# ---------------------------------------------------------------------------------
# validation and the ACK field


def tcp_sequence(sk: TcpSock, skb: Skb) -> str | None:
    """None if acceptable, else the drop reason (tcp_sequence)."""
    if before(skb.end_seq, sk.rcv_wup):
        return "TCP_OLD_SEQUENCE"
    limit = seq_add(sk.rcv_nxt, tcp_receive_window(sk))
    if after(skb.seq, limit):
        return "TCP_INVALID_SEQUENCE"
    if sk.net.profile.reject_beyond_window and after(skb.end_seq, limit):
        if not after(seq_sub(skb.end_seq, int(skb.fin)) & 0xFFFFFFFF, limit):
            return None
        if sk.receive_queue:
            return "TCP_INVALID_END_SEQUENCE"
    return None


def tcp_paws_discard(sk: TcpSock, skb: Skb) -> bool:
    ro = sk.rx_opt
    if not ro.saw_tstamp or not ro.ts_recent:
        return False
    if (ro.ts_recent - ro.rcv_tsval) & 0xFFFFFFFF <= TCP_PAWS_WINDOW or \
            (ro.ts_recent - ro.rcv_tsval) & 0x80000000:
        return False
    # tcp_disordered_ack: an old duplicate pure ACK is not a PAWS failure
    return not (skb.has(TcpFlags.ACK) and skb.seq == skb.end_seq and skb.seq == sk.rcv_nxt
                and skb.ack_seq == sk.snd_una)


def tcp_parse_timestamp(sk: TcpSock, skb: Skb) -> None:
    ts = skb.options.timestamp if sk.rx_opt.tstamp_ok else None
    ro = sk.rx_opt
    ro.saw_tstamp = ts is not None
    if ts is not None:
        ro.rcv_tsval, ro.rcv_tsecr = ts


def tcp_replace_ts_recent(sk: TcpSock, seq: int, now: int) -> None:
    ro = sk.rx_opt
    # tcp_paws_check(rx_opt, 0): only a newer (or equal) TSval replaces ts_recent
    newer = not ro.ts_recent or ((ro.rcv_tsval - ro.ts_recent) & 0xFFFFFFFF) < 0x80000000
    if ro.saw_tstamp and not after(seq, sk.rcv_wup) and newer:
        ro.ts_recent = ro.rcv_tsval
        ro.ts_recent_stamp = now


def tcp_validate_incoming(sk: TcpSock, skb: Skb, now: int) -> bool:
    """RFC 793 steps 1-4 (PAWS, sequence, RST, SYN); False if the segment was dropped."""
    net = sk.net
    rst = skb.has(TcpFlags.RST)
    reason: str | None
    if tcp_paws_discard(sk, skb) and not rst:
        if net.profile.reject_beyond_window and skb.len == 0 and not skb.syn and not skb.fin:
            net.inc("TcpExtPAWSOldAck")
            reason = "TCP_RFC7323_PAWS_ACK"  # 6.18's tcp_disordered_ack_check
        else:
            net.inc("TcpExtPAWSEstab")
            if not tcp_oow_rate_limited(sk, skb, "TcpExtTCPACKSkippedPAWS", now):
                tcp_send_dupack(sk, skb, now)
            reason = "TCP_RFC7323_PAWS"
        tcp_drop(sk, skb, reason)
        return False
    reason = tcp_sequence(sk, skb)
    if reason is not None:
        if not rst:
            if skb.syn:
                return _syn_challenge(sk, skb, now)
            if net.profile.reject_beyond_window and reason in (
                    "TCP_INVALID_SEQUENCE", "TCP_INVALID_END_SEQUENCE"):
                net.inc("TcpExtBeyondWindow")  # both sides of the window count
            if not tcp_oow_rate_limited(sk, skb, "TcpExtTCPACKSkippedSeq", now):
                tcp_send_dupack(sk, skb, now)
        tcp_drop(sk, skb, reason)
        return False
    if rst:
        if skb.seq == sk.rcv_nxt or _rst_matches_sack(sk, skb):
            tcp_reset(sk, now)
        else:
            tcp_send_challenge_ack(sk, skb, now)
        tcp_drop(sk, skb, "TCP_RESET")
        return False
    if skb.syn:
        return _syn_challenge(sk, skb, now)
    return True


def _rst_matches_sack(sk: TcpSock, skb: Skb) -> bool:
    if not sk.rx_opt.sack_ok or not sk.rx_opt.num_sacks:
        return False
    ends = [b[1] for b in sk.selective_acks[: sk.rx_opt.num_sacks]]
    highest = max(ends, key=lambda e: seq_sub(e, sk.rcv_nxt))
    return skb.seq == highest


def _syn_challenge(sk: TcpSock, skb: Skb, now: int) -> bool:
    sk.net.inc("TcpExtTCPSYNChallenge")
    tcp_send_challenge_ack(sk, skb, now)
    tcp_drop(sk, skb, "TCP_INVALID_SYN")
    return False


ACK_UNSENT_DATA = -1  # tcp_ack's -SKB_DROP_REASON_TCP_ACK_UNSENT_DATA
ACK_TOO_OLD = -2  # tcp_ack's -SKB_DROP_REASON_TCP_TOO_OLD_ACK
_ACK_DROP_REASON = {ACK_UNSENT_DATA: "TCP_ACK_UNSENT_DATA", ACK_TOO_OLD: "TCP_TOO_OLD_ACK"}


def tcp_ack(sk: TcpSock, skb: Skb, slowpath: bool, now: int,
            no_challenge: bool = False) -> int:
    """The receiver's share of tcp_ack: validate the ACK field and take the peer's window.

    Returns ACK_UNSENT_DATA or ACK_TOO_OLD if the segment must be dropped, 0 for an
    old ACK (the data is still processed), 1 otherwise. Without ``no_challenge``
    (FLAG_NO_CHALLENGE_ACK) an invalid ACK is answered as the profile's kernel does.
    """
    net = sk.net
    profile = net.profile
    ack = skb.ack_seq
    prior_snd_una = sk.snd_una
    if before(ack, prior_snd_una):
        # RFC 5961 5.2 blind data injection: an ACK older than any window sent.
        max_window = min(sk.max_window, sk.bytes_acked) \
            if profile.too_old_ack_uses_bytes_acked else sk.max_window
        if before(ack, seq_sub(prior_snd_una, max_window)):
            if not no_challenge:
                tcp_send_challenge_ack(sk, skb, now)
            return ACK_TOO_OLD
        return 0  # old ACK: nothing to learn, keep processing the data
    if after(ack, sk.snd_nxt):
        if profile.ack_unsent_challenge and not no_challenge:
            tcp_send_challenge_ack(sk, skb, now)
        return ACK_UNSENT_DATA
    if not slowpath and after(ack, prior_snd_una):
        net.inc("TcpExtTCPHPAcks")
    elif slowpath and skb.end_seq == skb.seq:
        net.inc("TcpExtTCPPureAcks")
    tcp_ack_update_window(sk, skb, ack)
    sk.bytes_acked += seq_sub(ack, prior_snd_una)  # tcp_snd_una_update
    sk.snd_una = ack
    return 1


def tcp_ack_update_window(sk: TcpSock, skb: Skb, ack: int) -> None:
    nwin = skb.window << sk.rx_opt.snd_wscale
    may_update = after(ack, sk.snd_una) or after(skb.seq, sk.snd_wl1) or (
        skb.seq == sk.snd_wl1 and nwin > sk.snd_wnd)
    if may_update:
        sk.snd_wl1 = skb.seq
        if sk.snd_wnd != nwin:
            sk.snd_wnd = nwin
            sk.pred_flags = 0
            tcp_fast_path_check(sk)
            sk.max_window = max(sk.max_window, nwin)


# ---------------------------------------------------------------------------------
# tcp_rcv_established


def tcp_rcv_established(sk: TcpSock, skb: Skb, now: int) -> None:
    """Header prediction fast path, else the full slow path (§2)."""
    net = sk.net
    profile = net.profile
    tcp_parse_timestamp(sk, skb)
    hdr_word = (skb.doff >> 2) << 28 | (skb.flags & _NOT_PSH) << 16 | skb.window
    # A TSval older than ts_recent takes the slow path, where PAWS looks closer.
    if (sk.pred_flags and hdr_word == sk.pred_flags and skb.seq == sk.rcv_nxt
            and not after(skb.ack_seq, sk.snd_nxt)
            and not (sk.rx_opt.saw_tstamp
                     and (sk.rx_opt.rcv_tsval - sk.rx_opt.ts_recent) & 0x80000000)):
        if not skb.data:
            if sk.rx_opt.saw_tstamp and sk.rcv_nxt == sk.rcv_wup:
                tcp_replace_ts_recent(sk, skb.seq, now)
            tcp_ack(sk, skb, slowpath=False, now=now)
            kfree_skb_consumed(sk, skb)
            return
        if _hp_direct_copy(sk, skb, now):
            return
        if not skb.raw_csum_ok or (profile.reject_beyond_window and after(
                skb.end_seq, seq_add(sk.rcv_nxt, tcp_receive_window(sk)))):
            _slow_path(sk, skb, now)
            return
        if skb.truesize > sk.forward_alloc:
            # No prepaid memory left: take the slow path's memory scheduling.
            tcp_step5(sk, skb, now)
            return
        if sk.rx_opt.saw_tstamp and sk.rcv_nxt == sk.rcv_wup:
            tcp_replace_ts_recent(sk, skb.seq, now)
        tcp_rcv_rtt_measure_ts(sk, skb, now)
        net.inc("TcpExtTCPHPHits")
        tcp_queue_rcv(sk, skb)
        tcp_event_data_recv(sk, skb, now)
        if skb.ack_seq != sk.snd_una:
            tcp_ack(sk, skb, slowpath=False, now=now)
        __tcp_ack_snd_check(sk, False, now)
        tcp_data_ready(sk, now)
        return
    _slow_path(sk, skb, now)


def _hp_direct_copy(sk: TcpSock, skb: Skb, now: int) -> bool:
    """Legacy: header prediction copies straight to the reader running this replay."""
    uc = sk.ucopy
    net = sk.net
    if not (net.profile.hp_direct_copy and uc.task is not None and uc.task == net.current
            and sk.copied_seq == sk.rcv_nxt and skb.len <= uc.len and sk.owned):
        return False
    if not skb.raw_csum_ok:
        return False  # skb_copy_and_csum_datagram_msg fails: the slow path counts it
    if sk.rx_opt.saw_tstamp and sk.rcv_nxt == sk.rcv_wup:
        tcp_replace_ts_recent(sk, skb.seq, now)
    if not uc.iov:
        uc.iov_seq = sk.copied_seq
    uc.iov += skb.data
    uc.len -= skb.len
    sk.copied_seq = seq_add(sk.copied_seq, skb.len)
    tcp_rcv_space_adjust(sk, now)
    sk.rcv_nxt = skb.end_seq
    tcp_rcv_rtt_measure_ts(sk, skb, now)
    net.inc("TcpExtTCPHPHitsToUser")
    net.event("direct_copy", sk.sock_id, task=uc.task, bytes=skb.len)
    tcp_event_data_recv(sk, skb, now)
    if skb.ack_seq != sk.snd_una:
        tcp_ack(sk, skb, slowpath=False, now=now)
    __tcp_ack_snd_check(sk, False, now)
    kfree_skb_consumed(sk, skb, DELIVERED)
    # 4.13 calls sk_data_ready even for an eaten skb: it ends the reader's
    # sk_wait_data when the copy happened during its own backlog replay.
    tcp_data_ready(sk, now)
    return True


def _slow_path(sk: TcpSock, skb: Skb, now: int) -> None:
    net = sk.net
    if not skb.raw_csum_ok:
        net.inc("TcpInCsumErrors")
        net.inc("TcpInErrs")
        tcp_drop(sk, skb, "TCP_CSUM")
        return
    if not skb.flags & (TcpFlags.ACK | TcpFlags.RST | TcpFlags.SYN):
        tcp_drop(sk, skb, "TCP_FLAGS")
        return
    if not tcp_validate_incoming(sk, skb, now):
        return
    tcp_step5(sk, skb, now)


def tcp_step5(sk: TcpSock, skb: Skb, now: int) -> None:
    acked = tcp_ack(sk, skb, slowpath=True, now=now)
    if acked < 0:
        # An ACK of data never sent (RFC 793 3.9) or older than any window: its
        # timestamp must not become ts_recent.
        tcp_drop(sk, skb, _ACK_DROP_REASON[acked])
        return
    if acked > 0:
        # tcp_ack updates ts_recent once the ACK is known to be valid (old ACKs
        # leave it alone).
        tcp_replace_ts_recent(sk, skb.seq, now)
    tcp_rcv_rtt_measure_ts(sk, skb, now)
    tcp_data_queue(sk, skb, now)
    tcp_ack_snd_check(sk, now)


# ---------------------------------------------------------------------------------
# tcp_rcv_state_process: every state but ESTABLISHED and LISTEN


def tcp_sndbuf_expand(sk: TcpSock) -> None:
    """sk_sndbuf for 2 x the initial cwnd of worst-case (non-GSO, power-of-two kmalloc)
    skbs, as both kernels size it at ESTABLISHED (87040 for a 1460-byte mss); the
    backlog limit counts it. Cubic: no ca_ops->sndbuf_expand, so the factor is 2."""
    per_mss = max(sk.rx_opt.mss_clamp, sk.mss_cache) + MAX_TCP_HEADER + SKB_SHINFO_SIZE
    per_mss = (1 << (per_mss - 1).bit_length()) + SKB_STRUCT_SIZE  # roundup_pow_of_two
    # max(TCP_INIT_CWND, snd_cwnd, reordering + 1): the receiver's cwnd is the initial one
    nr_segs = max(TCP_INIT_CWND, TCP_FASTRETRANS_THRESH + 1)
    sndmem = 2 * nr_segs * per_mss
    if sk.sndbuf < sndmem:
        sk.sndbuf = min(sndmem, sk.net.sysctls.tcp_wmem[2])


def tcp_init_buffer_space(sk: TcpSock, now: int) -> None:
    """At ESTABLISHED: the first receive buffer, autotuning's start and window_clamp."""
    sysctls = sk.net.sysctls
    profile = sk.net.profile
    tcp_sndbuf_expand(sk)  # no SO_SNDBUF in the model, so never SOCK_SNDBUF_LOCK
    if profile.tcp_fixup_rcvbuf and not sk.rcvbuf_locked:
        # tcp_fixup_rcvbuf: room for 2 * init_rwnd full segments, x4 if autotuning
        rcvmem = 2 * skb_truesize(sk.advmss + MAX_TCP_HEADER) * TCP_INIT_RWND_SEGS
        if sysctls.tcp_moderate_rcvbuf:
            rcvmem <<= 2
        if sk.rcvbuf < rcvmem:
            sk.rcvbuf = min(rcvmem, sysctls.tcp_rmem[2])
    sk.rcvq_time = now
    sk.rcvq_seq = sk.copied_seq
    maxwin = tcp_full_space(sk)
    app_win = sysctls.tcp_app_win
    if sk.window_clamp >= maxwin:
        sk.window_clamp = maxwin
        if app_win and maxwin > 4 * sk.advmss:
            sk.window_clamp = max(maxwin - (maxwin >> app_win), 4 * sk.advmss)
    if app_win and sk.window_clamp > 2 * sk.advmss and sk.window_clamp + sk.advmss > maxwin:
        sk.window_clamp = max(2 * sk.advmss, maxwin - sk.advmss)
    sk.rcv_ssthresh = min(sk.rcv_ssthresh, sk.window_clamp)
    if profile.rcvq_space_init_capped:
        # 5.11+: min3(rcv_ssthresh, rcv_wnd, TCP_INIT_CWND * advmss), taken after
        # rcv_ssthresh has been clamped to the window_clamp just set (one advmss below
        # the full space), so autotuning starts from what the first window can offer
        sk.rcvq_space = min(sk.rcv_ssthresh, sk.rcv_wnd, 10 * sk.advmss)
    else:
        sk.rcvq_space = sk.rcv_wnd


def segment_of(sk: TcpSock, skb: Skb) -> Segment:
    """The segment ``skb`` arrived as (what tcp_v4_send_reset answers)."""
    return Segment(src=sk.raddr, sport=sk.rport, dst=sk.laddr, dport=sk.lport, seq=skb.seq,
                   ack=skb.ack_seq, flags=skb.flags, window=skb.window, payload=bytes(skb.data))


def tcp_rcv_synsent_state_process(sk: TcpSock, skb: Skb, now: int) -> None:
    """The answer to our SYN."""
    if skb.has(TcpFlags.ACK):
        if not after(skb.ack_seq, sk.iss) or after(skb.ack_seq, sk.snd_nxt):
            if not skb.has(TcpFlags.RST):
                sk.net.prot.send_reset(sk.net, segment_of(sk, skb))
            tcp_drop(sk, skb, "TCP_INVALID_ACK_SEQUENCE")
            return
        if skb.has(TcpFlags.RST):
            tcp_reset(sk, now)  # ECONNREFUSED
            inet_unhash(sk)
            tcp_drop(sk, skb, "TCP_RESET")
            return
        if not skb.syn:
            tcp_drop(sk, skb, "TCP_FLAGS")
            return
        tcp_finish_connect(sk, skb, now)
        return
    # A bare RST, or a SYN crossing ours (simultaneous open, not modelled); with neither,
    # 6.18 falls through to discard_and_undo with the reason unset.
    tcp_drop(sk, skb, "TCP_FLAGS" if skb.syn
             else "TCP_RESET" if skb.has(TcpFlags.RST) else "NOT_SPECIFIED")


def tcp_finish_connect(sk: TcpSock, skb: Skb, now: int) -> None:
    """Our SYN's SYN-ACK: settle the options, ESTABLISHED, ACK it; connect() returns."""
    opts = skb.options
    ro = sk.rx_opt
    ro.wscale_ok = ro.wscale_ok and opts.wscale is not None
    if ro.wscale_ok:
        ro.snd_wscale = min(opts.wscale or 0, 14)
    else:
        ro.snd_wscale = ro.rcv_wscale = 0
        sk.window_clamp = min(sk.window_clamp, 65535)
    ro.sack_ok = ro.sack_ok and opts.sack_permitted
    ro.tstamp_ok = ro.tstamp_ok and opts.timestamp is not None
    if ro.tstamp_ok and opts.timestamp is not None:
        ro.ts_recent = opts.timestamp[0]
        ro.ts_recent_stamp = now
    ro.mss_clamp = opts.mss if opts.mss else TCP_MSS_DEFAULT
    sk.irs = skb.seq
    sk.rcv_nxt = seq_add(skb.seq, 1)
    sk.rcv_wup = sk.copied_seq = sk.rcv_nxt
    sk.snd_una = skb.ack_seq
    sk.snd_wnd = skb.window  # never scaled in a SYN
    sk.snd_wl1 = skb.seq
    sk.max_window = sk.snd_wnd
    if ro.tstamp_ok:
        # tcp_rcv_synsent_state_process: the timestamp option's room comes off advmss
        # before tcp_initialize_rcv_mss and tcp_finish_connect (both kernels)
        sk.advmss -= TCPOLEN_TSTAMP_ALIGNED
    sk.mss_cache = min(ro.mss_clamp, ADVMSS) - (12 if ro.tstamp_ok else 0)
    hint = min(sk.advmss, sk.mss_cache, sk.rcv_wnd // 2, TCP_MSS_DEFAULT)
    sk.icsk_ack.rcv_mss = max(hint, TCP_MIN_MSS)
    sk.synack_deadline = None
    tcp_synack_rtt_meas(sk, now)  # tcp_ack acking our SYN
    set_state(sk, TcpState.ESTABLISHED)
    tcp_init_metrics(sk)  # tcp_init_transfer
    tcp_init_buffer_space(sk, now)
    if not ro.snd_wscale:
        tcp_fast_path_on(sk)
    else:
        # tcp_rcv_synsent_state_process: the SYN-ACK's window was unscaled, so no
        # prediction until tcp_ack_update_window learns the scaled one
        sk.pred_flags = 0
    sk.icsk_ack.lrcvtime = now
    sk.data_ready = True  # sk_state_change: connect() returns
    kfree_skb_consumed(sk, skb)
    tcp_send_ack(sk, now)


def tcp_child_established(sk: TcpSock, skb: Skb, now: int) -> None:
    """SYN_RECV -> ESTABLISHED on the handshake's final ACK; the child joins its
    listener's accept queue (inet_csk_complete_hashdance)."""
    sk.snd_una = skb.ack_seq
    sk.snd_wnd = skb.window << sk.rx_opt.snd_wscale
    sk.snd_wl1 = skb.seq
    sk.max_window = sk.snd_wnd
    tcp_synack_rtt_meas(sk, now)
    set_state(sk, TcpState.ESTABLISHED)
    sk.net.mib.add("TcpPassiveOpens")
    sk.synack_deadline = None
    tcp_init_metrics(sk)
    sk.icsk_ack.lrcvtime = now  # tcp_create_openreq_child: tcpi_last_data_recv starts here
    # tcp_rcv_state_process (SYN_RECV): a timestamp flow's advmss loses the option's 12
    # bytes, before tcp_init_buffer_space in 6.16+, after it in 4.13
    early = sk.net.profile.passive_ts_advmss_before_buffer_space
    if sk.rx_opt.tstamp_ok and early:
        sk.advmss -= TCPOLEN_TSTAMP_ALIGNED
    tcp_init_buffer_space(sk, now)
    if sk.rx_opt.tstamp_ok and not early:
        sk.advmss -= TCPOLEN_TSTAMP_ALIGNED
    tcp_fast_path_on(sk)
    parent = sk.net.socks.get(sk.parent) if sk.parent is not None else None
    if parent is not None and parent.state == TcpState.LISTEN:
        inet_csk_reqsk_queue_add(parent, sk)
        sk_wakeups(parent, now)


def tcp_rcv_state_process(sk: TcpSock, skb: Skb, now: int) -> None:
    """A segment for a socket that is neither ESTABLISHED nor listening."""
    net = sk.net
    if not skb.raw_csum_ok:
        net.mib.add("TcpInCsumErrors")
        net.mib.add("TcpInErrs")
        tcp_drop(sk, skb, "TCP_CSUM")
        return
    if sk.state == TcpState.CLOSE:
        tcp_drop(sk, skb, "TCP_CLOSE")
        return
    tcp_parse_timestamp(sk, skb)
    if sk.state == TcpState.SYN_SENT:
        tcp_rcv_synsent_state_process(sk, skb, now)
        return
    if sk.state == TcpState.SYN_RECV and skb.syn and skb.seq == sk.irs \
            and not skb.has(TcpFlags.ACK):
        tcp_v4_send_synack(sk, now)  # the SYN again: our SYN-ACK was lost
        kfree_skb_consumed(sk, skb)
        return
    if not skb.has(TcpFlags.ACK) and not skb.has(TcpFlags.RST) and not skb.syn:
        tcp_drop(sk, skb, "TCP_FLAGS")
        return
    if not tcp_validate_incoming(sk, skb, now):
        if sk.state == TcpState.CLOSE:
            inet_unhash(sk)
        return
    if not skb.has(TcpFlags.ACK):
        tcp_drop(sk, skb, "TCP_FLAGS")
        return
    if sk.state == TcpState.SYN_RECV:
        if skb.ack_seq != sk.snd_nxt:
            # 6.18's tcp_check_req hands it back to the listener, whose
            # tcp_rcv_state_process refuses an ACK with TCP_FLAGS (and a RST).
            net.prot.send_reset(net, segment_of(sk, skb))
            tcp_drop(sk, skb, "TCP_FLAGS")
            return
        parent = net.socks.get(sk.parent) if sk.parent is not None else None
        if parent is not None and len(parent.accept_queue) > parent.backlog_max:
            # tcp_v4_syn_recv_sock: no room; the request stays and the peer retries.
            net.inc("TcpExtListenOverflows")
            net.inc("TcpExtListenDrops")
            net.drop_unowned(skb, "TCP_LISTEN_OVERFLOW")  # tcp_check_req
            return
        tcp_child_established(sk, skb, now)
    else:
        acked = tcp_ack(sk, skb, slowpath=True, now=now, no_challenge=True)
        if acked < 0 or (acked == 0 and not net.profile.closing_accepts_old_ack):
            # tcp_rcv_state_process answers an unacceptable ACK with a
            # (rate-limited) challenge ACK.
            tcp_send_challenge_ack(sk, skb, now)
            tcp_drop(sk, skb, _ACK_DROP_REASON.get(acked, "TCP_OLD_ACK"))
            return
        fin_acked = sk.fin_sent and skb.ack_seq == sk.snd_nxt
        if sk.state == TcpState.FIN_WAIT1 and fin_acked:
            set_state(sk, TcpState.FIN_WAIT2)
            sk.snd_shutdown = True
            new_data = skb.end_seq != skb.seq and after(
                seq_sub(skb.end_seq, int(skb.fin)) & 0xFFFFFFFF, sk.rcv_nxt)
            if sk.sock_dead and not new_data:
                # an orphan: tcp_fin_time decides. Above TCP_TIMEWAIT_LEN, or with a
                # FIN here or the socket owned, Linux keeps the full socket on the
                # keepalive timer (the FIN goes through tcp_fin to TIME_WAIT below).
                tmo = tcp_fin_time(sk)
                if tmo <= TCP_TIMEWAIT_LEN and not skb.fin and not sk.owned:
                    tcp_replace_ts_recent(sk, skb.seq, now)  # before tcp_ack's caller
                    tcp_time_wait(sk, TcpState.FIN_WAIT2, tmo, now)
                    kfree_skb_consumed(sk, skb)  # goto consume
                    return
        elif sk.state == TcpState.CLOSING and fin_acked:
            tcp_time_wait(sk, TcpState.TIME_WAIT, 0, now)
            kfree_skb_consumed(sk, skb)  # goto consume
            return
        elif sk.state == TcpState.LAST_ACK and fin_acked:
            tcp_done(sk)
            inet_unhash(sk)
            kfree_skb_consumed(sk, skb)
            return
    tcp_replace_ts_recent(sk, skb.seq, now)
    state = sk.state
    if state in (TcpState.CLOSE_WAIT, TcpState.CLOSING, TcpState.LAST_ACK) \
            and not before(skb.seq, sk.rcv_nxt):
        if skb.seq == skb.end_seq:
            kfree_skb_consumed(sk, skb)
        else:
            # 6.18 leaves step 7 without queueing it: discard, as NOT_SPECIFIED
            tcp_drop(sk, skb, "NOT_SPECIFIED")
        return
    if state in (TcpState.CLOSE_WAIT, TcpState.CLOSING, TcpState.LAST_ACK,
                 TcpState.FIN_WAIT1, TcpState.FIN_WAIT2) and sk.rcv_shutdown \
            and skb.end_seq != skb.seq \
            and after(seq_sub(skb.end_seq, int(skb.fin)) & 0xFFFFFFFF, sk.rcv_nxt):
        net.inc("TcpExtTCPAbortOnData")
        tcp_reset(sk, now)
        tcp_drop(sk, skb, "TCP_ABORT_ON_DATA")
        return
    tcp_data_queue(sk, skb, now)
    if sk.state != TcpState.CLOSE:
        tcp_ack_snd_check(sk, now)
