"""The user process's system calls, shared by both drill receivers.

One fd table and one implementation of every call. A call is a generator: it yields
each typed socket operation (:mod:`protocol.sockops`) it needs the stack to run and
returns ``(ret, errno, extra)``; every sleep (a blocking read, accept, connect or
epoll_wait) is an operation that the stack answers when it wakes the caller. A receiver
is only the transport: it runs the yielded operations (a direct ``Stack.sock_op`` call
on a virtual clock, or a ``sock_op`` message to the stack process) and keeps the clock.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from actors.profiles import MS, Profile, Sysctls, sysctl_write
from actors.reader.tcp_recvmsg import RecvFlags, SpendCpu, StepDriver, tcp_recvmsg
from actors.stack.skb import so_rcvbuf
from actors.stack.sock import TcpState
from cli.config import SYSCTL_FIELD_FOR_KERNEL_NAME
from cli.drill.runner import LOCAL_IP, SYMBOLS, Unsupported, errno_name
from protocol.sockops import (
    Accepted,
    EpPoll,
    Failed,
    InetAccept,
    InetListen,
    InetWaitForConnect,
    Inq,
    LockSock,
    Opened,
    Polled,
    ReleaseSock,
    Sent,
    SockError,
    SockErrorResult,
    SockOp,
    SockOpResult,
    SockSetsockopt,
    TcpClose,
    TcpGetInfo,
    TcpInfo,
    TcpInq,
    TcpPoll,
    TcpSendmsg,
    TcpShutdown,
    TcpV4Connect,
    Woken,
)

# Linux's tcp_info state numbers (include/net/tcp_states.h).
TCP_STATE_NUMBERS = {
    TcpState.ESTABLISHED: 1, TcpState.SYN_SENT: 2, TcpState.SYN_RECV: 3,
    TcpState.FIN_WAIT1: 4, TcpState.FIN_WAIT2: 5, TcpState.TIME_WAIT: 6, TcpState.CLOSE: 7,
    TcpState.CLOSE_WAIT: 8, TcpState.LAST_ACK: 9, TcpState.LISTEN: 10, TcpState.CLOSING: 11,
}

EPOLLERR, EPOLLHUP, EPOLLET = SYMBOLS["EPOLLERR"], SYMBOLS["EPOLLHUP"], SYMBOLS["EPOLLET"]
O_RDWR, O_NONBLOCK = SYMBOLS["O_RDWR"], SYMBOLS["O_NONBLOCK"]


CallResult = tuple[int, str | None, dict[str, Any]]
CallGen = Generator[SockOp, Any, CallResult]


@dataclass
class EpollItem:
    events: int
    seen_wakeups: int
    ready: bool


@dataclass
class FileDesc:
    kind: str  # "sock" or "epoll"
    sock: int | None = None  # the stack socket, once listen()ed / accepted / connected
    listening: bool = False
    nonblock: bool = False
    port: int | None = None
    rcvbuf: int | None = None  # SO_RCVBUF set before listen()
    # sk_rcvbuf as tcp_init_sock set it when socket() ran: tcp_rmem[1] at that time, so
    # a tcp_rmem written between socket() and listen() does not change it
    init_rcvbuf: int | None = None
    rcvlowat: int = 1
    inq_cmsg: bool = False  # TCP_INQ
    interest: dict[int, EpollItem] = field(default_factory=dict)  # epoll: fd -> item


def tcp_info_fields(info: dict[str, Any]) -> dict[str, int]:
    """The tcp_info and SO_MEMINFO names a script's assertions use, from what the stack's
    ``tcp_get_info`` reports."""
    skmem = info["skmem"]
    return {
        "tcpi_state": TCP_STATE_NUMBERS[TcpState(info["state"])],
        "tcpi_ca_state": 0,
        "tcpi_retransmits": 0,
        "tcpi_rcv_wscale": info["rcv_wscale"],
        "tcpi_snd_wscale": info["snd_wscale"],
        "tcpi_ato": info["ato_us"],
        "tcpi_snd_mss": info["snd_mss"],
        "tcpi_rcv_mss": info["rcv_mss"],
        "tcpi_advmss": info["advmss"],
        "tcpi_last_data_recv": info["last_data_recv_ms"],
        "tcpi_rcv_rtt": info["rcv_rtt_us"],
        "tcpi_rcv_space": info["rcv_space"],
        "tcpi_rcv_ssthresh": info["rcv_ssthresh"],
        "tcpi_rcv_wnd": info["rcv_wnd"],
        "tcpi_snd_wnd": info["snd_wnd"],
        "tcpi_bytes_received": info["bytes_received"],
        "tcpi_segs_in": info["segs_in"],
        "tcpi_data_segs_in": info["data_segs_in"],
        "tcpi_total_retrans": 0,
        "SK_MEMINFO_RMEM_ALLOC": skmem["r"],
        "SK_MEMINFO_RCVBUF": skmem["rb"],
        "SK_MEMINFO_WMEM_ALLOC": skmem["t"],
        "SK_MEMINFO_SNDBUF": skmem["tb"],
        "SK_MEMINFO_FWD_ALLOC": skmem["f"],
        "SK_MEMINFO_WMEM_QUEUED": skmem["w"],
        "SK_MEMINFO_OPTMEM": skmem["o"],
        "SK_MEMINFO_BACKLOG": skmem["bl"],
        "SK_MEMINFO_DROPS": skmem["d"],
    }


def _err(name: str, extra: dict[str, Any] | None = None) -> CallResult:
    return -1, name, extra or {}



def parse_sysctl(sysctls: Sysctls, name: str, value: str) -> tuple[str, list[int]] | None:
    """A script's ``sysctl -q NAME=VALUE`` as (our field name, its values), or None for
    a sysctl the emulator does not have or a value of the wrong shape."""
    short = name.rsplit(".", 1)[-1]
    short = SYSCTL_FIELD_FOR_KERNEL_NAME.get(short, short)
    try:
        values = [int(v, 0) for v in value.split()]
        sysctl_write(sysctls, short, values)
    except ValueError:
        return None
    return short, values


class Syscalls:
    """The fd table and the system calls; a receiver subclasses it as their transport.

    The transport provides ``profile``, :attr:`sysctls` and :meth:`now`.
    """

    profile: Profile
    local_ip = LOCAL_IP

    def __init__(self) -> None:
        self._fds: dict[int, FileDesc] = {}

    # ------------------------------------------------------------------ transport

    @property
    def sysctls(self) -> Sysctls:
        raise NotImplementedError

    def now(self) -> int:
        raise NotImplementedError

    # ------------------------------------------------------------------ fds

    def start_call(self, name: str, args: dict[str, Any]) -> CallGen:
        impl: Callable[..., CallGen] | None = getattr(self, f"_sys_{name}", None)
        if impl is None:
            raise Unsupported(f"{name}() is not modelled")
        return impl(**args)

    def _new_fd(self, desc: FileDesc) -> int:
        fd = 3
        while fd in self._fds:
            fd += 1
        self._fds[fd] = desc
        return fd

    def _desc(self, fd: int) -> FileDesc | None:
        return self._fds.get(fd)

    def _locked(self, op: SockOp) -> CallGen:
        """lock_sock, one operation, release_sock (close releases by itself)."""
        sock = op.sock  # type: ignore[attr-defined]
        yield LockSock(sock)
        res = yield op
        if not isinstance(op, TcpClose):
            yield ReleaseSock(sock)
        if isinstance(res, Failed):
            return _err(errno_name(res.error))
        return 0, None, {"sent": res.sent} if isinstance(res, Sent) else {}

    # ------------------------------------------------------------------ system calls

    def _sys_socket(self) -> CallGen:
        return self._new_fd(FileDesc("sock", init_rcvbuf=self.sysctls.tcp_rmem[1])), None, {}
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
        res = yield InetListen(laddr, desc.port or port, backlog, desc.rcvbuf, desc.rcvlowat,
                               desc.init_rcvbuf)
        if isinstance(res, Failed):
            return _err(errno_name(res.error))
        assert isinstance(res, Opened), res
        desc.sock, desc.listening = res.sock, True
        return 0, None, {}

    def _sys_accept(self, fd: int) -> CallGen:
        desc = self._desc(fd)
        if desc is None:
            return _err("EBADF")
        if desc.sock is None:
            return _err("EINVAL")
        res = yield InetAccept(desc.sock, nonblock=desc.nonblock)
        if isinstance(res, Failed):
            return _err(errno_name(res.error))
        assert isinstance(res, Accepted), res
        # the child inherits the listener's SO_RCVLOWAT (sk_clone)
        child = FileDesc("sock", sock=res.sock, rcvlowat=desc.rcvlowat)
        return self._new_fd(child), None, {}

    def _sys_connect(self, fd: int, addr: str, port: int) -> CallGen:
        desc = self._desc(fd)
        if desc is None or desc.kind != "sock":
            return _err("EBADF")
        if desc.sock is not None:
            info = yield TcpGetInfo(desc.sock)
            assert isinstance(info, TcpInfo), info
            connecting = info.info["state"] == TcpState.SYN_SENT.value
            return _err("EALREADY" if connecting else "EISCONN")
        res = yield TcpV4Connect(self.local_ip, addr, port, desc.port, desc.rcvbuf,
                                 desc.rcvlowat, desc.init_rcvbuf)
        assert isinstance(res, Opened), res
        desc.sock = res.sock
        if desc.nonblock:
            return _err("EINPROGRESS")
        res = yield InetWaitForConnect(desc.sock)
        if isinstance(res, Failed):
            return _err(errno_name(res.error))
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
        if name == "TCP_QUICKACK":
            if desc.sock is not None:  # before listen/connect there is no icsk to set
                res = yield SockSetsockopt(desc.sock, name, val)
                if isinstance(res, Failed):
                    return _err(errno_name(res.error))
            return 0, None, {}
        if name in ("SO_RCVBUF", "SO_RCVLOWAT"):
            if desc.sock is None:
                if name == "SO_RCVBUF":
                    desc.rcvbuf = val
                else:
                    desc.rcvlowat = self._unbound_rcvlowat(desc, val)
                return 0, None, {}
            res = yield SockSetsockopt(desc.sock, name, val)
            if isinstance(res, Failed):
                return _err(errno_name(res.error))
            if name == "SO_RCVLOWAT":  # what the stack kept (tcp_set_rcvlowat caps it)
                info = yield TcpGetInfo(desc.sock)
                assert isinstance(info, TcpInfo), info
                desc.rcvlowat = int(info.info["rcvlowat"])
            return 0, None, {}
        raise Unsupported(f"setsockopt({name}) is not modelled")

    def _unbound_rcvlowat(self, desc: FileDesc, val: int) -> int:
        """SO_RCVLOWAT on a socket not yet in the stack: sock_setsockopt's negative ->
        INT_MAX, then (4.19+) tcp_set_rcvlowat's cap at half of the locked SO_RCVBUF or
        of tcp_rmem[2], which getsockopt and read() see now; listen() or connect()
        hands the value to the stack, whose sock_set_rcvlowat grows sk_rcvbuf."""
        if val < 0:
            val = 2**31 - 1
        if self.profile.data_ready_honours_rcvlowat:
            cap = (so_rcvbuf(desc.rcvbuf, self.sysctls.rmem_max) if desc.rcvbuf is not None
                   else self.sysctls.tcp_rmem[2]) >> 1
            val = min(val, cap)
        return val or 1

    def _sys_getsockopt(self, fd: int, level: int, name: str) -> CallGen:
        desc = self._desc(fd)
        if desc is None or desc.kind != "sock":
            return _err("EBADF")
        if name == "TCP_INQ":
            return 0, None, {"value": int(desc.inq_cmsg)}
        if name not in ("SO_RCVBUF", "SO_RCVLOWAT", "SO_ERROR", "TCP_QUICKACK"):
            raise Unsupported(f"getsockopt({name}) is not modelled")
        if name == "TCP_QUICKACK":  # !inet_csk_in_pingpong_mode(sk)
            if desc.sock is None:
                return 0, None, {"value": 1}
            info = yield TcpGetInfo(desc.sock)
            assert isinstance(info, TcpInfo), info
            return 0, None, {"value": int(not info.info["pingpong"])}
        if name == "SO_RCVLOWAT":
            return 0, None, {"value": desc.rcvlowat}
        if desc.sock is None:  # not in the stack yet
            rmem_max = self.sysctls.rmem_max
            value = 0 if name == "SO_ERROR" else (
                so_rcvbuf(desc.rcvbuf, rmem_max) if desc.rcvbuf is not None
                else desc.init_rcvbuf if desc.init_rcvbuf is not None
                else self.sysctls.tcp_rmem[1])
            return 0, None, {"value": value}
        if name == "SO_ERROR":  # sock_error: reading it clears it
            err = yield SockError(desc.sock)
            assert isinstance(err, SockErrorResult), err
            return 0, None, {"value": err.sock_err}
        info = yield TcpGetInfo(desc.sock)
        assert isinstance(info, TcpInfo), info
        return 0, None, {"value": int(info.info["skmem"]["rb"])}

    def _sys_read(self, fd: int, length: int, flags: int) -> CallGen:
        desc = self._desc(fd)
        if desc is None:
            return _err("EBADF")
        if desc.kind != "sock":
            return _err("EINVAL")
        if desc.sock is None:
            return _err("ENOTCONN")
        rflags = RecvFlags(peek=bool(flags & SYMBOLS["MSG_PEEK"]),
                           trunc=bool(flags & SYMBOLS["MSG_TRUNC"]),
                           dontwait=bool(flags & SYMBOLS["MSG_DONTWAIT"]) or desc.nonblock,
                           waitall=bool(flags & SYMBOLS["MSG_WAITALL"]))
        driver = StepDriver(tcp_recvmsg(self.profile, self.sysctls, desc.sock, length, rflags,
                                        rcvlowat=desc.rcvlowat, timeo_ns=None,
                                        clock=self.now))
        while not driver.done:
            step = driver.next
            assert step is not None
            if isinstance(step, SpendCpu):  # the process's own time: none is modelled
                driver.feed(SockOpResult())
                continue
            driver.feed((yield step))
        res = driver.result
        assert res is not None
        extra: dict[str, Any] = {"data": res.data}
        if desc.inq_cmsg:
            inq = yield TcpInq(desc.sock, hint=True)
            assert isinstance(inq, Inq), inq
            extra["cm_inq"] = inq.inq
        if res.ret < 0:
            return -1, errno_name(-res.ret), extra
        return res.ret, None, extra

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
        if desc.sock is None or desc.listening:
            return _err("EINVAL")
        res = yield TcpInq(desc.sock)
        assert isinstance(res, Inq), res
        return 0, None, {"value": res.inq}

    # ------------------------------------------------------------------ epoll

    def _sys_epoll_create(self) -> CallGen:
        return self._new_fd(FileDesc("epoll")), None, {}
        yield  # pragma: no cover

    def _poll(self, fd: int) -> Generator[SockOp, Any, Polled]:
        """tcp_poll for the socket behind ``fd`` (nothing for one not in the stack)."""
        desc = self._desc(fd)
        if desc is None or desc.sock is None:
            return Polled(mask=0, wakeups=0)
        res = yield TcpPoll(desc.sock)
        assert isinstance(res, Polled), res
        return res

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
        polled = yield from self._poll(fd)
        ep.interest[fd] = EpollItem(events, polled.wakeups, bool(polled.mask & events))
        return 0, None, {}

    def _epoll_collect(self, ep: FileDesc, maxevents: int
                       ) -> Generator[SockOp, Any, list[tuple[int, int]]]:
        out: list[tuple[int, int]] = []
        for fd, item in list(ep.interest.items()):
            polled = yield from self._poll(fd)
            if polled.wakeups != item.seen_wakeups:  # ep_poll_callback put it on the list
                item.seen_wakeups = polled.wakeups
                item.ready = True
            if not item.ready or len(out) >= maxevents:
                continue
            mask = polled.mask & item.events
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
        events = yield from self._epoll_collect(ep, maxevents)
        if not events and timeout_ms:
            deadline = None if timeout_ms < 0 else self.now() + timeout_ms * MS
            while not events:
                watched = [(d.sock, item.seen_wakeups) for fd, item in ep.interest.items()
                           if (d := self._desc(fd)) is not None and d.sock is not None]
                if not watched:
                    raise Unsupported("epoll_wait() on no socket of the stack")
                timeo = None if deadline is None else max(0, deadline - self.now())
                res = yield EpPoll([s for s, _ in watched], [n for _, n in watched], timeo)
                events = yield from self._epoll_collect(ep, maxevents)
                if not isinstance(res, Woken) or res.timed_out:
                    break
        return len(events), None, {"events": events}
