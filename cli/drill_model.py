"""The kernel model as a :class:`cli.drill_runner.Receiver`, on a virtual clock.

One :class:`~actors.stack.tcp_ipv4.Stack` plays the host under test. Inbound segments
go straight to ``tcp_v4_rcv`` at the script's time (packetdrill injects through a
tun device, so there is no NIC ring or NAPI in between); timers fire exactly when
due; each system call is a small generator of stack operations, and ``read`` /
``recv`` / ``recvmsg`` run the real ``tcp_recvmsg`` step machine, so a blocking read
sleeps in ``sk_wait_data`` until a wakeup and takes the socket lock like a reader.
Everything is deterministic: time only moves when the runner advances it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from actors.profiles import MS, Profile
from actors.reader.tcp_recvmsg import RecvFlags, SpendCpu, StepDriver, tcp_recvmsg
from actors.stack.net import OpDone, Transmit
from actors.stack.skb import SKB_SHINFO_SIZE, SKB_STRUCT_SIZE, skb_data_align
from actors.stack.sock import TcpSock, TcpState
from actors.stack.tcp_ipv4 import Stack, sock_set_rcvbuf
from cli.drill_runner import LOCAL_IP, SYMBOLS, Unsupported, errno_name
from protocol.segment import IPV4_HEADER_LEN, TCP_HEADER_LEN, Segment
from protocol.seq import seq_sub
from protocol.sockops import (
    Accepted,
    Failed,
    InetAccept,
    Inq,
    LockSock,
    ReleaseSock,
    Sent,
    SockOp,
    SockOpResult,
    SockSetsockopt,
    TcpClose,
    TcpInq,
    TcpSendmsg,
    TcpShutdown,
)
from protocol.wire import encode_options

# Linux's tcp_info state numbers (include/net/tcp_states.h).
TCP_STATE_NUMBERS = {
    TcpState.ESTABLISHED: 1, TcpState.SYN_SENT: 2, TcpState.SYN_RECV: 3,
    TcpState.FIN_WAIT1: 4, TcpState.FIN_WAIT2: 5, TcpState.TIME_WAIT: 6, TcpState.CLOSE: 7,
    TcpState.CLOSE_WAIT: 8, TcpState.LAST_ACK: 9, TcpState.LISTEN: 10, TcpState.CLOSING: 11,
}

EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP = (SYMBOLS[n] for n in
                                         ("EPOLLIN", "EPOLLOUT", "EPOLLERR", "EPOLLHUP"))
EPOLLRDNORM, EPOLLWRNORM, EPOLLRDHUP, EPOLLET = (SYMBOLS[n] for n in (
    "EPOLLRDNORM", "EPOLLWRNORM", "EPOLLRDHUP", "EPOLLET"))
O_RDWR, O_NONBLOCK = SYMBOLS["O_RDWR"], SYMBOLS["O_NONBLOCK"]
PAGE_SIZE = 4096
NET_SKB_PAD = 64  # tun's headroom (tun->align)

# A system call is a generator: it yields ("op", SockOp) for a stack
# operation or ("wait", deadline, predicate) to sleep, and returns
# (ret, errno, extra).
CallResult = tuple[int, str | None, dict[str, Any]]
CallGen = Generator[tuple[Any, ...], Any, CallResult]


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


@dataclass
class EpollItem:
    events: int
    seen_wakeups: int
    ready: bool


@dataclass
class FileDesc:
    kind: str  # "sock" or "epoll"
    sock: int | None = None  # the stack socket, once listen()ed / accepted
    nonblock: bool = False
    port: int | None = None
    rcvbuf: int | None = None  # SO_RCVBUF set before listen()
    rcvlowat: int = 1
    inq_cmsg: bool = False  # TCP_INQ
    interest: dict[int, EpollItem] = field(default_factory=dict)  # epoll: fd -> item


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


def _err(name: str, extra: dict[str, Any] | None = None) -> CallResult:
    return -1, name, extra or {}


class ModelReceiver:
    """rxpath's kernel model on a virtual nanosecond clock."""

    local_ip = LOCAL_IP

    def __init__(self, profile: Profile, *, seed: int = 1) -> None:
        self.profile = profile
        self.stack = Stack(profile, profile.default_sysctls, seed=seed)
        self._now = 0
        self._out: list[tuple[int, Segment]] = []
        self._opdone: dict[str, SockOpResult] = {}
        self._calls: list[ModelCall] = []
        self._fds: dict[int, FileDesc] = {}
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

    def set_sysctl(self, name: str, value: str) -> bool:
        short = name.rsplit(".", 1)[-1]
        known = {f.name: f for f in fields(self.stack.net.sysctls)}
        if short == "tcp_invalid_ratelimit":
            short = "tcp_invalid_ratelimit_ms"
        if short not in known:
            return False
        current = getattr(self.stack.net.sysctls, short)
        try:
            if isinstance(current, tuple):
                parts = tuple(int(v) for v in value.split())
                if len(parts) != len(current):
                    return False
                new: Any = parts
            else:
                new = int(value, 0)
        except ValueError:
            return False
        self.stack.net.sysctls = replace(self.stack.net.sysctls, **{short: new})
        return True

    def counters(self) -> Mapping[str, int]:
        return self.stack.net.mib.nonzero()

    def late_allowance_ns(self, expected_ns: int) -> int:
        return 0  # the virtual clock has no transport: every time is exact

    # ------------------------------------------------------------------ outputs and calls

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
            if req[0] == "op":
                res = self.stack.sock_op(call.task, req[1], self._now)
                self._collect()
                if res is None:
                    call.state = "op"
                else:
                    call.state, call.value = "ready", res
            else:
                _, call.deadline, call.predicate = req
                call.state = "wait"
        return moved

    def syscall(self, name: str, args: dict[str, Any]) -> ModelCall:
        impl = getattr(self, f"_sys_{name}", None)
        if impl is None:
            raise Unsupported(f"{name}() is not modelled")
        self._tasks += 1
        call = ModelCall(impl(**args), task=f"app{self._tasks}")
        self._calls.append(call)
        self._drain()
        return call

    # ------------------------------------------------------------------ fds

    def _new_fd(self, desc: FileDesc) -> int:
        fd = 3
        while fd in self._fds:
            fd += 1
        self._fds[fd] = desc
        return fd

    def _desc(self, fd: int) -> FileDesc | None:
        return self._fds.get(fd)

    def _sk(self, desc: FileDesc) -> TcpSock | None:
        return self.stack.socks.get(desc.sock) if desc.sock is not None else None

    # ------------------------------------------------------------------ system calls

    def _sys_socket(self) -> CallGen:
        return self._new_fd(FileDesc("sock")), None, {}
        yield  # pragma: no cover

    def _sys_bind(self, fd: int, port: int) -> CallGen:
        desc = self._desc(fd)
        if desc is None or desc.kind != "sock":
            return _err("EBADF")
        desc.port = port
        return 0, None, {}
        yield  # pragma: no cover

    def _sys_listen(self, fd: int, backlog: int, port: int, laddr: str) -> CallGen:
        desc = self._desc(fd)
        if desc is None or desc.kind != "sock":
            return _err("EBADF")
        if desc.sock is not None:
            return 0, None, {}
        if (desc.port or port) in self.stack.listeners:
            return _err("EADDRINUSE")
        desc.sock = self.stack.listen(laddr, desc.port or port, self._now, backlog=backlog,
                                      rcvbuf=desc.rcvbuf, rcvlowat=desc.rcvlowat)
        return 0, None, {}
        yield  # pragma: no cover

    def _sys_accept(self, fd: int) -> CallGen:
        desc = self._desc(fd)
        if desc is None:
            return _err("EBADF")
        if desc.sock is None:
            return _err("EINVAL")
        res = yield ("op", InetAccept(desc.sock, nonblock=desc.nonblock))
        if isinstance(res, Failed):
            return _err(errno_name(res.error))
        assert isinstance(res, Accepted), res
        child = FileDesc("sock", sock=res.sock)
        child_sk = self._sk(child)
        if child_sk is not None:
            child.rcvlowat = child_sk.rcvlowat
        return self._new_fd(child), None, {}

    def _sys_connect(self, fd: int, addr: str, port: int) -> CallGen:
        desc = self._desc(fd)
        if desc is None or desc.kind != "sock":
            return _err("EBADF")
        if desc.sock is not None:
            sk = self._sk(desc)
            if sk is not None and sk.state == TcpState.SYN_SENT:
                return _err("EALREADY")
            return _err("EISCONN")
        desc.sock = self.stack.connect(self.local_ip, addr, port, self._now, lport=desc.port,
                                       rcvbuf=desc.rcvbuf, rcvlowat=desc.rcvlowat)
        sk = self._sk(desc)
        assert sk is not None
        if desc.nonblock:
            return _err("EINPROGRESS")
        yield ("wait", None, lambda: sk.state != TcpState.SYN_SENT)
        if sk.state == TcpState.CLOSE:
            return _err(errno_name(sk.sk_err or 111))
        return 0, None, {}

    def _sys_setsockopt(self, fd: int, level: int, name: str, value: int | None) -> CallGen:
        desc = self._desc(fd)
        if desc is None or desc.kind != "sock":
            return _err("EBADF")
        val = int(value or 0)
        if name in ("SO_REUSEADDR", "SO_REUSEPORT", "SO_KEEPALIVE", "TCP_NODELAY"):
            return 0, None, {}
        if name == "TCP_INQ":
            desc.inq_cmsg = bool(val)
            return 0, None, {}
        if name in ("SO_RCVBUF", "SO_RCVLOWAT"):
            if name == "SO_RCVLOWAT":
                desc.rcvlowat = max(val, 1)
            if desc.sock is None:
                if name == "SO_RCVBUF":
                    desc.rcvbuf = val
                return 0, None, {}
            res = yield ("op", SockSetsockopt(desc.sock, name, val))
            if isinstance(res, Failed):
                return _err(errno_name(res.error))
            return 0, None, {}
        raise Unsupported(f"setsockopt({name}) is not modelled")

    def _sys_getsockopt(self, fd: int, level: int, name: str) -> CallGen:
        desc = self._desc(fd)
        if desc is None or desc.kind != "sock":
            return _err("EBADF")
        sk = self._sk(desc)
        if name == "SO_RCVBUF":
            if sk is not None:
                return 0, None, {"value": sk.rcvbuf}
            if desc.rcvbuf is not None:
                probe = TcpSock(net=self.stack.net, sock_id=0, laddr="", lport=0)
                sock_set_rcvbuf(probe, desc.rcvbuf)
                return 0, None, {"value": probe.rcvbuf}
            return 0, None, {"value": self.stack.sysctls.tcp_rmem[1]}  # tcp_init_sock
        if name == "SO_RCVLOWAT":
            return 0, None, {"value": sk.rcvlowat if sk is not None else desc.rcvlowat}
        if name == "TCP_INQ":
            return 0, None, {"value": int(desc.inq_cmsg)}
        if name == "SO_ERROR":
            return 0, None, {"value": sk.sk_err if sk is not None else 0}
        raise Unsupported(f"getsockopt({name}) is not modelled")
        yield  # pragma: no cover

    def _sys_read(self, fd: int, length: int, flags: int) -> CallGen:
        desc = self._desc(fd)
        if desc is None:
            return _err("EBADF")
        if desc.kind != "sock":
            return _err("EINVAL")
        if desc.sock is None:
            return _err("ENOTCONN")
        sk = self._sk(desc)
        assert sk is not None
        rflags = RecvFlags(peek=bool(flags & SYMBOLS["MSG_PEEK"]),
                           trunc=bool(flags & SYMBOLS["MSG_TRUNC"]),
                           dontwait=bool(flags & SYMBOLS["MSG_DONTWAIT"]) or desc.nonblock,
                           waitall=bool(flags & SYMBOLS["MSG_WAITALL"]))
        gen = tcp_recvmsg(self.profile, self.stack.sysctls, desc.sock, length, rflags,
                          rcvlowat=sk.rcvlowat, timeo_ns=None, clock=self.now)
        driver = StepDriver(gen)
        while not driver.done:
            step = driver.next
            assert step is not None
            if isinstance(step, SpendCpu):
                driver.feed(SockOpResult())
                continue
            driver.feed((yield ("op", step)))
        res = driver.result
        assert res is not None
        extra: dict[str, Any] = {"data": res.data}
        if desc.inq_cmsg:
            # tcp_inq_hint: bytes left; after a FIN, at least 1 so the reader comes back
            inq = max(0, seq_sub(sk.rcv_nxt, sk.copied_seq))
            extra["cm_inq"] = 1 if inq == 0 and sk.sock_done else inq
        if res.ret < 0:
            return -1, errno_name(-res.ret), extra
        return res.ret, None, extra

    def _locked(self, op: SockOp) -> CallGen:
        """lock_sock, one operation, release_sock (close releases by itself)."""
        sock = op.sock  # type: ignore[attr-defined]
        yield ("op", LockSock(sock))
        res = yield ("op", op)
        if not isinstance(op, TcpClose):
            yield ("op", ReleaseSock(sock))
        if isinstance(res, Failed):
            return _err(errno_name(res.error))
        return 0, None, {"sent": res.sent} if isinstance(res, Sent) else {}

    def _sys_write(self, fd: int, length: int) -> CallGen:
        desc = self._desc(fd)
        if desc is None:
            return _err("EBADF")
        if desc.sock is None:
            return _err("EPIPE")
        ret, err, extra = yield from self._locked(TcpSendmsg(desc.sock, bytes(length)))
        if err:
            return ret, err, extra
        return int(extra.get("sent", 0)), None, {}

    def _sys_shutdown(self, fd: int, how: int | None) -> CallGen:
        desc = self._desc(fd)
        if desc is None:
            return _err("EBADF")
        if desc.sock is None:
            return _err("ENOTCONN")
        return (yield from self._locked(TcpShutdown(desc.sock, int(how or 0))))

    def _sys_close(self, fd: int) -> CallGen:
        desc = self._fds.pop(fd, None)
        if desc is None:
            return _err("EBADF")
        for other in self._fds.values():
            other.interest.pop(fd, None)
        if desc.sock is None:
            return 0, None, {}
        ret, err, _ = yield from self._locked(TcpClose(desc.sock))
        return ret, err, {}

    def _sys_fcntl(self, fd: int, cmd: int | None, arg: int | None) -> CallGen:
        desc = self._desc(fd)
        if desc is None:
            return _err("EBADF")
        if cmd == SYMBOLS["F_GETFL"]:
            return O_RDWR | (O_NONBLOCK if desc.nonblock else 0), None, {}
        if cmd == SYMBOLS["F_SETFL"]:
            desc.nonblock = bool((arg or 0) & O_NONBLOCK)
            return 0, None, {}
        raise Unsupported(f"fcntl command {cmd} is not modelled")
        yield  # pragma: no cover

    def _sys_ioctl(self, fd: int, request: int | None) -> CallGen:
        desc = self._desc(fd)
        if desc is None:
            return _err("EBADF")
        if request != SYMBOLS["SIOCINQ"]:
            raise Unsupported(f"ioctl request {request:#x} is not modelled")
        sk = self._sk(desc)
        if sk is None or sk.state == TcpState.LISTEN:
            return _err("EINVAL")
        res = yield ("op", TcpInq(sk.sock_id))
        assert isinstance(res, Inq), res
        return 0, None, {"value": res.inq}

    # ------------------------------------------------------------------ epoll

    def _sys_epoll_create(self) -> CallGen:
        return self._new_fd(FileDesc("epoll")), None, {}
        yield  # pragma: no cover

    def _poll_mask(self, fd: int) -> int:
        """tcp_poll for the socket behind ``fd``."""
        desc = self._desc(fd)
        sk = self._sk(desc) if desc is not None else None
        if sk is None:
            return 0
        if sk.state == TcpState.LISTEN:
            return EPOLLIN | EPOLLRDNORM if sk.accept_queue else 0
        mask = 0
        if (sk.rcv_shutdown and sk.snd_shutdown) or sk.state == TcpState.CLOSE:
            mask |= EPOLLHUP
        if sk.rcv_shutdown:
            mask |= EPOLLIN | EPOLLRDNORM | EPOLLRDHUP
        if sk.state not in (TcpState.SYN_SENT, TcpState.SYN_RECV):
            if seq_sub(sk.rcv_nxt, sk.copied_seq) - int(sk.sock_done) >= max(sk.rcvlowat, 1):
                mask |= EPOLLIN | EPOLLRDNORM
            if not sk.snd_shutdown and sk.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
                mask |= EPOLLOUT | EPOLLWRNORM
        if sk.sk_err:
            mask |= EPOLLERR
        return mask

    def _wakeups(self, fd: int) -> int:
        desc = self._desc(fd)
        sk = self._sk(desc) if desc is not None else None
        return sk.wakeups if sk is not None else 0

    def _sys_epoll_ctl(self, epfd: int, op: int | None, fd: int | None, events: int) -> CallGen:
        ep = self._desc(epfd)
        if ep is None or ep.kind != "epoll" or fd is None or fd not in self._fds:
            return _err("EBADF")
        if op == SYMBOLS["EPOLL_CTL_DEL"]:
            if ep.interest.pop(fd, None) is None:
                return _err("ENOENT")
            return 0, None, {}
        if op == SYMBOLS["EPOLL_CTL_ADD"] and fd in ep.interest:
            return _err("EEXIST")
        if op == SYMBOLS["EPOLL_CTL_MOD"] and fd not in ep.interest:
            return _err("ENOENT")
        events |= EPOLLERR | EPOLLHUP
        # ep_insert / ep_modify poll the file once: ready now means on the ready list
        ready = bool(self._poll_mask(fd) & events)
        ep.interest[fd] = EpollItem(events, self._wakeups(fd), ready)
        return 0, None, {}
        yield  # pragma: no cover

    def _epoll_collect(self, ep: FileDesc, maxevents: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for fd, item in ep.interest.items():
            woken = self._wakeups(fd)
            if woken != item.seen_wakeups:
                item.seen_wakeups = woken
                item.ready = True
            if not item.ready or len(out) >= maxevents:
                continue
            mask = self._poll_mask(fd) & item.events
            # Edge-triggered items leave the ready list once reported; level-triggered
            # ones stay while they are still ready.
            item.ready = bool(mask) and not item.events & EPOLLET
            if mask:
                out.append((fd, mask & ~EPOLLET))
        return out

    def _sys_epoll_wait(self, epfd: int, maxevents: int, timeout_ms: int | None) -> CallGen:
        ep = self._desc(epfd)
        if ep is None or ep.kind != "epoll":
            return _err("EBADF")
        events = self._epoll_collect(ep, maxevents)
        if not events and timeout_ms:
            deadline = None if timeout_ms < 0 else self._now + timeout_ms * MS

            def ready() -> bool:
                return any(self._wakeups(fd) != it.seen_wakeups or it.ready
                           for fd, it in ep.interest.items())
            while not events:
                woke = yield ("wait", deadline, ready)
                events = self._epoll_collect(ep, maxevents)
                if not woke:
                    break
        return len(events), None, {"events": events}

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
