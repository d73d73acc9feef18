"""The remote TCP sender: the active-open side of one flow, as a pure state machine.

:class:`TcpSender` connects to the emulated Linux receiver and sends ``total_bytes`` of
:func:`~actors.peer.payload.payload_bytes` for its flow, then a FIN. It behaves like a
Linux sender where that matters to the receiver under test:

* **Handshake.** SYN with MSS, SACK-permitted, timestamps and window scale; ISS from a
  seeded ``random.Random``; SYN retransmitted with exponential back-off from 1 s
  (``TCP_TIMEOUT_INIT``), abort after ``syn_retries``.
* **Sending.** Segments of at most the effective MSS (the smaller of both MSS options,
  less the 12 bytes of timestamp option, bounded to half the largest window seen as
  ``tcp_bound_to_half_wnd`` does). A segment goes out only when it fits entirely in the
  receiver's window (``tcp_snd_wnd_test``) and fewer than ``cwnd`` packets are in flight.
  ACK on every segment; PSH on the last data segment and whenever half of the largest
  window was written since the last PSH (``forced_push``). FIN rides on the last data
  segment when it fits, else goes alone.
* **Congestion control: Reno, counted in packets as Linux counts ``snd_cwnd``.** Slow
  start adds one packet per packet acked up to ``ssthresh``; congestion avoidance adds
  one packet per ``cwnd`` packets acked. ``cwnd`` grows only while it limits sending
  (``tcp_is_cwnd_limited``), so a window-limited flow does not inflate it. Packets in
  flight are ``packets_out - sacked_out - lost_out + retrans_out`` (``tcp_packets_in_flight``).
* **Loss recovery.** Fast retransmit on ``dupack_threshold`` duplicate ACKs, or, with
  SACK, as soon as ``dupack_threshold`` SACKed packets lie above the first hole (RFC 6675
  ``IsLost``). Recovery halves ``cwnd`` (``ssthresh = max(cwnd/2, 2)``), retransmits the
  lost packets first, and is NewReno-style: a partial ACK marks the new first unacked
  packet lost and retransmits it at once; the ACK that covers the recovery point ends
  recovery with ``cwnd = ssthresh``. Without SACK each duplicate ACK counts as one packet
  that left the network, as Linux's ``tcp_add_reno_sack`` does.
* **SACK scoreboard.** SACKed ranges are kept as intervals; blocks beyond ``snd_nxt`` or
  below ``snd_una`` are ignored. A DSACK (first block below the cumulative ACK, or inside
  the second block, RFC 2883) is counted, never taken as a sign of loss. A receiver may
  renege (Linux prunes its out-of-order queue under memory pressure): when the cumulative
  ACK stops at a SACKed segment the RTO is shortened, and the timeout clears every SACK
  mark so the discarded data is sent again (``tcp_check_sack_reneging``,
  ``tcp_timeout_mark_lost``).
* **RTT and RTO.** RFC 6298 (``srtt``, ``rttvar``, ``rto = srtt + max(G, 4 rttvar)``,
  clamped to [200 ms, 120 s]). Samples come, as in ``tcp_clean_rtx_queue``, from the send
  time of the oldest newly acked never-retransmitted packet (Karn), else from the
  timestamp echo, which stays valid for retransmitted data (RFC 7323). An RTO marks
  everything not SACKed lost, sets ``cwnd`` to 1, doubles the RTO (back-off kept until a
  valid RTT sample) and retransmits from ``snd_una``; with ``resegment=True`` a
  retransmission is cut into MSS-sized segments from ``snd_una`` whatever the original cut.
* **Zero window.** With nothing in flight and the next segment not fitting the window,
  the persist timer probes with back-off (``tcp_probe0_when``): ``probe_style="linux"``
  sends a zero-length ACK at ``snd_una - 1`` (``tcp_xmit_probe_skb``), ``"data"`` sends
  the next byte of data (then repeats that byte while the window stays shut). A window
  that is open but smaller than a segment gets as much data as fits (``tcp_write_wakeup``).
* **Closing and RST.** The receiver's FIN is acknowledged (CLOSE_WAIT, CLOSING, TIME_WAIT
  as RFC 9293 says). An RST whose sequence number is exactly ``rcv_nxt`` resets the flow
  (``ECONNRESET``); one elsewhere in the window draws a challenge ACK (RFC 5961).

Sequence numbers on the wire wrap modulo 2**32; internally positions are *stream
offsets*: offset 0 is the first data byte (ISS + 1) and the FIN occupies offset
``total_bytes``.
"""

from __future__ import annotations

import heapq
import itertools
import random
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

from actors.peer.impairments import Delivery, WireImpairments
from actors.peer.payload import payload_bytes
from actors.profiles import MS
from protocol import wire
from protocol.segment import Segment, TcpFlags, TcpOptions
from protocol.seq import SEQ_MASK, after, before, seq_add, seq_sub

__all__ = [
    "TCP_INIT_CWND",
    "TCP_MSS_DEFAULT",
    "TCP_RTO_MAX",
    "TCP_RTO_MIN",
    "TCP_TIMEOUT_FALLBACK",
    "TCP_TIMEOUT_INIT",
    "CaState",
    "FlowKey",
    "IntervalSet",
    "Peer",
    "ProbeStyle",
    "SenderConfig",
    "TcpSender",
    "TcpState",
]

FlowKey = tuple[str, int, str, int]
ProbeStyle = Literal["linux", "data"]

TCP_TIMEOUT_INIT = 1_000 * MS  # initial RTO, also for the SYN (RFC 6298)
TCP_TIMEOUT_FALLBACK = 3_000 * MS  # RTO after a retransmitted SYN with no RTT sample
TCP_RTO_MIN = 200 * MS
TCP_RTO_MAX = 120_000 * MS
TCP_TIMEWAIT_LEN = 60_000 * MS
TCP_MSS_DEFAULT = 536  # assumed when the SYN-ACK carries no MSS option
TCP_INIT_CWND = 10
TCP_MAX_WSCALE = 14
TCP_INFINITE_SSTHRESH = 0x7FFFFFFF
TCPOLEN_TSTAMP_ALIGNED = 12
TCP_HEADER_LEN = 20
RTT_GRANULARITY = 1 * MS  # G in RFC 6298: the timestamp clock ticks in milliseconds


class TcpState(IntEnum):
    """Socket states, numbered as include/net/tcp_states.h numbers them (``ss`` shows these)."""

    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RECV = 3
    FIN_WAIT1 = 4
    FIN_WAIT2 = 5
    TIME_WAIT = 6
    CLOSE = 7
    CLOSE_WAIT = 8
    LAST_ACK = 9
    LISTEN = 10
    CLOSING = 11


class CaState(IntEnum):
    """``icsk_ca_state``: the congestion-control state machine of ``tcp_fastretrans_alert``."""

    OPEN = 0
    DISORDER = 1
    CWR = 2
    RECOVERY = 3
    LOSS = 4


# States in which the sender may still put data or a FIN on the wire.
_SENDING_STATES = frozenset({TcpState.ESTABLISHED, TcpState.CLOSE_WAIT, TcpState.FIN_WAIT1,
                             TcpState.CLOSING, TcpState.LAST_ACK})
# States after the handshake, before the socket is gone.
_SYNCHRONIZED = _SENDING_STATES | {TcpState.FIN_WAIT2, TcpState.TIME_WAIT}


