"""The kernel model as a :class:`cli.drill.runner.Receiver`, on a virtual clock.

One :class:`~actors.stack.tcp_ipv4.Stack` plays the host under test. Inbound segments
go straight to ``tcp_v4_rcv`` at the script's time (packetdrill injects through a
tun device, so there is no NIC ring or NAPI in between); timers fire exactly when
due; the system calls (:mod:`cli.drill.syscalls`) hand their socket operations to
``Stack.sock_op`` directly, so a blocking read sleeps in ``sk_wait_data`` until a
wakeup and takes the socket lock like a reader. Everything is deterministic: time
only moves when the runner advances it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from actors.profiles import MS, Profile, Sysctls
from actors.stack.net import OpDone, Transmit
from actors.stack.skb import SKB_SHINFO_SIZE, SKB_STRUCT_SIZE, skb_data_align
from actors.stack.sock import TcpSock
from actors.stack.tcp_ipv4 import Stack
from cli.drill.runner import LOCAL_IP
from cli.drill.syscalls import (
    TCP_STATE_NUMBERS,
    CallGen,
    FileDesc,
    Syscalls,
    Wait,
    parse_sysctl,
)
from protocol.segment import IPV4_HEADER_LEN, TCP_HEADER_LEN, Segment
from protocol.seq import seq_sub
from protocol.sockops import SockOp, SockOpResult
from protocol.wire import encode_options

PAGE_SIZE = 4096
NET_SKB_PAD = 64  # tun's headroom (tun->align)


@dataclass
class ModelCall:
    gen: CallGen
    task: str
    done: bool = False
    ret: int = 0
    errno: str | None = None
    end_ns: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    state: str = "ready"  # ready | op | wait
    value: Any = None
    deadline: int | None = None
    predicate: Callable[[], bool] | None = None


def _kmalloc_size(n: int) -> int:
    """kmalloc_size_roundup: the slab object a request of n bytes gets."""
    for size in (8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192):
        if n <= size:
            return size
    return -(-n // PAGE_SIZE) * PAGE_SIZE


def tun_skb(ip_len: int) -> tuple[int, bool]:
    """(truesize, head_frag) of the skb tun_get_user builds for a written IP packet.

    packetdrill injects through a tun device, not a NIC ring. tun_alloc_skb keeps a
    packet that fits in a page (with its NET_SKB_PAD headroom) in a kmalloc'd linear
    area: truesize is that slab object plus the sk_buff, and the area cannot be
    stolen by skb_try_coalesce. A bigger (GSO) packet goes into page fragments: the
    model charges whole pages for the headroom, shared info and packet, plus the
    sk_buff; such an skb coalesces like a NIC's.
    """
    if NET_SKB_PAD + ip_len < PAGE_SIZE:
        head = _kmalloc_size(skb_data_align(NET_SKB_PAD + ip_len) + SKB_SHINFO_SIZE)
        return head + SKB_STRUCT_SIZE, False
    pages = -(-(NET_SKB_PAD + SKB_SHINFO_SIZE + ip_len) // PAGE_SIZE)
    return pages * PAGE_SIZE + SKB_STRUCT_SIZE, True


class ModelReceiver(Syscalls):
    """rxpath's kernel model on a virtual nanosecond clock."""

    local_ip = LOCAL_IP

    def __init__(self, profile: Profile, *, seed: int = 1) -> None:
        super().__init__()
        self.profile = profile
        self.stack = Stack(profile, profile.default_sysctls, seed=seed)
        self._now = 0
        self._out: list[tuple[int, Segment]] = []
        self._opdone: dict[str, SockOpResult] = {}
        self._calls: list[ModelCall] = []
        self._tasks = 0

    # ------------------------------------------------------------------ clock

    def now(self) -> int:
        return self._now

    def next_event_time(self) -> int | None:
        times = [d for d in (self.stack.next_deadline(),) if d is not None]
        times += [c.deadline for c in self._calls if c.state == "wait" and c.deadline is not None]
        return max(min(times), self._now) if times else None

    def advance(self, until_ns: int) -> None:
        while True:
            nxt = self.next_event_time()
            if nxt is None or nxt > until_ns:
                break
            self._now = max(self._now, nxt)
            self.stack.run_timers(self._now)
            self._drain()
        self._now = max(self._now, until_ns)
        self._drain()

    # ------------------------------------------------------------------ wire

    def inject(self, seg: Segment, *, gso_size: int = 0) -> None:
        ip_len = IPV4_HEADER_LEN + TCP_HEADER_LEN + len(encode_options(seg.options)) \
            + len(seg.payload)
        truesize, head_frag = tun_skb(ip_len)
        self.stack.tcp_v4_rcv(seg, self._now, gso_size=gso_size, truesize=truesize,
                              head_frag=head_frag)
        self._drain()

    def take_outbound(self) -> list[tuple[int, Segment]]:
        out, self._out = self._out, []
        return out

    # ------------------------------------------------------------------ host settings

    @property
    def sysctls(self) -> Sysctls:
        return self.stack.sysctls

    def set_sysctl(self, name: str, value: str) -> bool:
        parsed = parse_sysctl(self.stack.net.sysctls, name, value)
        if parsed is None:
            return False
        self.stack.net.sysctls = replace(self.stack.net.sysctls, **{parsed[0]: parsed[1]})
        return True

    def counters(self) -> Mapping[str, int]:
        return self.stack.net.mib.nonzero()

    def late_allowance_ns(self, expected_ns: int) -> int:
        return 0  # the virtual clock has no transport: every time is exact

    # ------------------------------------------------------------------ transport

    def _drain(self) -> None:
        """Collect the stack's outputs and run every call that can make progress."""
        progress = True
        while progress:
            self._collect()
            progress = False
            for call in list(self._calls):
                if self._step(call):
                    progress = True
            self._calls = [c for c in self._calls if not c.done]

    def _collect(self) -> None:
        for out in self.stack.take_outputs():
            if isinstance(out, Transmit):
                self._out.append((self._now, out.segment))
            elif isinstance(out, OpDone):
                self._opdone[out.task] = out.result

    def _step(self, call: ModelCall) -> bool:
        """Run ``call`` until it blocks or ends; True if it moved."""
        moved = False
        while not call.done:
            if call.state == "op":
                if call.task not in self._opdone:
                    return moved
                value: Any = self._opdone.pop(call.task)
            elif call.state == "wait":
                assert call.predicate is not None
                if call.predicate():
                    value = True
                elif call.deadline is not None and self._now >= call.deadline:
                    value = False
                else:
                    return moved
            else:
                value = call.value
            moved = True
            try:
                req = call.gen.send(value)
            except StopIteration as stop:
                call.ret, call.errno, call.extra = stop.value
                call.done = True
                call.end_ns = self._now
                return True
            if isinstance(req, Wait):
                call.deadline, call.predicate = req.deadline, req.predicate
                call.state = "wait"
                continue
            res = self.stack.sock_op(call.task, req, self._now)
            self._collect()
            if res is None:
                call.state = "op"
            else:
                call.state, call.value = "ready", res
        return moved

    def syscall(self, name: str, args: dict[str, Any]) -> ModelCall:
        gen = self.start_call(name, args)
        self._tasks += 1
        call = ModelCall(gen, task=f"app{self._tasks}")
        self._calls.append(call)
        self._drain()
        return call

    # ------------------------------------------------------------------ socket state

    def model_sock(self, desc: FileDesc | None) -> TcpSock | None:
        if desc is None or desc.sock is None:
            return None
        return self.stack.socks.get(desc.sock)

    def open_listener(self, desc: FileDesc, backlog: int, port: int, laddr: str) -> str | None:
        if (desc.port or port) in self.stack.listeners:
            return "EADDRINUSE"
        desc.sock = self.stack.listen(laddr, desc.port or port, self._now, backlog=backlog,
                                      rcvbuf=desc.rcvbuf, rcvlowat=desc.rcvlowat)
        return None

    def model_connect(self, desc: FileDesc, addr: str, port: int) -> int:
        return self.stack.connect(self.local_ip, addr, port, self._now, lport=desc.port,
                                  rcvbuf=desc.rcvbuf, rcvlowat=desc.rcvlowat)

    def scratch_sock(self) -> TcpSock:
        return TcpSock(net=self.stack.net, sock_id=0, laddr="", lport=0)

    def child_rcvlowat(self, listener: FileDesc, sock: int) -> int:
        sk = self.stack.socks.get(sock)
        return sk.rcvlowat if sk is not None else 1

    def sock_option(self, desc: FileDesc, name: str) -> Generator[SockOp, Any, int]:
        sk = self.model_sock(desc)
        if sk is None:
            return self.unbound_option(desc, name)
        return {"SO_RCVBUF": sk.rcvbuf, "SO_RCVLOWAT": sk.rcvlowat, "SO_ERROR": sk.sk_err}[name]
        yield  # pragma: no cover

    def inq_hint(self, desc: FileDesc) -> Generator[SockOp, Any, int]:
        sk = self.model_sock(desc)
        assert sk is not None
        inq = max(0, seq_sub(sk.rcv_nxt, sk.copied_seq))
        return 1 if inq == 0 and sk.sock_done else inq
        yield  # pragma: no cover

    # ------------------------------------------------------------------ tcp_info

    def tcp_info(self, four_tuple: tuple[str, int, str, int]) -> dict[str, int] | None:
        sock_id = self.stack.ehash.get(four_tuple)
        sk = self.stack.socks.get(sock_id) if sock_id is not None else None
        if sk is None:
            matches = [s for s in self.stack.socks.values()
                       if (s.raddr, s.rport, s.laddr, s.lport) == four_tuple]
            sk = matches[-1] if matches else None
        if sk is None:
            return None
        ack = sk.icsk_ack
        return {
            "tcpi_state": TCP_STATE_NUMBERS[sk.state],
            "tcpi_ca_state": 0,
            "tcpi_retransmits": 0,
            "tcpi_rcv_wscale": sk.rx_opt.rcv_wscale,
            "tcpi_snd_wscale": sk.rx_opt.snd_wscale,
            "tcpi_ato": ack.ato // 1000,
            "tcpi_snd_mss": sk.mss_cache,
            "tcpi_rcv_mss": ack.rcv_mss,
            "tcpi_advmss": sk.advmss,
            "tcpi_last_data_recv": (self._now - ack.lrcvtime) // MS,
            "tcpi_rcv_rtt": sk.rcv_rtt_us >> 3,
            "tcpi_rcv_space": sk.rcvq_space,
            "tcpi_rcv_ssthresh": sk.rcv_ssthresh,
            "tcpi_rcv_wnd": sk.rcv_wnd,
            "tcpi_snd_wnd": sk.snd_wnd,
            # tcp_rcv_nxt_update: every byte (and the FIN) that advanced rcv_nxt
            "tcpi_bytes_received": seq_sub(sk.rcv_nxt, sk.irs) - 1 if sk.irs or sk.rcv_nxt
            else 0,
            "tcpi_segs_in": sk.segs_in,
            "tcpi_data_segs_in": sk.data_segs_in,
            "tcpi_total_retrans": 0,
            "SK_MEMINFO_RMEM_ALLOC": sk.rmem_alloc,
            "SK_MEMINFO_RCVBUF": sk.rcvbuf,
            "SK_MEMINFO_WMEM_ALLOC": 0,
            "SK_MEMINFO_SNDBUF": sk.sndbuf,
            "SK_MEMINFO_FWD_ALLOC": sk.forward_alloc,
            "SK_MEMINFO_WMEM_QUEUED": 0,
            "SK_MEMINFO_OPTMEM": 0,
            "SK_MEMINFO_BACKLOG": sk.backlog_len,
            "SK_MEMINFO_DROPS": sk.sk_drops,
        }
