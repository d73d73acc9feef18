"""Listening sockets and their children: listen, the SYN, the SYN-ACK, accept.

Named after net/ipv4/tcp_minisocks.c (child sockets, ``tcp_create_openreq_child``);
also holds what Linux keeps beside it for a passive open: ``inet_csk_listen_start``,
``tcp_v4_conn_request``, the SYN-ACK, the accept queue and ``inet_csk_accept``.
A child is a full :class:`~actors.stack.sock.TcpSock` from the SYN on (no separate
request sock): it sits in SYN_RECV until the handshake's ACK, then in the
listener's accept queue until a task accepts it.

The other end of a connection's life is here too, as in Linux: ``tcp_time_wait``
replaces a socket entering TIME_WAIT (or an orphaned one in FIN_WAIT2) with an
:class:`InetTimewaitSock`, and ``tcp_timewait_state_process`` decides what each
segment for it gets (``tcp_v4_rcv``'s ``do_time_wait`` acts on that).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from heapq import heappush

from actors.profiles import MS, timer_fires_at
from actors.stack.net import CONSUMED, Net
from actors.stack.skb import Skb, so_rcvbuf
from actors.stack.sock import (
    OpError,
    TcpSock,
    TcpState,
    Waiter,
    accepted_child,
    reqsk_queue_remove,
    sk_alloc,
    sleep_on,
    sock_graft,
)
from actors.stack.tcp_output import (
    make_segment,
    tcp_full_space,
    tcp_receive_window,
    tcp_select_initial_window,
    tcp_time_stamp,
)
from protocol.constants import EAGAIN, EINVAL, TCP_MIN_MSS, TCP_MSS_DEFAULT, TCP_TIMEOUT_INIT
from protocol.segment import Segment, TcpFlags, TcpOptions
from protocol.seq import after, before, seq_add
from protocol.sockops import Accepted, Failed, SockOpResult

ADVMSS = 1460  # our MTU 1500 minus IPv4 and TCP headers


INT_MAX = 2**31 - 1


def sock_set_rcvbuf(sk: TcpSock, value: int) -> None:
    """SO_RCVBUF: Linux doubles the value for bookkeeping overhead and locks it."""
    sk.rcvbuf = so_rcvbuf(value, sk.net.sysctls.rmem_max)
    sk.rcvbuf_locked = True


def sock_set_rcvlowat(sk: TcpSock, val: int) -> None:
    """SO_RCVLOWAT's effect on the socket (no wakeup): 4.13 keeps ``val ? : 1``;
    6.18's tcp_set_rcvlowat caps it at half of the locked SO_RCVBUF (else of
    tcp_rmem[2]) and grows an unlocked sk_rcvbuf to tcp_space_from_win(val), raising
    a set window_clamp below val (a zero clamp, as before listen(), stays zero)."""
    if val < 0:
        val = INT_MAX  # sock_setsockopt: a negative low mark means "never"
    if not sk.net.profile.data_ready_honours_rcvlowat:
        # tcp_set_rcvlowat came (4.19) with tcp_data_ready's rcvlowat test.
        sk.rcvlowat = val or 1
        return
    cap = (sk.rcvbuf if sk.rcvbuf_locked else sk.net.sysctls.tcp_rmem[2]) >> 1
    val = min(val, cap)
    sk.rcvlowat = val or 1
    if sk.rcvbuf_locked:
        return
    space = sk.net.profile.space_from_win(val, sk.scaling_ratio)  # tcp_space_from_win
    if space > sk.rcvbuf:
        sk.rcvbuf = space
        if sk.window_clamp and sk.window_clamp < val:
            sk.window_clamp = val


def inet_listen(net: Net, laddr: str, port: int, now: int, *, backlog: int = 128,
                rcvbuf: int | None = None, rcvlowat: int = 1,
                init_rcvbuf: int | None = None) -> int:
    """socket() + [SO_RCVBUF] + bind() + listen(); returns the listener's id.
    ``init_rcvbuf``: the sk_rcvbuf tcp_init_sock set when socket() ran (tcp_rmem[1]
    then); None takes tcp_rmem[1] now."""
    sk = sk_alloc(net, laddr, port, now)
    if init_rcvbuf is not None:
        sk.rcvbuf = init_rcvbuf
    if rcvbuf is not None:
        sock_set_rcvbuf(sk, rcvbuf)
    sock_set_rcvlowat(sk, rcvlowat)
    sk.state = TcpState.LISTEN
    sk.backlog_max = min(backlog, net.sysctls.somaxconn)
    net.listeners[port] = sk.sock_id
    return sk.sock_id


def tcp_v4_conn_request(lsk: TcpSock, seg: Segment, skb: Skb, now: int,
                        isn: int = 0) -> bool:
    """A segment for a listener: a SYN makes a child in SYN_RECV and is answered with
    a SYN-ACK. Returns True when the segment must be answered with a RST. ``isn``: the
    initial sequence a TIME_WAIT socket chose for a SYN that reopens it (TCP_TW_SYN;
    tcp_conn_request takes it instead of a new one), 0 for none."""
    net = lsk.net
    if not skb.raw_csum_ok:
        net.mib.add("TcpInCsumErrors")
        net.mib.add("TcpInErrs")
        net.drop_unowned(skb, "TCP_CSUM")
        return False
    if seg.has(TcpFlags.RST):
        net.drop_unowned(skb, "TCP_RESET")
        return False
    if seg.has(TcpFlags.ACK):
        return True  # an ACK to a listener: no such connection
    if not seg.has(TcpFlags.SYN):
        net.drop_unowned(skb, "TCP_FLAGS")
        return False
    pending = sum(1 for s in net.socks.values()
                  if s.parent == lsk.sock_id and s.state == TcpState.SYN_RECV)
    # sk_acceptq_is_full: ack_backlog > max_ack_backlog (listen(n) holds n + 1).
    if len(lsk.accept_queue) > lsk.backlog_max or pending >= net.sysctls.tcp_max_syn_backlog:
        net.inc("TcpExtListenOverflows")
        net.inc("TcpExtListenDrops")
        # 6.18's tcp_conn_request counts it and consume_skb()s the SYN: no reason of its
        # own there, so it is counted under tcp_check_req's one for a full queue.
        net.drop_unowned(skb, "TCP_LISTEN_OVERFLOW")
        return False
    child = sk_alloc(net, lsk.laddr, lsk.lport, now)
    child.raddr, child.rport = seg.src, seg.sport
    child.parent = lsk.sock_id
    child.attached = False
    child.rcvbuf, child.rcvbuf_locked, child.rcvlowat = lsk.rcvbuf, lsk.rcvbuf_locked, \
        lsk.rcvlowat
    tcp_create_openreq_child(child, seg, now, isn)
    net.ehash[seg.four_tuple] = child.sock_id
    child.state = TcpState.SYN_RECV
    net.set_fate(skb.ids, CONSUMED)
    tcp_v4_send_synack(child, now)
    return False


def tcp_create_openreq_child(sk: TcpSock, seg: Segment, now: int, isn: int = 0) -> None:
    """The child's state from the SYN: options agreed, sequence spaces, first window."""
    sysctls = sk.net.sysctls
    opts = seg.options
    ro = sk.rx_opt
    ro.mss_clamp = opts.mss if opts.mss else TCP_MSS_DEFAULT
    ro.sack_ok = bool(opts.sack_permitted and sysctls.tcp_sack)
    ro.tstamp_ok = bool(opts.timestamp is not None and sysctls.tcp_timestamps)
    ro.wscale_ok = bool(opts.wscale is not None and sysctls.tcp_window_scaling)
    ro.snd_wscale = min(opts.wscale or 0, 14) if ro.wscale_ok else 0
    if ro.tstamp_ok and opts.timestamp is not None:
        ro.ts_recent = opts.timestamp[0]
        ro.ts_recent_stamp = now
    sk.irs = seg.seq
    sk.rcv_nxt = seq_add(seg.seq, 1)
    sk.rcv_wup = sk.copied_seq = sk.rcv_nxt
    sk.iss = isn or sk.net.rng.getrandbits(32)
    sk.snd_una = sk.iss
    sk.snd_nxt = seq_add(sk.iss, 1)
    sk.snd_wnd = seg.window  # never scaled in a SYN
    sk.snd_wl1 = seg.seq
    sk.advmss = ADVMSS
    sk.mss_cache = min(ro.mss_clamp, ADVMSS) - (12 if ro.tstamp_ok else 0)
    # tcp_openreq_init_rwin
    full_space = tcp_full_space(sk)
    if sk.rcvbuf_locked:
        sk.window_clamp = full_space
    mss = ADVMSS - (12 if ro.tstamp_ok else 0)
    tcp_select_initial_window(sk, full_space, mss, ro.wscale_ok)
    sk.rcv_ssthresh = sk.rcv_wnd
    hint = min(sk.advmss, sk.mss_cache, sk.rcv_wnd // 2, TCP_MSS_DEFAULT)
    sk.icsk_ack.rcv_mss = max(hint, TCP_MIN_MSS)
    sk.rto = TCP_TIMEOUT_INIT


def tcp_v4_send_synack(sk: TcpSock, now: int) -> None:
    ro = sk.rx_opt
    opts = TcpOptions(
        mss=ADVMSS,
        sack_permitted=ro.sack_ok,
        timestamp=(tcp_time_stamp(sk, now), ro.ts_recent) if ro.tstamp_ok else None,
        wscale=ro.rcv_wscale if ro.wscale_ok else None,
    )
    seg = make_segment(sk, now, TcpFlags.SYN | TcpFlags.ACK, seq=sk.iss,
                       window=min(sk.rcv_wnd, 65535), options=opts)
    sk.net.transmit(seg, sk.sock_id)
    _note_syn_sent(sk, now)
    _arm_retransmit_timer(sk, now)


def _arm_retransmit_timer(sk: TcpSock, now: int) -> None:
    """reqsk_queue_hash_req / inet_csk_reset_xmit_timer: jiffies + rto on the timer
    wheel, which runs a 1 s timer up to a level-1 bucket late (32 ms at HZ=250)."""
    j = sk.net.jiffy
    sk.synack_deadline = timer_fires_at(now, now - now % j + sk.rto, j)
    sk.net.arm_timer(sk.sock_id, sk.synack_deadline)


def _note_syn_sent(sk: TcpSock, now: int) -> None:
    # inet_rtx_syn_ack counts a SYN-ACK sent again (timer or a repeated SYN) in
    # req->num_retrans; tcp_retransmit_skb marks a SYN sent again TCPCB_RETRANS
    if sk.snt_synack is not None:
        sk.synack_num_retrans += 1
    sk.snt_synack = now


def tcp_send_syn(sk: TcpSock, now: int) -> None:
    """Our SYN (tcp_connect / tcp_transmit_skb), armed with the SYN retransmit timer."""
    ro = sk.rx_opt
    opts = TcpOptions(
        mss=ADVMSS,
        sack_permitted=ro.sack_ok,
        timestamp=(tcp_time_stamp(sk, now), 0) if ro.tstamp_ok else None,
        wscale=ro.rcv_wscale if ro.wscale_ok else None,
    )
    seg = make_segment(sk, now, TcpFlags.SYN, seq=sk.iss,
                       window=min(sk.rcv_wnd, 65535), options=opts)
    sk.net.transmit(seg, sk.sock_id)
    _note_syn_sent(sk, now)
    _arm_retransmit_timer(sk, now)  # the same retransmission timer as a SYN-ACK's


def inet_csk_reqsk_queue_add(parent: TcpSock, child: TcpSock) -> None:
    """The handshake is done: the child waits in the accept queue; wake the acceptor."""
    parent.accept_queue.append(child.sock_id)
    parent.data_ready = True


def inet_csk_accept(lsk: TcpSock, task: str, nonblock: bool, timeo_ns: int | None,
                    now: int, rports: tuple[int, ...] | None = None) -> SockOpResult | None:
    """accept(): the oldest child (or the oldest from one of ``rports``), grafted to the
    caller; None while the caller sleeps for one (an OpDone follows)."""
    if lsk.state != TcpState.LISTEN:
        return Failed(error=EINVAL)
    child = reqsk_queue_remove(lsk, rports)
    if child is not None:
        return Accepted(sock=sock_graft(child), rport=child.rport)
    if nonblock:
        return Failed(error=EAGAIN)
    sleep_on(lsk, Waiter(task, None if timeo_ns is None else now + timeo_ns, None,
                         kind="accept", rports=rports))
    return None


def inet_accept_flow(net: Net, task: str, lport: int, rports: tuple[int, ...],
                     now: int) -> tuple[TcpSock, SockOpResult | None]:
    """accept() by a task that wants one of some flows' connections: the listener on
    ``lport`` and the oldest child from one of the peer ports ``rports``. A connection
    already accepted is shared (tasks of one flow read one socket, as processes share a
    file after fork)."""
    lid = net.listeners.get(lport)
    lsk = net.socks.get(lid) if lid is not None else None
    if lsk is None:
        raise OpError(f"no listener on port {lport}")
    shared = accepted_child(lsk, rports)
    if shared is not None:
        return lsk, Accepted(sock=shared.sock_id, rport=shared.rport)
    return lsk, inet_csk_accept(lsk, task, False, None, now, rports=rports)


# ---------------------------------------------------------------------------- TIME_WAIT

TCP_TIMEWAIT_LEN = 60_000 * MS  # include/net/tcp.h: 60 s, both kernels
TCP_PAWS_MSL = 60  # seconds: a RST's timestamp older than this is not PAWS-rejected
TCP_PAWS_WRAP = 24 * 24 * 60 * 60  # seconds: ts_recent older than this is stale


class TwStatus(Enum):
    """enum tcp_tw_status: what tcp_v4_rcv does with a segment for a timewait sock.
    6.18 has a TCP_TW_ACK_OOW beside TCP_TW_ACK for a rate-checked out-of-window ACK;
    tcp_v4_timewait_ack sends the same ACK for both, so the model keeps one."""

    SUCCESS = 0  # nothing to send; the segment is freed
    RST = 1  # tcp_v4_send_reset, and the timewait sock goes
    ACK = 2  # tcp_v4_timewait_ack
    SYN = 3  # a new incarnation: the SYN goes to the listener


@dataclass(eq=False)
class InetTimewaitSock:
    """``struct tcp_timewait_sock``: what tcp_time_wait keeps of a closed connection.
    ``substate`` is TIME_WAIT or (an orphan waiting for the peer's FIN) FIN_WAIT2."""

    net: Net
    substate: TcpState
    laddr: str
    lport: int
    raddr: str
    rport: int
    rcv_nxt: int
    snd_nxt: int
    rcv_wnd: int  # tcp_receive_window(tp) when it was made
    rcv_wscale: int
    ts_recent: int
    ts_recent_stamp: int | None  # ns; None when the connection had no timestamps
    ts_origin: int  # the socket's TSval clock (tw_ts_offset)
    deadline: int = 0  # tw_timer's expiry
    last_oow_ack_time: int | None = None  # tw_last_oow_ack_time
    killed: bool = False

    def four_tuple(self) -> tuple[str, int, str, int]:
        return (self.raddr, self.rport, self.laddr, self.lport)


def inet_twsk_schedule(tw: InetTimewaitSock, timeo: int, now: int, rearm: bool) -> None:
    """__inet_twsk_schedule: the first arming counts the socket (TW, or TWKilled for a
    timeout of 4 s or less: both kernels count at schedule time) and mod_timer()s;
    a re-arm is mod_timer_pending: it moves a pending timer, never restarts a fired one."""
    net = tw.net
    if tw.killed:
        return
    if not rearm:
        net.inc("TcpExtTWKilled" if timeo <= 4000 * MS else "TcpExtTW")
    j = net.jiffy
    tw.deadline = timer_fires_at(now, now - now % j + timeo, j)
    heappush(net.tw_timer_heap, (tw.deadline, tw.four_tuple()))


def inet_twsk_kill(tw: InetTimewaitSock) -> None:
    """inet_twsk_deschedule_put / the timer's inet_twsk_kill: out of the hash, gone."""
    net = tw.net
    tw.killed = True
    if net.twhash.get(tw.four_tuple()) is tw:
        del net.twhash[tw.four_tuple()]


def tcp_time_wait(sk: TcpSock, state: TcpState, timeo: int, now: int) -> InetTimewaitSock:
    """tcp_time_wait without its final tcp_done (the caller's, see tcp_input): a timewait
    sock takes the connection's place in the hash (inet_twsk_hashdance)."""
    net = sk.net
    ro = sk.rx_opt
    tw = InetTimewaitSock(
        net=net, substate=state, laddr=sk.laddr, lport=sk.lport, raddr=sk.raddr,
        rport=sk.rport, rcv_nxt=sk.rcv_nxt, snd_nxt=sk.snd_nxt,
        rcv_wnd=tcp_receive_window(sk), rcv_wscale=ro.rcv_wscale,
        ts_recent=ro.ts_recent, ts_recent_stamp=ro.ts_recent_stamp if ro.tstamp_ok else None,
        ts_origin=sk.ts_origin)
    rto = (sk.rto << 2) - (sk.rto >> 1)  # 3.5 RTO: the shortest FIN_WAIT2 wait
    timeo = max(timeo, rto)
    if state == TcpState.TIME_WAIT:
        timeo = TCP_TIMEWAIT_LEN
    inet_twsk_schedule(tw, timeo, now, rearm=False)
    key = sk.four_tuple()
    net.ehash.pop(key, None)
    net.twhash[key] = tw
    net.event("time_wait", sk.sock_id, substate=state.value, deadline=tw.deadline)
    return tw


def tcp_in_window(seq: int, end_seq: int, s_win: int, e_win: int) -> bool:
    if seq == s_win:
        return True
    if after(end_seq, s_win) and before(seq, e_win):
        return True
    return seq == e_win and seq == end_seq


def _tw_paws_reject(tw: InetTimewaitSock, tsval: int, rst: bool, now: int) -> bool:
    """tcp_paws_reject(&tmp_opt, th->rst) with tw_ts_recent(_stamp), paws_win 0."""
    if ((tw.ts_recent - tsval) & 0xFFFFFFFF) == 0 or (tw.ts_recent - tsval) & 0x80000000:
        return False  # (s32)(ts_recent - tsval) <= 0
    stamp = tw.ts_recent_stamp or 0
    age = (now - stamp) // (1000 * MS)  # ktime_get_seconds() - ts_recent_stamp
    if age >= TCP_PAWS_WRAP or not tw.ts_recent:
        return False
    return not (rst and age >= TCP_PAWS_MSL)


def tcp_oow_rate_limited(sk: TcpSock | InetTimewaitSock, skb: Skb, mib: str,
                         now: int) -> bool:
    """At most one out-of-window ACK per tcp_invalid_ratelimit, for empty segments/SYNs;
    on a full socket's last_oow_ack_time or a timewait sock's tw_last_oow_ack_time."""
    if skb.seq != skb.end_seq and not skb.syn:
        return False  # data (or a FIN) without a SYN: not part of an ACK loop
    # __tcp_oow_rate_limited compares tcp_jiffies32 stamps with the sysctl in jiffies
    j = sk.net.jiffy
    limit = -(-sk.net.sysctls.tcp_invalid_ratelimit_ms * MS // j)  # msecs_to_jiffies
    if sk.last_oow_ack_time is not None and 0 <= now // j - sk.last_oow_ack_time // j < limit:
        sk.net.inc(mib)
        return True
    sk.last_oow_ack_time = now
    return False


def _tw_oow_rate_limited(tw: InetTimewaitSock, skb: Skb, mib: str, now: int) -> TwStatus:
    """tcp_timewait_check_oow_rate_limit: an ACK unless tcp_oow_rate_limited says no."""
    return TwStatus.SUCCESS if tcp_oow_rate_limited(tw, skb, mib, now) else TwStatus.ACK


def tcp_timewait_state_process(tw: InetTimewaitSock, skb: Skb,
                               now: int) -> tuple[TwStatus, int, str]:
    """A segment for a timewait sock (net/ipv4/tcp_minisocks.c): its status, the isn for
    TCP_TW_SYN (else 0) and the reason the skb is freed under (tcp_v4_rcv's discard_it:
    NOT_SPECIFIED, or 6.18's TCP_RFC7323_TW_PAWS for a PAWS reject)."""
    net = tw.net
    rst, ack, syn = skb.has(TcpFlags.RST), skb.has(TcpFlags.ACK), skb.syn
    ts = skb.options.timestamp if tw.ts_recent_stamp is not None else None
    paws_reject = ts is not None and _tw_paws_reject(tw, ts[0], rst, now)
    reason = "NOT_SPECIFIED"

    if tw.substate == TcpState.FIN_WAIT2:
        # "Just repeat all the checks of tcp_rcv_state_process()"
        if paws_reject or not tcp_in_window(skb.seq, skb.end_seq, tw.rcv_nxt,
                                            seq_add(tw.rcv_nxt, tw.rcv_wnd)):
            return _tw_oow_rate_limited(tw, skb, "TcpExtTCPACKSkippedFinWait2", now), 0, \
                reason
        if rst:
            inet_twsk_kill(tw)
            return TwStatus.SUCCESS, 0, reason
        if syn and not before(skb.seq, tw.rcv_nxt):
            return TwStatus.RST, 0, reason
        if not ack or not after(skb.end_seq, tw.rcv_nxt) or skb.end_seq == skb.seq:
            return TwStatus.SUCCESS, 0, reason  # a duplicate ACK
        if not skb.fin or skb.end_seq != seq_add(tw.rcv_nxt, 1):
            return TwStatus.RST, 0, reason  # new data after a half-duplex close
        # the FIN: the true TIME_WAIT
        tw.substate = TcpState.TIME_WAIT
        tw.rcv_nxt = skb.end_seq
        if ts is not None:
            tw.ts_recent_stamp, tw.ts_recent = now, ts[0]
        inet_twsk_schedule(tw, TCP_TIMEWAIT_LEN, now, rearm=True)
        return TwStatus.ACK, 0, reason

    # The real TIME_WAIT. In window, a segment may only be a RST or a bare ACK.
    if not paws_reject and skb.seq == tw.rcv_nxt and (skb.seq == skb.end_seq or rst):
        if rst and not net.sysctls.tcp_rfc1337:
            inet_twsk_kill(tw)  # TIME_WAIT assassination (RFC 1337 hazard 1)
            return TwStatus.SUCCESS, 0, reason
        inet_twsk_schedule(tw, TCP_TIMEWAIT_LEN, now, rearm=True)
        if ts is not None:
            tw.ts_recent, tw.ts_recent_stamp = ts[0], now
        return TwStatus.SUCCESS, 0, reason

    # Out of window: ACKed, but a new SYN (above rcv_nxt, or with a newer TSval) opens
    # a new incarnation, its isn above anything the old one sent (RFC 1122 4.2.2.13).
    newer_ts = ts is not None and (tw.ts_recent - ts[0]) & 0x80000000 != 0
    if syn and not rst and not ack and not paws_reject and (
            after(skb.seq, tw.rcv_nxt) or newer_ts):
        isn = seq_add(tw.snd_nxt, 65535 + 2) or 1
        return TwStatus.SYN, isn, reason
    if paws_reject:
        net.inc(net.profile.tw_paws_counter)
        if net.profile.tw_paws_drop_reason:
            reason = "TCP_RFC7323_TW_PAWS"
    if not rst:
        # an ACK-less SYN may be an old duplicate or a new SYN below rcv_nxt: the
        # timer keeps running for it
        if paws_reject or ack:
            inet_twsk_schedule(tw, TCP_TIMEWAIT_LEN, now, rearm=True)
        return _tw_oow_rate_limited(tw, skb, "TcpExtTCPACKSkippedTimeWait", now), 0, reason
    return TwStatus.SUCCESS, 0, reason


def tcp_twsk_diag(tw: InetTimewaitSock, now: int) -> dict[str, object]:
    """inet_twsk_diag_fill: what ss shows of a timewait sock, its state line only (no
    queues, skmem or tcp_info), with the timer ss -o prints as ``timewait``."""
    return {
        "state": tw.substate.value,
        "local": f"{tw.laddr}:{tw.lport}",
        "peer": f"{tw.raddr}:{tw.rport}",
        "recv_q": 0,
        "send_q": 0,
        "timer": ("timewait", max(0, tw.deadline - now) // MS),
    }
