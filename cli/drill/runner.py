"""Run a packetdrill script against a receiver under test.

The script's local side is the receiver (rxpath); the script plays the remote peer
and the application. :class:`DrillRunner` walks the events in time order:

- ``<`` packets are built in live sequence space and injected at their time;
- ``>`` packets are matched, in order, against what the receiver transmitted on the
  connection under test (flags, seq/ack relative to the ISNs, window if given,
  options unless ``<...>``, payload length, and time within the tolerance);
- system calls go through the receiver's socket API, blocking ones complete later
  and their return time is checked against ``...end``;
- shell commands apply sysctls and ``nstat | grep`` checks against the receiver's
  own counters; anything else is reported as skipped;
- ``%{ }%`` blocks run their assertions against tcp_info values.

Matching follows packetdrill's run_packet.c: sequence numbers of inbound segments
are the script's (the remote ISN is the SYN's seq), acks and SACK blocks are offset
by our ISN, a TS ecr is mapped to the TS val we actually sent for that script value.
One deliberate difference: the TS ecr of outbound packets is checked too (packetdrill
does not), since it shows ``ts_recent`` bookkeeping of the receiver.

The receiver is reached through the :class:`Receiver` protocol, so the same runner can
drive the kernel model on a virtual clock (:mod:`cli.drill.model`) or the real
actor processes in real time (:mod:`cli.drill.pipeline`).
"""

from __future__ import annotations

import errno as errno_mod
import re
import shlex
import textwrap
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from actors.profiles import US
from cli.drill.packetdrill import (
    BinaryExpr,
    CallExpr,
    CodeSpec,
    CommandSpec,
    EllipsisExpr,
    Event,
    Expr,
    IntExpr,
    ListExpr,
    PacketSpec,
    Script,
    StructExpr,
    SyscallSpec,
    TcpOptionSpec,
    TimeKind,
    WordExpr,
)
from protocol.constants import (
    EPOLLERR,
    EPOLLHUP,
    EPOLLIN,
    EPOLLOUT,
    EPOLLRDHUP,
    EPOLLRDNORM,
    EPOLLWRNORM,
)
from protocol.segment import Segment, TcpFlags, TcpOptions
from protocol.seq import seq_add, seq_sub
from protocol.tcp_options import OPTION_BY_NAME, default_layout

# packetdrill's defaults (config.c)
DEFAULT_TOLERANCE_US = 4000
DEFAULT_TOLERANCE_PERCENT = 12.5
LOCAL_IP = "192.168.0.1"
REMOTE_IP = "192.0.2.1"
BIND_PORT = 8080
FIRST_REMOTE_PORT = 48_000  # packetdrill takes an ephemeral port per passive connection
ANY_TIME_LIMIT_US = 60_000_000  # how long a ``*`` outbound packet may take to appear
AWAIT_IDLE_NS = 1_000_000_000  # packetdrill: MAX_WAIT_SECS for a blocked syscall thread

# What ./defaults.sh (linux selftests, google gtests) sets that a receiver model reads.
DEFAULTS_SH = {
    "net.ipv4.tcp_rmem": "4096 540000 15728640",
    "net.ipv4.tcp_wmem": "4096 262144 4194304",
    "net.ipv4.tcp_timestamps": "1",
    "net.ipv4.tcp_sack": "1",
    "net.ipv4.tcp_dsack": "1",
}

# Linux values of the symbols receive-side scripts use.
SYMBOLS: dict[str, int] = {
    "AF_INET": 2, "SOCK_STREAM": 1, "IPPROTO_TCP": 6, "SOL_TCP": 6, "SOL_SOCKET": 1,
    "SO_REUSEADDR": 2, "SO_REUSEPORT": 15, "SO_KEEPALIVE": 9, "SO_SNDBUF": 7, "SO_RCVBUF": 8,
    "SO_RCVLOWAT": 18, "SO_RCVTIMEO": 20, "SO_LINGER": 13, "SO_ERROR": 4, "SO_MEMINFO": 55,
    "TCP_NODELAY": 1, "TCP_MAXSEG": 2, "TCP_INFO": 11, "TCP_QUICKACK": 12, "TCP_INQ": 36,
    "TCP_CM_INQ": 36,
    "F_GETFL": 3, "F_SETFL": 4, "O_RDONLY": 0, "O_WRONLY": 1, "O_RDWR": 2, "O_NONBLOCK": 0x800,
    "SIOCINQ": 0x541B, "FIONREAD": 0x541B, "SIOCOUTQ": 0x5411, "TIOCOUTQ": 0x5411,
    "SHUT_RD": 0, "SHUT_WR": 1, "SHUT_RDWR": 2,
    "MSG_OOB": 1, "MSG_PEEK": 2, "MSG_TRUNC": 0x20, "MSG_DONTWAIT": 0x40, "MSG_WAITALL": 0x100,
    "EPOLL_CTL_ADD": 1, "EPOLL_CTL_DEL": 2, "EPOLL_CTL_MOD": 3,
    "EPOLLIN": EPOLLIN, "EPOLLPRI": 0x2, "EPOLLOUT": EPOLLOUT, "EPOLLERR": EPOLLERR,
    "EPOLLHUP": EPOLLHUP, "EPOLLRDNORM": EPOLLRDNORM, "EPOLLRDBAND": 0x80,
    "EPOLLWRNORM": EPOLLWRNORM, "EPOLLRDHUP": EPOLLRDHUP,
    "EPOLLEXCLUSIVE": 1 << 28, "EPOLLONESHOT": 1 << 30, "EPOLLET": 1 << 31,
}


def virtio_net_hdr_gso_size(gso_size: int, tcp_len_past_base_header: int) -> int:
    """The gso_size a tun write keeps: virtio_net_hdr_to_skb (6.18) sets it only when
    skb->len - p_off > gso_size, p_off being the transport offset plus the base TCP
    header (thlen = sizeof(struct tcphdr)): what counts is the TCP options and the
    payload, not the IP length. "Too small packets are not really GSO ones"."""
    return gso_size if gso_size and tcp_len_past_base_header > gso_size else 0


# ----------------------------------------------------------------------------- results


