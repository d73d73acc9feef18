"""``struct sock`` and the socket lock (include/net/sock.h, net/core/sock.c).

The per-connection state is ``struct sock`` + ``struct tcp_sock`` +
``inet_connection_sock`` in one :class:`TcpSock`; field names follow the kernel so a
reader of tcp_input.c finds each one here. Below it, the socket lock as a task sees
it: ``lock_sock``, ``release_sock`` and the backlog replay ``__release_sock``,
``__sk_flush_backlog``, ``sk_wait_data``, and the wakeups that end a sleep.

The socket lock's owned flag spans many requests of one task (its lease): a task
takes it with ``lock_sock``, works, and lets go with ``release_sock``; segments that
arrive meanwhile wait in the backlog, replayed in the owner's context.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Final

from actors.stack.net import Net, OpDone
from actors.stack.skb import Skb
from protocol.constants import ECONNREFUSED, EINVAL
from protocol.seq import seq_sub
from protocol.sockops import Accepted, Failed, SockOpResult, SockState, Woken, sock_state_of


class TcpState(Enum):
    ESTABLISHED = "ESTAB"
    SYN_SENT = "SYN-SENT"
    SYN_RECV = "SYN-RECV"
    FIN_WAIT1 = "FIN-WAIT-1"
    FIN_WAIT2 = "FIN-WAIT-2"
    TIME_WAIT = "TIME-WAIT"
    CLOSE = "UNCONN"
    CLOSE_WAIT = "CLOSE-WAIT"
    LAST_ACK = "LAST-ACK"
    LISTEN = "LISTEN"
    CLOSING = "CLOSING"


class AckPending:
    """``icsk_ack.pending`` bits: plain ints, tested on every segment (enum flags cost
    several times more)."""

    SCHED: Final = 1
    TIMER: Final = 2
    PUSHED: Final = 4
    PUSHED2: Final = 8
    NOW: Final = 16  # modern: one-shot immediate ACK
    NOMEM: Final = 32  # modern: advertise a zero window on the next ACK


class OfoQueue:
    """``tp->out_of_order_queue``: skbs ordered by seq (an rbtree in the kernel).

    Keys are distances from a base that stays below every queued seq (rcv_nxt when
    the queue last became non-empty), so mod-2^32 order is a plain sort order.
    """

    __slots__ = ("_base", "_keys", "_skbs")

    def __init__(self) -> None:
        self._skbs: list[Skb] = []
        self._keys: list[int] = []
        self._base = 0

    def _key(self, seq: int) -> int:
        return seq_sub(seq, self._base)

    def reset_base(self, base: int) -> None:
        assert not self._skbs
        self._base = base

    def __len__(self) -> int:
        return len(self._skbs)

    def __bool__(self) -> bool:
        return bool(self._skbs)

    def __iter__(self) -> Iterator[Skb]:
        return iter(list(self._skbs))

    def first(self) -> Skb | None:
        return self._skbs[0] if self._skbs else None

    def last(self) -> Skb | None:
        """``tp->ooo_last_skb``."""
        return self._skbs[-1] if self._skbs else None

    def index(self, skb: Skb) -> int:
        i = bisect.bisect_left(self._keys, self._key(skb.seq))
        while self._skbs[i] is not skb:
            i += 1
        return i

    def next(self, skb: Skb) -> Skb | None:
        i = self.index(skb) + 1
        return self._skbs[i] if i < len(self._skbs) else None

    def prev(self, skb: Skb) -> Skb | None:
        i = self.index(skb)
        return self._skbs[i - 1] if i > 0 else None

    def insert(self, skb: Skb) -> None:
        key = self._key(skb.seq)
        i = bisect.bisect_right(self._keys, key)
        self._keys.insert(i, key)
        self._skbs.insert(i, skb)

    def erase(self, skb: Skb) -> None:
        i = self.index(skb)
        del self._keys[i]
        del self._skbs[i]

    def replace(self, old: Skb, new: Skb) -> None:
        """rb_replace_node: ``new`` takes ``old``'s place (same seq)."""
        i = self.index(old)
        self._skbs[i] = new

    def purge(self) -> list[Skb]:
        out = self._skbs
        self._skbs, self._keys = [], []
        return out


