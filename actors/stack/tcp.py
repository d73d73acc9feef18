"""The kernel halves of the socket calls: net/ipv4/tcp.c.

``tcp_recvmsg`` itself runs in the reader (actors/reader/tcp_recvmsg.py), one step
per request; the stack's side of those steps is here: the copy from
``sk_receive_queue`` (``skb_copy_datagram_msg``), ``tcp_cleanup_rbuf``, the legacy
prequeue (install, ``tcp_prequeue_process``), ``sock_error``; and the other calls a
task makes on a socket: SIOCINQ, ``tcp_get_info``, setsockopt, close, shutdown,
a minimal send, and what a task's exit does to the sockets it used.
"""

from __future__ import annotations

from typing import Any

from actors.profiles import MS
from actors.stack.sock import (
    AckPending,
    TcpSock,
    TcpState,
    inet_unhash,
    release_sock,
    sk_backlog_rcv,
    stream_offset,
)
from actors.stack.tcp_input import (
    inet_csk_ack_scheduled,
    set_state,
    tcp_data_ready,
    tcp_done,
    tcp_drop,
    tcp_eat_recv_skb,
    tcp_epollin_ready,
    tcp_fin_time,
    tcp_rcv_space_adjust,
    tcp_time_wait,
)
from actors.stack.tcp_minisocks import TCP_TIMEWAIT_LEN, sock_set_rcvbuf, sock_set_rcvlowat
from actors.stack.tcp_output import (
    __tcp_select_window,
    make_segment,
    tcp_event_ack_sent,
    tcp_receive_window,
    tcp_send_ack,
    tcp_win_from_space,
)
from protocol.constants import (
    EAGAIN,
    EINVAL,
    ENOTCONN,
    EPIPE,
    EPOLLERR,
    EPOLLHUP,
    EPOLLIN,
    EPOLLOUT,
    EPOLLRDHUP,
    EPOLLRDNORM,
    EPOLLWRNORM,
    TCP_INIT_CWND,
)
from protocol.segment import TcpFlags
from protocol.seq import seq_add, seq_sub
from protocol.sockops import (
    Copied,
    Failed,
    Polled,
    Sent,
    SockErrorResult,
    SockOpResult,
    UcopyInstalled,
)


def skb_copy_datagram_msg(sk: TcpSock, task: str, length: int, peek: bool, trunc: bool,
                          peek_seq: int | None, now: int) -> Copied:
    """The copy part of tcp_recvmsg's loop: walk sk_receive_queue from *seq."""
    seq = peek_seq if peek and peek_seq is not None else sk.copied_seq
    start = seq
    out = bytearray()
    copied = 0
    fin = False
    for skb in list(sk.receive_queue):
        if length <= 0:
            break
        offset = seq_sub(seq, skb.seq)
        if offset < 0:
            break  # cannot happen with a consistent queue
        if offset < skb.len:
            used = min(skb.len - offset, length)
            if not trunc:
                out += skb.data[offset:offset + used]
            seq = seq_add(seq, used)
            copied += used
            length -= used
            if not peek:
                sk.copied_seq = seq
                tcp_rcv_space_adjust(sk, now)
            if offset + used < skb.len:
                break
        if skb.fin:
            seq = seq_add(seq, 1)
            fin = True
            if not peek:
                sk.copied_seq = seq
                sk.receive_queue.remove(skb)
                tcp_eat_recv_skb(sk, skb)
            break
        if not peek:
            sk.receive_queue.remove(skb)
            tcp_eat_recv_skb(sk, skb)
    if copied:
        sk.net.event("copy", sk.sock_id, task=task, bytes=copied)
    return Copied(data=bytes(out), copied=copied, fin=fin, seq=seq,
                  offset=stream_offset(sk, start))


def sock_error(sk: TcpSock) -> SockErrorResult:
    """Report the pending socket error once, clearing it."""
    err, sk.sk_err = sk.sk_err, 0
    return SockErrorResult(sock_err=err)


