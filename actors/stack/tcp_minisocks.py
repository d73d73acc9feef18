"""Listening sockets and their children: listen, the SYN, the SYN-ACK, accept.

Named after net/ipv4/tcp_minisocks.c (child sockets, ``tcp_create_openreq_child``);
also holds what Linux keeps beside it for a passive open: ``inet_csk_listen_start``,
``tcp_v4_conn_request``, the SYN-ACK, the accept queue and ``inet_csk_accept``.
A child is a full :class:`~actors.stack.sock.TcpSock` from the SYN on (no separate
request sock): it sits in SYN_RECV until the handshake's ACK, then in the
listener's accept queue until a task accepts it.
"""

from __future__ import annotations

from actors.profiles import timer_fires_at
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
    tcp_select_initial_window,
    tcp_time_stamp,
)
from protocol.constants import EAGAIN, EINVAL, TCP_MIN_MSS, TCP_MSS_DEFAULT, TCP_TIMEOUT_INIT
from protocol.segment import Segment, TcpFlags, TcpOptions
from protocol.seq import seq_add
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


def tcp_v4_conn_request(lsk: TcpSock, seg: Segment, skb: Skb, now: int) -> bool:
    """A segment for a listener: a SYN makes a child in SYN_RECV and is answered with
    a SYN-ACK. Returns True when the segment must be answered with a RST."""
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
    tcp_create_openreq_child(child, seg, now)
    net.ehash[seg.four_tuple] = child.sock_id
    child.state = TcpState.SYN_RECV
    net.set_fate(skb.ids, CONSUMED)
    tcp_v4_send_synack(child, now)
    return False


def tcp_create_openreq_child(sk: TcpSock, seg: Segment, now: int) -> None:
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
    sk.iss = sk.net.rng.getrandbits(32)
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
