"""The stack's timers: net/ipv4/tcp_timer.c.

The delayed ACK (deferred while the socket is owned, run by ``tcp_release_cb`` when
the owner lets go), the compressed-SACK timer, the SYN / SYN-ACK retransmit timer, and
the timeouts of tasks asleep in ``sk_wait_data`` or ``accept``. Deadlines are
nanoseconds on the caller's clock; :func:`run_timers` fires every one that is due.
"""

from __future__ import annotations

from collections.abc import Iterable
from heapq import heappop

from actors.profiles import MS
from actors.stack.net import Net, OpDone
from actors.stack.sock import (
    AckPending,
    TcpSock,
    TcpState,
    ep_poll_done,
    inet_unhash,
    sk_backlog_rcv,
    sk_wakeups,
    wake_to_relock,
)
from actors.stack.tcp_input import inet_csk_ack_scheduled, set_state, tcp_sack_compress_send_ack
from actors.stack.tcp_minisocks import inet_twsk_kill, tcp_send_syn, tcp_v4_send_synack
from actors.stack.tcp_output import TCP_ATO_MIN, tcp_send_ack
from protocol.constants import EAGAIN, ETIMEDOUT
from protocol.sockops import Failed

SYNACK_RETRIES = 5


def _deadlines(sk: TcpSock) -> Iterable[int]:
    ack = sk.icsk_ack
    if ack.pending & AckPending.TIMER and ack.fire_at:
        yield ack.fire_at
    if sk.sack_compress_deadline is not None:
        yield sk.sack_compress_deadline
    if sk.synack_deadline is not None:
        yield sk.synack_deadline
    for w in sk.waiters:
        if w.deadline is not None:
            yield w.deadline


def _holds(sk: TcpSock, deadline: int) -> bool:
    """Whether ``deadline`` is still one of the socket's timers (not re-armed or cancelled)."""
    ack = sk.icsk_ack
    if ack.fire_at == deadline and ack.pending & AckPending.TIMER:
        return True  # the usual one, checked once per loop turn
    if sk.sack_compress_deadline == deadline or sk.synack_deadline == deadline:
        return True
    return any(w.deadline == deadline for w in sk.waiters)


def next_deadline(net: Net) -> int | None:
    """The earliest timer of any socket: the top of the timer heap, once the entries no
    socket holds any more are dropped (every arming pushes one, see Net.arm_timer)."""
    heap, socks = net.timer_heap, net.socks
    best = None
    while heap:
        deadline, sock_id = heap[0]
        sk = socks.get(sock_id)
        if sk is not None and _holds(sk, deadline):
            best = deadline
            break
        heappop(heap)
    tw = _next_tw_deadline(net)
    if tw is not None and (best is None or tw < best):
        return tw
    return best


def _next_tw_deadline(net: Net) -> int | None:
    """The earliest tw_timer: entries for a timewait sock gone or re-armed are dropped."""
    heap, twhash = net.tw_timer_heap, net.twhash
    while heap:
        deadline, key = heap[0]
        tw = twhash.get(key)
        if tw is not None and tw.deadline == deadline:
            return deadline
        heappop(heap)
    return None


def scan_deadline(net: Net) -> int | None:
    """The earliest timer found by visiting every socket: what the heap must agree with."""
    full = (d for sk in net.socks.values() for d in _deadlines(sk))
    tw = (tw.deadline for tw in net.twhash.values())
    return min((*full, *tw), default=None)


def run_timers(net: Net, now: int) -> list[TcpSock]:
    """Fire every timer due by ``now``, socket by socket in the order they were made;
    returns those sockets."""
    tw_timer_handler(net, now)
    heap, due = net.timer_heap, set()
    while heap and heap[0][0] <= now:
        due.add(heappop(heap)[1])
    ran: list[TcpSock] = []
    for sock_id in sorted(due):
        sk = net.socks.get(sock_id)
        if sk is not None:
            _run_sock_timers(net, sk, now)
            ran.append(sk)
    return ran


def tw_timer_handler(net: Net, now: int) -> None:
    """tw_timer_handler: a timewait sock whose timer ran is killed (inet_twsk_kill);
    what it was counted as (TW / TWKilled) was counted when it was scheduled."""
    heap = net.tw_timer_heap
    while heap and heap[0][0] <= now:
        deadline, key = heappop(heap)
        tw = net.twhash.get(key)
        if tw is not None and tw.deadline == deadline:
            inet_twsk_kill(tw)
            net.event("tw_timer", None, peer=f"{tw.raddr}:{tw.rport}",
                      substate=tw.substate.value)


