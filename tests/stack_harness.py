"""Drive the sans-I/O stack in tests: a peer's segments in, readers' steps out, virtual time."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from actors.profiles import MS, get_profile, sysctls_for
from actors.reader.tcp_recvmsg import (
    ReaderCosts,
    RecvFlags,
    RecvResult,
    SpendCpu,
    StepDriver,
    tcp_recvmsg,
)
from actors.stack.net import OpDone, Transmit
from actors.stack.sock import TcpSock
from actors.stack.tcp_ipv4 import Stack
from protocol.segment import Segment, TcpFlags, TcpOptions
from protocol.seq import seq_add, seq_sub
from protocol.sockops import Accepted, InetAccept, SockOpResult

LOCAL = "10.0.0.2"
REMOTE = "10.0.0.1"
PORT = 5001
SPORT = 40001
ISN = 1_000_000
NO_FLAGS = RecvFlags()
NO_COSTS = ReaderCosts()


def _is_ack(seg: Segment) -> bool:
    return bool(seg.flags & TcpFlags.ACK) and not seg.flags & TcpFlags.SYN


@dataclass
class Conn:
    """A stack with one accepted connection, as seen from the peer."""

    stack: Stack
    sock: int
    listener: int
    isn: int
    now: int = 0
    sent: list[Segment] = field(default_factory=list)  # what the stack transmitted
    done: dict[str, SockOpResult] = field(default_factory=dict)
    ts: bool = False
    last_ack: Segment | None = None  # the newest ACK the stack sent

    @property
    def sk(self) -> TcpSock:
        return self.stack.socks[self.sock]

    def seq(self, offset: int) -> int:
        """Sequence number of stream byte ``offset`` (byte 0 follows the SYN)."""
        return seq_add(self.isn, 1 + offset)

    def seq_offset_of(self, seq: int) -> int:
        """Stream offset of sequence number ``seq`` (the inverse of :meth:`seq`)."""
        return seq_sub(seq, seq_add(self.isn, 1))

    def segment(self, offset: int, data: bytes, *, fin: bool = False, psh: bool = False,
                flags: int | None = None, window: int = 1000) -> Segment:
        fl = TcpFlags.ACK if flags is None else flags
        if fin:
            fl |= TcpFlags.FIN
        if psh:
            fl |= TcpFlags.PSH
        opts = TcpOptions(timestamp=(self.now // MS + 1, 0)) if self.ts else TcpOptions()
        return Segment(src=REMOTE, sport=SPORT, dst=LOCAL, dport=PORT, seq=self.seq(offset),
                       ack=seq_add(self.sk.iss, 1), flags=fl, window=window, options=opts,
                       payload=data)

    def deliver(self, seg: Segment, csum_ok: bool = True) -> int:
        sid = self.stack.tcp_v4_rcv(seg, self.now, csum_ok=csum_ok)
        self.collect()
        return sid

    def collect(self) -> list[Segment]:
        new = []
        for out in self.stack.take_outputs():
            if isinstance(out, Transmit):
                self.sent.append(out.segment)
                new.append(out.segment)
                if _is_ack(out.segment):
                    self.last_ack = out.segment
            elif isinstance(out, OpDone):
                self.done[out.task] = out.result
        return new

    def acks(self) -> list[Segment]:
        return [s for s in self.sent if _is_ack(s)]

    def advance(self, ns: int) -> None:
        """Move virtual time forward, firing every timer on the way."""
        end = self.now + ns
        while True:
            d = self.stack.next_deadline()
            if d is None or d > end:
                break
            self.now = max(self.now, d)
            self.stack.run_timers(self.now)
            self.collect()
        self.now = end


def connect(profile: str = "legacy", *, ts: bool = False, sack: bool = True, wscale: int | None = 7,
            rcvbuf: int | None = None, rcvlowat: int = 1, seed: int = 1,
            **sysctl: Any) -> Conn:
    prof = get_profile(profile)
    stack = Stack(prof, sysctls_for(prof, **sysctl), seed=seed)
    lsn = stack.listen(LOCAL, PORT, 0, rcvbuf=rcvbuf, rcvlowat=rcvlowat)
    opts = TcpOptions(mss=1460, sack_permitted=sack, wscale=wscale,
                      timestamp=(1, 0) if ts else None)
    syn = Segment(src=REMOTE, sport=SPORT, dst=LOCAL, dport=PORT, seq=ISN, flags=TcpFlags.SYN,
                  window=65535, options=opts)
    stack.tcp_v4_rcv(syn, 0)
    outs = stack.take_outputs()
    synack = next(o.segment for o in outs if isinstance(o, Transmit))
    assert synack.flags == TcpFlags.SYN | TcpFlags.ACK
    tsval = synack.options.timestamp[0] if synack.options.timestamp else 0
    ack_opts = TcpOptions(timestamp=(2, tsval)) if ts else TcpOptions()
    ack = Segment(src=REMOTE, sport=SPORT, dst=LOCAL, dport=PORT, seq=ISN + 1,
                  ack=seq_add(synack.seq, 1), flags=TcpFlags.ACK, window=1000, options=ack_opts)
    stack.tcp_v4_rcv(ack, 0)
    stack.take_outputs()
    res = stack.sock_op("app", InetAccept(lsn), 0)
    assert isinstance(res, Accepted), res
    conn = Conn(stack=stack, sock=res.sock, listener=lsn, isn=ISN, ts=ts)
    conn.sent.append(synack)
    return conn


class Reader:
    """One read() call driven step by step against the stack, in virtual time."""

    def __init__(self, conn: Conn, task: str, length: int, flags: RecvFlags = NO_FLAGS,
                 timeo_ns: int | None = None, costs: ReaderCosts = NO_COSTS) -> None:
        self.conn = conn
        self.task = task
        stack = conn.stack
        gen = tcp_recvmsg(stack.profile, stack.sysctls, conn.sock, length, flags,
                          rcvlowat=conn.sk.rcvlowat, timeo_ns=timeo_ns, costs=costs,
                          clock=lambda: conn.now)
        self.driver = StepDriver(gen)
        self.waiting = False
        self.steps: deque[str] = deque()

    @property
    def result(self) -> RecvResult | None:
        return self.driver.result

    def step(self) -> bool:
        """Run one step if not asleep; False when blocked or finished."""
        if self.driver.done:
            return False
        if self.waiting:
            res = self.conn.done.pop(self.task, None)
            if res is None:
                return False
            self.waiting = False
            self.driver.feed(res)
            return True
        op = self.driver.next
        assert op is not None
        if isinstance(op, SpendCpu):
            self.steps.append("cpu")
            self.driver.feed(SockOpResult())
            return True
        self.steps.append(op.kernel_name)
        res = self.conn.stack.sock_op(self.task, op, self.conn.now)
        self.conn.collect()
        if res is None:
            self.waiting = True
        else:
            self.driver.feed(res)
        return True

    def run(self, max_steps: int = 10_000) -> RecvResult | None:
        """Step until finished or asleep."""
        for _ in range(max_steps):
            if not self.step():
                break
        return self.result


def read_all(conn: Conn, task: str = "r", length: int = 1 << 20, **kw: Any) -> RecvResult:
    r = Reader(conn, task, length, RecvFlags(dontwait=True), **kw)
    res = r.run()
    assert res is not None, "a non-blocking read must finish"
    return res