class Outcome(Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The first way the receiver differed from the script."""

    line: int
    message: str
    expected: str | None = None
    actual: str | None = None

    def format(self, path: str) -> str:
        text = f"{path}:{self.line}: {self.message}"
        if self.expected is not None:
            text += f"\n    expected: {self.expected}"
        if self.actual is not None:
            text += f"\n    actual:   {self.actual}"
        return text


@dataclass
class ScriptResult:
    path: str
    outcome: Outcome
    mismatch: Mismatch | None = None
    skip_reason: str | None = None
    skipped_lines: list[tuple[int, str]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


class _Failed(Exception):
    def __init__(self, mismatch: Mismatch) -> None:
        super().__init__(mismatch.message)
        self.mismatch = mismatch


class Unsupported(Exception):
    """The receiver under test cannot do what the script asks (the script is skipped)."""


# ----------------------------------------------------------------------------- backend


class Call(Protocol):
    """A system call in progress or finished."""

    done: bool
    ret: int  # the return value (-1 on error)
    errno: str | None  # "EAGAIN" ...
    end_ns: int | None  # when it returned
    extra: dict[str, Any]  # values returned through pointers


class Receiver(Protocol):
    """The receiver under test: the kernel model on a virtual clock, or real actors."""

    local_ip: str

    def now(self) -> int: ...

    def next_event_time(self) -> int | None:
        """When the receiver will next act on its own (a timer), or None."""

    def advance(self, until_ns: int) -> None:
        """Let time pass up to ``until_ns``, running whatever falls due."""

    def set_sysctl(self, name: str, value: str) -> bool:
        """Apply ``net.ipv4.tcp_rmem`` etc.; False if the receiver has no such setting."""

    def counters(self) -> Mapping[str, int]:
        """MIB counters under their nstat names."""

    def inject(self, seg: Segment, *, gso_size: int = 0, more: bool = False) -> None:
        """A segment arrives from the wire now. ``more``: the script writes another
        segment at the same instant (packetdrill's back-to-back tun writes, microseconds
        apart): a real-time receiver may hold this one and send them together, so that
        its own transport latency does not put its timers between them."""

    def take_outbound(self) -> list[tuple[int, Segment]]:
        """Segments transmitted since the last call, with their send times."""

    def tcp_info(self, four_tuple: tuple[str, int, str, int]) -> dict[str, int] | None:
        """tcp_info and SK_MEMINFO fields of the connection (remote addr/port, local)."""

    def late_allowance_ns(self, expected_ns: int) -> int:
        """How much later than ``expected_ns`` the receiver may show something the script
        expects then, by its own measurement of its transport's delays (0 on a virtual
        clock). Nothing widens the early side: a receiver can be late, never early."""

    def catch_up(self) -> None:
        """Something the script expects is overdue: learn what delays the receiver's own
        processes measured, so that :meth:`late_allowance_ns` counts them (no-op on a
        virtual clock)."""

    def syscall(self, name: str, args: dict[str, Any]) -> Call:
        """Start a socket call (socket, bind, listen, accept, connect, setsockopt,
        getsockopt, read, write, shutdown, close, fcntl, ioctl, epoll_*)."""


# ----------------------------------------------------------------------------- helpers


def errno_name(code: int) -> str:
    return errno_mod.errorcode.get(code, f"E{code}")


def _flags_of(letters: str) -> int:
    flags = 0
    for ch, flag in (("F", TcpFlags.FIN), ("S", TcpFlags.SYN), ("R", TcpFlags.RST),
                     ("P", TcpFlags.PSH), (".", TcpFlags.ACK), ("U", TcpFlags.URG),
                     ("E", TcpFlags.ECE), ("W", TcpFlags.CWR)):
        if ch in letters:
            flags |= flag
    return flags


def _letters_of(flags: int) -> str:
    out = ""
    for flag, ch in ((TcpFlags.FIN, "F"), (TcpFlags.SYN, "S"), (TcpFlags.RST, "R"),
                     (TcpFlags.PSH, "P"), (TcpFlags.URG, "U"), (TcpFlags.ECE, "E"),
                     (TcpFlags.CWR, "W")):
        if flags & flag:
            out += ch
    if flags & TcpFlags.ACK:
        out += "."
    return out or "-"


def _canonical_flags(letters: str) -> str:
    return _letters_of(_flags_of(letters))


@dataclass
class _Conn:
    """The connection under test: how script sequence space maps to live values."""

    rport: int
    lport: int
    remote_isn: int = 0  # live == script for the remote side (packetdrill uses the SYN's seq)
    local_isn_live: int | None = None
    local_isn_script: int = 0
    ts_map: dict[int, int] = field(default_factory=dict)  # script TS val -> live TS val
    first_ts: tuple[int, int] | None = None  # (script, live)
    synack_pending: bool = False
    active: bool = False
    fd: int | None = None  # the script's descriptor for it (accept's result, connect's fd)
    fd_closed: bool = False

    def ack_offset(self) -> int:
        if self.local_isn_live is None:
            return 0
        return (self.local_isn_live - self.local_isn_script) & 0xFFFFFFFF


@dataclass
class _Blocking:
    call: Call
    event: Event
    lo_us: int
    hi_us: int
    check: Callable[[Call], None]
    tol_us: int = 0


# ----------------------------------------------------------------------------- runner


class DrillRunner:
    """Execute one parsed script against one receiver."""

    def __init__(self, script: Script, receiver: Receiver, *, verbose: bool = False,
                 local_ip: str = LOCAL_IP, remote_ip: str = REMOTE_IP,
                 min_tolerance_us: int = 0) -> None:
        self.script = script
        self.rx = receiver
        self.verbose = verbose
        self.local_ip = local_ip
        self.remote_ip = remote_ip
        # A receiver in real time may need more slack than the script grants.
        self.tolerance_us = max(int(script.option("tolerance_usecs") or DEFAULT_TOLERANCE_US),
                                min_tolerance_us)
        self.tolerance_percent = float(script.option("tolerance_percent")
                                       or DEFAULT_TOLERANCE_PERCENT)
        mss = script.option("mss")
        self.gso_mss = int(mss) if mss else 0
        self.ts_tick_us = int(script.option("tcp_ts_tick_usecs") or 0)
        self.ts_ecr_scaled = any(k == "tcp_ts_ecr_scaled" for k, _ in script.options)
        self.result = ScriptResult(script.path, Outcome.PASS)
        self.conn: _Conn | None = None
        self.connecting: dict[int, _Conn] = {}  # fd -> the connection its connect() opened
        self.listening = False
        self.next_rport = FIRST_REMOTE_PORT
        self.outq: deque[tuple[int, Segment]] = deque()
        self.blocking: _Blocking | None = None
        self.nstat_history: dict[str, int] = {}
        self.last_event: Event | None = None
        self.last_event_us = 0
        # What the next relative time counts from: when the previous event happened on
        # the script's schedule (inbound packets, calls, commands), or when an outbound
        # packet was actually seen, as packetdrill adjusts to live outbound times.
        self.anchor_us = 0
        self.last_outbound_us = 0
        self.next_event: Event | None = None  # the script's event after the current one

    # ------------------------------------------------------------------ entry

    def run(self) -> ScriptResult:
        for name, _ in self.script.options:
            if name not in ("mss", "tolerance_usecs", "tolerance_percent", "tcp_ts_tick_usecs",
                            "tcp_ts_ecr_scaled", "ip_version", "bind_port", "connect_port",
                            "non_fatal", "strict_segments", "verbose"):
                self._skip_line(0, f"--{name}: option not modelled")
        try:
            if self.script.option("ip_version") not in (None, "ipv4"):
                raise Unsupported(f"--ip_version={self.script.option('ip_version')}: "
                                  "rxpath models IPv4 only")
            if self.script.init_command is not None:
                self._command(self.script.init_command.line, self.script.init_command)
            events = self.script.events
            for i, ev in enumerate(events):
                self.next_event = events[i + 1] if i + 1 < len(events) else None
                if i == 0 and ev.time.start_us != 0 and ev.time.kind == TimeKind.ABSOLUTE:
                    raise _Failed(Mismatch(ev.line, "first event should be at time 0"))
                self._event(ev)
                self.last_event = ev
            self._finish_blocking()
            if self.script.cleanup_command is not None:
                self._command(self.script.cleanup_command.line, self.script.cleanup_command)
        except _Failed as exc:
            self.result.outcome = Outcome.FAIL
            self.result.mismatch = exc.mismatch
        except Unsupported as exc:
            self.result.outcome = Outcome.SKIP
            self.result.skip_reason = str(exc)
        return self.result

    # ------------------------------------------------------------------ time

    def _now_us(self) -> int:
        return self.rx.now() // US

    def _tolerance(self, script_us: int) -> int:
        delta = script_us - self.last_event_us
        return max(self.tolerance_us, int(self.tolerance_percent / 100.0 * delta))

    def _log(self, text: str) -> None:
        if self.verbose:
            self.result.log.append(f"{self._now_us() / 1e6:9.6f} {text}")

    def _event_times(self, ev: Event) -> tuple[int, int | None]:
        t = ev.time
        if t.kind in (TimeKind.ABSOLUTE, TimeKind.ABSOLUTE_RANGE):
            return t.start_us, t.end_us
        anchored = (self.last_event is not None and _is_inbound(self.last_event)
                    and _is_inbound(ev))
        offset = self.last_event_us if anchored else self.anchor_us
        end = None if t.end_us is None else t.end_us + offset
        return t.start_us + offset, end

    def _late_us(self, expected_us: int, *, overdue: bool = False) -> int:
        """The receiver's late allowance; ``overdue``: a check is about to fail, so let
        the receiver learn its processes' delays first."""
        if overdue:
            self.rx.catch_up()
        return self.rx.late_allowance_ns(expected_us * US) // US

    def _allowance_text(self, late_us: int) -> str:
        return f" (+{late_us / 1e3:.1f} ms measured transport delay allowed)" if late_us \
            else ""

    def _advance_to(self, ev: Event, t_us: int) -> None:
        now = self._now_us()
        if t_us < now:
            late = self._late_us(t_us)
            if now - t_us > self._tolerance(t_us) + late:
                late = self._late_us(t_us, overdue=True)
            if now - t_us > self._tolerance(t_us) + late:
                raise _Failed(Mismatch(ev.line, f"timing error: expected the event at "
                                       f"{t_us / 1e6:.6f} s but the receiver was already at "
                                       f"{now / 1e6:.6f} s{self._allowance_text(late)}"))
            return
        self._run_until(t_us * US)

    def _run_until(self, until_ns: int, *, until_idle: bool = False) -> None:
        """Advance the receiver, noticing completions of a blocking call on the way
        (and, with ``until_idle``, stopping at the first)."""
        while True:
            nxt = self.rx.next_event_time()
            if nxt is None or nxt > until_ns:
                break
            self.rx.advance(nxt)
            self._poll_blocking()
            if until_idle and self.blocking is None:
                return
        self.rx.advance(until_ns)
        self._poll_blocking()

    # ------------------------------------------------------------------ dispatch

    def _event(self, ev: Event) -> None:
        start_us, end_us = self._event_times(ev)
        action = ev.action
        if isinstance(action, PacketSpec) and not action.inbound:
            self._outbound(ev, action, start_us, end_us)
        else:
            self._advance_to(ev, start_us)
            if isinstance(action, PacketSpec):
                self._inbound(ev, action)
            elif isinstance(action, SyscallSpec):
                self._syscall(ev, action, start_us)
            elif isinstance(action, CommandSpec):
                self._command(ev.line, action)
            elif isinstance(action, CodeSpec):
                self._code(ev, action)
        self.last_event_us = start_us if ev.time.kind != TimeKind.ANY else self._now_us()
        if isinstance(action, PacketSpec) and not action.inbound:
            self.anchor_us = self.last_outbound_us
        else:
            self.anchor_us = self.last_event_us

    # ------------------------------------------------------------------ inbound

    def _inbound(self, ev: Event, spec: PacketSpec) -> None:
        if spec.has("S") and not spec.has(".") and (self.conn is None or self.listening):
            # A SYN for the listener: the child it creates is the new connection under
            # test, from a new remote port (as packetdrill does).
            self.conn = _Conn(rport=self.next_rport, lport=self._bind_port,
                              remote_isn=spec.seq, synack_pending=True)
            self.next_rport += 1
            self.listening = False
        conn = self.conn
        if conn is None:
            raise _Failed(Mismatch(ev.line, "no connection for this inbound packet "
                                   "(no listen() or connect() before it)"))
        if conn.active and spec.has("S") and spec.has("."):
            conn.remote_isn = spec.seq
        ack_off = conn.ack_offset()
        opts = self._inbound_options(ev, spec, conn, ack_off)
        ports = spec.ports
        seg = Segment(
            src=self.remote_ip, sport=ports[0] if ports and ports[0] else conn.rport,
            dst=self.local_ip, dport=ports[1] if ports and ports[1] else conn.lport,
            seq=spec.seq & 0xFFFFFFFF,
            ack=seq_add(spec.ack, ack_off) if spec.has(".") else spec.ack & 0xFFFFFFFF,
            flags=_flags_of(spec.flags),
            window=spec.window or 0,
            options=opts,
            payload=bytes(spec.payload_len),
            urg_ptr=spec.urg_ptr,
        )
        # packetdrill writes every TCP packet to tun with gso_size = --mss
        opt_len = -(-sum(o.length for o in spec.options or ()) // 4) * 4
        gso = virtio_net_hdr_gso_size(self.gso_mss, opt_len + spec.payload_len)
        self._log(f"inject  {spec}" + (f"  (gso_size {gso})" if gso else ""))
        self.rx.inject(seg, gso_size=gso, more=self._burst_follows())
        self._poll_blocking()

    def _burst_follows(self) -> bool:
        """Whether the next event is another inbound segment of this connection at the
        same instant (``+0``): packetdrill writes them back to back."""
        nxt = self.next_event
        if nxt is None or not isinstance(nxt.action, PacketSpec) or not nxt.action.inbound:
            return False
        if nxt.action.has("S"):
            return False  # a SYN may open a new connection: the runner looks at it first
        return nxt.time.kind == TimeKind.RELATIVE and nxt.time.start_us == 0

    def _inbound_options(self, ev: Event, spec: PacketSpec, conn: _Conn,
                         ack_off: int) -> TcpOptions:
        assert spec.options is not None
        if not spec.options:
            return TcpOptions()
        kw: dict[str, Any] = {}
        for o in spec.options:
            row = OPTION_BY_NAME[o.kind]
            if not row.attr:
                continue
            value = o.option_value
            # Script sequence numbers and TS echoes become live ones.
            if o.kind == "sack":
                value = tuple((seq_add(a, ack_off), seq_add(b, ack_off)) for a, b in o.blocks)
            elif o.kind == "TS" and spec.has("."):
                assert o.tsecr is not None
                value = (o.tsval, self._live_ts_ecr(ev, conn, o.tsecr))
            kw[row.attr] = value
        return TcpOptions(layout=tuple(o.kind for o in spec.options), **kw)

    def _live_ts_ecr(self, ev: Event, conn: _Conn, script_ecr: int) -> int:
        if script_ecr in conn.ts_map:
            return conn.ts_map[script_ecr]
        if self.ts_ecr_scaled and conn.first_ts is not None:
            return (script_ecr - conn.first_ts[0] + conn.first_ts[1]) & 0xFFFFFFFF
        raise _Failed(Mismatch(ev.line, f"unable to infer live TS ecr for script TS ecr "
                               f"{script_ecr}; no matching or preceding outbound TS val"))

    @property
    def _bind_port(self) -> int:
        return int(self.script.option("bind_port") or BIND_PORT)

    # ------------------------------------------------------------------ outbound

    def _collect_outbound(self) -> None:
        for t, seg in self.rx.take_outbound():
            conn = self.conn
            if conn is not None and seg.dst == self.remote_ip and seg.dport == conn.rport \
                    and conn.lport in (0, seg.sport):
                conn.lport = seg.sport
                self.outq.append((t, seg))
            else:
                self._log(f"ignored outbound (not the connection under test) {seg.describe()}")

    def _next_outbound(self, deadline_ns: int) -> tuple[int, Segment] | None:
        while True:
            self._collect_outbound()
            if self.outq:
                return self.outq.popleft()
            nxt = self.rx.next_event_time()
            if nxt is None or nxt > deadline_ns:
                if deadline_ns > self.rx.now():
                    self.rx.advance(deadline_ns)
                    self._poll_blocking()
                    self._collect_outbound()
                return self.outq.popleft() if self.outq else None
            self.rx.advance(nxt)
            self._poll_blocking()

    def _outbound(self, ev: Event, spec: PacketSpec, start_us: int, end_us: int | None) -> None:
        if self.conn is None:
            raise _Failed(Mismatch(ev.line, "no connection for this outbound packet",
                                   expected=str(spec)))
        any_time = ev.time.kind == TimeKind.ANY
        tol = self._tolerance(start_us)
        hi_us = (self._now_us() + ANY_TIME_LIMIT_US) if any_time \
            else (end_us if end_us is not None else start_us) + tol
        late = 0
        got = self._next_outbound(hi_us * US)
        while got is None and not any_time:
            # Wait as long as the receiver's measured delays allow (they grow meanwhile).
            more = self._late_us(start_us, overdue=True)
            if more <= late:
                break
            late = more
            got = self._next_outbound((hi_us + late) * US)
        hi_us += late
        if got is None:
            when = "" if any_time else f" by {hi_us / 1e6:.6f} s"
            raise _Failed(Mismatch(ev.line, f"expected an outbound packet{when}, "
                                   "but the receiver sent nothing", expected=str(spec),
                                   actual="(nothing)"))
        t_ns, seg = got
        actual, problem = self._compare(spec, seg)
        self._log(f"sent    {actual}  (at {t_ns / 1e9:.6f})")
        if problem:
            raise _Failed(Mismatch(ev.line, f"outbound packet differs: {problem}",
                                   expected=str(spec), actual=actual))
        t_us = t_ns // US
        self.last_outbound_us = t_us
        if not any_time:
            lo_us = start_us - tol
            late_now = self._late_us(start_us, overdue=t_us > hi_us)
            if late_now > late:
                hi_us += late_now - late
                late = late_now
            if not lo_us <= t_us <= hi_us:
                if end_us is not None:
                    want = f"in {start_us / 1e6:.6f}~{end_us / 1e6:.6f} s"
                else:
                    want = f"at {start_us / 1e6:.6f} s (tolerance {tol / 1e6:.6f} s)"
                raise _Failed(Mismatch(ev.line, f"timing error: expected the packet {want} "
                                       f"but it was sent at {t_us / 1e6:.6f} s"
                                       f"{self._allowance_text(late)}",
                                       expected=str(spec), actual=actual))

    def _compare(self, spec: PacketSpec, seg: Segment) -> tuple[str, str | None]:
        """Map ``seg`` into script space; return its text and the first difference."""
        conn = self.conn
        assert conn is not None
        if spec.has("S") and spec.has(".") and conn.synack_pending:
            conn.local_isn_live = seg.seq
            conn.local_isn_script = spec.seq
            conn.synack_pending = False
        if conn.active and spec.has("S") and not spec.has(".") and conn.local_isn_live is None:
            conn.local_isn_live = seg.seq
            conn.local_isn_script = spec.seq
        local_off = conn.ack_offset()
        seq = seq_sub(seg.seq, local_off) & 0xFFFFFFFF
        # The remote side's live sequence numbers are the script's (the live remote ISN
        # is the SYN's script seq), so acks and SACK blocks need no offset.
        ack = seg.ack
        opts = seg.options
        kinds = list(opts.layout or default_layout(opts))
        a_opts: list[TcpOptionSpec] = []
        ts_script_val: int | None = None
        s_ts = next((o for o in spec.options or () if o.kind == "TS"), None)
        for k in kinds:
            if k == "TS":
                assert opts.timestamp is not None
                val, ecr = opts.timestamp
                if s_ts is not None and s_ts.tsval is not None:
                    conn.ts_map[s_ts.tsval] = val
                    if conn.first_ts is None:
                        conn.first_ts = (s_ts.tsval, val)
                if conn.first_ts is not None:
                    ts_script_val = (conn.first_ts[0] + (val - conn.first_ts[1])) & 0xFFFFFFFF
                else:
                    ts_script_val = val
                a_opts.append(TcpOptionSpec(k, tsval=ts_script_val, tsecr=ecr))
            else:
                a_opts.append(TcpOptionSpec.of(k, OPTION_BY_NAME[k].value_in(opts)))
        plen = len(seg.payload)
        actual_spec = PacketSpec(">", _letters_of(seg.flags).replace("-", ""), seq,
                                 seq + plen, plen, ack, seg.window, seg.urg_ptr, tuple(a_opts))
        actual = str(actual_spec)
        if _canonical_flags(spec.flags) != _letters_of(seg.flags):
            return actual, f"flags {_letters_of(seg.flags)} instead of {spec.flags or '-'}"
        if seq != spec.seq & 0xFFFFFFFF:
            return actual, f"seq {seq} instead of {spec.seq}"
        if plen != spec.payload_len:
            return actual, f"payload of {plen} bytes instead of {spec.payload_len}"
        if ack != spec.ack & 0xFFFFFFFF and (seg.flags & TcpFlags.ACK or spec.ack):
            return actual, f"ack {ack} instead of {spec.ack}"
        if spec.window is not None and seg.window != spec.window:
            return actual, f"win {seg.window} instead of {spec.window}"
        if seg.urg_ptr != spec.urg_ptr:
            return actual, f"urg {seg.urg_ptr} instead of {spec.urg_ptr}"
        if spec.options is not None:
            problem = self._compare_options(spec.options, a_opts)
            if problem:
                return actual, problem
        if any(seg.payload):
            return actual, "payload bytes differ (expected zeros)"
        return actual, None

    def _compare_options(self, want: tuple[TcpOptionSpec, ...],
                         got: list[TcpOptionSpec]) -> str | None:
        if [o.kind for o in want] != [o.kind for o in got]:
            return "TCP options differ"
        for w, g in zip(want, got, strict=True):
            if w.kind == "TS":
                if self.ts_tick_us and w.tsval is not None and g.tsval is not None and abs(
                        ((g.tsval - w.tsval + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)) \
                        * self.ts_tick_us > self.tolerance_us:
                    return f"TS val {g.tsval} instead of {w.tsval}"
                if w.tsecr != g.tsecr:
                    return f"TS ecr {g.tsecr} instead of {w.tsecr}"
            elif (w.value, w.blocks) != (g.value, g.blocks):
                return f"option {w} differs: {g}"
        return None

    # ------------------------------------------------------------------ syscalls

    def _syscall(self, ev: Event, spec: SyscallSpec, start_us: int) -> None:
        if self.blocking is not None:
            # packetdrill's await_idle_thread: the next call waits up to a second for the
            # syscall thread; a call that returns meanwhile is still checked for its time.
            self._run_until(self.rx.now() + AWAIT_IDLE_NS, until_idle=True)
        if self.blocking is not None:
            raise _Failed(Mismatch(ev.line, "a system call is still blocked in "
                                   f"line {self.blocking.event.line} (one syscall thread)"))
        handler = getattr(self, f"_sys_{spec.name}", None)
        if handler is None:
            raise Unsupported(f"line {ev.line}: system call {spec.name}() is not supported")
        call, check = handler(ev, spec)
        if spec.blocking:
            assert spec.end_us is not None
            relative = ev.time.kind == TimeKind.RELATIVE
            end_us = spec.end_us + (start_us - ev.time.start_us if relative else 0)
            tol = self._tolerance(end_us)
            blk = _Blocking(call, ev, end_us - tol, end_us + tol, check, tol)
            if call.done:
                self._finish_call(blk)
            else:
                self.blocking = blk
            return
        if not call.done:
            raise _Failed(Mismatch(ev.line, f"{spec.name}() blocked, but the script expects it "
                                   "to return at once (no '...end' time)", expected=str(spec),
                                   actual="(blocked)"))
        check(call)

    def _poll_blocking(self) -> None:
        blk = self.blocking
        if blk is not None and blk.call.done:
            self.blocking = None
            self._finish_call(blk)

    def _finish_call(self, blk: _Blocking) -> None:
        end_us = (blk.call.end_ns or 0) // US
        late = self._late_us(blk.hi_us - blk.tol_us)
        if end_us > blk.hi_us + late:
            late = self._late_us(blk.hi_us - blk.tol_us, overdue=True)
        if not blk.lo_us <= end_us <= blk.hi_us + late:
            raise _Failed(Mismatch(blk.event.line, f"timing error: expected the call to return "
                                   f"in {blk.lo_us / 1e6:.6f}~{blk.hi_us / 1e6:.6f} s but it "
                                   f"returned at {end_us / 1e6:.6f} s"
                                   f"{self._allowance_text(late)}"))
        blk.check(blk.call)

    def _finish_blocking(self) -> None:
        blk = self.blocking
        if blk is None:
            return
        waited_us = blk.hi_us
        while True:
            # Past the deadline, what is already on its way may still end the call (late).
            now_ns = self.rx.now()
            self._run_until(max(waited_us * US, now_ns + self.rx.late_allowance_ns(now_ns)))
            more = blk.hi_us + self._late_us(blk.hi_us - blk.tol_us,
                                             overdue=self.blocking is not None)
            if self.blocking is None or more <= waited_us:
                break
            waited_us = more
        if self.blocking is not None:
            raise _Failed(Mismatch(blk.event.line, "the blocking call never returned",
                                   expected=str(blk.event.action), actual="(still blocked)"))

    def _result_checker(self, ev: Event, spec: SyscallSpec,
                        more: Callable[[Call], str | None] | None = None
                        ) -> Callable[[Call], None]:
        def check(call: Call) -> None:
            actual = f"{spec.name}(...) = {call.ret}" + (f" {call.errno}" if call.errno else "")
            self._log(f"call    {actual}")
            want = self._int(ev, spec.result) if not isinstance(spec.result, EllipsisExpr) \
                else None
            if want is not None and call.ret != want:
                raise _Failed(Mismatch(ev.line, f"{spec.name}() returned {call.ret}",
                                       expected=str(spec), actual=actual))
            if spec.errno and call.errno != spec.errno:
                raise _Failed(Mismatch(ev.line, f"{spec.name}() errno {call.errno or 'none'}",
                                       expected=str(spec), actual=actual))
            if more is not None:
                problem = more(call)
                if problem:
                    raise _Failed(Mismatch(ev.line, problem, expected=str(spec), actual=actual))
        return check

    def _int(self, ev: Event, expr: Expr) -> int | None:
        if isinstance(expr, EllipsisExpr):
            return None
        if isinstance(expr, IntExpr):
            return expr.value
        if isinstance(expr, WordExpr):
            if expr.name in SYMBOLS:
                return SYMBOLS[expr.name]
            raise Unsupported(f"line {ev.line}: unknown symbol {expr.name}")
        if isinstance(expr, BinaryExpr) and expr.op == "|":
            a, b = self._int(ev, expr.lhs), self._int(ev, expr.rhs)
            return (a or 0) | (b or 0)
        if isinstance(expr, ListExpr) and len(expr.items) == 1:
            return self._int(ev, expr.items[0])
        if isinstance(expr, CallExpr) and expr.name in ("htons", "htonl", "ntohs", "ntohl") \
                and len(expr.args) == 1:
            return self._int(ev, expr.args[0])
        raise Unsupported(f"line {ev.line}: cannot evaluate {expr}")

    def _arg(self, ev: Event, spec: SyscallSpec, i: int) -> Expr:
        if i >= len(spec.args):
            raise _Failed(Mismatch(ev.line, f"{spec.name}() needs at least {i + 1} arguments"))
        return spec.args[i]

    def _fd(self, ev: Event, spec: SyscallSpec) -> int:
        fd = self._int(ev, self._arg(ev, spec, 0))
        if fd is None:
            raise _Failed(Mismatch(ev.line, f"{spec.name}() needs a file descriptor"))
        return fd

    def _simple(self, ev: Event, spec: SyscallSpec, call_name: str, /,
                **args: Any) -> tuple[Call, Callable[[Call], None]]:
        call = self.rx.syscall(call_name, args)
        return call, self._result_checker(ev, spec)

    def _sys_socket(self, ev: Event, spec: SyscallSpec) -> tuple[Call, Callable[[Call], None]]:
        return self._simple(ev, spec, "socket")

    def _sys_bind(self, ev: Event, spec: SyscallSpec) -> tuple[Call, Callable[[Call], None]]:
        return self._simple(ev, spec, "bind", fd=self._fd(ev, spec), port=self._bind_port)

    def _sys_listen(self, ev: Event, spec: SyscallSpec) -> tuple[Call, Callable[[Call], None]]:
        backlog = self._int(ev, self._arg(ev, spec, 1)) or 0
        call, check = self._simple(ev, spec, "listen", fd=self._fd(ev, spec), backlog=backlog,
                                   port=self._bind_port, laddr=self.local_ip)
        if call.done and call.ret == 0:
            self.listening = True
        return call, check

    def _sys_accept(self, ev: Event, spec: SyscallSpec) -> tuple[Call, Callable[[Call], None]]:
        call, check = self._simple(ev, spec, "accept", fd=self._fd(ev, spec))

        def check_and_adopt(c: Call) -> None:
            check(c)
            if c.ret >= 0 and self.conn is not None and self.conn.fd is None:
                self.conn.fd = c.ret
        return call, check_and_adopt

    def _sys_connect(self, ev: Event, spec: SyscallSpec) -> tuple[Call, Callable[[Call], None]]:
        port = int(self.script.option("connect_port") or BIND_PORT)
        fd = self._fd(ev, spec)
        if fd not in self.connecting:
            # The local port is the kernel's choice: learnt from our SYN. A second
            # connect() on the socket (EALREADY, EISCONN) keeps its connection.
            self.connecting[fd] = self.conn = _Conn(rport=port, lport=0, active=True, fd=fd)
            self.listening = False
        return self._simple(ev, spec, "connect", fd=fd, addr=self.remote_ip, port=port)

    def _sys_setsockopt(self, ev: Event, spec: SyscallSpec
                        ) -> tuple[Call, Callable[[Call], None]]:
        level = self._int(ev, self._arg(ev, spec, 1))
        name = self._arg(ev, spec, 2)
        value = self._int(ev, self._arg(ev, spec, 3))
        opt = name.name if isinstance(name, WordExpr) else str(name)
        return self._simple(ev, spec, "setsockopt", fd=self._fd(ev, spec), level=level,
                            name=opt, value=value)

    def _sys_getsockopt(self, ev: Event, spec: SyscallSpec
                        ) -> tuple[Call, Callable[[Call], None]]:
        level = self._int(ev, self._arg(ev, spec, 1))
        name = self._arg(ev, spec, 2)
        opt = name.name if isinstance(name, WordExpr) else str(name)
        want = self._int(ev, self._arg(ev, spec, 3)) \
            if len(spec.args) > 3 and not isinstance(spec.args[3], EllipsisExpr) else None
        call = self.rx.syscall("getsockopt", {"fd": self._fd(ev, spec), "level": level,
                                              "name": opt})

        def value(c: Call) -> str | None:
            got = c.extra.get("value")
            if want is not None and got != want:
                return f"getsockopt({opt}) value {got} instead of {want}"
            return None
        return call, self._result_checker(ev, spec, value)

    def _recv_common(self, ev: Event, spec: SyscallSpec, fd: int, length: int, flags: int,
                     cmsg_inq: int | None) -> tuple[Call, Callable[[Call], None]]:
        call = self.rx.syscall("read", {"fd": fd, "length": length, "flags": flags})

        def inq(c: Call) -> str | None:
            if cmsg_inq is None:
                return None
            got = c.extra.get("cm_inq")
            if got != cmsg_inq:
                return f"TCP_CM_INQ cmsg {got} instead of {cmsg_inq}"
            return None
        return call, self._result_checker(ev, spec, inq)

    def _sys_read(self, ev: Event, spec: SyscallSpec) -> tuple[Call, Callable[[Call], None]]:
        length = self._int(ev, self._arg(ev, spec, 2)) or 0
        return self._recv_common(ev, spec, self._fd(ev, spec), length, 0, None)

    def _sys_recv(self, ev: Event, spec: SyscallSpec) -> tuple[Call, Callable[[Call], None]]:
        length = self._int(ev, self._arg(ev, spec, 2)) or 0
        flags = self._int(ev, spec.args[3]) if len(spec.args) > 3 else 0
        return self._recv_common(ev, spec, self._fd(ev, spec), length, flags or 0, None)

    _sys_recvfrom = _sys_recv

    def _sys_recvmsg(self, ev: Event, spec: SyscallSpec) -> tuple[Call, Callable[[Call], None]]:
        msg = self._arg(ev, spec, 1)
        flags = self._int(ev, spec.args[2]) if len(spec.args) > 2 else 0
        length = 0
        cm_inq: int | None = None
        if isinstance(msg, StructExpr):
            iov = msg.get("msg_iov")
            if isinstance(iov, ListExpr):
                for item in iov.items:
                    if isinstance(item, StructExpr):
                        pos = item.positional()
                        if pos:
                            length += self._int(ev, pos[-1]) or 0
            control = msg.get("msg_control")
            if isinstance(control, ListExpr):
                for c in control.items:
                    if not isinstance(c, StructExpr):
                        continue
                    ctype = c.get("cmsg_type")
                    if isinstance(ctype, WordExpr) and ctype.name == "TCP_CM_INQ":
                        data = c.get("cmsg_data")
                        cm_inq = self._int(ev, data) if data is not None else None
                    else:
                        raise Unsupported(f"line {ev.line}: control message {c} not supported")
        return self._recv_common(ev, spec, self._fd(ev, spec), length, flags or 0, cm_inq)

    def _sys_write(self, ev: Event, spec: SyscallSpec) -> tuple[Call, Callable[[Call], None]]:
        length = self._int(ev, self._arg(ev, spec, 2)) or 0
        return self._simple(ev, spec, "write", fd=self._fd(ev, spec), length=length)

    _sys_send = _sys_write

    def _sys_shutdown(self, ev: Event, spec: SyscallSpec) -> tuple[Call, Callable[[Call], None]]:
        how = self._int(ev, self._arg(ev, spec, 1))
        return self._simple(ev, spec, "shutdown", fd=self._fd(ev, spec), how=how)

    def _sys_close(self, ev: Event, spec: SyscallSpec) -> tuple[Call, Callable[[Call], None]]:
        fd = self._fd(ev, spec)
        call, check = self._simple(ev, spec, "close", fd=fd)

        def check_and_forget(c: Call) -> None:
            check(c)
            if c.ret == 0 and self.conn is not None and self.conn.fd == fd:
                self.conn.fd_closed = True
        return call, check_and_forget

    def _sys_fcntl(self, ev: Event, spec: SyscallSpec) -> tuple[Call, Callable[[Call], None]]:
        cmd = self._int(ev, self._arg(ev, spec, 1))
        arg = self._int(ev, spec.args[2]) if len(spec.args) > 2 else None
        return self._simple(ev, spec, "fcntl", fd=self._fd(ev, spec), cmd=cmd, arg=arg)

    def _sys_ioctl(self, ev: Event, spec: SyscallSpec) -> tuple[Call, Callable[[Call], None]]:
        req = self._int(ev, self._arg(ev, spec, 1))
        want = self._int(ev, spec.args[2]) if len(spec.args) > 2 else None
        call = self.rx.syscall("ioctl", {"fd": self._fd(ev, spec), "request": req})

        def value(c: Call) -> str | None:
            got = c.extra.get("value")
            if want is not None and c.ret == 0 and got != want:
                return f"ioctl value {got} instead of {want}"
            return None
        return call, self._result_checker(ev, spec, value)

    def _sys_epoll_create(self, ev: Event, spec: SyscallSpec
                          ) -> tuple[Call, Callable[[Call], None]]:
        return self._simple(ev, spec, "epoll_create")

    _sys_epoll_create1 = _sys_epoll_create

    def _sys_epoll_ctl(self, ev: Event, spec: SyscallSpec
                       ) -> tuple[Call, Callable[[Call], None]]:
        op = self._int(ev, self._arg(ev, spec, 1))
        fd = self._int(ev, self._arg(ev, spec, 2))
        evs = self._arg(ev, spec, 3)
        events = 0
        if isinstance(evs, StructExpr):
            e = evs.get("events")
            events = self._int(ev, e) or 0 if e is not None else 0
        return self._simple(ev, spec, "epoll_ctl", epfd=self._fd(ev, spec), op=op, fd=fd,
                            events=events)

    def _sys_epoll_wait(self, ev: Event, spec: SyscallSpec
                        ) -> tuple[Call, Callable[[Call], None]]:
        want = self._arg(ev, spec, 1)
        maxevents = self._int(ev, self._arg(ev, spec, 2)) or 1
        timeout = self._int(ev, self._arg(ev, spec, 3))
        call = self.rx.syscall("epoll_wait", {"epfd": self._fd(ev, spec),
                                              "maxevents": maxevents, "timeout_ms": timeout})
        want_events: int | None = None
        want_fd: int | None = None
        if isinstance(want, StructExpr):
            e = want.get("events")
            want_events = self._int(ev, e) if e is not None else None
            f = want.get("fd")
            want_fd = self._int(ev, f) if f is not None else None

        def events(c: Call) -> str | None:
            got: list[tuple[int, int]] = c.extra.get("events", [])
            if c.ret > 0 and got:
                fd, mask = got[0]
                if want_events is not None and mask != want_events:
                    return f"epoll_wait events {_epoll_mask(mask)} instead of " \
                           f"{_epoll_mask(want_events)}"
                if want_fd is not None and fd != want_fd:
                    return f"epoll_wait fd {fd} instead of {want_fd}"
            return None
        return call, self._result_checker(ev, spec, events)

    # ------------------------------------------------------------------ commands

    def _skip_line(self, line: int, text: str) -> None:
        self.result.skipped_lines.append((line, text))

    def _command(self, line: int, cmd: CommandSpec) -> None:
        for raw in re.split(r"\n|;|&&", cmd.text):
            text = raw.strip()
            if not text:
                continue
            self._shell(line, text)

    def _shell(self, line: int, text: str) -> None:
        first = text.split()[0]
        if first.endswith("defaults.sh"):
            for name, value in DEFAULTS_SH.items():
                self._sysctl(line, name, value)
            return
        if first == "sysctl":
            self._sysctl_command(line, text)
            return
        if first == "nstat":
            self._nstat(line, text)
            return
        self._skip_line(line, f"`{text}`: not modelled")

    def _sysctl_command(self, line: int, text: str) -> None:
        try:
            words = shlex.split(text)
        except ValueError:
            self._skip_line(line, f"`{text}`: cannot parse")
            return
        for w in words[1:]:
            if w.startswith("-"):
                continue
            name, sep, value = w.partition("=")
            if not sep:
                self._skip_line(line, f"`sysctl {w}`: reading a sysctl is not modelled")
                continue
            self._sysctl(line, name, _shell_arith(value))

    def _sysctl(self, line: int, name: str, value: str) -> None:
        if not self.rx.set_sysctl(name, value):
            self._skip_line(line, f"sysctl {name}={value}: not modelled")

    def _nstat(self, line: int, text: str) -> None:
        stages = [s.strip() for s in text.split("|")]
        try:
            args = shlex.split(stages[0])[1:]
        except ValueError:
            self._skip_line(line, f"`{text}`: cannot parse")
            return
        counters = dict(self.rx.counters())
        flags = "".join(a[1:] for a in args if a.startswith("-") and not a.startswith("--"))
        names = [a for a in args if not a.startswith("-")]
        if "n" in flags and not names:
            self.nstat_history = counters
            return
        rows: list[str] = []
        for name in sorted(counters):
            if names and name not in names:
                continue
            delta = counters[name] - self.nstat_history.get(name, 0)
            if delta or "z" in flags:
                rows.append(f"{name:<32}{delta:<16}{0.0:.1f}")
        if "s" not in flags:
            self.nstat_history = counters
        out = rows
        for stage in stages[1:]:
            try:
                words = shlex.split(stage)
            except ValueError:
                self._skip_line(line, f"`{text}`: cannot parse")
                return
            if not words or words[0] != "grep":
                self._skip_line(line, f"`{text}`: only nstat | grep pipelines are modelled")
                return
            opts = [w for w in words[1:] if w.startswith("-")]
            pats = [w for w in words[1:] if not w.startswith("-")]
            if len(pats) != 1 or any(o not in ("-q", "-w", "-v", "-F") for o in opts):
                self._skip_line(line, f"`{text}`: grep options not modelled")
                return
            invert = "-v" in opts
            out = [r for r in out if (pats[0] in r) != invert]
        if not out:
            shown = "; ".join(" ".join(r.split()[:2]) for r in rows) or "all zero"
            raise _Failed(Mismatch(line, f"command failed: `{text}`", expected="a match",
                                   actual=f"nstat: {shown}"))
        self._log(f"`{text}` ok")

    # ------------------------------------------------------------------ code

    def _code(self, ev: Event, spec: CodeSpec) -> None:
        conn = self.conn
        info = None
        if conn is not None:
            info = self.rx.tcp_info((self.remote_ip, conn.rport, self.local_ip, conn.lport))
        if info is None:
            raise _Failed(Mismatch(ev.line, "no socket for tcp_info"))
        if conn is not None and conn.fd_closed:
            # packetdrill's getsockopt(TCP_INFO) on the closed descriptor fails.
            raise _Failed(Mismatch(ev.line, "can't find getsockopt to get TCP info "
                                   f"(fd {conn.fd} is closed)"))
        code = textwrap.dedent(spec.text).strip()
        namespace: dict[str, Any] = dict(info)
        safe = {"__builtins__": {"abs": abs, "min": min, "max": max, "len": len, "int": int,
                                 "float": float, "print": lambda *a, **k: None,
                                 "AssertionError": AssertionError}}
        try:
            # The script's own check, as packetdrill runs it (with python3).
            exec(compile(code, f"{self.script.path}:{ev.line}", "exec"), safe, namespace)
        except AssertionError as exc:
            detail = f" ({exc})" if str(exc) else ""
            raise _Failed(Mismatch(ev.line, f"assertion failed{detail}", expected=str(spec),
                                   actual=_info_summary(code, info))) from None
        except NameError as exc:
            raise Unsupported(f"line {ev.line}: {exc} (not in rxpath's tcp_info)") from None
        except Exception as exc:  # the script's own code is broken
            raise _Failed(Mismatch(ev.line, f"code raised {type(exc).__name__}: {exc}")) from None


def _is_inbound(ev: Event) -> bool:
    return isinstance(ev.action, PacketSpec) and ev.action.inbound


def _epoll_mask(mask: int) -> str:
    names = [n for n in ("EPOLLIN", "EPOLLPRI", "EPOLLOUT", "EPOLLERR", "EPOLLHUP", "EPOLLRDHUP")
             if mask & SYMBOLS[n]]
    return "|".join(names) or "0"


def _info_summary(code: str, info: Mapping[str, int]) -> str:
    used = [k for k in info if re.search(rf"\b{re.escape(k)}\b", code)]
    return ", ".join(f"{k}={info[k]}" for k in used) or "(no tcp_info fields used)"


def _shell_arith(value: str) -> str:
    """Expand ``$((32*1024*1024))`` the way the shell would (integers, + - * / only)."""
    def repl(m: re.Match[str]) -> str:
        expr = m.group(1)
        if not re.fullmatch(r"[\d\s+\-*/()]+", expr):
            return m.group(0)
        tokens = re.findall(r"\d+|[+\-*/()]", expr)
        return str(_arith(tokens))
    return re.sub(r"\$\(\((.*?)\)\)", repl, value)


def _arith(tokens: list[str]) -> int:
    pos = 0

    def expr() -> int:
        nonlocal pos
        v = term()
        while pos < len(tokens) and tokens[pos] in "+-":
            op = tokens[pos]
            pos += 1
            v = v + term() if op == "+" else v - term()
        return v

    def term() -> int:
        nonlocal pos
        v = atom()
        while pos < len(tokens) and tokens[pos] in "*/":
            op = tokens[pos]
            pos += 1
            v = v * atom() if op == "*" else v // atom()
        return v

    def atom() -> int:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "(":
            v = expr()
            pos += 1
            return v
        if tok == "-":
            return -atom()
        return int(tok)

    return expr()