@dataclass(slots=True)
class Ucopy:
    """Legacy ``tp->ucopy``: the prequeue and the reader installed to receive into."""

    task: str | None = None
    len: int = 0
    prequeue: list[Skb] = field(default_factory=list)
    memory: int = 0
    # Bytes copied straight into the installed reader's buffer by header
    # prediction or tcp_data_queue in its own context, not yet returned to it.
    iov: bytearray = field(default_factory=bytearray)
    iov_seq: int = 0  # sequence number of iov's first byte


@dataclass(slots=True)
class IcskAck:
    pending: int = 0
    quick: int = 0
    ato: int = 0
    pingpong: int = 0
    blocked: bool = False
    lrcvtime: int = 0
    last_seg_size: int = 0
    rcv_mss: int = 536
    timeout: int = 0  # delayed-ACK expiry while TIMER is set: the ns its expiry jiffy starts
    fire_at: int = 0  # when the timer wheel runs it (profiles.timer_fires_at)
    deferred: bool = False  # a timer fired while owned (TCP_DELACK_TIMER_DEFERRED)
    ack_deferred: bool = False  # modern TCP_ACK_DEFERRED


@dataclass(slots=True)
class RxOpt:
    tstamp_ok: bool = False
    sack_ok: bool = False
    wscale_ok: bool = False
    snd_wscale: int = 0
    rcv_wscale: int = 0
    ts_recent: int = 0
    ts_recent_stamp: int = 0
    saw_tstamp: bool = False
    rcv_tsval: int = 0
    rcv_tsecr: int = 0
    num_sacks: int = 0
    dsack: bool = False
    mss_clamp: int = 536


@dataclass(slots=True)
class LockWaiter:
    """A task asleep in ``lock_sock``; ``result`` is what it is told once it owns the lock."""

    task: str
    result: SockOpResult = field(default_factory=SockOpResult)


@dataclass(slots=True)
class Waiter:
    """A reader asleep in ``sk_wait_data`` or ``accept``."""

    task: str
    deadline: int | None
    last_tail: Skb | None
    kind: str = "data"  # data | accept | connect | epoll
    rports: tuple[int, ...] | None = None  # accept: only a connection from these peer ports
    socks: tuple[int, ...] = ()  # epoll: every socket it sleeps on


