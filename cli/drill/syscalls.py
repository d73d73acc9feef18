"""The user process's system calls, shared by both drill receivers.

One fd table and one implementation of every call. A call is a generator: it yields
each typed socket operation (:mod:`protocol.sockops`) it needs the stack to run, or a
:class:`Wait` to sleep on a condition of the model's own sockets, and returns
``(ret, errno, extra)``. A receiver is the transport: it runs the yielded operations
(a direct ``Stack.sock_op`` call on a virtual clock, or a message to the stack process)
and supplies the few facts only it can know (how a listener is opened, how a socket's
state is read). A call a transport cannot carry is reported as unsupported before it
starts.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field, fields
from typing import Any

from actors.profiles import MS, Profile, Sysctls
from actors.reader.tcp_recvmsg import RecvFlags, SpendCpu, StepDriver, tcp_recvmsg
from actors.stack.sock import TcpSock, TcpState
from actors.stack.tcp_ipv4 import sock_set_rcvbuf
from cli.drill.runner import SYMBOLS, Unsupported, errno_name
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


@dataclass(frozen=True)
class Wait:
    """Sleep until ``predicate`` holds (sent True) or ``deadline`` passes (sent False)."""

    deadline: int | None
    predicate: Callable[[], bool]


CallResult = tuple[int, str | None, dict[str, Any]]
CallGen = Generator[SockOp | Wait, Any, CallResult]


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
    rcvlowat: int = 1
    inq_cmsg: bool = False  # TCP_INQ
    interest: dict[int, EpollItem] = field(default_factory=dict)  # epoll: fd -> item


def _err(name: str, extra: dict[str, Any] | None = None) -> CallResult:
    return -1, name, extra or {}



def parse_sysctl(sysctls: Sysctls, name: str, value: str) -> tuple[str, Any] | None:
    """A script's ``sysctl -q NAME=VALUE`` as (our field name, its typed value), or None
    for a sysctl the emulator does not have or a value of the wrong shape."""
    short = name.rsplit(".", 1)[-1]
    if short == "tcp_invalid_ratelimit":
        short = "tcp_invalid_ratelimit_ms"
    if short not in {f.name for f in fields(sysctls)}:
        return None
    current = getattr(sysctls, short)
    try:
        if isinstance(current, tuple):
            parts = tuple(int(v) for v in value.split())
            return (short, parts) if len(parts) == len(current) else None
        return short, int(value, 0)
    except ValueError:
        return None

class Syscalls:
    """The fd table and the system calls; a receiver subclasses it as their transport.

    The transport provides ``profile``, :attr:`sysctls`, :meth:`now` and the hooks
    below; a call named in :attr:`unsupported_calls` cannot be carried by it.
    """

    profile: Profile
    unsupported_calls: frozenset[str] = frozenset()
    unsupported_call = "{name}() is not modelled"

    def __init__(self) -> None:
        self._fds: dict[int, FileDesc] = {}

    # ------------------------------------------------------------------ transport hooks

    @property
    def sysctls(self) -> Sysctls:
        raise NotImplementedError

    def now(self) -> int:
        raise NotImplementedError

    def open_listener(self, desc: FileDesc, backlog: int, port: int, laddr: str) -> str | None:
        """Create the listening socket for ``desc`` (set ``desc.sock``); an errno name
        if it cannot be."""
        raise NotImplementedError

    def scratch_sock(self) -> TcpSock:
        """A socket no one uses, to compute what sock_setsockopt makes of a value."""
        raise NotImplementedError

    def child_rcvlowat(self, listener: FileDesc, sock: int) -> int:
        """SO_RCVLOWAT of a socket just accepted on ``listener``."""
        raise NotImplementedError

    def sock_option(self, desc: FileDesc, name: str) -> Generator[SockOp, Any, int]:
        """SO_RCVBUF / SO_RCVLOWAT / SO_ERROR of ``desc``'s stack socket."""
        raise NotImplementedError

    def inq_hint(self, desc: FileDesc) -> Generator[SockOp, Any, int]:
        """tcp_inq_hint: bytes left to read; after a FIN, at least 1."""
        raise NotImplementedError

    def model_sock(self, desc: FileDesc | None) -> TcpSock | None:
        """The model's own socket behind ``desc`` (connect and epoll look at it)."""
        raise Unsupported("the socket's state is only visible to the kernel model")

    def model_connect(self, desc: FileDesc, addr: str, port: int) -> int:
        raise Unsupported("connect() is only modelled in virtual time")

    # ------------------------------------------------------------------ fds

    def start_call(self, name: str, args: dict[str, Any]) -> CallGen:
        impl: Callable[..., CallGen] | None = getattr(self, f"_sys_{name}", None)
        if impl is None or name in self.unsupported_calls:
            raise Unsupported(self.unsupported_call.format(name=name))
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
        error = self.open_listener(desc, backlog, port, laddr)
        if error is not None:
            return _err(error)
        desc.listening = True
        return 0, None, {}
        yield  # pragma: no cover

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
        child = FileDesc("sock", sock=res.sock, rcvlowat=self.child_rcvlowat(desc, res.sock))
        return self._new_fd(child), None, {}

    def _sys_connect(self, fd: int, addr: str, port: int) -> CallGen:
        desc = self._desc(fd)
        if desc is None or desc.kind != "sock":
            return _err("EBADF")
        if desc.sock is not None:
            sk = self.model_sock(desc)
            if sk is not None and sk.state == TcpState.SYN_SENT:
                return _err("EALREADY")
            return _err("EISCONN")
        desc.sock = self.model_connect(desc, addr, port)
        sk = self.model_sock(desc)
        assert sk is not None
        if desc.nonblock:
            return _err("EINPROGRESS")
        yield Wait(None, lambda: sk.state != TcpState.SYN_SENT)
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
            res = yield SockSetsockopt(desc.sock, name, val)
            if isinstance(res, Failed):
                return _err(errno_name(res.error))
            return 0, None, {}
        raise Unsupported(f"setsockopt({name}) is not modelled")

    def _sys_getsockopt(self, fd: int, level: int, name: str) -> CallGen:
        desc = self._desc(fd)
        if desc is None or desc.kind != "sock":
            return _err("EBADF")
        if name == "TCP_INQ":
            return 0, None, {"value": int(desc.inq_cmsg)}
        if name not in ("SO_RCVBUF", "SO_RCVLOWAT", "SO_ERROR"):
            raise Unsupported(f"getsockopt({name}) is not modelled")
        if desc.sock is not None:
            return 0, None, {"value": (yield from self.sock_option(desc, name))}
        return 0, None, {"value": self.unbound_option(desc, name)}

    def unbound_option(self, desc: FileDesc, name: str) -> int:
        """SO_RCVBUF / SO_RCVLOWAT / SO_ERROR of a socket not yet in the stack."""
        if name == "SO_RCVLOWAT":
            return desc.rcvlowat
        if name == "SO_ERROR":
            return 0
        if desc.rcvbuf is not None:
            probe = self.scratch_sock()
            sock_set_rcvbuf(probe, desc.rcvbuf)
            return probe.rcvbuf
        return self.sysctls.tcp_rmem[1]  # tcp_init_sock

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
            extra["cm_inq"] = yield from self.inq_hint(desc)
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

    def _poll_mask(self, fd: int) -> int:
        """tcp_poll for the socket behind ``fd``."""
        sk = self.model_sock(self._desc(fd))
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
        sk = self.model_sock(self._desc(fd))
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
            deadline = None if timeout_ms < 0 else self.now() + timeout_ms * MS

            def ready() -> bool:
                return any(self._wakeups(fd) != it.seen_wakeups or it.ready
                           for fd, it in ep.interest.items())
            while not events:
                woke = yield Wait(deadline, ready)
                events = self._epoll_collect(ep, maxevents)
                if not woke:
                    break
        return len(events), None, {"events": events}