@dataclass(frozen=True, slots=True)
class SenderConfig:
    """Per-flow knobs. Defaults are Linux's.

    ``mss`` is the MSS this side announces and the largest payload it sends before
    options are subtracted; ``wscale=None`` or ``sack``/``timestamps`` False leave the
    option out of the SYN. ``rcv_wnd`` is the window this side advertises (it receives
    nothing but the receiver's FIN). ``resegment`` cuts retransmissions into MSS-sized
    segments from ``snd_una``. ``max_retries`` is ``tcp_retries2``: consecutive RTOs (or
    unanswered zero-window probes) before the flow gives up with ETIMEDOUT.
    """

    mss: int = 1460
    wscale: int | None = 7
    sack: bool = True
    timestamps: bool = True
    initial_cwnd: int = TCP_INIT_CWND
    rcv_wnd: int = 65535
    probe_style: ProbeStyle = "linux"
    resegment: bool = False
    dupack_threshold: int = 3
    syn_retries: int = 6
    max_retries: int = 15
    ts_offset: int = 0  # added to the millisecond clock for TSval
    rto_initial_ns: int = TCP_TIMEOUT_INIT
    rto_min_ns: int = TCP_RTO_MIN
    rto_max_ns: int = TCP_RTO_MAX
    time_wait_ns: int = TCP_TIMEWAIT_LEN
    invalid_ratelimit_ns: int = 500 * MS  # tcp_invalid_ratelimit: out-of-window dupacks

    def __post_init__(self) -> None:
        if not 88 <= self.mss <= 65495:
            raise ValueError(f"mss {self.mss} outside [88, 65495]")
        if self.wscale is not None and not 0 <= self.wscale <= TCP_MAX_WSCALE:
            raise ValueError(f"wscale {self.wscale} outside [0, {TCP_MAX_WSCALE}]")
        if self.probe_style not in ("linux", "data"):
            raise ValueError(f"probe_style must be 'linux' or 'data', not {self.probe_style!r}")
        if self.initial_cwnd < 1 or self.dupack_threshold < 1:
            raise ValueError("initial_cwnd and dupack_threshold must be >= 1")
        if self.rcv_wnd < 0 or self.syn_retries < 0 or self.max_retries < 0:
            raise ValueError("rcv_wnd, syn_retries and max_retries must be >= 0")
        if not 0 < self.rto_min_ns <= self.rto_initial_ns <= self.rto_max_ns:
            raise ValueError("need 0 < rto_min_ns <= rto_initial_ns <= rto_max_ns")


# --------------------------------------------------------------------------- scoreboard


class IntervalSet:
    """Disjoint half-open integer ranges, merged on insertion (the SACK scoreboard)."""

    __slots__ = ("_ends", "_starts")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends, strict=True))

    def __len__(self) -> int:
        return len(self._starts)

    def __contains__(self, point: object) -> bool:
        if not isinstance(point, int):
            return False
        i = bisect_right(self._starts, point) - 1
        return i >= 0 and point < self._ends[i]

    def add(self, start: int, end: int) -> list[tuple[int, int]]:
        """Insert ``[start, end)``; returns the sub-ranges that were not covered before."""
        if start >= end:
            return []
        lo = bisect_left(self._ends, start)  # first range that ends at or after start
        hi = bisect_right(self._starts, end)  # ranges before hi start at or before end
        fresh: list[tuple[int, int]] = []
        cursor = start
        for i in range(lo, hi):
            s, e = self._starts[i], self._ends[i]
            if s > cursor:
                fresh.append((cursor, min(s, end)))
            cursor = max(cursor, e)
        if cursor < end:
            fresh.append((cursor, end))
        if lo < hi:
            start = min(start, self._starts[lo])
            end = max(end, self._ends[hi - 1])
        self._starts[lo:hi] = [start]
        self._ends[lo:hi] = [end]
        return fresh

    def trim_below(self, point: int) -> None:
        """Forget everything below ``point`` (cumulatively acknowledged)."""
        i = bisect_right(self._ends, point)
        del self._starts[:i]
        del self._ends[:i]
        if self._starts and self._starts[0] < point:
            self._starts[0] = point

    def covered(self) -> int:
        return sum(e - s for s, e in self)

    def highest(self) -> int | None:
        return self._ends[-1] if self._ends else None


@dataclass(slots=True)
class _Skb:
    """One segment in the retransmission queue, as stream offsets ``[start, end)``.

    The flags mirror ``TCP_SKB_CB(skb)->sacked``: SACKED_ACKED, LOST, SACKED_RETRANS
    (retransmitted and that retransmission not yet acked) and EVER_RETRANS (Karn).
    """

    start: int
    end: int  # exclusive; includes the FIN's sequence number when ``fin``
    fin: bool
    psh: bool
    sent_at: int  # first transmission
    sacked: bool = False
    lost: bool = False
    retrans: bool = False
    ever_retrans: bool = False
    probe: bool = False  # a one-byte zero-window probe ("data" style)


def _skb_start(skb: _Skb) -> int:
    return skb.start


# --------------------------------------------------------------------------- sender