@dataclass(slots=True)
class TcpSock:
    net: Net
    sock_id: int
    laddr: str
    lport: int
    raddr: str = "0.0.0.0"
    rport: int = 0
    state: TcpState = TcpState.CLOSE

    # The queues are lists, not deques: they are short or drained whole, and an empty
    # deque costs 760 bytes against a list's 56, and five of them were more than half of
    # an established socket's memory.
    # --- sk_lock ---
    owner: str | None = None  # sk_lock.owned, with the owning task's name
    lock_waiters: list[LockWaiter] = field(default_factory=list)
    # --- sk_backlog ---
    backlog: list[Skb] = field(default_factory=list)
    backlog_len: int = 0
    # --- queues ---
    receive_queue: list[Skb] = field(default_factory=list)
    ofo: OfoQueue = field(default_factory=OfoQueue)
    ucopy: Ucopy = field(default_factory=Ucopy)
    waiters: list[Waiter] = field(default_factory=list)

    # --- memory ---
    rcvbuf: int = 87380
    sndbuf: int = 16384
    rmem_alloc: int = 0
    forward_alloc: int = 0
    sk_drops: int = 0
    rcvlowat: int = 1
    rcvbuf_locked: bool = False
    scaling_ratio: int = 128

    # --- sequence state ---
    irs: int = 0
    iss: int = 0
    rcv_nxt: int = 0
    copied_seq: int = 0
    rcv_wup: int = 0
    rcv_wnd: int = 0
    window_clamp: int = 0
    rcv_ssthresh: int = 0
    snd_una: int = 0
    snd_nxt: int = 0
    snd_wnd: int = 0
    snd_wl1: int = 0
    max_window: int = 0
    bytes_acked: int = 0  # RFC 4898 tcpEStatsAppHCThruOctetsAcked
    advmss: int = 1460
    mss_cache: int = 536
    pred_flags: int = 0
    rx_opt: RxOpt = field(default_factory=RxOpt)
    selective_acks: list[tuple[int, int]] = field(default_factory=list)
    duplicate_sack: tuple[int, int] = (0, 0)
    icsk_ack: IcskAck = field(default_factory=IcskAck)
    rto: int = 200_000_000
    srtt_us: int = 0  # x8, as tcp_sock keeps it
    mdev_us: int = 0
    rttvar_us: int = 0
    last_oow_ack_time: int | None = None
    compressed_ack: int = 0
    dup_ack_counter: int = 0
    sack_compress_deadline: int | None = None
    compressed_ack_rcv_nxt: int = 0
    synack_deadline: int | None = None
    synack_retries: int = 0
    # when our SYN or SYN-ACK last left (tcp_rsk(req)->snt_synack, the SYN skb's
    # mstamp) and how often it was sent again (req->num_retrans, TCPCB_RETRANS):
    # the handshake's RTT sample is taken only from a segment sent once (Karn)
    snt_synack: int | None = None
    synack_num_retrans: int = 0
    # set by every wakeup (sk_data_ready / state change); the stack wakes sleepers
    data_ready: bool = False
    wakeups: int = 0  # wakeups delivered so far (sock_def_readable calls)

    # --- receive RTT and autotuning ---
    rcv_rtt_us: int = 0  # rcv_rtt_est.rtt_us (x8)
    rcv_rtt_seq: int = 0
    rcv_rtt_time: int = 0
    rcv_rtt_last_tsecr: int = 0
    rcvq_space: int = 0
    rcvq_seq: int = 0
    rcvq_time: int = 0

    # --- flags ---
    sock_done: bool = False
    rcv_shutdown: bool = False
    snd_shutdown: bool = False
    sock_dead: bool = False
    attached: bool = True  # sk->sk_socket: false for a child until accept() takes it
    sk_err: int = 0
    fin_sent: bool = False

    # --- listener ---
    parent: int | None = None
    backlog_max: int = 0
    accept_queue: list[int] = field(default_factory=list)
    grafted: dict[int, int] = field(default_factory=dict)  # peer port -> accepted child

    # --- tcp_info ---
    bytes_received: int = 0
    segs_in: int = 0
    data_segs_in: int = 0
    last_data_recv: int = 0
    delivered_bytes: int = 0
    ts_origin: int = 0

    @property
    def owned(self) -> bool:
        """``sock_owned_by_user(sk)``."""
        return self.owner is not None

    def four_tuple(self) -> tuple[str, int, str, int]:
        """(remote addr, remote port, local addr, local port) as seen by an arriving segment."""
        return (self.raddr, self.rport, self.laddr, self.lport)

    def tail(self) -> Skb | None:
        return self.receive_queue[-1] if self.receive_queue else None

    def inq(self) -> int:
        """Bytes readable now (SIOCINQ / TCP_INQ): rcv_nxt - copied_seq, less a FIN."""
        n = seq_sub(self.rcv_nxt, self.copied_seq)
        if n > 0 and self.sock_done and self.receive_queue and self.receive_queue[-1].fin:
            n -= 1
        return max(0, n)


class OpError(Exception):
    """A task asked for something impossible (not the owner, unknown socket...)."""