def tcp_cleanup_rbuf(sk: TcpSock, copied: int, now: int) -> None:
    """After a read: ACK if one is due, or send a window update that reopens the window."""
    ack = sk.icsk_ack
    time_to_ack = False
    if inet_csk_ack_scheduled(sk) and (
            (sk.net.profile.delack_blocked_flag and ack.blocked)
            or seq_sub(sk.rcv_nxt, sk.rcv_wup) > ack.rcv_mss
            or (copied > 0 and (ack.pending & AckPending.PUSHED2 or (
                ack.pending & AckPending.PUSHED and not ack.pingpong))
                and sk.rmem_alloc == 0)):
        time_to_ack = True
    if copied > 0 and not time_to_ack and not sk.rcv_shutdown:
        rcv_window_now = tcp_receive_window(sk)
        if 2 * rcv_window_now <= sk.window_clamp:
            new_window = __tcp_select_window(sk)
            if new_window and new_window >= 2 * rcv_window_now:
                time_to_ack = True
    if time_to_ack:
        tcp_send_ack(sk, now)


def ucopy_install(sk: TcpSock, task: str, length: int, install: bool) -> UcopyInstalled:
    """Legacy: become the prequeue reader (once per call), and set ucopy.len."""
    uc = sk.ucopy
    net = sk.net
    if net.profile.has_prequeue and not net.sysctls.tcp_low_latency:
        if uc.task is None and install:
            uc.task = task
            net.event("ucopy_install", sk.sock_id, task=task)
        if uc.task == task:
            uc.len = length
    return UcopyInstalled(installed=uc.task == task)


def ucopy_clear(sk: TcpSock, task: str) -> None:
    uc = sk.ucopy
    if uc.task == task:
        uc.task = None
        uc.len = 0


def tcp_prequeue_process(sk: TcpSock, length: int | None, now: int) -> None:
    """Legacy: replay the prequeue in the reader's context."""
    uc = sk.ucopy
    net = sk.net
    if length is not None:
        uc.len = length
    before_len = len(uc.iov)
    if uc.prequeue:
        net.inc("TcpExtTCPPrequeued")
        while uc.prequeue:
            sk_backlog_rcv(sk, uc.prequeue.pop(0), now)
        uc.memory = 0
    n = len(uc.iov) - before_len
    if n > 0:
        net.inc("TcpExtTCPDirectCopyFromPrequeue", n)


def sock_setsockopt(sk: TcpSock, name: str, value: int, now: int = 0) -> SockOpResult:
    if name == "SO_RCVBUF":
        sock_set_rcvbuf(sk, value)
    elif name == "SO_RCVLOWAT":
        tcp_set_rcvlowat(sk, value, now)
    elif name == "TCP_QUICKACK":
        tcp_sock_set_quickack(sk, value, now)
    else:
        return Failed(error=EINVAL)
    return SockOpResult()


def tcp_sock_set_quickack(sk: TcpSock, val: int, now: int) -> None:
    """TCP_QUICKACK (6.18's __tcp_sock_set_quickack, 4.13's do_tcp_setsockopt alike): 0
    enters pingpong mode, so ACKs wait for the delayed-ACK timer or a reply; any other
    value leaves it and, with an ACK scheduled on a connected socket, pushes it out now
    through tcp_cleanup_rbuf(sk, 1); an even value then re-enters pingpong mode."""
    ack = sk.icsk_ack
    if not val:
        ack.pingpong = 1  # inet_csk_enter_pingpong_mode: TCP_PINGPONG_THRESH is 1
        return
    ack.pingpong = 0
    if sk.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT) and inet_csk_ack_scheduled(sk):
        ack.pending |= AckPending.PUSHED
        tcp_cleanup_rbuf(sk, 1, now)
        if not val & 1:
            ack.pingpong = 1


