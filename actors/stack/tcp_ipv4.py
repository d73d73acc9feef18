"""The protocol stack's entrances, the socket table and ``tcp_v4_rcv``: net/ipv4/tcp_ipv4.c.

:class:`Stack` owns one :class:`~actors.stack.net.Net` (the socket table, counters and
outputs) and has three entrances; each call is one critical section under
``sk_lock.slock`` (the stack actor is single-threaded, so a call is atomic like code
run under ``bh_lock_sock``):

- :meth:`Stack.tcp_v4_rcv_frame` / :meth:`Stack.tcp_v4_rcv`: a frame or segment from a
  cpu's softirq: lookup, then ``tcp_add_backlog`` when the socket is owned,
  ``tcp_prequeue`` (legacy) when a reader is installed, else ``tcp_v4_do_rcv``.
- :meth:`Stack.sock_op`: one process-context step of a task, a typed operation of
  :mod:`protocol.sockops` (``LockSock``, ``SkbCopyDatagramMsg``, ``SkWaitData``...).
  The socket lock's owned flag spans many such calls: the lease a reader holds.
- :meth:`Stack.run_timers`: delayed ACK, compressed SACK, sleepers' timeouts.

Outputs (segments to transmit, completions of steps that had to wait, events) are
collected with :meth:`Stack.take_outputs`. The other kernel homes: ``sock`` (the
socket lock and wakeups), ``tcp`` (the socket calls), ``tcp_minisocks`` (listen,
SYN, accept), ``tcp_input``, ``tcp_output``, ``tcp_timer``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from actors.profiles import Profile, Sysctls, sysctl_write, timer_fires_at
from actors.stack import tcp, tcp_minisocks, tcp_timer
from actors.stack.net import Net, Proto, StackOutput
from actors.stack.skb import (
    DeviceKind,
    Skb,
    device_skb,
    device_skb_room,
    gro_skb,
    skb_try_coalesce,
)
from actors.stack.sock import (
    AckPending,
    OpError,
    TcpSock,
    TcpState,
    __sk_flush_backlog,
    ep_poll,
    inet_wait_for_connect,
    lock_sock,
    release_sock,
    sk_alloc,
    sk_wait_data,
    sk_wakeups,
    with_direct,
)
from actors.stack.tcp_input import (
    inet_csk_ack_scheduled,
    tcp_drop,
    tcp_rcv_established,
    tcp_rcv_state_process,
)
from actors.stack.tcp_minisocks import (
    ADVMSS,
    TCP_TIMEOUT_INIT,
    InetTimewaitSock,
    TwStatus,
    inet_accept_flow,
    inet_csk_accept,
    inet_twsk_kill,
    sock_set_rcvbuf,
    sock_set_rcvlowat,
    tcp_send_syn,
    tcp_timewait_state_process,
    tcp_v4_conn_request,
)
from actors.stack.tcp_output import tcp_full_space, tcp_select_initial_window, tcp_time_stamp
from protocol.constants import EADDRINUSE, EINVAL, TCP_RTO_MIN
from protocol.segment import IPV4_HEADER_LEN, Segment, TcpFlags, TcpOptions
from protocol.seq import before, seq_add
from protocol.sockops import (
    DoExit,
    EpPoll,
    Failed,
    InetAccept,
    InetAcceptFlow,
    InetListen,
    InetWaitForConnect,
    Inq,
    LockSock,
    MalformedOp,
    Opened,
    ProcSysWrite,
    Rejected,
    ReleaseSock,
    SkbCopyDatagramMsg,
    SkFlushBacklog,
    SkWaitData,
    SockError,
    SockOp,
    SockOpResult,
    SockSetsockopt,
    TcpCleanupRbuf,
    TcpClose,
    TcpGetInfo,
    TcpInfo,
    TcpInq,
    TcpPoll,
    TcpPrequeueProcess,
    TcpSendmsg,
    TcpShutdown,
    TcpV4Connect,
    UcopyClear,
    UcopyInstall,
    decode_op,
)
from protocol.wire import MalformedPacket, decode_ipv4, decode_tcp, tcp_checksum_ok

FIRST_EPHEMERAL_PORT = 32768  # net.ipv4.ip_local_port_range starts here


def header_len(seg: Segment) -> int:
    return seg.header_len  # doff * 4: recorded when decoded, else computed without encoding


class Stack:
    def __init__(self, profile: Profile, sysctls: Sysctls | None = None, *,
                 seed: int = 0, track_fates: bool = True, emit_events: bool = False,
                 device: DeviceKind = "nic") -> None:
        """``device``: what delivers the packets (:data:`~actors.stack.skb.DeviceKind`),
        which decides each skb's truesize and whether its head can be stolen."""
        self.device = device
        self.net = Net(profile, sysctls or profile.default_sysctls, track_fates=track_fates,
                       emit_events=emit_events, prot=TCP_PROT, rng=random.Random(seed))
        self._next_seg_id = 1
        self._next_ephemeral = FIRST_EPHEMERAL_PORT

    # ------------------------------------------------------------------ helpers

    @property
    def profile(self) -> Profile:
        return self.net.profile

    @property
    def sysctls(self) -> Sysctls:
        return self.net.sysctls

    @property
    def socks(self) -> dict[int, TcpSock]:
        return self.net.socks

    @property
    def ehash(self) -> dict[tuple[str, int, str, int], int]:
        return self.net.ehash

    @property
    def listeners(self) -> dict[int, int]:
        return self.net.listeners

    @property
    def backlog_enqueued(self) -> int:
        return self.net.backlog_enqueued

    @property
    def lock_waits(self) -> int:
        return self.net.lock_waits

    def take_outputs(self) -> list[StackOutput]:
        return self.net.take_outputs()

    def sock(self, sock_id: int) -> TcpSock:
        try:
            return self.net.socks[sock_id]
        except KeyError:
            raise OpError(f"no socket {sock_id}") from None

    def new_seg_id(self) -> int:
        sid = self._next_seg_id
        self._next_seg_id += 1
        return sid

    # ------------------------------------------------------------------ setup

    def listen(self, laddr: str, port: int, now: int, *, backlog: int = 128,
               rcvbuf: int | None = None, rcvlowat: int = 1,
               init_rcvbuf: int | None = None) -> int:
        """socket() + [SO_RCVBUF] + bind() + listen(); returns the listener's id.
        ``init_rcvbuf``: sk_rcvbuf as socket() set it (None: tcp_rmem[1] now)."""
        return tcp_minisocks.inet_listen(self.net, laddr, port, now, backlog=backlog,
                                         rcvbuf=rcvbuf, rcvlowat=rcvlowat,
                                         init_rcvbuf=init_rcvbuf)

    def connect(self, laddr: str, raddr: str, rport: int, now: int, *,
                lport: int | None = None, rcvbuf: int | None = None,
                rcvlowat: int = 1, init_rcvbuf: int | None = None) -> int:
        """socket() + [SO_RCVBUF] + connect(): send our SYN; returns the socket's id.
        The connection is established when the SYN-ACK arrives."""
        if lport is None:
            lport = self._next_ephemeral
            self._next_ephemeral += 1
        return tcp_v4_connect(self.net, laddr, lport, raddr, rport, now, rcvbuf=rcvbuf,
                              rcvlowat=rcvlowat, init_rcvbuf=init_rcvbuf)

    # ------------------------------------------------------------------ softirq

    def tcp_v4_rcv_frame(self, frame: bytes, now: int, seg_id: int | None = None, *,
                         gso_size: int = 0, gro_segs: int = 1) -> Segment | None:
        """A frame ``ip_rcv`` passed up, as the bytes the device wrote: decode it and run
        :meth:`tcp_v4_rcv`. Returns the segment, or None for a frame that is not TCP/IPv4
        (counted in TcpInSegs and under its error's counters, and logged). ``gso_size``:
        the GSO size the device gave it (a tun write's virtio_net_hdr), 0 for none.

        ``gro_segs`` > 1: an skb NAPI GRO merged from that many wire frames. GRO merges
        only frames whose checksum it validated (skb_gro_checksum_validate) and marks the
        skb CHECKSUM_UNNECESSARY, so tcp_v4_rcv's skb_checksum_init does not read its
        bytes again; nor does rxpath. Anything else is checked here."""
        net = self.net
        try:
            pkt = decode_ipv4(frame)
            seg = decode_tcp(pkt, verify_checksum=False)
        except MalformedPacket as err:
            net.malformed_segments += 1
            net.mib.add("TcpInSegs")
            for name in err.counters:
                net.mib.add(name)
            net.event("malformed_segment", None, reason=err.drop_reason, detail=str(err))
            return None
        hdr = (pkt.l4[12] >> 4) * 4 if len(pkt.l4) > 12 else 20
        csum_ok = gro_segs > 1 or tcp_checksum_ok(pkt)
        self.tcp_v4_rcv(seg, now, seg_id=seg_id, csum_ok=csum_ok, hdr_len=hdr,
                        gso_size=gso_size)
        return seg

    def tcp_v4_rcv(self, seg: Segment, now: int, *, seg_id: int | None = None,
                   csum_ok: bool = True, hdr_len: int | None = None,
                   truesize: int | None = None, gso_size: int = 0,
                   head_frag: bool = True) -> int:
        """A segment handed up by ``ip_rcv``; returns its arrival id (for its fate).

        ``gso_size`` marks a GRO/GSO super-packet (several wire segments of that size
        merged into one skb), as a NIC with GRO or a tun device with GSO delivers it.
        ``truesize`` and ``head_frag`` describe the buffer when the caller knows it;
        without a ``truesize`` both follow from the stack's device (see
        :func:`~actors.stack.skb.device_skb` and :class:`~actors.stack.skb.Skb`).
        """
        net = self.net
        sid = self.new_seg_id() if seg_id is None else seg_id
        net.current = None
        net.mib.add("TcpInSegs")
        hdr = hdr_len or seg.header_len  # doff * 4: recorded when decoded, else computed
        frags = tailroom = 0  # the caller's buffer: no room known
        if truesize is None:
            ip_len = IPV4_HEADER_LEN + hdr + len(seg.payload)
            cache = net.profile.skb_small_head_cache
            if gso_size and self.device == "nic" and len(seg.payload) > gso_size:
                truesize, frags = gro_skb(hdr, len(seg.payload), gso_size)  # NAPI GRO
                head_frag = True
            else:
                truesize, head_frag = device_skb(self.device, ip_len, cache)
                frags, tailroom = device_skb_room(self.device, ip_len, cache)
        skb = Skb.from_segment(seg, sid, now, header_len=hdr, csum_ok=csum_ok,
                               truesize=truesize)
        skb.head_frag = head_frag
        skb.frags, skb.tailroom = frags, tailroom
        if gso_size:
            skb.gso_size = gso_size
            skb.gso_segs = max(1, -(-len(seg.payload) // gso_size))
        sk = _inet_lookup(net, seg)
        isn = 0
        if isinstance(sk, InetTimewaitSock):
            sk, isn = _do_time_wait(net, sk, seg, skb, csum_ok, now)
            if sk is None:
                return sid
        if sk is None:
            _no_tcp_socket(net, seg, skb, csum_ok)
            return sid
        if sk.state is TcpState.LISTEN:
            if tcp_v4_conn_request(sk, seg, skb, now, isn):
                # an ACK to a listener: tcp_rcv_state_process returns TCP_FLAGS and
                # tcp_v4_do_rcv answers with a RST
                tcp_v4_send_reset(net, seg)
                net.drop_unowned(skb, "TCP_FLAGS")
            return sid
        # tcp_segs_in: a GRO/GSO skb counts every wire segment it carries
        segs = skb.gso_segs if skb.gso_segs > 1 else 1
        sk.segs_in += segs
        if seg.payload:
            sk.data_segs_in += segs
        if sk.owner is None:  # not sock_owned_by_user(sk)
            if not (net.profile.has_prequeue and tcp_prequeue(sk, skb, now)):
                tcp_v4_do_rcv(sk, skb, now)
        else:
            tcp_add_backlog(sk, skb)
        if sk.data_ready:  # sk_wakeups returns at once otherwise
            sk_wakeups(sk, now)
        return sid

    # ------------------------------------------------------------------ process context

    def sock_op(self, task: str, op: SockOp, now: int) -> SockOpResult | None:
        """Run one step for ``task``; None means it sleeps and an OpDone follows later."""
        net = self.net
        kind = type(op)
        if not kind.on_sock:
            return self._net_op(task, op, now)
        sk = self.sock(op.sock)  # type: ignore[attr-defined]
        entry = _HANDLERS.get(kind)
        if entry is None:
            raise OpError(f"no handler for {kind.__name__}")
        handler, any_task = entry
        prev = net.current
        net.current = task
        try:
            if not any_task and sk.owner != task:
                raise OpError(f"{op.kernel_name} on socket {sk.sock_id} by {task}, "
                              f"owner is {sk.owner}")
            result = handler(sk, task, op, now)
        finally:
            net.current = prev
        sk_wakeups(sk, now)
        if result is None:
            return None
        return result if kind is TcpInq else with_direct(sk, task, result)

    def _net_op(self, task: str, op: SockOp, now: int) -> SockOpResult | None:
        """A step that is not about one existing socket."""
        net = self.net
        if isinstance(op, InetAcceptFlow):
            lsk, result = inet_accept_flow(net, task, op.lport, tuple(op.rports), now)
            sk_wakeups(lsk, now)
            return None if result is None else with_direct(lsk, task, result)
        if isinstance(op, InetListen):
            if op.port in net.listeners:
                return Failed(error=EADDRINUSE)
            return Opened(sock=self.listen(op.laddr, op.port, now, backlog=op.backlog,
                                           rcvbuf=op.rcvbuf, rcvlowat=op.rcvlowat,
                                           init_rcvbuf=op.init_rcvbuf))
        if isinstance(op, TcpV4Connect):
            return Opened(sock=self.connect(op.laddr, op.raddr, op.rport, now, lport=op.lport,
                                            rcvbuf=op.rcvbuf, rcvlowat=op.rcvlowat,
                                            init_rcvbuf=op.init_rcvbuf))
        if isinstance(op, EpPoll):
            return ep_poll(net, task, op.socks, op.seen, op.timeo_ns, now)
        if isinstance(op, ProcSysWrite):
            try:
                net.sysctls = sysctl_write(net.sysctls, op.name, op.values)
            except ValueError:
                return Failed(error=EINVAL)
            return SockOpResult()
        if isinstance(op, DoExit):
            do_exit(net, task, now)
            return SockOpResult()
        raise OpError(f"no handler for {type(op).__name__}")

    def sock_op_msg(self, task: str, op: Any, sock: Any, args: Any,
                    now: int) -> SockOpResult | None:
        """A ``sock_op`` message's operation: decoded, then run. A request that does not
        decode, or that the stack cannot do, is counted, logged (an event) and answered
        with :class:`~protocol.sockops.Rejected`; the stack keeps running."""
        try:
            return self.sock_op(task, decode_op(op, sock, args), now)
        except (MalformedOp, OpError) as err:
            self.net.bad_sock_ops += 1
            self.net.event("bad_sock_op", None, task=task, op=str(op), error=str(err))
            return Rejected(message=str(err))

    def task_exit(self, task: str, now: int) -> None:
        """A task died (its process exited): see :class:`~protocol.sockops.DoExit`."""
        self.sock_op(task, DoExit(), now)

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> int | None:
        return tcp_timer.next_deadline(self.net)

    def run_timers(self, now: int) -> list[TcpSock]:
        """Fire the timers due by ``now``; the sockets whose timers ran."""
        return tcp_timer.run_timers(self.net, now)


# ---------------------------------------------------------------------------- softirq


def _inet_lookup(net: Net, seg: Segment) -> TcpSock | InetTimewaitSock | None:
    """__inet_lookup: the established hash (full sockets, then timewait socks, which
    share it in Linux), then the listener."""
    key = (seg.src, seg.sport, seg.dst, seg.dport)  # seg.four_tuple, once per segment
    sock_id = net.ehash.get(key)
    if sock_id is not None:
        sk = net.socks[sock_id]
        if sk.state is not TcpState.CLOSE:
            return sk
        # tcp_set_state(TCP_CLOSE) unhashes: a reset connection is gone even
        # while its file descriptor is still open.
        del net.ehash[key]
    if net.twhash:
        tw = net.twhash.get(key)
        if tw is not None:
            return tw
    sock_id = net.listeners.get(seg.dport)
    return net.socks.get(sock_id) if sock_id is not None else None


def _do_time_wait(net: Net, tw: InetTimewaitSock, seg: Segment, skb: Skb, csum_ok: bool,
                  now: int) -> tuple[TcpSock | None, int]:
    """tcp_v4_rcv's ``do_time_wait``: run tcp_timewait_state_process and act on its
    status. Returns the listener a TCP_TW_SYN goes on to (with the isn the timewait
    sock chose), or (None, 0) when the segment's fate is settled here: every other
    segment is freed at ``discard_it`` (kfree_skb_reason, NOT_SPECIFIED unless the
    timewait code named a reason), whether or not it was answered."""
    if not csum_ok:  # tcp_checksum_complete: csum_error
        net.mib.add("TcpInCsumErrors")
        net.mib.add("TcpInErrs")
        net.drop_unowned(skb, "TCP_CSUM")
        return None, 0
    status, isn, reason = tcp_timewait_state_process(tw, skb, now)
    if status is TwStatus.SYN:
        lid = net.listeners.get(seg.dport)
        lsk = net.socks.get(lid) if lid is not None else None
        if lsk is not None:
            inet_twsk_kill(tw)  # inet_twsk_deschedule_put: the new incarnation replaces it
            return lsk, isn
        status = TwStatus.ACK  # no listener: "to ACK"
    if status is TwStatus.ACK:
        tcp_v4_timewait_ack(net, tw, now)
    elif status is TwStatus.RST:
        tcp_v4_send_reset(net, seg)
        inet_twsk_kill(tw)
    net.drop_unowned(skb, reason)
    return None, 0


def tcp_v4_timewait_ack(net: Net, tw: InetTimewaitSock, now: int) -> None:
    """tcp_v4_send_ack for a timewait sock: seq tw_snd_nxt, ack tw_rcv_nxt, the window
    it last offered (tw_rcv_wnd >> tw_rcv_wscale), and a timestamp option only when
    there is a ts_recent to echo (its TSval on the socket's clock, tw_ts_offset)."""
    ts = None
    if tw.ts_recent:
        ts = (tcp_time_stamp(tw, now), tw.ts_recent)
    ack = Segment(src=tw.laddr, sport=tw.lport, dst=tw.raddr, dport=tw.rport,
                  seq=tw.snd_nxt, ack=tw.rcv_nxt, flags=TcpFlags.ACK,
                  window=min(tw.rcv_wnd >> tw.rcv_wscale, 65535),
                  options=TcpOptions(timestamp=ts))
    net.transmit(ack, None)


def _no_tcp_socket(net: Net, seg: Segment, skb: Skb, csum_ok: bool) -> None:
    if not csum_ok:
        net.mib.add("TcpInCsumErrors")
        net.mib.add("TcpInErrs")
        net.drop_unowned(skb, "TCP_CSUM")
        return
    if not seg.has(TcpFlags.RST):
        tcp_v4_send_reset(net, seg)
    net.drop_unowned(skb, "NO_SOCKET")


def tcp_v4_send_reset(net: Net, seg: Segment) -> None:
    """A RST for ``seg``: seq from the offending ACK, or ACK its sequence space."""
    if seg.has(TcpFlags.ACK):
        rst = Segment(src=seg.dst, sport=seg.dport, dst=seg.src, dport=seg.sport,
                      seq=seg.ack, ack=0, flags=TcpFlags.RST, window=0)
    else:
        rst = Segment(src=seg.dst, sport=seg.dport, dst=seg.src, dport=seg.sport,
                      seq=0, ack=seg.end_seq, flags=TcpFlags.RST | TcpFlags.ACK, window=0)
    net.mib.add("TcpOutRsts")
    net.transmit(rst, None)


def tcp_v4_do_rcv(sk: TcpSock, skb: Skb, now: int) -> None:
    """``sk_backlog_rcv``: the same function for softirq, backlog and prequeue."""
    if sk.state == TcpState.ESTABLISHED:
        tcp_rcv_established(sk, skb, now)
    else:
        tcp_rcv_state_process(sk, skb, now)


def tcp_add_backlog(sk: TcpSock, skb: Skb) -> None:
    """The socket is owned: queue for the owner's release_sock, within the limit."""
    net = sk.net
    profile = net.profile
    if profile.backlog_verifies_csum and not skb.raw_csum_ok:
        net.mib.add("TcpInCsumErrors")
        net.mib.add("TcpInErrs")
        tcp_drop(sk, skb, "TCP_CSUM")
        return
    if profile.backlog_coalesce and sk.backlog:
        # Tried even above the limit: skb_try_coalesce bounds the tail at MAX_SKB_FRAGS.
        delta = _backlog_coalesce(sk.backlog[-1], skb)
        if delta is not None:
            sk.backlog_len += delta
            net.inc("TcpExtTCPBacklogCoalesce")
            net.backlog_enqueued += 1
            return
    limit = profile.backlog_limit(sk.rcvbuf, sk.sndbuf)
    if sk.backlog_len + sk.rmem_alloc > limit:
        net.inc("TcpExtTCPBacklogDrop")
        tcp_drop(sk, skb, "SOCKET_BACKLOG")
        return
    sk.backlog.append(skb)
    sk.backlog_len += skb.truesize
    net.backlog_enqueued += 1
    net.event("backlog_add", sk.sock_id, seq=skb.seq, backlog_len=sk.backlog_len)


def tcp_prequeue(sk: TcpSock, skb: Skb, now: int) -> bool:
    """Legacy: queue for the installed reader to process in its own context."""
    uc = sk.ucopy
    net = sk.net
    if net.sysctls.tcp_low_latency or uc.task is None:
        return False
    if skb.len == 0 and not uc.prequeue:
        return False
    uc.prequeue.append(skb)
    uc.memory += skb.truesize
    if len(uc.prequeue) >= net.profile.prequeue_max_len \
            or uc.memory + sk.rmem_alloc > sk.rcvbuf:
        net.inc("TcpExtTCPPrequeueDropped", len(uc.prequeue))
        while uc.prequeue:
            tcp_v4_do_rcv(sk, uc.prequeue.pop(0), now)
        uc.memory = 0
    elif len(uc.prequeue) == 1:
        sk.data_ready = True
        if not inet_csk_ack_scheduled(sk):
            # inet_csk_reset_xmit_timer(ICSK_TIME_DACK, 3 * tcp_rto_min / 4): in jiffies
            ack = sk.icsk_ack
            j = net.jiffy
            ack.pending |= AckPending.TIMER
            ack.timeout = now - now % j + 3 * (TCP_RTO_MIN // j) // 4 * j
            ack.fire_at = timer_fires_at(now, ack.timeout, j)
            net.arm_timer(sk.sock_id, ack.fire_at)
    net.event("prequeue_add", sk.sock_id, seq=skb.seq, len=len(uc.prequeue))
    return True


def _backlog_coalesce(tail: Skb, skb: Skb) -> int | None:
    """Modern tcp_add_backlog: merge a contiguous segment into the backlog tail; the
    truesize added (backlog_len grows by it), or None."""
    no = TcpFlags.SYN | TcpFlags.RST | TcpFlags.URG
    if tail.end_seq != skb.seq or (tail.flags | skb.flags) & no:
        return None
    if not (tail.flags & skb.flags & TcpFlags.ACK):
        return None
    ecn = TcpFlags.ECE | TcpFlags.CWR
    if (tail.flags & ecn) != (skb.flags & ecn) or tail.doff != skb.doff:
        return None
    if tail.options != skb.options or tail.fin or not skb.raw_csum_ok:
        return None
    tail_gso_size = tail.gso_size or tail.len
    delta = skb_try_coalesce(tail, skb)
    if delta is None:
        return None
    tail.truesize += delta
    tail.gso_size = max(tail_gso_size, skb.gso_size or skb.len)
    tail.append_data(skb.data)
    tail.end_seq = skb.end_seq
    if not before(skb.ack_seq, tail.ack_seq):
        tail.ack_seq = skb.ack_seq
        tail.window = skb.window
    tail.flags |= skb.flags
    tail.gso_segs = min(tail.gso_segs + skb.gso_segs, 65535)
    tail.ids.extend(skb.ids)
    return delta


# ---------------------------------------------------------------------------- connect


def tcp_v4_connect(net: Net, laddr: str, lport: int, raddr: str, rport: int, now: int, *,
                   rcvbuf: int | None = None, rcvlowat: int = 1,
                   init_rcvbuf: int | None = None) -> int:
    """socket() + [SO_RCVBUF] + connect(): our SYN (tcp_connect); returns the socket's id."""
    sk = sk_alloc(net, laddr, lport, now)
    if init_rcvbuf is not None:
        sk.rcvbuf = init_rcvbuf  # tcp_init_sock ran at socket(), with that tcp_rmem[1]
    if rcvbuf is not None:
        sock_set_rcvbuf(sk, rcvbuf)
    sock_set_rcvlowat(sk, rcvlowat)
    sk.raddr, sk.rport = raddr, rport
    sysctls = net.sysctls
    ro = sk.rx_opt
    # What we offer; the SYN-ACK settles what is used.
    ro.tstamp_ok = bool(sysctls.tcp_timestamps)
    ro.sack_ok = bool(sysctls.tcp_sack)
    ro.wscale_ok = bool(sysctls.tcp_window_scaling)
    sk.advmss = ADVMSS
    # tcp_connect_init
    full_space = tcp_full_space(sk)
    if sk.rcvbuf_locked:
        sk.window_clamp = full_space
    tcp_select_initial_window(sk, full_space, ADVMSS - (12 if ro.tstamp_ok else 0),
                              ro.wscale_ok)
    sk.rcv_ssthresh = sk.rcv_wnd
    sk.iss = net.rng.getrandbits(32)
    sk.snd_una = sk.iss
    sk.snd_nxt = seq_add(sk.iss, 1)
    sk.rto = TCP_TIMEOUT_INIT
    sk.state = TcpState.SYN_SENT
    net.ehash[sk.four_tuple()] = sk.sock_id
    net.mib.add("TcpActiveOpens")
    tcp_send_syn(sk, now)
    return sk.sock_id


# ---------------------------------------------------------------------------- process context


def do_exit(net: Net, task: str, now: int) -> int:
    """A task died: its locks, installations and waits go, on every socket (as the close
    of its files at exit does); returns how many socket locks it held."""
    prev = net.current
    net.current = task
    released = 0
    try:
        for sk in list(net.socks.values()):
            released += tcp.tcp_task_exit(sk, task, now)
            sk_wakeups(sk, now)
    finally:
        net.current = prev
    net.task_exits += 1
    net.locks_released_by_exit += released
    net.event("task_exit", None, task=task, released_lock=released)
    return released


def _release(sk: TcpSock, task: str, op: Any, now: int) -> SockOpResult:
    release_sock(sk, task, now)
    return SockOpResult()


def _flush(sk: TcpSock, task: str, op: Any, now: int) -> SockOpResult:
    __sk_flush_backlog(sk, task, now)
    return SockOpResult()


def _copy(sk: TcpSock, task: str, op: SkbCopyDatagramMsg, now: int) -> SockOpResult:
    return tcp.skb_copy_datagram_msg(sk, task, op.len, op.peek, op.trunc, op.peek_seq, now)


def _cleanup(sk: TcpSock, task: str, op: TcpCleanupRbuf, now: int) -> SockOpResult:
    tcp.tcp_cleanup_rbuf(sk, op.copied, now)
    return SockOpResult()


def _ucopy_clear(sk: TcpSock, task: str, op: Any, now: int) -> SockOpResult:
    tcp.ucopy_clear(sk, task)
    return SockOpResult()


def _prequeue(sk: TcpSock, task: str, op: TcpPrequeueProcess, now: int) -> SockOpResult:
    tcp.tcp_prequeue_process(sk, op.len, now)
    return SockOpResult()


def _wait(sk: TcpSock, task: str, op: SkWaitData, now: int) -> None:
    sk_wait_data(sk, task, op.timeo_ns, now)


def _close(sk: TcpSock, task: str, op: Any, now: int) -> SockOpResult:
    tcp.tcp_close(sk, task, now)
    return SockOpResult()


Handler = Callable[[TcpSock, str, Any, int], SockOpResult | None]
# Operation -> (its function, whether a task that does not own the lock may call it).
_HANDLERS: dict[type, tuple[Handler, bool]] = {
    LockSock: (lambda sk, task, op, now: lock_sock(sk, task, now), True),
    ReleaseSock: (_release, False),
    SkFlushBacklog: (_flush, False),
    SkbCopyDatagramMsg: (_copy, False),
    TcpCleanupRbuf: (_cleanup, False),
    SockError: (lambda sk, task, op, now: tcp.sock_error(sk), False),
    UcopyInstall: (lambda sk, task, op, now: tcp.ucopy_install(sk, task, op.len, op.install),
                   False),
    UcopyClear: (_ucopy_clear, False),
    TcpPrequeueProcess: (_prequeue, False),
    SkWaitData: (_wait, False),
    InetAccept: (lambda sk, task, op, now: inet_csk_accept(sk, task, op.nonblock, op.timeo_ns,
                                                           now), True),
    TcpInq: (lambda sk, task, op, now: Inq(inq=tcp.tcp_inq_hint(sk) if op.hint else sk.inq()),
             True),
    TcpGetInfo: (lambda sk, task, op, now: TcpInfo(info=tcp.tcp_get_info(sk, now)), True),
    TcpPoll: (lambda sk, task, op, now: tcp.tcp_poll(sk), True),
    InetWaitForConnect: (lambda sk, task, op, now: inet_wait_for_connect(sk, task, now), True),
    SockSetsockopt: (lambda sk, task, op, now: tcp.sock_setsockopt(sk, op.name, op.value, now),
                     True),
    TcpClose: (_close, False),
    TcpShutdown: (lambda sk, task, op, now: tcp.tcp_shutdown(sk, op.how, now), False),
    TcpSendmsg: (lambda sk, task, op, now: tcp.tcp_sendmsg(sk, op.data, now), False),
}

TCP_PROT = Proto(backlog_rcv=tcp_v4_do_rcv, release_cb=tcp_timer.tcp_release_cb,
                 send_reset=tcp_v4_send_reset)

# Kept importable from here: the socket's ss view and SO_RCVBUF.
sock_info = tcp.tcp_get_info
__all__ = ["OpError", "Stack", "header_len", "sock_info", "sock_set_rcvbuf",
           "tcp_add_backlog", "tcp_prequeue", "tcp_v4_do_rcv", "tcp_v4_send_reset"]