class TcpSender:
    """One flow's sender. Feed it segments and timer firings; it returns segments to send."""

    def __init__(self, flow_id: int, src: str, sport: int, dst: str, dport: int,
                 total_bytes: int, rng: random.Random,
                 config: SenderConfig | None = None) -> None:
        if total_bytes < 0:
            raise ValueError("total_bytes must be >= 0")
        self.flow_id = flow_id
        self.src, self.sport, self.dst, self.dport = src, sport, dst, dport
        self.total_bytes = total_bytes
        self.config = config or SenderConfig()
        self.iss = rng.getrandbits(32)

        self.state = TcpState.CLOSE
        self.opened = False  # connect() was called (a socket is opened once)
        self.error: str | None = None  # "ECONNRESET", "ETIMEDOUT" once aborted
        self.ca_state = CaState.OPEN

        # Negotiated in the handshake.
        self.sack_ok = False
        self.ts_ok = False
        self.snd_wscale = 0  # the receiver's shift, applied to its window fields
        self.rcv_wscale = 0  # ours, applied to the window we advertise
        self.peer_mss = TCP_MSS_DEFAULT
        self.irs = 0
        self.rcv_nxt = 0  # sequence number (the receiver's space)
        self.ts_recent = 0
        self.fin_received = False

        # Send sequence space, as stream offsets.
        self.snd_una = 0
        self.snd_nxt = 0
        self.snd_wnd = 0
        self.snd_wl1 = 0  # the receiver's seq of the last window update
        self.max_window = 0
        self.pushed = 0  # offset of the last PSH (forced_push)

        # Congestion control (packets).
        self.cwnd = self.config.initial_cwnd
        self.cwnd_cnt = 0
        self.ssthresh = TCP_INFINITE_SSTHRESH
        self.recover = 0  # high_seq: the recovery point
        self.dupacks = 0
        self._cwnd_limited = False
        self._rwnd_blocked = False

        # RTT estimation (ns).
        self.srtt = 0
        self.rttvar = 0
        self.rto = self.config.rto_initial_ns
        self.backoff = 0
        self._rtt_sampled = False

        # Retransmission queue and scoreboard.
        self._rtx: list[_Skb] = []
        self._head = 0  # index of the first unacked skb in _rtx
        self.sacked_ranges = IntervalSet()
        self._sacked_out = 0  # SACK: skbs SACKed; Reno: duplicate ACKs counted as SACKs
        self._lost_out = 0
        self._retrans_out = 0
        self._probe_out = 0
        self._lost_high = 0  # non-SACKed skbs below this offset are marked lost
        self._retx_hint = 0  # no lost, unretransmitted skb starts below this offset
        self._force_retransmit = False  # send one retransmission even if cwnd is full

        # Timers (absolute ns, or None).
        self._rto_at: int | None = None
        self._probe_at: int | None = None
        self._tw_at: int | None = None
        self._syn_sent_at = 0
        self._syn_retrans = 0
        self.retransmits = 0  # icsk_retransmits: consecutive RTOs without progress
        self.probes_out = 0  # icsk_probes_out: unanswered zero-window probes
        self.probe_backoff = 0
        self._last_oow_ack: int | None = None

        self.counters: dict[str, int] = dict.fromkeys(_COUNTER_NAMES, 0)

    # -- identity ----------------------------------------------------------------------------

    @property
    def four_tuple(self) -> FlowKey:
        return (self.src, self.sport, self.dst, self.dport)

    @property
    def reply_tuple(self) -> FlowKey:
        """The 4-tuple of the receiver's segments for this flow."""
        return (self.dst, self.dport, self.src, self.sport)

    # -- public state ------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Every data byte and the FIN are acknowledged."""
        return self.error is None and self.snd_una == self.total_bytes + 1

    @property
    def aborted(self) -> bool:
        return self.error is not None

    @property
    def finished(self) -> bool:
        """Nothing more will happen that matters to the transfer: done or aborted."""
        return self.done or self.aborted

    @property
    def packets_out(self) -> int:
        return len(self._rtx) - self._head

    @property
    def sacked_out(self) -> int:
        return self._sacked_out

    @property
    def lost_out(self) -> int:
        return self._lost_out

    @property
    def retrans_out(self) -> int:
        return self._retrans_out

    @property
    def in_flight(self) -> int:
        """``tcp_packets_in_flight``: packets sent and believed still in the network."""
        return self.packets_out - (self._sacked_out + self._lost_out) + self._retrans_out

    @property
    def mss_now(self) -> int:
        """Payload bytes per segment (``tcp_current_mss`` with ``tcp_bound_to_half_wnd``)."""
        header = TCP_HEADER_LEN + (TCPOLEN_TSTAMP_ALIGNED if self.ts_ok else 0)
        mss = min(self.config.mss, self.peer_mss) - (header - TCP_HEADER_LEN)
        cutoff = self.max_window >> 1 if self.max_window > TCP_MSS_DEFAULT else self.max_window
        if cutoff and mss > cutoff:
            mss = max(cutoff, 68 - header)
        return max(mss, 1)

    def seq_of(self, offset: int) -> int:
        """The sequence number of stream offset ``offset`` (offset 0 is ISS + 1)."""
        return seq_add(self.iss, 1 + offset)

    def offset_of(self, seq: int) -> int:
        """The stream offset of ``seq``, taken as the one nearest ``snd_una``."""
        return self.snd_una + seq_sub(seq, self.seq_of(self.snd_una))

    def tsval(self, now: int) -> int:
        return (now // MS + self.config.ts_offset) & SEQ_MASK

    def next_deadline(self) -> int | None:
        times = [t for t in (self._rto_at, self._probe_at, self._tw_at) if t is not None]
        return min(times) if times else None

    def stats(self) -> dict[str, int]:
        """Counters and current state (plain names; ``state`` as TCP_* number)."""
        out = dict(self.counters)
        out.update(
            cwnd=self.cwnd, ssthresh=self.ssthresh, srtt_us=self.srtt // 1000,
            rttvar_us=self.rttvar // 1000, rto_us=self.rto // 1000, snd_una=self.snd_una,
            snd_nxt=self.snd_nxt, snd_wnd=self.snd_wnd, packets_out=self.packets_out,
            sacked_out=self._sacked_out, lost_out=self._lost_out,
            retrans_out=self._retrans_out, state=int(self.state), ca_state=int(self.ca_state),
            mss=self.mss_now, done=int(self.done), aborted=int(self.aborted),
        )
        return out

    # -- events ------------------------------------------------------------------------------

    def connect(self, now: int) -> list[Segment]:
        """Active open: send the SYN and start its retransmission timer."""
        if self.opened:
            raise RuntimeError(f"connect() on a flow already opened (state {self.state.name})")
        self.opened = True
        self.state = TcpState.SYN_SENT
        self._syn_sent_at = now
        self._rto_at = now + self.rto
        return [self._syn(now)]

    def on_segment(self, seg: Segment, now: int) -> list[Segment]:
        """A segment from the receiver arrived; returns what to send in response."""
        self.counters["segments_received"] += 1
        if seg.four_tuple != self.reply_tuple:
            self.counters["misrouted"] += 1
            return []
        if self.state == TcpState.SYN_SENT:
            return self._rcv_synsent(seg, now)
        if self.state not in _SYNCHRONIZED:
            self.counters["ignored"] += 1
            return []
        return self._rcv_synchronized(seg, now)

    def on_timer(self, now: int) -> list[Segment]:
        """Fire every timer due at ``now``."""
        out: list[Segment] = []
        if self._tw_at is not None and now >= self._tw_at:
            self._tw_at = None
            self.state = TcpState.CLOSE
        if self._rto_at is not None and now >= self._rto_at:
            self._rto_at = None
            out += self._retransmit_timer(now)
        if self._probe_at is not None and now >= self._probe_at:
            self._probe_at = None
            out += self._probe_timer(now)
        return out

    # -- handshake ---------------------------------------------------------------------------

    def _syn(self, now: int) -> Segment:
        cfg = self.config
        opts = TcpOptions(
            mss=cfg.mss, wscale=cfg.wscale, sack_permitted=cfg.sack,
            timestamp=(self.tsval(now), 0) if cfg.timestamps else None)
        self.counters["segments_sent"] += 1
        return Segment(self.src, self.sport, self.dst, self.dport, seq=self.iss, ack=0,
                       flags=TcpFlags.SYN, window=min(cfg.rcv_wnd, 0xFFFF), options=opts)

    def _rcv_synsent(self, seg: Segment, now: int) -> list[Segment]:
        acceptable_ack = seg.has(TcpFlags.ACK) and seg.ack == seq_add(self.iss, 1)
        if seg.has(TcpFlags.ACK) and not acceptable_ack:
            self.counters["invalid_acks"] += 1
            return []
        if seg.has(TcpFlags.RST):
            if acceptable_ack:  # "connection refused"
                self.counters["rst_received"] += 1
                self._abort("ECONNREFUSED")
            return []
        if not (seg.has(TcpFlags.SYN) and acceptable_ack):
            self.counters["ignored"] += 1
            return []
        cfg = self.config
        opts = seg.options
        self.irs = seg.seq
        self.rcv_nxt = seq_add(seg.seq, 1)
        self.sack_ok = cfg.sack and opts.sack_permitted
        self.ts_ok = cfg.timestamps and opts.timestamp is not None
        if cfg.wscale is not None and opts.wscale is not None:
            self.snd_wscale = min(opts.wscale, TCP_MAX_WSCALE)
            self.rcv_wscale = cfg.wscale
        if opts.mss:
            self.peer_mss = opts.mss
        if self.ts_ok:
            assert opts.timestamp is not None
            self.ts_recent = opts.timestamp[0]
        # The window in a SYN-ACK is never scaled (RFC 7323 §2.2).
        self.snd_wnd = seg.window
        self.snd_wl1 = seg.seq
        self.max_window = max(self.max_window, self.snd_wnd)
        self.state = TcpState.ESTABLISHED
        self._rto_at = None
        # RTT of the SYN: Karn (its send time) unless it was retransmitted, else the echo.
        if self._syn_retrans == 0:
            self._rtt_sample(now - self._syn_sent_at)
        elif self.ts_ok and opts.timestamp is not None and opts.timestamp[1]:
            self._rtt_sample(self._ts_rtt(opts.timestamp[1], now))
        if not self._rtt_sampled:
            self.rto = TCP_TIMEOUT_FALLBACK if self._syn_retrans else cfg.rto_initial_ns
            self.rto = min(max(self.rto, cfg.rto_min_ns), cfg.rto_max_ns)
        self.backoff = 0
        self.retransmits = 0
        if self._syn_retrans > 1:
            self.cwnd = 1  # tcp_init_transfer: RFC 5681 after a lost SYN or SYN-ACK
        out = [self._ack_segment(now)]
        out += self._output(now)
        return out

    # -- synchronized states -----------------------------------------------------------------

    def _rcv_synchronized(self, seg: Segment, now: int) -> list[Segment]:
        seq_ok = self._sequence_acceptable(seg)
        if seg.has(TcpFlags.RST):
            return self._rcv_rst(seg, seq_ok, now)
        if seg.has(TcpFlags.SYN):
            # A retransmitted SYN-ACK (our ACK was lost) or anything else with SYN: answer
            # with an ACK of what we have (tcp_send_dupack / challenge ACK), process nothing.
            self.counters["dup_syn"] += 1
            return [self._ack_segment(now)]
        if (self.state == TcpState.TIME_WAIT and seg.has(TcpFlags.FIN)
                and seg.end_seq == self.rcv_nxt):
            # Our ACK of the receiver's FIN was lost: ACK again and restart the 2MSL wait.
            self.counters["fin_retransmitted_to_us"] += 1
            self._tw_at = now + self.config.time_wait_ns
            return [self._ack_segment(now)]
        if not seq_ok:
            self.counters["out_of_window"] += 1
            return self._oow_ack(seg, now)
        if not seg.has(TcpFlags.ACK):
            self.counters["ignored"] += 1
            return []
        self._update_ts_recent(seg)
        out: list[Segment] = []
        ack_ok = self._on_ack(seg, now)
        if ack_ok is None:  # an ACK of data never sent: discard the segment
            return self._oow_ack(seg, now)
        # tcp_ack_probe: an answer while the window stays shut restarts the persist
        # timer from now (the back-off is kept); an open window stops it.
        self._probe_at = None
        need_ack = self._rcv_data_and_fin(seg, now)
        out += self._output(now)
        if need_ack and not out:  # any data segment carries the same ACK
            out.append(self._ack_segment(now))
        return out

    def _sequence_acceptable(self, seg: Segment) -> bool:
        """RFC 793's acceptability test against our receive window."""
        wnd = self.config.rcv_wnd
        offset = seq_sub(seg.seq, self.rcv_nxt)
        if seg.seg_len == 0:
            return offset == 0 or (wnd > 0 and 0 <= offset < wnd)
        end = offset + seg.seg_len - 1
        return wnd > 0 and (0 <= offset < wnd or 0 <= end < wnd)

    def _oow_ack(self, seg: Segment, now: int) -> list[Segment]:
        """Answer an unacceptable segment with a dupack, rate-limited for pure ACKs.

        As ``tcp_oow_rate_limited``: a segment carrying data or SYN/FIN is always
        answered (it cannot be part of an ACK loop); pure ACKs at most once per
        ``invalid_ratelimit_ns``.
        """
        if seg.seg_len == 0:
            last = self._last_oow_ack
            if last is not None and now - last < self.config.invalid_ratelimit_ns:
                self.counters["oow_acks_skipped"] += 1
                return []
            self._last_oow_ack = now
        return [self._ack_segment(now)]

    def _rcv_rst(self, seg: Segment, seq_ok: bool, now: int) -> list[Segment]:
        if seg.seq == self.rcv_nxt:
            self.counters["rst_received"] += 1
            self._abort("ECONNRESET")
            return []
        if seq_ok:
            # RFC 5961 §3.2: in window but not exact: challenge ACK.
            self.counters["challenge_acks"] += 1
            return [self._ack_segment(now)]
        self.counters["rst_ignored"] += 1
        return []

    def _update_ts_recent(self, seg: Segment) -> None:
        ts = seg.options.timestamp
        if not self.ts_ok or ts is None:
            return
        # tcp_replace_ts_recent: only from a segment at or below what we acknowledge,
        # and never backwards.
        if not after(seg.seq, self.rcv_nxt) and not before(ts[0], self.ts_recent):
            self.ts_recent = ts[0]

    def _rcv_data_and_fin(self, seg: Segment, now: int) -> bool:
        """Accept in-order data and FIN from the receiver. True when an ACK is due."""
        if seg.seg_len == 0:
            return False
        if seg.seq != self.rcv_nxt:
            # Partly old or ahead of rcv_nxt: we keep no out-of-order queue;
            # acknowledging what we have is the answer.
            self.counters["rcv_out_of_order"] += 1
            return True
        if seg.payload:
            self.counters["bytes_received"] += len(seg.payload)
            self.rcv_nxt = seq_add(self.rcv_nxt, len(seg.payload))
        if seg.has(TcpFlags.FIN) and not self.fin_received:
            self.fin_received = True
            self.counters["fin_received"] += 1
            self.rcv_nxt = seq_add(self.rcv_nxt, 1)
            self._on_peer_fin(now)
        return True

    def _on_peer_fin(self, now: int) -> None:
        fin_acked = self.snd_una == self.total_bytes + 1
        if self.state == TcpState.ESTABLISHED:
            self.state = TcpState.CLOSE_WAIT
        elif self.state == TcpState.FIN_WAIT1:
            if fin_acked:
                self._enter_time_wait(now)
            else:
                self.state = TcpState.CLOSING
        elif self.state == TcpState.FIN_WAIT2:
            self._enter_time_wait(now)

    def _enter_time_wait(self, now: int) -> None:
        self.state = TcpState.TIME_WAIT
        self._rto_at = self._probe_at = None
        self._tw_at = now + self.config.time_wait_ns

    def _abort(self, error: str) -> None:
        self.error = error
        self.state = TcpState.CLOSE
        self._rto_at = self._probe_at = self._tw_at = None
        self.counters["aborts"] += 1

    # -- ACK processing ----------------------------------------------------------------------

    def _on_ack(self, seg: Segment, now: int) -> bool | None:
        """``tcp_ack``. Returns None for an ACK of unsent data, else whether it was new."""
        cnt = self.counters
        ack = self.offset_of(seg.ack)
        if ack > self.snd_nxt:
            cnt["invalid_acks"] += 1
            return None
        prior_una = self.snd_una
        prior_in_flight = self.in_flight
        self.probes_out = 0  # an answer from the receiver: probes are not going unanswered
        cnt["acks_received"] += 1

        newly_sacked = 0
        if seg.options.sack_blocks and self.sack_ok:
            newly_sacked = self._sacktag(seg.options.sack_blocks, ack)

        if ack < prior_una:
            cnt["old_acks"] += 1
            if newly_sacked:
                self._mark_lost_by_sack()
                self._fastretrans_alert(now, False, prior_una)
            return False

        window_changed = self._ack_update_window(seg, ack)
        acked_pkts = 0
        if ack > prior_una:
            acked_pkts = self._clean_rtx_queue(ack, seg, now)
        advanced = ack > prior_una

        if self.sack_ok:
            is_dupack = (not advanced and newly_sacked > 0 and not seg.payload
                         and not seg.has(TcpFlags.FIN))
        else:
            is_dupack = (not advanced and not seg.payload and not seg.has(TcpFlags.FIN)
                         and not window_changed and self.packets_out > self._probe_out
                         and self.snd_wnd > 0)
        if is_dupack:
            cnt["dupacks"] += 1
            self.dupacks += 1
            if not self.sack_ok:
                self._add_reno_sack()
        if self.snd_wnd == 0:
            cnt["zero_window_acks"] += 1

        if advanced:
            self._on_progress(now, acked_pkts, prior_in_flight)
        if newly_sacked:
            self._mark_lost_by_sack()
        self._fastretrans_alert(now, is_dupack, prior_una)
        if advanced:
            self._check_sack_reneging(now)
        return advanced

    def _check_sack_reneging(self, now: int) -> None:
        """``tcp_check_sack_reneging``: the cumulative ACK stops at a segment we hold as
        SACKed, so the receiver dropped out-of-order data it had SACKed (a Linux receiver
        pruning its ofo queue does). Give it a little time to ACK further, then let the
        RTO clear the SACK marks and resend."""
        head = self._head_skb()
        if head is not None and head.sacked and self.ca_state != CaState.LOSS:
            self.counters["sack_reneging_suspected"] += 1
            self._rto_at = now + max(self.srtt >> 1, 10 * MS)

    def _ack_update_window(self, seg: Segment, ack: int) -> bool:
        """``tcp_ack_update_window``; returns True when the window changed."""
        nwin = seg.window << self.snd_wscale
        if (ack > self.snd_una or after(seg.seq, self.snd_wl1)
                or (seg.seq == self.snd_wl1 and (nwin > self.snd_wnd or nwin == 0))):
            changed = nwin != self.snd_wnd
            self.snd_wl1 = seg.seq
            self.snd_wnd = nwin
            if nwin > self.max_window:
                self.max_window = nwin
            if changed:
                self.counters["window_updates"] += 1
            return changed
        return False

    def _clean_rtx_queue(self, ack: int, seg: Segment, now: int) -> int:
        """Drop fully acked skbs, trim a partly acked head, take an RTT sample."""
        q = self._rtx
        i = self._head
        acked = 0
        first_sent: int | None = None
        retrans_acked = False
        while i < len(q) and q[i].end <= ack:
            skb = q[i]
            if skb.sacked:
                if self.sack_ok:
                    self._sacked_out -= 1
            elif skb.ever_retrans:
                retrans_acked = True
            elif first_sent is None:
                first_sent = skb.sent_at
            self._forget(skb)
            acked += 1
            i += 1
        if i < len(q) and q[i].start < ack:
            q[i].start = ack  # tcp_trim_head
        self._head = i
        if self._head > 64 and self._head * 2 > len(q):
            del q[:self._head]
            self._head = 0
        self.counters["bytes_acked"] += (min(ack, self.total_bytes)
                                         - min(self.snd_una, self.total_bytes))
        self.snd_una = ack
        self.sacked_ranges.trim_below(ack)
        self._lost_high = max(self._lost_high, ack)
        self._retx_hint = max(self._retx_hint, ack)
        if not self.sack_ok:
            self._remove_reno_sacks(acked)

        # Karn: time the oldest newly acked skb that was never retransmitted, unless
        # retransmitted data was acked too; else the timestamp echo (RFC 7323 §4).
        tsecr = seg.options.tsecr if self.ts_ok else None
        if first_sent is not None and not retrans_acked:
            self._rtt_sample(now - first_sent)
        elif tsecr:
            self._rtt_sample(self._ts_rtt(tsecr, now))
        return acked

    def _forget(self, skb: _Skb) -> None:
        """Take an skb leaving the queue (or merged away) out of the counters."""
        if skb.lost:
            self._lost_out -= 1
        if skb.retrans:
            self._retrans_out -= 1
        if skb.probe:
            self._probe_out -= 1

    def _on_progress(self, now: int, acked_pkts: int, prior_in_flight: int) -> None:
        """snd_una advanced: timers, FIN state, cwnd growth."""
        self.retransmits = 0
        if self.packets_out:
            self._rto_at = now + self.rto  # RFC 6298 (5.3)
        else:
            self._rto_at = None
        if self.snd_una == self.total_bytes + 1:
            self.counters["fin_acked"] = 1
            if self.state == TcpState.FIN_WAIT1:
                self.state = TcpState.FIN_WAIT2
            elif self.state == TcpState.CLOSING:
                self._enter_time_wait(now)
            elif self.state == TcpState.LAST_ACK:
                self.state = TcpState.CLOSE
        if self.ca_state not in (CaState.RECOVERY, CaState.CWR) and acked_pkts:
            self._cong_avoid(acked_pkts, prior_in_flight)

    def _rtt_sample(self, rtt: int) -> None:
        """RFC 6298 (2.2)/(2.3); a valid sample also ends the RTO back-off (tcp_set_rto)."""
        rtt = max(rtt, 1)
        if not self._rtt_sampled:
            self.srtt = rtt
            self.rttvar = rtt // 2
            self._rtt_sampled = True
        else:
            self.rttvar = (3 * self.rttvar + abs(self.srtt - rtt)) // 4
            self.srtt = (7 * self.srtt + rtt) // 8
        cfg = self.config
        rto = self.srtt + max(RTT_GRANULARITY, 4 * self.rttvar)
        self.rto = min(max(rto, cfg.rto_min_ns), cfg.rto_max_ns)
        self.backoff = 0
        self.counters["rtt_samples"] += 1

    def _ts_rtt(self, tsecr: int, now: int) -> int:
        return ((self.tsval(now) - tsecr) & SEQ_MASK) * MS

    # -- SACK --------------------------------------------------------------------------------

    def _sacktag(self, blocks: tuple[tuple[int, int], ...], ack: int) -> int:
        """``tcp_sacktag_write_queue``: mark SACKed skbs; returns how many became SACKed."""
        cnt = self.counters
        ranges = [(self.offset_of(s), self.offset_of(e)) for s, e in blocks]
        first_is_dsack = ranges[0][0] < ack or (
            len(ranges) > 1 and ranges[1][0] <= ranges[0][0] and ranges[0][1] <= ranges[1][1])
        if first_is_dsack:
            cnt["dsacks"] += 1
            ranges = ranges[1:]
        if not ranges:
            return 0
        cnt["sacks"] += 1
        newly = 0
        for start, end in ranges:
            if start >= end or end > self.snd_nxt:
                cnt["sack_blocks_invalid"] += 1
                continue
            start = max(start, self.snd_una)
            if start >= end:
                continue  # wholly below snd_una: old news
            for s, e in self.sacked_ranges.add(start, end):
                newly += self._tag_range(s, e)
        return newly

    def _tag_range(self, start: int, end: int) -> int:
        """Mark every skb inside ``[start, end)`` SACKed, splitting those it cuts."""
        q = self._rtx
        i = bisect_right(q, start, lo=self._head, key=_skb_start) - 1
        i = max(i, self._head)
        newly = 0
        while i < len(q) and q[i].start < end:
            skb = q[i]
            if skb.end <= start:
                i += 1
                continue
            if skb.start < start:
                self._split(i, start)
                i += 1
                continue
            if skb.end > end:
                self._split(i, end)
                skb = q[i]
            if not skb.sacked:
                skb.sacked = True
                self._sacked_out += 1
                if skb.lost:
                    skb.lost = False
                    self._lost_out -= 1
                if skb.retrans:
                    skb.retrans = False
                    self._retrans_out -= 1
                newly += 1
            i += 1
        return newly

    def _mark_lost_by_sack(self) -> None:
        """RFC 6675 IsLost: a hole with ``dupack_threshold`` SACKed skbs above it is lost."""
        q = self._rtx
        highest = self.sacked_ranges.highest()
        if highest is None:
            return
        i = bisect_left(q, highest, lo=self._head, key=_skb_start) - 1
        count = 0
        boundary: int | None = None
        while i >= self._head:
            skb = q[i]
            if skb.start < self._lost_high:
                break
            if skb.sacked:
                count += 1
                if count >= self.config.dupack_threshold:
                    boundary = skb.start
                    break
            i -= 1
        if boundary is None:
            return
        j = bisect_left(q, self._lost_high, lo=self._head, key=_skb_start)
        j = max(j - 1, self._head)
        while j < len(q) and q[j].start < boundary:
            self._mark_lost(q[j])
            j += 1
        self._lost_high = max(self._lost_high, boundary)

    def _mark_lost(self, skb: _Skb) -> None:
        if skb.sacked or skb.lost:
            return
        skb.lost = True
        self._lost_out += 1
        if skb.start < self._retx_hint:
            self._retx_hint = skb.start

    def _head_skb(self) -> _Skb | None:
        return self._rtx[self._head] if self._head < len(self._rtx) else None

    # -- Reno duplicate-ACK accounting --------------------------------------------------------

    def _add_reno_sack(self) -> None:
        """``tcp_add_reno_sack``: a duplicate ACK means one more packet left the network."""
        self._sacked_out += 1
        holes = min(max(self._lost_out, 1), self.packets_out)
        if self._sacked_out + holes > self.packets_out:
            self._sacked_out = max(self.packets_out - holes, 0)

    def _remove_reno_sacks(self, acked: int) -> None:
        """One acked packet filled the hole; the others were already counted as dupacks."""
        if acked > 0:
            self._sacked_out -= min(acked - 1, self._sacked_out)
        self._sacked_out = min(self._sacked_out, max(self.packets_out - 1, 0))

    # -- congestion control ------------------------------------------------------------------

    def _cong_avoid(self, acked: int, prior_in_flight: int) -> None:
        """Reno ``tcp_reno_cong_avoid`` in packets: slow start, then +1 per cwnd acked."""
        if not (self._cwnd_limited or prior_in_flight >= self.cwnd):
            return
        if self.cwnd < self.ssthresh:
            grown = min(self.cwnd + acked, self.ssthresh)
            acked -= grown - self.cwnd
            self.cwnd = grown
            if acked <= 0:
                return
        self.cwnd_cnt += acked
        if self.cwnd_cnt >= self.cwnd:
            delta = self.cwnd_cnt // self.cwnd
            self.cwnd_cnt -= delta * self.cwnd
            self.cwnd += delta

    def _reno_ssthresh(self) -> int:
        return max(self.cwnd >> 1, 2)

    def _fastretrans_alert(self, now: int, is_dupack: bool, prior_una: int) -> None:
        """The congestion state machine after an ACK (``tcp_fastretrans_alert``)."""
        advanced = self.snd_una > prior_una
        head = self._head_skb()
        if self.ca_state == CaState.RECOVERY:
            if self.snd_una < self.recover:
                if advanced and head is not None and not self.sack_ok:
                    # NewReno partial ACK (RFC 6582 §3.2 step 3): the next hole is lost too.
                    # With SACK the scoreboard says which holes are lost (tcp_is_reno in
                    # tcp_fastretrans_alert): resending the new head on every partial ACK
                    # would resend data that was merely not acknowledged yet.
                    self.counters["partial_acks"] += 1
                    self._mark_lost(head)
                    self._force_retransmit = True
                return
            # tcp_end_cwnd_reduction: the reduced window is what recovery leaves behind.
            self.cwnd = self.ssthresh
            self.cwnd_cnt = 0
            self._leave_to_open()
        elif self.ca_state == CaState.LOSS:
            if self.snd_una < self.recover:
                return
            self._leave_to_open()
        # Open or Disorder (possibly just left): is it time to recover?
        if advanced and not self.sack_ok:
            self.dupacks = 0
            self._sacked_out = 0
        elif advanced:
            self.dupacks = 0
        head_lost = head is not None and head.lost
        if head is not None and (self.dupacks >= self.config.dupack_threshold or head_lost):
            self._enter_recovery(now)
        elif self._sacked_out or self.dupacks:
            self.ca_state = CaState.DISORDER
        else:
            self.ca_state = CaState.OPEN

    def _leave_to_open(self) -> None:
        self.ca_state = CaState.OPEN
        self.dupacks = 0
        if not self.sack_ok:
            self._sacked_out = 0

    def _enter_recovery(self, now: int) -> None:
        self.counters["recoveries"] += 1
        self.ssthresh = self._reno_ssthresh()
        self.cwnd = self.ssthresh
        self.cwnd_cnt = 0
        self.recover = self.snd_nxt
        self.ca_state = CaState.RECOVERY
        head = self._head_skb()
        if head is not None:
            self._mark_lost(head)
        # RFC 5681 §3.2 step 2: the first retransmission goes out whatever cwnd says.
        self._force_retransmit = True

    # -- output ------------------------------------------------------------------------------

    def _output(self, now: int) -> list[Segment]:
        """Retransmissions first, then new data (``tcp_xmit_retransmit_queue``, then
        ``tcp_write_xmit``), then the timers."""
        out: list[Segment] = []
        if self.state in _SENDING_STATES:
            out += self._xmit_retransmit_queue(now)
            out += self._write_xmit(now)
        self._arm_timers(now)
        return out

    def _xmit_retransmit_queue(self, now: int) -> list[Segment]:
        out: list[Segment] = []
        force = self._force_retransmit
        self._force_retransmit = False
        if not self._lost_out:
            return out
        q = self._rtx
        i = max(bisect_right(q, self._retx_hint, lo=self._head, key=_skb_start) - 1,
                self._head)
        wnd_end = self.snd_una + self.snd_wnd
        while i < len(q):
            skb = q[i]
            if skb.sacked or skb.retrans:
                self._retx_hint = skb.end
                i += 1
                continue
            if not skb.lost:
                break
            if not force and self.in_flight >= self.cwnd:
                self._cwnd_limited = True
                break
            if skb.start >= wnd_end and skb.start != self.snd_una:
                break  # tcp_retransmit_skb: not beyond the receiver's window
            self._reshape_for_retransmit(i)
            skb = q[i]
            skb.retrans = True
            skb.ever_retrans = True
            self._retrans_out += 1
            self._retx_hint = skb.end
            kind = "retrans_rto" if self.ca_state == CaState.LOSS else "retrans_fast"
            self.counters[kind] += 1
            out.append(self._data_segment(skb, now, retransmit=True))
            force = False
            i += 1
        return out

    def _reshape_for_retransmit(self, i: int) -> None:
        """Cut the skb at ``i`` to at most one MSS; with ``resegment``, first merge it with
        the lost skbs after it so the retransmission is a full MSS from its start."""
        q = self._rtx
        mss = self.mss_now
        if self.config.resegment:
            j = i + 1
            size = self._payload_len(q[i])
            while (j < len(q) and size < mss and q[j].lost and not q[j].sacked
                   and not q[j].retrans):
                size += self._payload_len(q[j])
                j += 1
            if j > i + 1:
                self._collapse(i, j)
        if self._payload_len(q[i]) > mss:
            self._split(i, q[i].start + mss)

    def _payload_len(self, skb: _Skb) -> int:
        return min(skb.end, self.total_bytes) - skb.start

    def _split(self, i: int, at: int) -> None:
        """``tcp_fragment``: split skb ``i`` at offset ``at`` (flags copied to both)."""
        skb = self._rtx[i]
        assert skb.start < at < skb.end
        tail = _Skb(start=at, end=skb.end, fin=skb.fin, psh=skb.psh, sent_at=skb.sent_at,
                    sacked=skb.sacked, lost=skb.lost, retrans=skb.retrans,
                    ever_retrans=skb.ever_retrans, probe=skb.probe)
        skb.end, skb.fin, skb.psh = at, False, False
        self._rtx.insert(i + 1, tail)
        if tail.sacked and self.sack_ok:
            self._sacked_out += 1
        if tail.lost:
            self._lost_out += 1
        if tail.retrans:
            self._retrans_out += 1
        if tail.probe:
            self._probe_out += 1

    def _collapse(self, i: int, j: int) -> None:
        """Merge skbs ``i..j-1`` (all lost, not SACKed, not retransmitted) into one."""
        q = self._rtx
        first, last = q[i], q[j - 1]
        for skb in q[i + 1:j]:
            self._forget(skb)
            first.ever_retrans |= skb.ever_retrans
            first.sent_at = min(first.sent_at, skb.sent_at)
        if first.probe:
            first.probe = False
            self._probe_out -= 1
        first.end, first.fin, first.psh = last.end, last.fin, last.psh
        del q[i + 1:j]

    def _write_xmit(self, now: int) -> list[Segment]:
        """Send new data while cwnd and the receiver's window allow."""
        out: list[Segment] = []
        self._rwnd_blocked = False
        self._cwnd_limited = False
        fin_seq = self.total_bytes
        while self.snd_nxt <= fin_seq:
            if self.in_flight >= self.cwnd:
                self._cwnd_limited = True
                break
            skb = self._new_skb(self.snd_nxt, self.mss_now, now)
            if skb is None:
                self._rwnd_blocked = True
                break
            out.append(self._queue_and_send(skb, now))
        return out

    def _new_skb(self, start: int, mss: int, now: int, limit: int | None = None) -> _Skb | None:
        """The next segment of new data from ``start`` that fits in the window, if any.

        ``limit`` allows a segment smaller than the MSS when the window is smaller
        (a window probe); otherwise the first MSS must fit entirely (tcp_snd_wnd_test).
        """
        wnd_end = self.snd_una + self.snd_wnd
        size = min(mss, self.total_bytes - start)
        if limit is not None:
            size = min(size, limit)
        fin = start + size == self.total_bytes
        if start + size + fin > wnd_end:
            if fin and size > 0 and start + size <= wnd_end:
                fin = False  # the data fits, the FIN follows when the window allows
            else:
                return None
        if size == 0 and not fin:
            return None
        end = start + size + fin
        psh = fin or end >= self.total_bytes
        if not psh and end - self.pushed > self.max_window >> 1:
            psh = True  # forced_push: half of the largest window written since the last PSH
        if psh:
            self.pushed = end
        return _Skb(start=start, end=end, fin=fin, psh=psh, sent_at=now)

    def _queue_and_send(self, skb: _Skb, now: int) -> Segment:
        self._rtx.append(skb)
        self.snd_nxt = skb.end
        if skb.fin:
            self.counters["fin_sent"] = 1
            if self.state == TcpState.ESTABLISHED:
                self.state = TcpState.FIN_WAIT1
            elif self.state == TcpState.CLOSE_WAIT:
                self.state = TcpState.LAST_ACK
        return self._data_segment(skb, now, retransmit=False)

    def _data_segment(self, skb: _Skb, now: int, *, retransmit: bool) -> Segment:
        size = self._payload_len(skb)
        payload = payload_bytes(self.flow_id, skb.start, size) if size > 0 else b""
        flags = TcpFlags.ACK
        if skb.psh and payload:
            flags |= TcpFlags.PSH
        if skb.fin:
            flags |= TcpFlags.FIN
        self.counters["segments_sent"] += 1
        self.counters["bytes_sent"] += size
        if retransmit:
            self.counters["segments_retransmitted"] += 1
            self.counters["bytes_retransmitted"] += size
        return self._segment(self.seq_of(skb.start), flags, payload, now)

    def _segment(self, seq: int, flags: TcpFlags, payload: bytes, now: int) -> Segment:
        opts = TcpOptions(timestamp=(self.tsval(now), self.ts_recent)) if self.ts_ok \
            else TcpOptions()
        window = min(self.config.rcv_wnd >> self.rcv_wscale, 0xFFFF)
        return Segment(self.src, self.sport, self.dst, self.dport, seq=seq, ack=self.rcv_nxt,
                       flags=flags, window=window, options=opts, payload=payload)

    def _ack_segment(self, now: int) -> Segment:
        self.counters["segments_sent"] += 1
        self.counters["acks_sent"] += 1
        return self._segment(self.seq_of(self.snd_nxt), TcpFlags.ACK, b"", now)

    # -- timers ------------------------------------------------------------------------------

    def _arm_timers(self, now: int) -> None:
        """Exactly one of the retransmission and persist timers runs while data is pending."""
        if self.state not in _SENDING_STATES:
            if self.state != TcpState.SYN_SENT:
                self._rto_at = None
            self._probe_at = None
            return
        persist = self._rwnd_blocked and (
            self.packets_out == 0
            or (self.snd_wnd == 0 and self.packets_out == self._probe_out))
        if persist:
            self._rto_at = None
            if self._probe_at is None:
                self._probe_at = now + self._probe_when()
            return
        # The window took data again (tcp_ack_probe): the probe back-off starts afresh.
        self._probe_at = None
        self.probe_backoff = 0
        if self.packets_out:
            if self._rto_at is None:
                self._rto_at = now + self.rto
        else:
            self._rto_at = None

    def _probe_when(self) -> int:
        """``tcp_probe0_when``: ``max(rto, RTO_MIN) << backoff``, capped at RTO_MAX."""
        base = max(self.rto, self.config.rto_min_ns)
        return min(base << min(self.probe_backoff, 30), self.config.rto_max_ns)

    def _retransmit_timer(self, now: int) -> list[Segment]:
        cfg = self.config
        if self.state == TcpState.SYN_SENT:
            if self._syn_retrans >= cfg.syn_retries:
                self._abort("ETIMEDOUT")
                return []
            self._syn_retrans += 1
            self.backoff += 1
            self.rto = min(self.rto << 1, cfg.rto_max_ns)
            self.counters["rto_count"] += 1
            self.counters["syn_retrans"] += 1
            self._rto_at = now + self.rto
            return [self._syn(now)]
        if self.state not in _SENDING_STATES or not self.packets_out:
            return []
        # A receiver that shrank its window to zero gets the retransmissions as probes,
        # and they do not count towards giving up (tcp_retransmit_timer).
        if self.snd_wnd != 0:
            if self.retransmits >= cfg.max_retries:
                self._abort("ETIMEDOUT")
                return []
            self.retransmits += 1
        self.counters["rto_count"] += 1
        self._enter_loss()
        self.backoff += 1
        self.rto = min(self.rto << 1, cfg.rto_max_ns)
        self._force_retransmit = True
        out = self._xmit_retransmit_queue(now)
        out += self._write_xmit(now)
        self._rto_at = now + self.rto
        self._arm_timers(now)
        return out

    def _enter_loss(self) -> None:
        """``tcp_enter_loss``: everything not SACKed is lost, cwnd 1, slow start again."""
        # A timeout during recovery keeps the ssthresh recovery already set; one during
        # a loss episode keeps it too: only a fresh episode halves it (tcp_enter_loss).
        if self.ca_state in (CaState.OPEN, CaState.DISORDER, CaState.CWR):
            self.ssthresh = self._reno_ssthresh()
        self.cwnd = 1
        self.cwnd_cnt = 0
        self.ca_state = CaState.LOSS
        self.recover = self.snd_nxt
        self.dupacks = 0
        head = self._head_skb()
        reneged = head is not None and head.sacked  # tcp_timeout_mark_lost
        if reneged:
            self.counters["sack_reneging"] += 1
            self.sacked_ranges = IntervalSet()
        if not self.sack_ok or reneged:
            self._sacked_out = 0
        for skb in itertools.islice(self._rtx, self._head, None):
            skb.retrans = False
            if reneged:
                skb.sacked = False
            if not skb.sacked and not skb.lost:
                skb.lost = True
                self._lost_out += 1
        self._retrans_out = 0
        self._lost_high = self.snd_nxt
        self._retx_hint = self.snd_una

    def _probe_timer(self, now: int) -> list[Segment]:
        """``tcp_probe_timer`` / ``tcp_send_probe0``."""
        cfg = self.config
        if self.state not in _SENDING_STATES:
            return []
        if self.probes_out >= cfg.max_retries:
            self._abort("ETIMEDOUT")
            return []
        out: list[Segment] = []
        wnd_end = self.snd_una + self.snd_wnd
        if self.snd_nxt <= self.total_bytes and self.snd_nxt < wnd_end:
            # tcp_write_wakeup: the window is open but smaller than a segment: send what fits.
            skb = self._new_skb(self.snd_nxt, self.mss_now, now, limit=wnd_end - self.snd_nxt)
            if skb is not None:
                out.append(self._queue_and_send(skb, now))
        if not out:
            out.append(self._zero_window_probe(now))
        self.counters["probes"] += 1
        self.probes_out += 1
        self.probe_backoff += 1
        self._probe_at = None
        self._rwnd_blocked = True
        self._arm_timers(now)
        return out

    def _zero_window_probe(self, now: int) -> Segment:
        if self.config.probe_style == "data":
            head = self._head_skb()
            if head is not None and head.probe:
                # The byte already sent as a probe is still unacknowledged: send it again.
                self.counters["retrans_probe"] += 1
                return self._data_segment(head, now, retransmit=True)
            if self.snd_nxt <= self.total_bytes and self.packets_out == self._probe_out:
                size = min(1, self.total_bytes - self.snd_nxt)
                fin = size == 0
                skb = _Skb(start=self.snd_nxt, end=self.snd_nxt + 1, fin=fin,
                           psh=self.snd_nxt + 1 >= self.total_bytes, sent_at=now, probe=True)
                self._probe_out += 1
                return self._queue_and_send(skb, now)
        # tcp_xmit_probe_skb: a zero-length ACK one below snd_una, which the receiver
        # must answer with an ACK carrying its current window.
        self.counters["segments_sent"] += 1
        return self._segment(seq_add(self.seq_of(self.snd_una), -1), TcpFlags.ACK, b"", now)

    # -- debugging aid -----------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Recount the scoreboard from the queue and compare (used by tests)."""
        live = self._rtx[self._head:]
        for a, b in itertools.pairwise(live):
            assert a.end == b.start, (a, b)
        if live:
            assert live[0].start == self.snd_una, (live[0], self.snd_una)
            assert live[-1].end == self.snd_nxt
        else:
            assert self.snd_una == self.snd_nxt
        assert self._lost_out == sum(s.lost for s in live)
        assert self._retrans_out == sum(s.retrans for s in live)
        assert self._probe_out == sum(s.probe for s in live)
        if self.sack_ok:
            assert self._sacked_out == sum(s.sacked for s in live)
        assert 0 <= self.in_flight <= self.packets_out
        for s in live:
            assert s.start < s.end and s.fin == (s.end == self.total_bytes + 1)
            assert not (s.sacked and (s.lost or s.retrans))
            assert s.lost or not s.retrans
            if self.sack_ok:
                covered = any(a <= s.start and s.end <= b for a, b in self.sacked_ranges)
                assert s.sacked == covered, (s, list(self.sacked_ranges))


_COUNTER_NAMES = (
    "segments_sent", "bytes_sent", "segments_retransmitted", "bytes_retransmitted",
    "retrans_fast", "retrans_rto", "retrans_probe", "probes", "rto_count", "syn_retrans",
    "recoveries", "partial_acks", "segments_received", "acks_received", "acks_sent",
    "bytes_acked", "dupacks", "sacks", "dsacks", "sack_blocks_invalid", "old_acks",
    "invalid_acks", "window_updates", "zero_window_acks", "rtt_samples", "rst_received",
    "rst_ignored", "challenge_acks", "dup_syn", "out_of_window", "oow_acks_skipped",
    "rcv_out_of_order", "bytes_received", "fin_sent", "fin_acked", "fin_received",
    "aborts", "ignored", "misrouted", "sack_reneging", "sack_reneging_suspected",
    "fin_retransmitted_to_us",
)


# --------------------------------------------------------------------------- peer


class Peer:
    """Every flow of one remote host, plus the wire impairments on both directions.

    Methods take frames (bare IPv4 packets) from the receiver and timer firings, and
    return ``(deliver_at_ns, frame)`` pairs for the wire towards the NIC, already passed
    through the data-path impairments. ACK frames pass through ``ack_impairments`` on
    arrival: those it delays are kept here and handled from :meth:`on_timer`.
    """

    def __init__(self, senders: Iterable[TcpSender] = (), *,
                 impairments: WireImpairments | None = None,
                 ack_impairments: WireImpairments | None = None) -> None:
        self.flows: dict[FlowKey, TcpSender] = {}
        self.impairments = impairments if impairments is not None else WireImpairments()
        self.ack_impairments = ack_impairments
        self._acks_due: list[tuple[int, int, bytes]] = []  # (at, order, frame) heap
        self._order = itertools.count()
        self.counters: dict[str, int] = dict.fromkeys(
            ("frames_in", "frames_out", "bad_frames", "unknown_flow", "acks_delayed"), 0)
        for sender in senders:
            self.add(sender)

    def add(self, sender: TcpSender) -> None:
        key = sender.four_tuple
        if key in self.flows:
            raise ValueError(f"a flow with 4-tuple {key} already exists")
        self.flows[key] = sender

    def route(self, seg: Segment) -> TcpSender | None:
        """The flow a segment from the receiver belongs to (its 4-tuple reversed)."""
        return self.flows.get((seg.dst, seg.dport, seg.src, seg.sport))

    @property
    def done(self) -> bool:
        """Every flow has finished (delivered everything, or been aborted)."""
        return all(s.finished for s in self.flows.values())

    def connect(self, now: int) -> list[Delivery]:
        """Open every flow that has not been opened."""
        segs: list[Segment] = []
        for sender in self.flows.values():
            if not sender.opened:
                segs += sender.connect(now)
        return self.frames_out(segs, now)

    def on_frame(self, frame: bytes, now: int) -> list[Delivery]:
        """A frame from the receiver (the NIC's TX) reached this host's wire."""
        self.counters["frames_in"] += 1
        if self.ack_impairments is not None and self.ack_impairments.active:
            due_now: list[bytes] = []
            for at, f in self.ack_impairments.apply(frame, now):
                if at <= now:
                    due_now.append(f)
                else:
                    self.counters["acks_delayed"] += 1
                    heapq.heappush(self._acks_due, (at, next(self._order), f))
            out: list[Delivery] = []
            for f in due_now:
                out += self._handle_frame(f, now)
            return out
        return self._handle_frame(frame, now)

    def on_segment(self, seg: Segment, now: int) -> list[Delivery]:
        """A decoded segment from the receiver (no ACK-path impairment applied)."""
        sender = self.route(seg)
        if sender is None:
            self.counters["unknown_flow"] += 1
            return []
        return self.frames_out(sender.on_segment(seg, now), now)

    def on_timer(self, now: int) -> list[Delivery]:
        """Deliver delayed ACKs, fire flow timers, release held data frames."""
        out: list[Delivery] = []
        if self.ack_impairments is not None:
            for at, f in self.ack_impairments.on_timer(now):
                heapq.heappush(self._acks_due, (at, next(self._order), f))
        while self._acks_due and self._acks_due[0][0] <= now:
            _, _, f = heapq.heappop(self._acks_due)
            out += self._handle_frame(f, now)
        for sender in self.flows.values():
            deadline = sender.next_deadline()
            if deadline is not None and deadline <= now:
                out += self.frames_out(sender.on_timer(now), now)
        released = self.impairments.on_timer(now)
        self.counters["frames_out"] += len(released)
        out += released
        out.sort(key=lambda d: d[0])
        return out

    def next_deadline(self) -> int | None:
        times = [s.next_deadline() for s in self.flows.values()]
        times.append(self.impairments.next_deadline())
        if self.ack_impairments is not None:
            times.append(self.ack_impairments.next_deadline())
        if self._acks_due:
            times.append(self._acks_due[0][0])
        present = [t for t in times if t is not None]
        return min(present) if present else None

    def frames_out(self, segments: Iterable[Segment], now: int) -> list[Delivery]:
        """Encode segments and pass them through the data-path impairments.

        Returns ``(deliver_at_ns, frame)`` sorted by time; equal times keep send order.
        """
        out: list[Delivery] = []
        imp = self.impairments
        for seg in segments:
            frame = wire.encode(seg)
            if imp.active:
                out += imp.apply(frame, now)
            else:
                out.append((now, frame))
        out.sort(key=lambda d: d[0])
        self.counters["frames_out"] += len(out)
        return out

    def flush(self, now: int) -> list[Delivery]:
        """End of run: release every frame the impairments still hold."""
        out = self.impairments.flush(now)
        self.counters["frames_out"] += len(out)
        return out

    def stats(self) -> dict[str, int]:
        """Peer counters, the sum of every flow's counters, and the impairments' counts."""
        out = dict(self.counters)
        for sender in self.flows.values():
            for name in _COUNTER_NAMES:
                out[name] = out.get(name, 0) + sender.counters[name]
        out["flows"] = len(self.flows)
        out["flows_done"] = sum(s.done for s in self.flows.values())
        out["flows_aborted"] = sum(s.aborted for s in self.flows.values())
        for name, value in self.impairments.stats().items():
            out[f"wire_{name}"] = value
        if self.ack_impairments is not None:
            for name, value in self.ack_impairments.stats().items():
                out[f"ackpath_{name}"] = value
        return out

    def flow_stats(self) -> dict[FlowKey, dict[str, int]]:
        return {key: sender.stats() for key, sender in self.flows.items()}

    def _handle_frame(self, frame: bytes, now: int) -> list[Delivery]:
        try:
            seg = wire.decode(frame)
        except wire.MalformedPacket:
            self.counters["bad_frames"] += 1
            return []
        return self.on_segment(seg, now)