def tcp_set_rcvlowat(sk: TcpSock, val: int, now: int) -> None:
    """SO_RCVLOWAT (sock_setsockopt -> 6.18's tcp_set_rcvlowat): the mark, capped, and
    the buffer it needs (sock_set_rcvlowat); then a lower mark may wake a reader
    now: tcp_set_rcvlowat calls tcp_data_ready (4.13 wakes nobody)."""
    sock_set_rcvlowat(sk, val)
    if (sk.net.profile.data_ready_honours_rcvlowat
            and sk.state not in (TcpState.LISTEN, TcpState.CLOSE, TcpState.SYN_SENT)):
        tcp_data_ready(sk, now)


def tcp_close(sk: TcpSock, task: str, now: int) -> None:
    """RST if unread data remains (TCPAbortOnClose), else send our FIN; release."""
    net = sk.net
    unread = any(skb.len for skb in sk.receive_queue) and sk.inq() > 0
    for skb in list(sk.receive_queue):
        tcp_drop(sk, skb, "SOCKET_CLOSE")
    sk.receive_queue.clear()
    sk.sock_dead = True
    if sk.state == TcpState.LISTEN:
        net.listeners.pop(sk.lport, None)
        set_state(sk, TcpState.CLOSE)
    elif unread or sk.state in (TcpState.SYN_RECV,):
        net.inc("TcpExtTCPAbortOnClose")
        rst = make_segment(sk, now, TcpFlags.RST | TcpFlags.ACK)
        net.mib.add("TcpOutRsts")
        net.transmit(rst, sk.sock_id)
        tcp_done(sk)
        inet_unhash(sk)
    elif sk.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
        tcp_send_fin(sk, now)
    release_sock(sk, task, now)
    if sk.state == TcpState.FIN_WAIT2 and tcp_fin_time(sk) <= TCP_TIMEWAIT_LEN:
        # __tcp_close, after release_sock: an orphan in FIN_WAIT2 becomes a timewait
        # sock (a longer tcp_fin_time keeps the full socket on the keepalive timer)
        tcp_time_wait(sk, TcpState.FIN_WAIT2, tcp_fin_time(sk), now)


def tcp_send_fin(sk: TcpSock, now: int) -> None:
    """Our FIN (with ACK) and the state it moves us to (tcp_close_state)."""
    fin = make_segment(sk, now, TcpFlags.FIN | TcpFlags.ACK)
    sk.fin_sent = True
    sk.snd_nxt = seq_add(sk.snd_nxt, 1)
    sk.snd_shutdown = True
    set_state(sk, TcpState.FIN_WAIT1 if sk.state == TcpState.ESTABLISHED
              else TcpState.LAST_ACK)
    tcp_event_ack_sent(sk)  # the FIN carries our ACK: no delayed ACK is due any more
    sk.net.transmit(fin, sk.sock_id)


def tcp_shutdown(sk: TcpSock, how: int, now: int) -> SockOpResult:
    """SHUT_RD marks the receive side closed; SHUT_WR sends our FIN."""
    if sk.state in (TcpState.LISTEN, TcpState.CLOSE, TcpState.SYN_SENT):
        return Failed(error=ENOTCONN)
    if how in (0, 2):  # SHUT_RD / SHUT_RDWR
        sk.rcv_shutdown = True
        sk.data_ready = True
    if how in (1, 2) and sk.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
        tcp_send_fin(sk, now)
    return SockOpResult()


