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
* **Congestion control** (:mod:`actors.peer.congestion`): Reno in packets. Packets in
  flight are ``packets_out - sacked_out - lost_out + retrans_out`` (``tcp_packets_in_flight``).
* **Loss recovery.** Fast retransmit on ``dupack_threshold`` duplicate ACKs, or, with
  SACK, as soon as ``dupack_threshold`` SACKed packets lie above the first hole (RFC 6675
  ``IsLost``). Recovery halves ``cwnd`` (``ssthresh = max(cwnd/2, 2)``), retransmits the
  lost packets first, and is NewReno-style: a partial ACK marks the new first unacked
  packet lost and retransmits it at once; the ACK that covers the recovery point ends
  recovery with ``cwnd = ssthresh``.
* **SACK scoreboard** (:mod:`actors.peer.scoreboard`): the retransmission queue and its
  SACKed / lost / retransmitted marks. A receiver may renege (Linux prunes its
  out-of-order queue under memory pressure): when the cumulative ACK stops at a SACKed
  segment the RTO is shortened, and the timeout clears every SACK mark so the discarded
  data is sent again (``tcp_check_sack_reneging``, ``tcp_timeout_mark_lost``).
* **RTT and RTO** (:mod:`actors.peer.rtt`): RFC 6298. Samples come, as in
  ``tcp_clean_rtx_queue``, from the send time of the oldest newly acked
  never-retransmitted packet (Karn), else from the timestamp echo, which stays valid for
  retransmitted data (RFC 7323). An RTO marks everything not SACKed lost, sets ``cwnd``
  to 1, doubles the RTO (back-off kept until a valid RTT sample) and retransmits from
  ``snd_una``; with ``resegment=True`` a retransmission is cut into MSS-sized segments
  from ``snd_una`` whatever the original cut.
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

import random
from bisect import bisect_right
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

from actors.peer.congestion import CaState, Reno
from actors.peer.payload import payload_bytes
from actors.peer.rtt import TCP_TIMEOUT_FALLBACK, RttEstimator
from actors.peer.scoreboard import IntervalSet, Scoreboard, TxSkb, skb_start
from actors.profiles import MS
from protocol.constants import (
    TCP_INIT_CWND,
    TCP_MAX_WSCALE,
    TCP_MSS_DEFAULT,
    TCP_RTO_MAX,
    TCP_RTO_MIN,
    TCP_TIMEOUT_INIT,
)
from protocol.segment import Segment, TcpFlags, TcpOptions
from protocol.seq import SEQ_MASK, after, before, seq_add, seq_sub

__all__ = [
    "SENDER_COUNTERS",
    "TCP_INIT_CWND",
    "TCP_MSS_DEFAULT",
    "TCP_RTO_MAX",
    "TCP_RTO_MIN",
    "TCP_TIMEOUT_FALLBACK",
    "TCP_TIMEOUT_INIT",
    "CaState",
    "FlowKey",
    "IntervalSet",
    "ProbeStyle",
    "SenderConfig",
    "TcpSender",
    "TcpState",
]

FlowKey = tuple[str, int, str, int]
ProbeStyle = Literal["linux", "data"]

