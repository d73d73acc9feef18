"""The protocol stack: ``tcp_v4_rcv`` and everything around a socket's lock.

:class:`Stack` owns the socket table and every socket. It has three entrances, and
each call is one critical section under ``sk_lock.slock`` (the stack actor is
single-threaded, so a call is atomic like code run under ``bh_lock_sock``):

- :meth:`Stack.tcp_v4_rcv`: a segment from a cpu's softirq (§1 of the reference):
  lookup, then backlog when the socket is owned, the legacy prequeue when a reader
  is installed, else ``tcp_v4_do_rcv`` right away.
- :meth:`Stack.do_op`: one process-context step of a reader (``lock_sock``,
  ``recv_copy``, ``sk_wait_data``, ``release_sock``...). The socket lock's owned
  flag spans many such calls: that is the lease a reader holds.
- :meth:`Stack.run_timers`: delayed ACK, compressed SACK, sleepers' timeouts.

Outputs (segments to transmit, completions of steps that had to wait, events) are
collected with :meth:`Stack.take_outputs`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from actors.profiles import MS, Profile, Sysctls
from actors.stack.net import CONSUMED, Net, OpDone, StackOutput
from actors.stack.skb import MAX_TCP_HEADER, Skb, skb_truesize, so_rcvbuf
from actors.stack.sock import AckPending, LockWaiter, TcpSock, TcpState, Waiter
from actors.stack.tcp_input import (
    inet_csk_ack_scheduled,
    kfree_skb_consumed,
    set_state,
    tcp_ack,
    tcp_ack_snd_check,
    tcp_data_queue,
    tcp_done,
    tcp_drop,
    tcp_eat_recv_skb,
    tcp_fast_path_on,
    tcp_parse_timestamp,
    tcp_rcv_established,
    tcp_rcv_space_adjust,
    tcp_replace_ts_recent,
    tcp_reset,
    tcp_sack_compress_send_ack,
    tcp_send_challenge_ack,
    tcp_validate_incoming,
    tcp_win_from_space,
)
from actors.stack.tcp_output import (
    TCP_ATO_MIN,
    TCP_RTO_MIN,
    __tcp_select_window,
    make_segment,
    tcp_event_ack_sent,
    tcp_full_space,
    tcp_receive_window,
    tcp_select_initial_window,
    tcp_send_ack,
    tcp_time_stamp,
)
from protocol.segment import Segment, TcpFlags, TcpOptions
from protocol.seq import after, before, seq_add, seq_sub
from protocol.wire import encode_options

EAGAIN = 11
ENOTCONN = 107
EINVAL = 22
EPIPE = 32
ETIMEDOUT = 110
FIRST_EPHEMERAL_PORT = 32768  # net.ipv4.ip_local_port_range starts here
TCP_INIT_CWND = 10
TCP_MSS_DEFAULT = 536
TCP_MIN_MSS = 88
ADVMSS = 1460  # our MTU 1500 minus IPv4 and TCP headers
TCP_INIT_RWND_SEGS = 20  # tcp_default_init_rwnd
TCP_TIMEOUT_INIT = 1000 * MS
SYNACK_RETRIES = 5


class OpError(Exception):
    """A reader asked for something impossible (not the owner, unknown socket...)."""


def header_len(seg: Segment) -> int:
    return 20 + len(encode_options(seg.options))


class Stack:
    def __init__(self, profile: Profile, sysctls: Sysctls | None = None, *,
                 seed: int = 0, track_fates: bool = True, emit_events: bool = False) -> None:
        self.net = Net(profile, sysctls or profile.default_sysctls, track_fates=track_fates,
                       emit_events=emit_events)
        self.rng = random.Random(seed)
        self.socks: dict[int, TcpSock] = {}
        self.ehash: dict[tuple[str, int, str, int], int] = {}
        self.listeners: dict[int, int] = {}
        self._next_id = 1
        self._next_seg_id = 1
        self._next_ephemeral = FIRST_EPHEMERAL_PORT
        # Segments the backlog took (appended or coalesced into its tail): Linux has no
        # MIB counter for a successful sk_add_backlog, only for its failure.
        self.backlog_enqueued = 0
        # lock_sock calls that found the socket owned and had to wait for release_sock.
        self.lock_waits = 0

    # ------------------------------------------------------------------ helpers

    @property
    def profile(self) -> Profile:
        return self.net.profile

    @property
    def sysctls(self) -> Sysctls:
        return self.net.sysctls

    def take_outputs(self) -> list[StackOutput]:
        return self.net.take_outputs()

    def sock(self, sock_id: int) -> TcpSock:
        try:
            return self.socks[sock_id]
        except KeyError:
            raise OpError(f"no socket {sock_id}") from None

    def _new_sock(self, laddr: str, lport: int, now: int) -> TcpSock:
        sk = TcpSock(net=self.net, sock_id=self._next_id, laddr=laddr, lport=lport)
        self._next_id += 1
        sk.rcvbuf = self.sysctls.tcp_rmem[1]
        sk.sndbuf = self.sysctls.tcp_wmem[1]
        sk.scaling_ratio = self.profile.initial_scaling_ratio
        sk.ts_origin = now
        self.socks[sk.sock_id] = sk
        return sk

    def new_seg_id(self) -> int:
        sid = self._next_seg_id
        self._next_seg_id += 1
        return sid

    # ------------------------------------------------------------------ setup

    def listen(self, laddr: str, port: int, now: int, *, backlog: int = 128,
               rcvbuf: int | None = None, rcvlowat: int = 1) -> int:
        """socket() + [SO_RCVBUF] + bind() + listen(); returns the listener's id."""
        sk = self._new_sock(laddr, port, now)
        if rcvbuf is not None:
            _set_rcvbuf(sk, rcvbuf)
        sk.rcvlowat = rcvlowat
        sk.state = TcpState.LISTEN
        sk.backlog_max = min(backlog, self.sysctls.somaxconn)
        self.listeners[port] = sk.sock_id
        return sk.sock_id

    def connect(self, laddr: str, raddr: str, rport: int, now: int, *,
                lport: int | None = None, rcvbuf: int | None = None,
                rcvlowat: int = 1) -> int:
        """socket() + [SO_RCVBUF] + connect(): send our SYN (tcp_connect); returns the
        socket's id. The connection is established when the SYN-ACK arrives."""
        if lport is None:
            lport = self._next_ephemeral
            self._next_ephemeral += 1
        sk = self._new_sock(laddr, lport, now)
        if rcvbuf is not None:
            _set_rcvbuf(sk, rcvbuf)
        sk.rcvlowat = rcvlowat
        sk.raddr, sk.rport = raddr, rport
        sysctls = self.sysctls
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
        sk.iss = self.rng.getrandbits(32)
        sk.snd_una = sk.iss
        sk.snd_nxt = seq_add(sk.iss, 1)
        sk.rto = TCP_TIMEOUT_INIT
        sk.state = TcpState.SYN_SENT
        self.ehash[sk.four_tuple()] = sk.sock_id
        self.net.mib.add("TcpActiveOpens")
        self._send_syn(sk, now)
        return sk.sock_id

    def _send_syn(self, sk: TcpSock, now: int) -> None:
        ro = sk.rx_opt
        opts = TcpOptions(
            mss=ADVMSS,
            sack_permitted=ro.sack_ok,
            timestamp=(tcp_time_stamp(sk, now), 0) if ro.tstamp_ok else None,
            wscale=ro.rcv_wscale if ro.wscale_ok else None,
        )
        seg = make_segment(sk, now, TcpFlags.SYN, seq=sk.iss,
                           window=min(sk.rcv_wnd, 65535), options=opts)
        self.net.transmit(seg, sk.sock_id)
        sk.synack_deadline = now + sk.rto  # the same retransmission timer as a SYN-ACK's

    def _rcv_synsent(self, sk: TcpSock, skb: Skb, now: int) -> None:
        """tcp_rcv_synsent_state_process: the answer to our SYN."""
        if skb.has(TcpFlags.ACK):
            if not after(skb.ack_seq, sk.iss) or after(skb.ack_seq, sk.snd_nxt):
                if not skb.has(TcpFlags.RST):
                    self._send_reset(_segment_of(sk, skb))
                tcp_drop(sk, skb, "TCP_INVALID_ACK_SEQUENCE")
                return
            if skb.has(TcpFlags.RST):
                tcp_reset(sk, now)  # ECONNREFUSED
                self._unhash(sk)
                tcp_drop(sk, skb, "TCP_RESET")
                return
            if not skb.syn:
                tcp_drop(sk, skb, "TCP_FLAGS")
                return
            self._synack_received(sk, skb, now)
            return
        # A bare RST, or a SYN crossing ours (simultaneous open, not modelled).
        tcp_drop(sk, skb, "TCP_FLAGS" if skb.syn else "TCP_RESET")

    def _synack_received(self, sk: TcpSock, skb: Skb, now: int) -> None:
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
        sk.mss_cache = min(ro.mss_clamp, ADVMSS) - (12 if ro.tstamp_ok else 0)
        hint = min(sk.advmss, sk.mss_cache, sk.rcv_wnd // 2, TCP_MSS_DEFAULT)
        sk.icsk_ack.rcv_mss = max(hint, TCP_MIN_MSS)
        sk.synack_deadline = None
        set_state(sk, TcpState.ESTABLISHED)
        self._tcp_init_buffer_space(sk, now)
        tcp_fast_path_on(sk)
        sk.icsk_ack.lrcvtime = now  # tcp_finish_connect
        sk.data_ready = True  # sk_state_change: connect() returns
        kfree_skb_consumed(sk, skb)
        tcp_send_ack(sk, now)

    # ------------------------------------------------------------------ softirq

    def tcp_v4_rcv(self, seg: Segment, now: int, *, seg_id: int | None = None,
                   csum_ok: bool = True, hdr_len: int | None = None,
                   truesize: int | None = None, gso_size: int = 0,
                   head_frag: bool = True) -> int:
        """A segment handed up by ``ip_rcv``; returns its arrival id (for its fate).

        ``gso_size`` marks a GRO/GSO super-packet (several wire segments of that size
        merged into one skb), as a NIC with GRO or a tun device with GSO delivers it.
        ``truesize`` and ``head_frag`` describe the device's buffer when it is not
        the NIC model's (see :class:`~actors.stack.skb.Skb`).
        """
        net = self.net
        sid = self.new_seg_id() if seg_id is None else seg_id
        net.current = None
        net.mib.add("TcpInSegs")
        skb = Skb.from_segment(seg, sid, now, header_len=hdr_len or header_len(seg),
                               csum_ok=csum_ok, truesize=truesize)
        skb.head_frag = head_frag
        if gso_size:
            skb.gso_size = gso_size
            skb.gso_segs = max(1, -(-len(seg.payload) // gso_size))
        sk = self._lookup(seg)
        if sk is None:
            self._no_tcp_socket(seg, skb, csum_ok)
            return sid
        if sk.state == TcpState.LISTEN:
            self._listen_rcv(sk, seg, skb, now)
            return sid
        # tcp_segs_in: a GRO/GSO skb counts every wire segment it carries
        sk.segs_in += max(1, skb.gso_segs)
        if seg.payload:
            sk.data_segs_in += max(1, skb.gso_segs)
        if not sk.owned:
            if not (self.profile.has_prequeue and self._tcp_prequeue(sk, skb, now)):
                self.tcp_v4_do_rcv(sk, skb, now)
        else:
            self._tcp_add_backlog(sk, skb)
        self._after(sk, now)
        return sid

    def _lookup(self, seg: Segment) -> TcpSock | None:
        sock_id = self.ehash.get(seg.four_tuple)
        if sock_id is not None and self.socks[sock_id].state == TcpState.CLOSE:
            # tcp_set_state(TCP_CLOSE) unhashes: a reset connection is gone even
            # while its file descriptor is still open.
            del self.ehash[seg.four_tuple]
            sock_id = None
        if sock_id is None:
            sock_id = self.listeners.get(seg.dport)
        return self.socks.get(sock_id) if sock_id is not None else None

    def _no_tcp_socket(self, seg: Segment, skb: Skb, csum_ok: bool) -> None:
        net = self.net
        if not csum_ok:
            net.mib.add("TcpInCsumErrors")
            net.mib.add("TcpInErrs")
            self._drop_unowned(skb, "TCP_CSUM")
            return
        if not seg.has(TcpFlags.RST):
            self._send_reset(seg)
        self._drop_unowned(skb, "NO_SOCKET")

    def _drop_unowned(self, skb: Skb, reason: str) -> None:
        self.net.drop_counts[reason] += 1
        self.net.set_fate(skb.ids, "drop:" + reason)

    def _send_reset(self, seg: Segment) -> None:
        """tcp_v4_send_reset: seq from the offending ACK, or ACK its sequence space."""
        if seg.has(TcpFlags.ACK):
            rst = Segment(src=seg.dst, sport=seg.dport, dst=seg.src, dport=seg.sport,
                          seq=seg.ack, ack=0, flags=TcpFlags.RST, window=0)
        else:
            rst = Segment(src=seg.dst, sport=seg.dport, dst=seg.src, dport=seg.sport,
                          seq=0, ack=seg.end_seq, flags=TcpFlags.RST | TcpFlags.ACK, window=0)
        self.net.mib.add("TcpOutRsts")
        self.net.transmit(rst, None)

    def tcp_v4_do_rcv(self, sk: TcpSock, skb: Skb, now: int) -> None:
        """``sk_backlog_rcv``: the same function for softirq, backlog and prequeue."""
        if sk.state == TcpState.ESTABLISHED:
            tcp_rcv_established(sk, skb, now)
        else:
            self._tcp_rcv_state_process(sk, skb, now)

    def _tcp_add_backlog(self, sk: TcpSock, skb: Skb) -> None:
        net = self.net
        profile = self.profile
        if profile.backlog_verifies_csum and not skb.raw_csum_ok:
            net.mib.add("TcpInCsumErrors")
            net.mib.add("TcpInErrs")
            tcp_drop(sk, skb, "TCP_CSUM")
            return
        if profile.backlog_coalesce and sk.backlog and _backlog_coalesce(sk.backlog[-1], skb):
            tail = sk.backlog[-1]
            sk.backlog_len += skb.truesize - 256
            tail.truesize += skb.truesize - 256
            net.inc("TcpExtTCPBacklogCoalesce")
            self.backlog_enqueued += 1
            return
        limit = profile.backlog_limit(sk.rcvbuf, sk.sndbuf)
        if sk.backlog_len + sk.rmem_alloc > limit:
            net.inc("TcpExtTCPBacklogDrop")
            tcp_drop(sk, skb, "TCP_BACKLOG")
            return
        sk.backlog.append(skb)
        sk.backlog_len += skb.truesize
        self.backlog_enqueued += 1
        net.event("backlog_add", sk.sock_id, seq=skb.seq, backlog_len=sk.backlog_len)

    def _tcp_prequeue(self, sk: TcpSock, skb: Skb, now: int) -> bool:
        """Legacy: queue for the installed reader to process in its own context."""
        uc = sk.ucopy
        net = self.net
        if self.sysctls.tcp_low_latency or uc.task is None:
            return False
        if skb.len == 0 and not uc.prequeue:
            return False
        uc.prequeue.append(skb)
        uc.memory += skb.truesize
        if len(uc.prequeue) >= self.profile.prequeue_max_len \
                or uc.memory + sk.rmem_alloc > sk.rcvbuf:
            net.inc("TcpExtTCPPrequeueDropped", len(uc.prequeue))
            while uc.prequeue:
                self.tcp_v4_do_rcv(sk, uc.prequeue.popleft(), now)
            uc.memory = 0
        elif len(uc.prequeue) == 1:
            sk.data_ready = True
            if not inet_csk_ack_scheduled(sk):
                sk.icsk_ack.pending |= AckPending.TIMER
                sk.icsk_ack.timeout = now + 3 * TCP_RTO_MIN // 4
        net.event("prequeue_add", sk.sock_id, seq=skb.seq, len=len(uc.prequeue))
        return True

    # ------------------------------------------------------------ connection life

    def _listen_rcv(self, lsk: TcpSock, seg: Segment, skb: Skb, now: int) -> None:
        net = self.net
        if not skb.raw_csum_ok:
            net.mib.add("TcpInCsumErrors")
            net.mib.add("TcpInErrs")
            self._drop_unowned(skb, "TCP_CSUM")
            return
        if seg.has(TcpFlags.RST):
            self._drop_unowned(skb, "TCP_RESET")
            return
        if seg.has(TcpFlags.ACK):
            self._send_reset(seg)  # an ACK to a listener: no such connection
            self._drop_unowned(skb, "NO_SOCKET")
            return
        if not seg.has(TcpFlags.SYN):
            self._drop_unowned(skb, "TCP_FLAGS")
            return
        pending = sum(1 for s in self.socks.values()
                      if s.parent == lsk.sock_id and s.state == TcpState.SYN_RECV)
        # sk_acceptq_is_full: ack_backlog > max_ack_backlog (listen(n) holds n + 1).
        if len(lsk.accept_queue) > lsk.backlog_max or pending >= self.sysctls.tcp_max_syn_backlog:
            net.inc("TcpExtListenOverflows")
            net.inc("TcpExtListenDrops")
            self._drop_unowned(skb, "LISTEN_OVERFLOW")
            return
        child = self._new_sock(lsk.laddr, lsk.lport, now)
        child.raddr, child.rport = seg.src, seg.sport
        child.parent = lsk.sock_id
        child.attached = False
        child.rcvbuf, child.rcvbuf_locked, child.rcvlowat = lsk.rcvbuf, lsk.rcvbuf_locked, \
            lsk.rcvlowat
        self._init_from_syn(child, seg, now)
        self.ehash[seg.four_tuple] = child.sock_id
        child.state = TcpState.SYN_RECV
        net.set_fate(skb.ids, CONSUMED)
        self._send_synack(child, now)

    def _init_from_syn(self, sk: TcpSock, seg: Segment, now: int) -> None:
        sysctls = self.sysctls
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
        sk.iss = self.rng.getrandbits(32)
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

    def _send_synack(self, sk: TcpSock, now: int) -> None:
        ro = sk.rx_opt
        opts = TcpOptions(
            mss=ADVMSS,
            sack_permitted=ro.sack_ok,
            timestamp=(tcp_time_stamp(sk, now), ro.ts_recent) if ro.tstamp_ok else None,
            wscale=ro.rcv_wscale if ro.wscale_ok else None,
        )
        seg = make_segment(sk, now, TcpFlags.SYN | TcpFlags.ACK, seq=sk.iss,
                           window=min(sk.rcv_wnd, 65535), options=opts)
        self.net.transmit(seg, sk.sock_id)
        sk.synack_deadline = now + sk.rto

    def _established(self, sk: TcpSock, skb: Skb, now: int) -> None:
        """SYN_RECV -> ESTABLISHED on the handshake's final ACK (tcp_rcv_state_process)."""
        sk.snd_una = skb.ack_seq
        sk.snd_wnd = skb.window << sk.rx_opt.snd_wscale
        sk.snd_wl1 = skb.seq
        sk.max_window = sk.snd_wnd
        set_state(sk, TcpState.ESTABLISHED)
        self.net.mib.add("TcpPassiveOpens")
        sk.synack_deadline = None
        sk.icsk_ack.lrcvtime = now  # tcp_create_openreq_child: tcpi_last_data_recv starts here
        self._tcp_init_buffer_space(sk, now)
        tcp_fast_path_on(sk)
        parent = self.socks.get(sk.parent) if sk.parent is not None else None
        if parent is not None and parent.state == TcpState.LISTEN:
            parent.accept_queue.append(sk.sock_id)
            parent.data_ready = True
            self._after(parent, now)

    def _tcp_init_buffer_space(self, sk: TcpSock, now: int) -> None:
        sysctls = self.sysctls
        if self.profile.tcp_fixup_rcvbuf and not sk.rcvbuf_locked:
            # tcp_fixup_rcvbuf: room for 2 * init_rwnd full segments, x4 if autotuning
            rcvmem = 2 * skb_truesize(sk.advmss + MAX_TCP_HEADER) * TCP_INIT_RWND_SEGS
            if sysctls.tcp_moderate_rcvbuf:
                rcvmem <<= 2
            if sk.rcvbuf < rcvmem:
                sk.rcvbuf = min(rcvmem, sysctls.tcp_rmem[2])
        if self.profile.rcvq_space_init_capped:
            sk.rcvq_space = min(sk.rcv_ssthresh, sk.rcv_wnd, 10 * sk.advmss)
        else:
            sk.rcvq_space = sk.rcv_wnd
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

    def _tcp_rcv_state_process(self, sk: TcpSock, skb: Skb, now: int) -> None:
        net = self.net
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
            self._rcv_synsent(sk, skb, now)
            return
        if sk.state == TcpState.SYN_RECV and skb.syn and skb.seq == sk.irs \
                and not skb.has(TcpFlags.ACK):
            self._send_synack(sk, now)  # the SYN again: our SYN-ACK was lost
            kfree_skb_consumed(sk, skb)
            return
        if not skb.has(TcpFlags.ACK) and not skb.has(TcpFlags.RST) and not skb.syn:
            tcp_drop(sk, skb, "TCP_FLAGS")
            return
        if not tcp_validate_incoming(sk, skb, now):
            if sk.state == TcpState.CLOSE:
                self._unhash(sk)
            return
        if not skb.has(TcpFlags.ACK):
            tcp_drop(sk, skb, "TCP_FLAGS")
            return
        if sk.state == TcpState.SYN_RECV:
            if skb.ack_seq != sk.snd_nxt:
                self._send_reset(_segment_of(sk, skb))
                tcp_drop(sk, skb, "TCP_INVALID_ACK_SEQUENCE")
                return
            parent = self.socks.get(sk.parent) if sk.parent is not None else None
            if parent is not None and len(parent.accept_queue) > parent.backlog_max:
                # tcp_v4_syn_recv_sock: no room; the request stays and the peer retries.
                net.inc("TcpExtListenOverflows")
                net.inc("TcpExtListenDrops")
                self._drop_unowned(skb, "LISTEN_OVERFLOW")
                return
            self._established(sk, skb, now)
        else:
            if tcp_ack(sk, skb, slowpath=True) < 0:
                # tcp_rcv_state_process answers an unacceptable ACK with a
                # (rate-limited) challenge ACK.
                tcp_send_challenge_ack(sk, skb, now)
                tcp_drop(sk, skb, "TCP_ACK_UNSENT_DATA")
                return
            fin_acked = sk.fin_sent and skb.ack_seq == sk.snd_nxt
            if sk.state == TcpState.FIN_WAIT1 and fin_acked:
                set_state(sk, TcpState.FIN_WAIT2)
            elif sk.state == TcpState.CLOSING and fin_acked:
                set_state(sk, TcpState.TIME_WAIT)
            elif sk.state == TcpState.LAST_ACK and fin_acked:
                tcp_done(sk)
                self._unhash(sk)
                kfree_skb_consumed(sk, skb)
                return
        tcp_replace_ts_recent(sk, skb.seq, now)
        state = sk.state
        if state in (TcpState.CLOSE_WAIT, TcpState.CLOSING, TcpState.LAST_ACK) \
                and not before(skb.seq, sk.rcv_nxt):
            if skb.seq == skb.end_seq:
                kfree_skb_consumed(sk, skb)
            else:
                tcp_drop(sk, skb, "TCP_DATA_AFTER_FIN")
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

    def _unhash(self, sk: TcpSock) -> None:
        self.ehash.pop(sk.four_tuple(), None)

    # ------------------------------------------------------------ wakeups

    def _after(self, sk: TcpSock, now: int) -> None:
        """Deliver wakeups raised while processing (sk_data_ready, state changes)."""
        if not sk.data_ready:
            return
        sk.data_ready = False
        sk.wakeups += 1  # what an edge-triggered epoll watcher sees (ep_poll_callback)
        woken = list(sk.waiters)
        sk.waiters.clear()
        for w in woken:
            self.net.event("wakeup", sk.sock_id, task=w.task, kind=w.kind)
            if w.kind == "accept":
                self._finish_accept(sk, w, now)
            else:
                self._relock(sk, w.task, {"timed_out": False}, now)

    def _relock(self, sk: TcpSock, task: str, result: dict[str, Any], now: int) -> None:
        """Wake a task asleep in sk_wait_event; it takes the lock itself when it runs.

        Until the woken reader's own ``lock_sock`` arrives the socket is not owned, so
        softirq keeps prequeueing (legacy) or processing segments directly: the time
        a wakeup takes to get the reader running is what the prequeue exists for.
        """
        out = self._with_direct(sk, task, result)
        out["relock"] = True
        self.net.outputs.append(OpDone(task, sk.sock_id, out))

    def _graft(self, sock_id: int) -> int:
        """sock_graft: the accepted child now belongs to a process."""
        child = self.socks.get(sock_id)
        if child is not None:
            child.attached = True
        return sock_id

    def _finish_accept(self, lsk: TcpSock, w: Waiter, now: int) -> None:
        if lsk.accept_queue:
            child = self._graft(lsk.accept_queue.popleft())
            self.net.outputs.append(OpDone(w.task, lsk.sock_id, {"sock": child}))
        else:
            lsk.waiters.append(w)

    # ------------------------------------------------------------ timers

    def next_deadline(self) -> int | None:
        best: int | None = None
        for sk in self.socks.values():
            for d in _deadlines(sk):
                if best is None or d < best:
                    best = d
        return best

    def run_timers(self, now: int) -> None:
        for sk in list(self.socks.values()):
            ack = sk.icsk_ack
            if ack.pending & AckPending.TIMER and ack.timeout and ack.timeout <= now:
                self._delack_timer(sk, now)
            if sk.sack_compress_deadline is not None and sk.sack_compress_deadline <= now:
                sk.sack_compress_deadline = None
                if sk.compressed_ack:
                    if sk.owned:
                        ack.ack_deferred = True
                    else:
                        tcp_sack_compress_send_ack(sk, now)
            if sk.synack_deadline is not None and sk.synack_deadline <= now:
                self._synack_timer(sk, now)
            expired = [w for w in sk.waiters if w.deadline is not None and w.deadline <= now]
            for w in expired:
                sk.waiters.remove(w)
                if w.kind == "accept":
                    self.net.outputs.append(OpDone(w.task, sk.sock_id, {"error": EAGAIN}))
                else:
                    self._relock(sk, w.task, {"timed_out": True}, now)
            self._after(sk, now)

    def _synack_timer(self, sk: TcpSock, now: int) -> None:
        sk.synack_retries += 1
        opening = sk.state in (TcpState.SYN_RECV, TcpState.SYN_SENT)
        if sk.synack_retries > SYNACK_RETRIES or not opening:
            sk.synack_deadline = None
            if opening:
                if sk.state == TcpState.SYN_SENT:
                    sk.sk_err = ETIMEDOUT
                    sk.data_ready = True
                set_state(sk, TcpState.CLOSE)
                self._unhash(sk)
            return
        sk.rto = min(sk.rto * 2, 120_000 * MS)
        self.net.mib.add("TcpRetransSegs")
        if sk.state == TcpState.SYN_SENT:
            self._send_syn(sk, now)
        else:
            self._send_synack(sk, now)

    def _delack_timer(self, sk: TcpSock, now: int) -> None:
        net = self.net
        ack = sk.icsk_ack
        if sk.owned:
            # The owner is busy: tcp_release_cb runs this when it lets go.
            net.inc("TcpExtDelayedACKLocked")
            if self.profile.delack_blocked_flag:
                ack.blocked = True
            ack.deferred = True
            ack.timeout = 0
            return
        self._delack_timer_handler(sk, now)

    def _delack_timer_handler(self, sk: TcpSock, now: int) -> None:
        net = self.net
        ack = sk.icsk_ack
        if sk.state in (TcpState.CLOSE, TcpState.LISTEN) or not ack.pending & AckPending.TIMER:
            return
        if ack.timeout > now:
            return
        ack.pending &= ~AckPending.TIMER
        uc = sk.ucopy
        if uc.prequeue:
            net.inc("TcpExtTCPSchedulerFailed")
            while uc.prequeue:
                self.tcp_v4_do_rcv(sk, uc.prequeue.popleft(), now)
            uc.memory = 0
        if inet_csk_ack_scheduled(sk):
            if not ack.pingpong:
                ack.ato = min(ack.ato << 1, sk.rto)
            else:
                ack.pingpong = 0
                ack.ato = TCP_ATO_MIN
            tcp_send_ack(sk, now)
            net.inc("TcpExtDelayedACKs")

    # ------------------------------------------------------------ the socket lock

    def _release_sock(self, sk: TcpSock, task: str, now: int) -> None:
        """release_sock: drain the backlog in the owner's context, run deferred work, unlock."""
        net = self.net
        if sk.owner != task:
            raise OpError(f"{task} releases socket {sk.sock_id} owned by {sk.owner}")
        self._release_backlog(sk, task, now)
        self._tcp_release_cb(sk, now)
        sk.owner = None
        net.event("unlock", sk.sock_id, task=task)
        self._grant_next(sk, now)

    def _release_backlog(self, sk: TcpSock, task: str, now: int) -> None:
        """__release_sock: replay the backlog through tcp_v4_do_rcv, owner still set."""
        net = self.net
        prev = net.current
        net.current = task
        replayed = 0
        iov_before = len(sk.ucopy.iov)
        while sk.backlog:
            batch = list(sk.backlog)
            sk.backlog.clear()
            for skb in batch:
                self.tcp_v4_do_rcv(sk, skb, now)
                replayed += 1
        if replayed:
            net.event("backlog_drain", sk.sock_id, task=task, segments=replayed)
        direct = len(sk.ucopy.iov) - iov_before
        if direct > 0:
            net.inc("TcpExtTCPDirectCopyFromBacklog", direct)
        sk.backlog_len = 0
        net.current = prev

    def _tcp_release_cb(self, sk: TcpSock, now: int) -> None:
        ack = sk.icsk_ack
        if ack.deferred:
            ack.deferred = False
            ack.timeout = now
            ack.pending |= AckPending.TIMER
            self._delack_timer_handler(sk, now)
        if ack.ack_deferred:
            ack.ack_deferred = False
            if inet_csk_ack_scheduled(sk) or sk.compressed_ack:
                tcp_send_ack(sk, now)

    def _grant_next(self, sk: TcpSock, now: int) -> None:
        if sk.owned or not sk.lock_waiters:
            self._after(sk, now)
            return
        waiter = sk.lock_waiters.popleft()
        sk.owner = waiter.task
        self.net.event("lock", sk.sock_id, task=waiter.task)
        self.net.outputs.append(OpDone(waiter.task, sk.sock_id,
                                       self._with_direct(sk, waiter.task, waiter.result)))
        self._after(sk, now)

    def _with_direct(self, sk: TcpSock, task: str, result: dict[str, Any]) -> dict[str, Any]:
        """Attach bytes copied straight into ``task``'s buffer and the socket's state."""
        out = dict(result)
        uc = sk.ucopy
        if uc.task == task and uc.iov:
            out["direct"] = bytes(uc.iov)
            out["direct_offset"] = stream_offset(sk, uc.iov_seq)
            uc.iov.clear()
        out.update(self._snapshot(sk))
        return out

    def _snapshot(self, sk: TcpSock) -> dict[str, Any]:
        return {
            "readable": bool(sk.receive_queue),
            "backlog": bool(sk.backlog),
            "prequeue": len(sk.ucopy.prequeue),
            "caught_up": sk.rcv_nxt == sk.copied_seq,
            "done": sk.sock_done,
            "shutdown": sk.rcv_shutdown,
            "err": sk.sk_err,
            "closed": sk.state == TcpState.CLOSE,
            "listen": sk.state == TcpState.LISTEN,
            "ucopy_len": sk.ucopy.len,
        }

    # ------------------------------------------------------------ process context

    def do_op(self, task: str, sock_id: int, op: str, args: dict[str, Any],
              now: int) -> dict[str, Any] | None:
        """Run one step for ``task``; None means it sleeps and an OpDone follows later."""
        sk = self.sock(sock_id)
        handler = _OPS.get(op)
        if handler is None:
            raise OpError(f"unknown operation {op!r}")
        net = self.net
        prev = net.current
        net.current = task
        try:
            if op not in ("lock_sock", "accept", "inq", "info", "setsockopt", "task_exit") \
                    and sk.owner != task:
                raise OpError(f"{op} on socket {sock_id} by {task}, owner is {sk.owner}")
            result = handler(self, sk, task, args, now)
        finally:
            net.current = prev
        self._after(sk, now)
        if result is None:
            return None
        return self._with_direct(sk, task, result) if op != "inq" else result

    def _op_lock_sock(self, sk: TcpSock, task: str, args: dict[str, Any],
                      now: int) -> dict[str, Any] | None:
        if sk.owner == task:
            raise OpError(f"{task} already owns socket {sk.sock_id}")
        if sk.owned:
            sk.lock_waiters.append(LockWaiter(task, {}))
            self.lock_waits += 1
            self.net.event("lock_wait", sk.sock_id, task=task, owner=sk.owner)
            return None
        sk.owner = task
        self.net.event("lock", sk.sock_id, task=task)
        return {}

    def _op_release_sock(self, sk: TcpSock, task: str, args: dict[str, Any],
                         now: int) -> dict[str, Any]:
        self._release_sock(sk, task, now)
        return {}

    def _op_flush_backlog(self, sk: TcpSock, task: str, args: dict[str, Any],
                          now: int) -> dict[str, Any]:
        """Modern __sk_flush_backlog: replay without letting go of the lock."""
        self._release_backlog(sk, task, now)
        self._tcp_release_cb(sk, now)
        return {}

    def _op_recv_copy(self, sk: TcpSock, task: str, args: dict[str, Any],
                      now: int) -> dict[str, Any]:
        """The copy part of tcp_recvmsg's loop: walk sk_receive_queue from *seq."""
        length = int(args["len"])
        peek = bool(args.get("peek"))
        trunc = bool(args.get("trunc"))
        seq = int(args["peek_seq"]) if peek and "peek_seq" in args else sk.copied_seq
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
            self.net.event("copy", sk.sock_id, task=task, bytes=copied)
        return {"data": bytes(out), "copied": copied, "fin": fin, "seq": seq,
                "offset": stream_offset(sk, start)}

    def _op_sock_error(self, sk: TcpSock, task: str, args: dict[str, Any],
                       now: int) -> dict[str, Any]:
        """sock_error(): report the pending socket error once, clearing it."""
        err, sk.sk_err = sk.sk_err, 0
        return {"sock_err": err}

    def _op_cleanup_rbuf(self, sk: TcpSock, task: str, args: dict[str, Any],
                         now: int) -> dict[str, Any]:
        tcp_cleanup_rbuf(sk, int(args.get("copied", 0)), now)
        return {}

    def _op_ucopy_install(self, sk: TcpSock, task: str, args: dict[str, Any],
                          now: int) -> dict[str, Any]:
        """Legacy: become the prequeue reader (once per call), and set ucopy.len."""
        uc = sk.ucopy
        if self.profile.has_prequeue and not self.sysctls.tcp_low_latency:
            if uc.task is None and args.get("install", True):
                uc.task = task
                self.net.event("ucopy_install", sk.sock_id, task=task)
            if uc.task == task:
                uc.len = int(args["len"])
        return {"installed": uc.task == task}

    def _op_ucopy_clear(self, sk: TcpSock, task: str, args: dict[str, Any],
                        now: int) -> dict[str, Any]:
        uc = sk.ucopy
        if uc.task == task:
            uc.task = None
            uc.len = 0
        return {}

    def _op_prequeue_process(self, sk: TcpSock, task: str, args: dict[str, Any],
                             now: int) -> dict[str, Any]:
        """Legacy tcp_prequeue_process: replay the prequeue in the reader's context."""
        uc = sk.ucopy
        if "len" in args:
            uc.len = int(args["len"])
        before_len = len(uc.iov)
        if uc.prequeue:
            self.net.inc("TcpExtTCPPrequeued")
            while uc.prequeue:
                self.tcp_v4_do_rcv(sk, uc.prequeue.popleft(), now)
            uc.memory = 0
        n = len(uc.iov) - before_len
        if n > 0:
            self.net.inc("TcpExtTCPDirectCopyFromPrequeue", n)
        return {}

    def _op_sk_wait_data(self, sk: TcpSock, task: str, args: dict[str, Any],
                         now: int) -> dict[str, Any] | None:
        """Sleep until data arrives: release (draining the backlog) and wait; the woken
        task then sends its own ``lock_sock`` (the end of sk_wait_event)."""
        timeo = args.get("timeo_ns")
        last = sk.tail()
        # On the wait queue before release_sock, so a wakeup raised by the backlog
        # replay is not missed (prepare_to_wait, then sk_wait_event).
        sk.waiters.append(Waiter(task, None if timeo is None else now + int(timeo), last))
        self._release_sock(sk, task, now)
        waiter = next((w for w in sk.waiters if w.task == task), None)
        if waiter is not None and (sk.tail() is not last or sk.sk_err):
            sk.waiters.remove(waiter)  # the condition holds already: no sleep
            self._relock(sk, task, {"timed_out": False}, now)
        return None

    def _op_accept(self, sk: TcpSock, task: str, args: dict[str, Any],
                   now: int) -> dict[str, Any] | None:
        if sk.state != TcpState.LISTEN:
            return {"error": EINVAL}
        if sk.accept_queue:
            return {"sock": self._graft(sk.accept_queue.popleft())}
        if args.get("nonblock"):
            return {"error": EAGAIN}
        timeo = args.get("timeo_ns")
        sk.waiters.append(Waiter(task, None if timeo is None else now + int(timeo), None,
                                 kind="accept"))
        return None

    def _op_inq(self, sk: TcpSock, task: str, args: dict[str, Any],
                now: int) -> dict[str, Any]:
        return {"inq": sk.inq()}

    def _op_info(self, sk: TcpSock, task: str, args: dict[str, Any],
                 now: int) -> dict[str, Any]:
        return sock_info(sk)

    def _op_setsockopt(self, sk: TcpSock, task: str, args: dict[str, Any],
                       now: int) -> dict[str, Any]:
        name = args["name"]
        value = int(args["value"])
        if name == "SO_RCVBUF":
            _set_rcvbuf(sk, value)
        elif name == "SO_RCVLOWAT":
            sk.rcvlowat = max(value, 1)
        else:
            return {"error": EINVAL}
        return {}

    def _op_close(self, sk: TcpSock, task: str, args: dict[str, Any],
                  now: int) -> dict[str, Any]:
        """tcp_close: RST if unread data remains (TCPAbortOnClose), else send our FIN."""
        net = self.net
        unread = any(skb.len for skb in sk.receive_queue) and sk.inq() > 0
        for skb in list(sk.receive_queue):
            tcp_drop(sk, skb, "SOCKET_CLOSE")
        sk.receive_queue.clear()
        sk.sock_dead = True
        if sk.state == TcpState.LISTEN:
            self.listeners.pop(sk.lport, None)
            set_state(sk, TcpState.CLOSE)
        elif unread or sk.state in (TcpState.SYN_RECV,):
            net.inc("TcpExtTCPAbortOnClose")
            rst = make_segment(sk, now, TcpFlags.RST | TcpFlags.ACK)
            net.mib.add("TcpOutRsts")
            net.transmit(rst, sk.sock_id)
            tcp_done(sk)
            self._unhash(sk)
        elif sk.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
            self._send_fin(sk, now)
        self._release_sock(sk, task, now)
        return {}

    def _send_fin(self, sk: TcpSock, now: int) -> None:
        """tcp_send_fin: our FIN (with ACK) and the state it moves us to (tcp_close_state)."""
        fin = make_segment(sk, now, TcpFlags.FIN | TcpFlags.ACK)
        sk.fin_sent = True
        sk.snd_nxt = seq_add(sk.snd_nxt, 1)
        sk.snd_shutdown = True
        set_state(sk, TcpState.FIN_WAIT1 if sk.state == TcpState.ESTABLISHED
                  else TcpState.LAST_ACK)
        tcp_event_ack_sent(sk)  # the FIN carries our ACK: no delayed ACK is due any more
        self.net.transmit(fin, sk.sock_id)

    def _op_shutdown(self, sk: TcpSock, task: str, args: dict[str, Any],
                     now: int) -> dict[str, Any]:
        """shutdown(2): SHUT_RD marks the receive side closed; SHUT_WR sends our FIN."""
        how = int(args.get("how", 1))
        if sk.state in (TcpState.LISTEN, TcpState.CLOSE, TcpState.SYN_SENT):
            return {"error": ENOTCONN}
        if how in (0, 2):  # SHUT_RD / SHUT_RDWR
            sk.rcv_shutdown = True
            sk.data_ready = True
        if how in (1, 2) and sk.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
            self._send_fin(sk, now)
        return {}

    def _op_send(self, sk: TcpSock, task: str, args: dict[str, Any],
                 now: int) -> dict[str, Any]:
        """A minimal tcp_sendmsg + tcp_write_xmit: send ``data`` now in mss-sized segments.

        rxpath models a receiver: what it sends is only what a receive-side test needs
        (replies that carry our ACK). Nothing is kept for later: a write sends what
        the peer's window allows at once and returns that count; nothing is
        retransmitted.
        """
        if sk.state not in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT) or sk.snd_shutdown:
            return {"error": EPIPE}
        data = bytes(args["data"])
        mss = max(sk.mss_cache, 1)
        room = max(0, seq_sub(seq_add(sk.snd_una, sk.snd_wnd), sk.snd_nxt))
        room = min(room, TCP_INIT_CWND * mss)  # the initial congestion window
        data = data[:room]
        sent = 0
        while sent < len(data):
            chunk = data[sent:sent + mss]
            sent += len(chunk)
            flags = TcpFlags.ACK | (TcpFlags.PSH if sent == len(data) else TcpFlags(0))
            seg = make_segment(sk, now, flags).with_(payload=chunk)
            sk.snd_nxt = seq_add(sk.snd_nxt, len(chunk))
            tcp_event_ack_sent(sk)
            # tcp_event_data_sent: a reply within ato of the last receive means
            # the connection is interactive (pingpong).
            if now - sk.icsk_ack.lrcvtime < sk.icsk_ack.ato:
                sk.icsk_ack.pingpong += 1
            self.net.transmit(seg, sk.sock_id)
        if not sent and args["data"]:
            return {"error": EAGAIN}  # no room: the model keeps no unsent data
        return {"sent": sent}

    def _op_task_exit(self, sk: TcpSock, task: str, args: dict[str, Any],
                      now: int) -> dict[str, Any]:
        """A reader process died: its lock, installation and waits go with it."""
        sk.lock_waiters = type(sk.lock_waiters)(w for w in sk.lock_waiters
                                                if getattr(w, "task", None) != task)
        sk.waiters = [w for w in sk.waiters if w.task != task]
        if sk.ucopy.task == task:
            sk.ucopy.task = None
            sk.ucopy.len = 0
            sk.ucopy.iov.clear()
        if sk.owner == task:
            self._release_sock(sk, task, now)
        return {}


_OPS = {
    "lock_sock": Stack._op_lock_sock,
    "release_sock": Stack._op_release_sock,
    "flush_backlog": Stack._op_flush_backlog,
    "recv_copy": Stack._op_recv_copy,
    "cleanup_rbuf": Stack._op_cleanup_rbuf,
    "sock_error": Stack._op_sock_error,
    "ucopy_install": Stack._op_ucopy_install,
    "ucopy_clear": Stack._op_ucopy_clear,
    "prequeue_process": Stack._op_prequeue_process,
    "sk_wait_data": Stack._op_sk_wait_data,
    "accept": Stack._op_accept,
    "inq": Stack._op_inq,
    "info": Stack._op_info,
    "setsockopt": Stack._op_setsockopt,
    "close": Stack._op_close,
    "shutdown": Stack._op_shutdown,
    "send": Stack._op_send,
    "task_exit": Stack._op_task_exit,
}


def stream_offset(sk: TcpSock, seq: int) -> int:
    """Position of ``seq`` in the peer's byte stream (byte 0 follows its SYN)."""
    return seq_sub(seq, sk.irs) - 1


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


def _set_rcvbuf(sk: TcpSock, value: int) -> None:
    """SO_RCVBUF: Linux doubles the value for bookkeeping overhead and locks it."""
    sk.rcvbuf = so_rcvbuf(value)
    sk.rcvbuf_locked = True


def _backlog_coalesce(tail: Skb, skb: Skb) -> bool:
    """Modern tcp_add_backlog: merge a contiguous segment into the backlog tail."""
    no = TcpFlags.SYN | TcpFlags.RST | TcpFlags.URG
    if tail.end_seq != skb.seq or (tail.flags | skb.flags) & no:
        return False
    if not (tail.flags & skb.flags & TcpFlags.ACK):
        return False
    ecn = TcpFlags.ECE | TcpFlags.CWR
    if (tail.flags & ecn) != (skb.flags & ecn) or tail.doff != skb.doff:
        return False
    if tail.options != skb.options or tail.fin or not skb.raw_csum_ok:
        return False
    tail.gso_size = max(tail.gso_size or tail.len, skb.len)
    tail.data += skb.data
    tail.end_seq = skb.end_seq
    if not before(skb.ack_seq, tail.ack_seq):
        tail.ack_seq = skb.ack_seq
        tail.window = skb.window
    tail.flags |= skb.flags
    tail.gso_segs = min(tail.gso_segs + skb.gso_segs, 65535)
    tail.frags += skb.frags
    tail.ids.extend(skb.ids)
    return True


def _segment_of(sk: TcpSock, skb: Skb) -> Segment:
    return Segment(src=sk.raddr, sport=sk.rport, dst=sk.laddr, dport=sk.lport, seq=skb.seq,
                   ack=skb.ack_seq, flags=skb.flags, window=skb.window, payload=skb.data)


def _deadlines(sk: TcpSock) -> Iterable[int]:
    ack = sk.icsk_ack
    if ack.pending & AckPending.TIMER and ack.timeout:
        yield ack.timeout
    if sk.sack_compress_deadline is not None:
        yield sk.sack_compress_deadline
    if sk.synack_deadline is not None:
        yield sk.synack_deadline
    for w in sk.waiters:
        if w.deadline is not None:
            yield w.deadline


def sock_info(sk: TcpSock) -> dict[str, Any]:
    """What ``ss -tmi`` shows: state, queues, skmem and the receive-side tcp_info."""
    return {
        "sock": sk.sock_id,
        "state": sk.state.value,
        "local": f"{sk.laddr}:{sk.lport}",
        "peer": f"{sk.raddr}:{sk.rport}",
        "recv_q": sk.inq(),
        "owner": sk.owner,
        "lock_waiters": len(sk.lock_waiters),
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
    }