def sk_alloc(net: Net, laddr: str, lport: int, now: int) -> TcpSock:
    """sk_alloc + tcp_init_sock: a new socket in the table, with the default buffers."""
    sk = TcpSock(net=net, sock_id=net.next_sock_id, laddr=laddr, lport=lport)
    net.next_sock_id += 1
    sk.rcvbuf = net.sysctls.tcp_rmem[1]
    sk.sndbuf = net.sysctls.tcp_wmem[1]
    sk.scaling_ratio = net.profile.initial_scaling_ratio
    sk.ts_origin = now
    net.socks[sk.sock_id] = sk
    return sk


def inet_unhash(sk: TcpSock) -> None:
    """Out of the established hash: no segment finds this connection any more."""
    sk.net.ehash.pop(sk.four_tuple(), None)


def stream_offset(sk: TcpSock, seq: int) -> int:
    """Position of ``seq`` in the peer's byte stream (byte 0 follows its SYN)."""
    return seq_sub(seq, sk.irs) - 1


def sk_backlog_rcv(sk: TcpSock, skb: Skb, now: int) -> None:
    """Process one segment in the owner's context (tcp_v4_do_rcv, via the protocol)."""
    sk.net.prot.backlog_rcv(sk, skb, now)


# ------------------------------------------------------------------ the socket lock


def lock_sock(sk: TcpSock, task: str, now: int) -> SockOpResult | None:
    """Take ``sk_lock.owned``; None when ``task`` must wait for the owner's release."""
    if sk.owner == task:
        raise OpError(f"{task} already owns socket {sk.sock_id}")
    net = sk.net
    if sk.owned:
        sk.lock_waiters.append(LockWaiter(task))
        net.lock_waits += 1
        net.event("lock_wait", sk.sock_id, task=task, owner=sk.owner)
        return None
    sk.owner = task
    net.event("lock", sk.sock_id, task=task)
    return SockOpResult()


def release_sock(sk: TcpSock, task: str, now: int) -> None:
    """Drain the backlog in the owner's context, run deferred work, unlock."""
    if sk.owner != task:
        raise OpError(f"{task} releases socket {sk.sock_id} owned by {sk.owner}")
    __release_sock(sk, task, now)
    sk.net.prot.release_cb(sk, now)
    sk.owner = None
    sk.net.event("unlock", sk.sock_id, task=task)
    _grant_next(sk, now)


def __release_sock(sk: TcpSock, task: str, now: int) -> None:
    """Replay the backlog through sk_backlog_rcv, the owner still set."""
    net = sk.net
    prev = net.current
    net.current = task
    replayed = 0
    iov_before = len(sk.ucopy.iov)
    while sk.backlog:
        batch = list(sk.backlog)
        sk.backlog.clear()
        for skb in batch:
            sk_backlog_rcv(sk, skb, now)
            replayed += 1
    if replayed:
        net.event("backlog_drain", sk.sock_id, task=task, segments=replayed)
    direct = len(sk.ucopy.iov) - iov_before
    if direct > 0:
        net.inc("TcpExtTCPDirectCopyFromBacklog", direct)
    sk.backlog_len = 0
    net.current = prev


def __sk_flush_backlog(sk: TcpSock, task: str, now: int) -> None:
    """Modern: replay the backlog without letting go of the lock."""
    __release_sock(sk, task, now)
    sk.net.prot.release_cb(sk, now)


def _grant_next(sk: TcpSock, now: int) -> None:
    if sk.owned or not sk.lock_waiters:
        sk_wakeups(sk, now)
        return
    waiter = sk.lock_waiters.pop(0)
    sk.owner = waiter.task
    sk.net.event("lock", sk.sock_id, task=waiter.task)
    sk.net.outputs.append(OpDone(waiter.task, sk.sock_id,
                                 with_direct(sk, waiter.task, waiter.result)))
    sk_wakeups(sk, now)


def sleep_on(sk: TcpSock, w: Waiter) -> None:
    """Put a task on the socket's wait queue, its timeout (if any) armed."""
    sk.waiters.append(w)
    if w.deadline is not None:
        sk.net.arm_timer(sk.sock_id, w.deadline)