TCP_TIMEWAIT_LEN = 60_000 * MS
TCPOLEN_TSTAMP_ALIGNED = 12
TCP_HEADER_LEN = 20


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

        # Negotiated in the handshake (SACK on the scoreboard: ``sack_ok``).
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

        # Congestion control (packets), RTT estimation (ns), retransmission queue.
        self.cc = Reno(self.config.initial_cwnd)
        self.recover = 0  # high_seq: the recovery point
        self.dupacks = 0
        self._cwnd_limited = False
        self._rwnd_blocked = False
        cfg = self.config
        self.rtt = RttEstimator(cfg.rto_initial_ns, cfg.rto_min_ns, cfg.rto_max_ns)
        self.counters: dict[str, int] = dict.fromkeys(SENDER_COUNTERS, 0)
        self.sb = Scoreboard(total_bytes, cfg.dupack_threshold, self.counters)
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

    # The parts' state, read under the names Linux gives it.

    @property
    def sack_ok(self) -> bool:
        return self.sb.sack_ok

    @property
    def packets_out(self) -> int:
        return self.sb.packets_out

    @property
    def sacked_out(self) -> int:
        return self.sb.sacked_out

    @property
    def lost_out(self) -> int:
        return self.sb.lost_out

    @property
    def retrans_out(self) -> int:
        return self.sb.retrans_out

    @property
    def sacked_ranges(self) -> IntervalSet:
        return self.sb.sacked_ranges

    @property
    def in_flight(self) -> int:
        """``tcp_packets_in_flight``: packets sent and believed still in the network."""
        return self.sb.in_flight

    @property
    def cwnd(self) -> int:
        return self.cc.cwnd

    @cwnd.setter
    def cwnd(self, value: int) -> None:
        self.cc.cwnd = value

    @property
    def ssthresh(self) -> int:
        return self.cc.ssthresh

    @ssthresh.setter
    def ssthresh(self, value: int) -> None:
        self.cc.ssthresh = value

    @property
    def cwnd_cnt(self) -> int:
        return self.cc.cwnd_cnt

    @property
    def srtt(self) -> int:
        return self.rtt.srtt

    @property
    def rttvar(self) -> int:
        return self.rtt.rttvar

    @property
    def rto(self) -> int:
        return self.rtt.rto

    @property
    def backoff(self) -> int:
        return self.rtt.backoff

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
        # The actor loop asks before every wait: compare, build nothing.
        best = self._rto_at
        for t in (self._probe_at, self._tw_at):
            if t is not None and (best is None or t < best):
                best = t
        return best

    def stats(self) -> dict[str, int]:
        """Counters and current state (plain names; ``state`` as TCP_* number)."""
        out = dict(self.counters)
        out.update(
            cwnd=self.cc.cwnd, ssthresh=self.cc.ssthresh, srtt_us=self.rtt.srtt // 1000,
            rttvar_us=self.rtt.rttvar // 1000, rto_us=self.rtt.rto // 1000, snd_una=self.snd_una,
            snd_nxt=self.snd_nxt, snd_wnd=self.snd_wnd, packets_out=self.sb.packets_out,
            sacked_out=self.sb.sacked_out, lost_out=self.sb.lost_out,
            retrans_out=self.sb.retrans_out, state=int(self.state), ca_state=int(self.ca_state),
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
        self._rto_at = now + self.rtt.rto
        return [self._syn(now)]

    def on_segment(self, seg: Segment, now: int) -> list[Segment]:
        """A segment from the receiver arrived; returns what to send in response."""
        self.counters["segments_received"] += 1
        # The reply 4-tuple field by field: no tuples built for every ACK.
        if (seg.sport != self.dport or seg.dport != self.sport or seg.src != self.dst
                or seg.dst != self.src):
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
        self.sb.sack_ok = cfg.sack and opts.sack_permitted
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
        if not self.rtt.sampled:
            self.rtt.established_without_sample(self._syn_retrans > 0, cfg.rto_initial_ns)
        self.rtt.backoff = 0
        self.retransmits = 0
        if self._syn_retrans > 1:
            self.cc.cwnd = 1  # tcp_init_transfer: RFC 5681 after a lost SYN or SYN-ACK
        out = [self._ack_segment(now)]
        out += self._output(now)
        return out

    # -- synchronized states -----------------------------------------------------------------

    def _rcv_synchronized(self, seg: Segment, now: int) -> list[Segment]:
        seq_ok = self._sequence_acceptable(seg)
        flags = seg.flags
        if flags & TcpFlags.RST:
            return self._rcv_rst(seg, seq_ok, now)
        if flags & TcpFlags.SYN:
            # A retransmitted SYN-ACK (our ACK was lost) or anything else with SYN: answer
            # with an ACK of what we have (tcp_send_dupack / challenge ACK), process nothing.
            self.counters["dup_syn"] += 1
            return [self._ack_segment(now)]
        if (self.state == TcpState.TIME_WAIT and flags & TcpFlags.FIN
                and seg.end_seq == self.rcv_nxt):
            # Our ACK of the receiver's FIN was lost: ACK again and restart the 2MSL wait.
            self.counters["fin_retransmitted_to_us"] += 1
            self._tw_at = now + self.config.time_wait_ns
            return [self._ack_segment(now)]
        if not seq_ok:
            self.counters["out_of_window"] += 1
            return self._oow_ack(seg, now)
        if not flags & TcpFlags.ACK:
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
        prior_in_flight = self.sb.in_flight
        self.probes_out = 0  # an answer from the receiver: probes are not going unanswered
        cnt["acks_received"] += 1

        newly_sacked = 0
        if seg.options.sack_blocks and self.sack_ok:
            newly_sacked = self._sacktag(seg.options.sack_blocks, ack)

        if ack < prior_una:
            cnt["old_acks"] += 1
            if newly_sacked:
                self.sb.mark_lost_by_sack()
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
                         and not window_changed and self.sb.packets_out > self.sb.probe_out
                         and self.snd_wnd > 0)
        if is_dupack:
            cnt["dupacks"] += 1
            self.dupacks += 1
            if not self.sack_ok:
                self.sb.add_reno_sack()
        if self.snd_wnd == 0:
            cnt["zero_window_acks"] += 1

        if advanced:
            self._on_progress(now, acked_pkts, prior_in_flight)
        if newly_sacked:
            self.sb.mark_lost_by_sack()
        self._fastretrans_alert(now, is_dupack, prior_una)
        if advanced:
            self._check_sack_reneging(now)
        return advanced

    def _check_sack_reneging(self, now: int) -> None:
        """``tcp_check_sack_reneging``: the cumulative ACK stops at a segment we hold as
        SACKed, so the receiver dropped out-of-order data it had SACKed (a Linux receiver
        pruning its ofo queue does). Give it a little time to ACK further, then let the
        RTO clear the SACK marks and resend."""
        head = self.sb.head_skb()
        if head is not None and head.sacked and self.ca_state != CaState.LOSS:
            self.counters["sack_reneging_suspected"] += 1
            self._rto_at = now + max(self.rtt.srtt >> 1, 10 * MS)

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
        acked, first_sent, retrans_acked = self.sb.clean(ack)
        self.counters["bytes_acked"] += (min(ack, self.total_bytes)
                                         - min(self.snd_una, self.total_bytes))
        self.snd_una = ack

        # Karn: time the oldest newly acked skb that was never retransmitted, unless
        # retransmitted data was acked too; else the timestamp echo (RFC 7323 §4).
        tsecr = seg.options.tsecr if self.ts_ok else None
        if first_sent is not None and not retrans_acked:
            self._rtt_sample(now - first_sent)
        elif tsecr:
            self._rtt_sample(self._ts_rtt(tsecr, now))
        return acked

    def _on_progress(self, now: int, acked_pkts: int, prior_in_flight: int) -> None:
        """snd_una advanced: timers, FIN state, cwnd growth."""
        self.retransmits = 0
        if self.sb.packets_out:
            self._rto_at = now + self.rtt.rto  # RFC 6298 (5.3)
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
            self.cc.cong_avoid(acked_pkts, prior_in_flight, self._cwnd_limited)

    def _rtt_sample(self, rtt: int) -> None:
        self.rtt.sample(rtt)
        self.counters["rtt_samples"] += 1

    def _ts_rtt(self, tsecr: int, now: int) -> int:
        return ((self.tsval(now) - tsecr) & SEQ_MASK) * MS

    # -- SACK --------------------------------------------------------------------------------

    def _sacktag(self, blocks: tuple[tuple[int, int], ...], ack: int) -> int:
        """``tcp_sacktag_write_queue``: mark SACKed skbs; returns how many became SACKed."""
        ranges = [(self.offset_of(s), self.offset_of(e)) for s, e in blocks]
        return self.sb.sacktag(ranges, ack, self.snd_una, self.snd_nxt)

    # -- congestion control ------------------------------------------------------------------

    def _fastretrans_alert(self, now: int, is_dupack: bool, prior_una: int) -> None:
        """The congestion state machine after an ACK (``tcp_fastretrans_alert``)."""
        advanced = self.snd_una > prior_una
        head = self.sb.head_skb()
        if self.ca_state == CaState.RECOVERY:
            if self.snd_una < self.recover:
                if advanced and head is not None and not self.sack_ok:
                    # NewReno partial ACK (RFC 6582 §3.2 step 3): the next hole is lost too.
                    # With SACK the scoreboard says which holes are lost (tcp_is_reno in
                    # tcp_fastretrans_alert): resending the new head on every partial ACK
                    # would resend data that was merely not acknowledged yet.
                    self.counters["partial_acks"] += 1
                    self.sb.mark_lost(head)
                    self._force_retransmit = True
                return
            self.cc.end_recovery()
            self._leave_to_open()
        elif self.ca_state == CaState.LOSS:
            if self.snd_una < self.recover:
                return
            self._leave_to_open()
        # Open or Disorder (possibly just left): is it time to recover?
        if advanced and not self.sack_ok:
            self.dupacks = 0
            self.sb.sacked_out = 0
        elif advanced:
            self.dupacks = 0
        head_lost = head is not None and head.lost
        if head is not None and (self.dupacks >= self.config.dupack_threshold or head_lost):
            self._enter_recovery(now)
        elif self.sb.sacked_out or self.dupacks:
            self.ca_state = CaState.DISORDER
        else:
            self.ca_state = CaState.OPEN

    def _leave_to_open(self) -> None:
        self.ca_state = CaState.OPEN
        self.dupacks = 0
        if not self.sack_ok:
            self.sb.sacked_out = 0

    def _enter_recovery(self, now: int) -> None:
        self.counters["recoveries"] += 1
        self.cc.enter_recovery()
        self.recover = self.snd_nxt
        self.ca_state = CaState.RECOVERY
        head = self.sb.head_skb()
        if head is not None:
            self.sb.mark_lost(head)
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
        if not self.sb.lost_out:
            return out
        q = self.sb.rtx
        i = max(bisect_right(q, self.sb.retx_hint, lo=self.sb.head, key=skb_start) - 1,
                self.sb.head)
        wnd_end = self.snd_una + self.snd_wnd
        while i < len(q):
            skb = q[i]
            if skb.sacked or skb.retrans:
                self.sb.retx_hint = skb.end
                i += 1
                continue
            if not skb.lost:
                break
            if not force and self.sb.in_flight >= self.cc.cwnd:
                self._cwnd_limited = True
                break
            if skb.start >= wnd_end and skb.start != self.snd_una:
                break  # tcp_retransmit_skb: not beyond the receiver's window
            self.sb.reshape_for_retransmit(i, self.mss_now, self.config.resegment)
            skb = q[i]
            skb.retrans = True
            skb.ever_retrans = True
            self.sb.retrans_out += 1
            self.sb.retx_hint = skb.end
            kind = "retrans_rto" if self.ca_state == CaState.LOSS else "retrans_fast"
            self.counters[kind] += 1
            out.append(self._data_segment(skb, now, retransmit=True))
            force = False
            i += 1
        return out

    def _write_xmit(self, now: int) -> list[Segment]:
        """Send new data while cwnd and the receiver's window allow."""
        out: list[Segment] = []
        self._rwnd_blocked = False
        self._cwnd_limited = False
        fin_seq = self.total_bytes
        sb, cc = self.sb, self.cc
        mss = self.mss_now  # nothing sending does changes it
        while self.snd_nxt <= fin_seq:
            if sb.in_flight >= cc.cwnd:
                self._cwnd_limited = True
                break
            skb = self._new_skb(self.snd_nxt, mss, now)
            if skb is None:
                self._rwnd_blocked = True
                break
            out.append(self._queue_and_send(skb, now))
        return out

    def _new_skb(self, start: int, mss: int, now: int, limit: int | None = None) -> TxSkb | None:
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
        return TxSkb(start, end, fin, psh, now)

    def _queue_and_send(self, skb: TxSkb, now: int) -> Segment:
        self.sb.append(skb)
        self.snd_nxt = skb.end
        if skb.fin:
            self.counters["fin_sent"] = 1
            if self.state == TcpState.ESTABLISHED:
                self.state = TcpState.FIN_WAIT1
            elif self.state == TcpState.CLOSE_WAIT:
                self.state = TcpState.LAST_ACK
        return self._data_segment(skb, now, retransmit=False)

    def _data_segment(self, skb: TxSkb, now: int, *, retransmit: bool) -> Segment:
        size = self.sb.payload_len(skb)
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

    def _segment(self, seq: int, flags: int, payload: bytes, now: int) -> Segment:
        # Positional: every segment sent is built here, and keywords cost per call.
        opts = TcpOptions(None, None, False, (), (self.tsval(now), self.ts_recent)) \
            if self.ts_ok else TcpOptions()
        window = min(self.config.rcv_wnd >> self.rcv_wscale, 0xFFFF)
        return Segment(self.src, self.sport, self.dst, self.dport, seq, self.rcv_nxt, flags,
                       window, opts, payload)

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
            self.sb.packets_out == 0
            or (self.snd_wnd == 0 and self.sb.packets_out == self.sb.probe_out))
        if persist:
            self._rto_at = None
            if self._probe_at is None:
                self._probe_at = now + self.rtt.probe_interval(self.probe_backoff)
            return
        # The window took data again (tcp_ack_probe): the probe back-off starts afresh.
        self._probe_at = None
        self.probe_backoff = 0
        if self.sb.packets_out:
            if self._rto_at is None:
                self._rto_at = now + self.rtt.rto
        else:
            self._rto_at = None

    def _retransmit_timer(self, now: int) -> list[Segment]:
        cfg = self.config
        if self.state == TcpState.SYN_SENT:
            if self._syn_retrans >= cfg.syn_retries:
                self._abort("ETIMEDOUT")
                return []
            self._syn_retrans += 1
            self.rtt.back_off()
            self.counters["rto_count"] += 1
            self.counters["syn_retrans"] += 1
            self._rto_at = now + self.rtt.rto
            return [self._syn(now)]
        if self.state not in _SENDING_STATES or not self.sb.packets_out:
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
        self.rtt.back_off()
        self._force_retransmit = True
        out = self._xmit_retransmit_queue(now)
        out += self._write_xmit(now)
        self._rto_at = now + self.rtt.rto
        self._arm_timers(now)
        return out

    def _enter_loss(self) -> None:
        """``tcp_enter_loss``: everything not SACKed is lost, cwnd 1, slow start again."""
        # A timeout during recovery keeps the ssthresh recovery already set; one during
        # a loss episode keeps it too: only a fresh episode halves it (tcp_enter_loss).
        self.cc.enter_loss(self.ca_state in (CaState.OPEN, CaState.DISORDER, CaState.CWR))
        self.ca_state = CaState.LOSS
        self.recover = self.snd_nxt
        self.dupacks = 0
        self.sb.timeout_mark_lost(self.snd_una, self.snd_nxt)

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
            head = self.sb.head_skb()
            if head is not None and head.probe:
                # The byte already sent as a probe is still unacknowledged: send it again.
                self.counters["retrans_probe"] += 1
                return self._data_segment(head, now, retransmit=True)
            if self.snd_nxt <= self.total_bytes and self.sb.packets_out == self.sb.probe_out:
                size = min(1, self.total_bytes - self.snd_nxt)
                fin = size == 0
                skb = TxSkb(start=self.snd_nxt, end=self.snd_nxt + 1, fin=fin,
                           psh=self.snd_nxt + 1 >= self.total_bytes, sent_at=now, probe=True)
                self.sb.probe_out += 1
                return self._queue_and_send(skb, now)
        # tcp_xmit_probe_skb: a zero-length ACK one below snd_una, which the receiver
        # must answer with an ACK carrying its current window.
        self.counters["segments_sent"] += 1
        return self._segment(seq_add(self.seq_of(self.snd_una), -1), TcpFlags.ACK, b"", now)

    # -- debugging aid -----------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Recount the scoreboard from the queue and compare (used by tests)."""
        self.sb.check_invariants(self.snd_una, self.snd_nxt)


# Every per-flow counter (plain names: these are the sender's, not kernel counters).
SENDER_COUNTERS = (
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