def _run_sock_timers(net: Net, sk: TcpSock, now: int) -> None:
    ack = sk.icsk_ack
    if ack.pending & AckPending.TIMER and ack.fire_at and ack.fire_at <= now:
        tcp_delack_timer(sk, now)
    if sk.sack_compress_deadline is not None and sk.sack_compress_deadline <= now:
        sk.sack_compress_deadline = None
        if sk.compressed_ack:
            if sk.owned:
                # tcp_compressed_ack_kick: TCP_DELACK_TIMER_DEFERRED, so
                # tcp_release_cb's delack handler sends it (counted once)
                ack.deferred = True
            else:
                tcp_sack_compress_send_ack(sk, now)
    if sk.synack_deadline is not None and sk.synack_deadline <= now:
        tcp_synack_timer(sk, now)
    expired = [w for w in sk.waiters if w.deadline is not None and w.deadline <= now]
    for w in expired:
        sk.waiters.remove(w)
        if w.kind == "accept":
            net.outputs.append(OpDone(w.task, sk.sock_id, Failed(error=EAGAIN)))
        elif w.kind == "epoll":
            ep_poll_done(net, w, timed_out=True)
        else:
            wake_to_relock(sk, w.task, timed_out=True)
    sk_wakeups(sk, now)


def tcp_synack_timer(sk: TcpSock, now: int) -> None:
    """Retransmit our SYN or SYN-ACK with a doubled timeout; give up after the retries."""
    sk.synack_retries += 1
    opening = sk.state in (TcpState.SYN_RECV, TcpState.SYN_SENT)
    if sk.synack_retries > SYNACK_RETRIES or not opening:
        sk.synack_deadline = None
        if opening:
            if sk.state == TcpState.SYN_SENT:
                sk.sk_err = ETIMEDOUT
                sk.data_ready = True
            set_state(sk, TcpState.CLOSE)
            inet_unhash(sk)
        return
    sk.rto = min(sk.rto * 2, 120_000 * MS)
    sk.net.mib.add("TcpRetransSegs")
    if sk.state == TcpState.SYN_SENT:
        tcp_send_syn(sk, now)
    else:
        tcp_v4_send_synack(sk, now)


def tcp_delack_timer(sk: TcpSock, now: int) -> None:
    ack = sk.icsk_ack
    if sk.owned:
        # The owner is busy: tcp_release_cb runs this when it lets go.
        sk.net.inc("TcpExtDelayedACKLocked")
        if sk.net.profile.delack_blocked_flag:
            ack.blocked = True
        ack.deferred = True
        ack.timeout = ack.fire_at = 0
        return
    tcp_delack_timer_handler(sk, now)


def tcp_delack_timer_handler(sk: TcpSock, now: int) -> None:
    net = sk.net
    ack = sk.icsk_ack
    if sk.state in (TcpState.CLOSE, TcpState.LISTEN):
        return
    if sk.compressed_ack:
        # 6.x: a compressed SACK is flushed first (only modern compresses SACKs)
        tcp_sack_compress_send_ack(sk, now)
        return
    if not ack.pending & AckPending.TIMER:
        return
    if ack.timeout > now - now % net.jiffy:
        return  # time_after(icsk_ack.timeout, jiffies): its own timer is still armed
    ack.pending &= ~AckPending.TIMER
    uc = sk.ucopy
    if uc.prequeue:
        net.inc("TcpExtTCPSchedulerFailed")
        while uc.prequeue:
            sk_backlog_rcv(sk, uc.prequeue.pop(0), now)
        uc.memory = 0
    if inet_csk_ack_scheduled(sk):
        if not ack.pingpong:
            ack.ato = min(ack.ato << 1, sk.rto)
        else:
            ack.pingpong = 0
            ack.ato = TCP_ATO_MIN
        tcp_send_ack(sk, now)
        net.inc("TcpExtDelayedACKs")


def tcp_release_cb(sk: TcpSock, now: int) -> None:
    """Work deferred while the socket was owned (tcp_output.c in Linux; here beside the
    timer handler it runs): the delayed ACK, a compressed or deferred ACK."""
    ack = sk.icsk_ack
    if ack.deferred:
        # TCP_DELACK_TIMER_DEFERRED: the handler itself decides. An ACK sent meanwhile
        # cleared ICSK_ACK_TIMER (nothing to do); a delayed ACK scheduled meanwhile has
        # its own deadline, still in the future (the timer stays armed for it).
        ack.deferred = False
        tcp_delack_timer_handler(sk, now)
    if ack.ack_deferred:
        ack.ack_deferred = False
        if inet_csk_ack_scheduled(sk) or sk.compressed_ack:
            tcp_send_ack(sk, now)