def sk_wait_data(sk: TcpSock, task: str, timeo_ns: int | None, now: int) -> None:
    """Sleep until data arrives: release (draining the backlog) and wait; the woken
    task then sends its own ``lock_sock`` (the end of sk_wait_event)."""
    last = sk.tail()
    # On the wait queue before release_sock, so a wakeup raised by the backlog
    # replay is not missed (prepare_to_wait, then sk_wait_event).
    sleep_on(sk, Waiter(task, None if timeo_ns is None else now + timeo_ns, last))
    release_sock(sk, task, now)
    waiter = next((w for w in sk.waiters if w.task == task), None)
    if waiter is not None and (sk.tail() is not last or sk.sk_err):
        sk.waiters.remove(waiter)  # the condition holds already: no sleep
        wake_to_relock(sk, task, timed_out=False)


# ------------------------------------------------------------------ results of steps


def sock_state(sk: TcpSock) -> SockState:
    # In SockState's field order: readable, backlog, prequeue, caught_up, done,
    # shutdown, err, closed, listen, ucopy_len.
    uc = sk.ucopy
    return sock_state_of((bool(sk.receive_queue), bool(sk.backlog), len(uc.prequeue),
                          sk.rcv_nxt == sk.copied_seq, sk.sock_done, sk.rcv_shutdown,
                          sk.sk_err, sk.state == TcpState.CLOSE, sk.state == TcpState.LISTEN,
                          uc.len))


def with_direct(sk: TcpSock, task: str, result: SockOpResult) -> SockOpResult:
    """``result`` with the socket's state and the bytes copied straight into ``task``'s
    buffer (legacy direct copy) since it last heard from the stack."""
    uc = sk.ucopy
    if uc.task == task and uc.iov:
        direct = bytes(uc.iov)
        uc.iov.clear()
        return replace(result, state=sock_state(sk), direct=direct,
                       direct_offset=stream_offset(sk, uc.iov_seq))
    return replace(result, state=sock_state(sk))


# ------------------------------------------------------------------ wakeups


def sk_wakeups(sk: TcpSock, now: int) -> None:
    """Deliver the wakeups raised while processing (sk_data_ready, state changes)."""
    if not sk.data_ready:
        return
    sk.data_ready = False
    sk.wakeups += 1  # what an edge-triggered epoll watcher sees (ep_poll_callback)
    woken = list(sk.waiters)
    sk.waiters.clear()
    for w in woken:
        sk.net.event("wakeup", sk.sock_id, task=w.task, kind=w.kind)
        if w.kind == "accept":
            _accept_woken(sk, w)
        elif w.kind == "connect":
            _connect_woken(sk, w)
        elif w.kind == "epoll":
            ep_poll_done(sk.net, w, timed_out=False, woken=sk)
        else:
            wake_to_relock(sk, w.task, timed_out=False)


def wake_to_relock(sk: TcpSock, task: str, *, timed_out: bool) -> None:
    """Wake a task asleep in sk_wait_event; it takes the lock itself when it runs.

    Until the woken reader's own ``lock_sock`` arrives the socket is not owned, so
    softirq keeps prequeueing (legacy) or processing segments directly: the time
    a wakeup takes to get the reader running is what the prequeue exists for.
    """
    out = with_direct(sk, task, Woken(timed_out=timed_out, relock=True))
    sk.net.outputs.append(OpDone(task, sk.sock_id, out))


def sock_graft(sk: TcpSock) -> int:
    """The accepted child now belongs to a process (``sk->sk_socket`` is set)."""
    sk.attached = True
    parent = sk.net.socks.get(sk.parent) if sk.parent is not None else None
    if parent is not None:
        parent.grafted[sk.rport] = sk.sock_id
    return sk.sock_id


def reqsk_queue_remove(lsk: TcpSock, rports: tuple[int, ...] | None = None
                       ) -> TcpSock | None:
    """Take the oldest child from the listener's accept queue (or the oldest from one of
    ``rports``)."""
    socks = lsk.net.socks
    for sid in lsk.accept_queue:
        child = socks.get(sid)
        if child is not None and (rports is None or child.rport in rports):
            lsk.accept_queue.remove(sid)
            return child
    return None