def tcp_sendmsg(sk: TcpSock, data: bytes, now: int) -> SockOpResult:
    """A minimal tcp_sendmsg + tcp_write_xmit: send ``data`` now in mss-sized segments.

    rxpath models a receiver: what it sends is only what a receive-side test needs
    (replies that carry our ACK). Nothing is kept for later: a write sends what
    the peer's window allows at once and returns that count; nothing is
    retransmitted.
    """
    if sk.state not in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT) or sk.snd_shutdown:
        return Failed(error=EPIPE)
    mss = max(sk.mss_cache, 1)
    room = max(0, seq_sub(seq_add(sk.snd_una, sk.snd_wnd), sk.snd_nxt))
    room = min(room, TCP_INIT_CWND * mss)  # the initial congestion window
    chunk_all = data[:room]
    sent = 0
    while sent < len(chunk_all):
        chunk = chunk_all[sent:sent + mss]
        sent += len(chunk)
        flags = TcpFlags.ACK | (TcpFlags.PSH if sent == len(chunk_all) else 0)
        seg = make_segment(sk, now, flags).with_(payload=chunk)
        sk.snd_nxt = seq_add(sk.snd_nxt, len(chunk))
        tcp_event_ack_sent(sk)
        # tcp_event_data_sent: a reply within ato of the last receive means
        # the connection is interactive (pingpong); counted in jiffies.
        j = sk.net.jiffy
        if (now // j - sk.icsk_ack.lrcvtime // j) * j < sk.icsk_ack.ato:
            sk.icsk_ack.pingpong += 1
        sk.net.transmit(seg, sk.sock_id)
    if not sent and data:
        return Failed(error=EAGAIN)  # no room: the model keeps no unsent data
    return Sent(sent=sent)


def tcp_task_exit(sk: TcpSock, task: str, now: int) -> bool:
    """The task died: its lock, installation and waits on ``sk`` go with it (as the
    close of its files at exit does). True if it owned the lock."""
    sk.lock_waiters = type(sk.lock_waiters)(w for w in sk.lock_waiters if w.task != task)
    sk.waiters = [w for w in sk.waiters if w.task != task]
    if sk.ucopy.task == task:
        sk.ucopy.task = None
        sk.ucopy.len = 0
        sk.ucopy.iov.clear()
    if sk.owner == task:
        release_sock(sk, task, now)
        return True
    return False


def tcp_inq_hint(sk: TcpSock) -> int:
    """TCP_INQ's cmsg: bytes not yet read; after a FIN, at least 1 so the reader comes
    back for the end of the stream."""
    inq = max(0, seq_sub(sk.rcv_nxt, sk.copied_seq))
    return 1 if inq == 0 and sk.sock_done else inq


def tcp_poll(sk: TcpSock) -> Polled:
    """What poll / epoll see of the socket: its readiness mask, and its wakeups so far
    (an edge-triggered watcher is woken by each)."""
    if sk.state == TcpState.LISTEN:
        mask = EPOLLIN | EPOLLRDNORM if sk.accept_queue else 0
        return Polled(mask=mask, wakeups=sk.wakeups)
    mask = 0
    if (sk.rcv_shutdown and sk.snd_shutdown) or sk.state == TcpState.CLOSE:
        mask |= EPOLLHUP
    if sk.rcv_shutdown:
        mask |= EPOLLIN | EPOLLRDNORM | EPOLLRDHUP
    if sk.state not in (TcpState.SYN_SENT, TcpState.SYN_RECV):
        target = max(sk.rcvlowat, 1)  # sock_rcvlowat(sk, 0, INT_MAX)
        if sk.net.profile.data_ready_honours_rcvlowat:
            # 4.19+: tcp_stream_is_readable -> tcp_epollin_ready, the rule that
            # decides tcp_data_ready's wakeups, so poll agrees with them
            if tcp_epollin_ready(sk, target):
                mask |= EPOLLIN | EPOLLRDNORM
        # 4.13: only the bytes queued against the mark (a FIN read counts no byte)
        elif seq_sub(sk.rcv_nxt, sk.copied_seq) - int(sk.sock_done) >= target:
            mask |= EPOLLIN | EPOLLRDNORM
        if not sk.snd_shutdown and sk.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
            mask |= EPOLLOUT | EPOLLWRNORM
    if sk.sk_err:
        mask |= EPOLLERR
    return Polled(mask=mask, wakeups=sk.wakeups)


def tcp_diag_rqueue(sk: TcpSock) -> int:
    """ss's Recv-Q (inet_sk_diag_fill -> tcp_diag_get_info): a listener's accept queue
    (sk_ack_backlog), else max(rcv_nxt - copied_seq, 0). Unlike SIOCINQ (tcp_inq) the
    FIN is not taken off: a CLOSE-WAIT socket shows 1 until its reader reads EOF
    (tcp_recvmsg's found_fin_ok moves copied_seq past the FIN), 0 after."""
    if sk.state == TcpState.LISTEN:
        return len(sk.accept_queue)
    return max(seq_sub(sk.rcv_nxt, sk.copied_seq), 0)


def tcp_diag_wqueue(sk: TcpSock) -> int:
    """ss's Send-Q (tcp_diag_get_info, the same in 4.13 and 6.18): a listener's
    sk_max_ack_backlog (listen()'s backlog, capped at somaxconn), else write_seq -
    snd_una. The model keeps no unsent data, so write_seq is snd_nxt; a SYN or FIN
    not yet acknowledged counts its one sequence number, as in the kernel."""
    if sk.state == TcpState.LISTEN:
        return sk.backlog_max
    return max(seq_sub(sk.snd_nxt, sk.snd_una), 0)


def tcp_get_info(sk: TcpSock, now: int) -> dict[str, Any]:
    """What ``ss -tmi`` shows: state, queues, skmem and the receive-side tcp_info."""
    return {
        "sock": sk.sock_id,
        "state": sk.state.value,
        "local": f"{sk.laddr}:{sk.lport}",
        "peer": f"{sk.raddr}:{sk.rport}",
        "recv_q": tcp_diag_rqueue(sk),
        "send_q": tcp_diag_wqueue(sk),
        "rcvlowat": sk.rcvlowat,
        "owner": sk.owner,
        "lock_waiters": len(sk.lock_waiters),
        "attached": sk.attached,
        "skmem": {
            "r": sk.rmem_alloc, "rb": sk.rcvbuf, "t": 0, "tb": sk.sndbuf,
            "f": sk.forward_alloc, "w": 0, "o": 0, "bl": sk.backlog_len, "d": sk.sk_drops,
        },
        "backlog_segs": len(sk.backlog),
        "prequeue_segs": len(sk.ucopy.prequeue),
        "ofo_segs": len(sk.ofo),
        "receive_queue_segs": len(sk.receive_queue),
        "rcv_nxt": sk.rcv_nxt,
        "copied_seq": sk.copied_seq,
        "rcv_wnd": sk.rcv_wnd,
        "rcv_wscale": sk.rx_opt.rcv_wscale,
        "snd_wscale": sk.rx_opt.snd_wscale,
        "rcv_ssthresh": sk.rcv_ssthresh,
        "window_clamp": sk.window_clamp,
        "rcv_mss": sk.icsk_ack.rcv_mss,
        "advmss": sk.advmss,
        "ato_ms": sk.icsk_ack.ato / MS,
        "quick": sk.icsk_ack.quick,
        "pingpong": sk.icsk_ack.pingpong,
        "rcv_rtt_ms": (sk.rcv_rtt_us >> 3) / 1000,
        "rcv_space": sk.rcvq_space,
        "scaling_ratio": sk.scaling_ratio,
        "sack_blocks": list(sk.selective_acks[: sk.rx_opt.num_sacks]),
        "segs_in": sk.segs_in,
        "data_segs_in": sk.data_segs_in,
        "ucopy_task": sk.ucopy.task,
        "pred_flags": sk.pred_flags != 0,
        "rcv_win_free": tcp_win_from_space(sk, sk.rcvbuf - sk.rmem_alloc),
        "err": sk.sk_err,
        # tcp_info's own units
        "rcv_rtt_us": sk.rcv_rtt_us >> 3,
        "ato_us": sk.icsk_ack.ato // 1000,
        "snd_mss": sk.mss_cache,
        "snd_wnd": sk.snd_wnd,
        # jiffies_to_msecs(now - lrcvtime): counted in whole jiffies
        "last_data_recv_ms": (now // sk.net.jiffy - sk.icsk_ack.lrcvtime // sk.net.jiffy)
        * sk.net.jiffy // MS,
        # tcp_rcv_nxt_update: every byte (and the FIN) that advanced rcv_nxt
        "bytes_received": seq_sub(sk.rcv_nxt, sk.irs) - 1 if sk.irs or sk.rcv_nxt else 0,
    }