def accepted_child(lsk: TcpSock, rports: tuple[int, ...]) -> TcpSock | None:
    """A listener's child from one of ``rports`` that a task has accepted already."""
    socks = lsk.net.socks
    for rport in rports:
        sid = lsk.grafted.get(rport)
        sk = socks.get(sid) if sid is not None else None
        if sk is not None and sk.attached:
            return sk
    return None


def _accept_woken(lsk: TcpSock, w: Waiter) -> None:
    child = reqsk_queue_remove(lsk, w.rports)
    if child is not None:
        sock_graft(child)
    elif w.rports is not None:
        # Another task of the same flow took it first: the tasks share it.
        child = accepted_child(lsk, w.rports)
    if child is None:
        sleep_on(lsk, w)  # not ours yet: sleep on
        return
    lsk.net.outputs.append(OpDone(w.task, lsk.sock_id,
                                  Accepted(sock=child.sock_id, rport=child.rport)))



# ------------------------------------------------------------------ connect and epoll waits


def _connect_result(sk: TcpSock) -> SockOpResult | None:
    """What a blocking connect() returns now; None while the handshake goes on."""
    if sk.state in (TcpState.SYN_SENT, TcpState.SYN_RECV):
        return None
    if sk.state == TcpState.CLOSE:
        return Failed(error=sk.sk_err or ECONNREFUSED)
    return SockOpResult()


def inet_wait_for_connect(sk: TcpSock, task: str, now: int) -> SockOpResult | None:
    """Sleep until the handshake ends (sk_state_change wakes us); None while asleep."""
    result = _connect_result(sk)
    if result is None:
        sleep_on(sk, Waiter(task, None, None, kind="connect"))
    return result


def _connect_woken(sk: TcpSock, w: Waiter) -> None:
    result = _connect_result(sk)
    if result is None:
        sleep_on(sk, w)  # a wakeup, but still connecting: sleep on
        return
    sk.net.outputs.append(OpDone(w.task, sk.sock_id, with_direct(sk, w.task, result)))


def ep_poll(net: Net, task: str, socks: list[int], seen: list[int], timeo_ns: int | None,
            now: int) -> SockOpResult | None:
    """epoll_wait's sleep: on every watched socket's wait queue (ep_poll_callback is a
    wakeup there) until one is woken after the ``seen`` counts, or the timeout; None
    while asleep."""
    if not socks or len(socks) != len(seen):
        return Failed(error=EINVAL)
    targets = [net.socks.get(sid) for sid in socks]
    ready = [(sid, -1 if sk is None else sk.wakeups)
             for sid, sk, n in zip(socks, targets, seen, strict=True)
             if sk is None or sk.wakeups != n]
    if ready:
        return Woken(ready=[sid for sid, _ in ready], wakeups=[n for _, n in ready])
    if timeo_ns is not None and timeo_ns <= 0:
        return Woken(timed_out=True)
    w = Waiter(task, None if timeo_ns is None else now + timeo_ns, None, kind="epoll",
               socks=tuple(socks))
    for sk in targets:
        assert sk is not None
        sleep_on(sk, w)
    return None


def ep_poll_done(net: Net, w: Waiter, *, timed_out: bool, woken: TcpSock | None = None
                 ) -> None:
    """End an epoll sleep: off every socket's wait queue, and answer its task with the
    socket whose wakeup (ep_poll_callback) ended it, if one did."""
    for sid in w.socks:
        sk = net.socks.get(sid)
        if sk is not None:
            sk.waiters = [x for x in sk.waiters if x is not w]
    result = (Woken(timed_out=timed_out) if woken is None else
              Woken(ready=[woken.sock_id], wakeups=[woken.wakeups]))
    net.outputs.append(OpDone(w.task, w.socks[0], result))
