"""The reader <-> stack vocabulary: one typed operation per process-context step.

A reader drives ``tcp_recvmsg`` one step at a time; each step is a request to the
stack named after the kernel function it stands for (:attr:`SockOp.kernel_name`,
also the name of its trace slice). Each operation is answered by one result type,
and every result field is declared once, here.

On the wire an operation is ``{"op": kernel_name, "sock": id, "args": {field: value}}``
(the ``sock_op`` message body without its request id) and a result is
``{"result": name, field: value...}``; :func:`decode_op` and :func:`decode_result`
check every field and raise :class:`MalformedOp` for anything else.
"""

from dataclasses import dataclass, field, fields
from types import NoneType, UnionType
from typing import Any, ClassVar, get_args

__all__ = [
    "NO_STATE",
    "Accepted",
    "Copied",
    "DoExit",
    "EpPoll",
    "Failed",
    "InetAccept",
    "InetAcceptFlow",
    "InetListen",
    "InetWaitForConnect",
    "Inq",
    "LockSock",
    "MalformedOp",
    "Opened",
    "Polled",
    "ProcSysWrite",
    "Rejected",
    "ReleaseSock",
    "Sent",
    "SkFlushBacklog",
    "SkWaitData",
    "SkbCopyDatagramMsg",
    "SockError",
    "SockErrorResult",
    "SockOp",
    "SockOpResult",
    "SockSetsockopt",
    "SockState",
    "TcpCleanupRbuf",
    "TcpClose",
    "TcpGetInfo",
    "TcpInfo",
    "TcpInq",
    "TcpPoll",
    "TcpPrequeueProcess",
    "TcpSendmsg",
    "TcpShutdown",
    "TcpV4Connect",
    "UcopyClear",
    "UcopyInstall",
    "UcopyInstalled",
    "Woken",
    "decode_op",
    "decode_result",
    "encode_op",
    "encode_result",
]


class MalformedOp(ValueError):
    """An operation or result that does not decode: unknown name, missing or bad field."""


# --- operations ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SockOp:
    """A process-context step a task asks of the stack."""

    kernel_name: ClassVar[str] = ""
    # False for the steps that are not about one socket (the message's sock is 0).
    on_sock: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class LockSock(SockOp):
    """Take ``sk_lock.owned``, waiting behind the current owner."""

    kernel_name: ClassVar[str] = "lock_sock"
    sock: int


@dataclass(frozen=True, slots=True)
class ReleaseSock(SockOp):
    """Replay the backlog in the owner's context, run deferred work, unlock."""

    kernel_name: ClassVar[str] = "release_sock"
    sock: int


@dataclass(frozen=True, slots=True)
class SkFlushBacklog(SockOp):
    """Modern: replay the backlog without letting go of the lock."""

    kernel_name: ClassVar[str] = "__sk_flush_backlog"
    sock: int


@dataclass(frozen=True, slots=True)
class SkbCopyDatagramMsg(SockOp):
    """The copy of tcp_recvmsg's loop: up to ``len`` bytes from sk_receive_queue.

    ``peek_seq`` is where a MSG_PEEK read goes on (None: from copied_seq)."""

    kernel_name: ClassVar[str] = "skb_copy_datagram_msg"
    sock: int
    len: int
    peek: bool = False
    trunc: bool = False
    peek_seq: int | None = None


@dataclass(frozen=True, slots=True)
class TcpCleanupRbuf(SockOp):
    """After copying ``copied`` bytes: an ACK or window update if one is due."""

    kernel_name: ClassVar[str] = "tcp_cleanup_rbuf"
    sock: int
    copied: int = 0


@dataclass(frozen=True, slots=True)
class SockError(SockOp):
    """Report the pending socket error once, clearing it."""

    kernel_name: ClassVar[str] = "sock_error"
    sock: int


@dataclass(frozen=True, slots=True)
class UcopyInstall(SockOp):
    """Legacy: become the prequeue reader (``tp->ucopy.task = current``, unless
    ``install`` is false) and set ``ucopy.len``."""

    kernel_name: ClassVar[str] = "ucopy_install"
    sock: int
    len: int
    install: bool = True


@dataclass(frozen=True, slots=True)
class UcopyClear(SockOp):
    """Legacy: leave the prequeue (``tp->ucopy.task = NULL``)."""

    kernel_name: ClassVar[str] = "ucopy_clear"
    sock: int


@dataclass(frozen=True, slots=True)
class TcpPrequeueProcess(SockOp):
    """Legacy: replay the prequeue in the reader's context (``len``: ucopy.len first)."""

    kernel_name: ClassVar[str] = "tcp_prequeue_process"
    sock: int
    len: int | None = None


@dataclass(frozen=True, slots=True)
class SkWaitData(SockOp):
    """Release the lock and sleep until data arrives or ``timeo_ns`` passes."""

    kernel_name: ClassVar[str] = "sk_wait_data"
    sock: int
    timeo_ns: int | None = None


@dataclass(frozen=True, slots=True)
class InetAccept(SockOp):
    """accept(2) on a listener: the oldest child of its accept queue."""

    kernel_name: ClassVar[str] = "inet_accept"
    sock: int
    nonblock: bool = False
    timeo_ns: int | None = None


@dataclass(frozen=True, slots=True)
class InetAcceptFlow(SockOp):
    """accept(2) on the listener bound to ``lport``, taking the oldest connection that
    came from one of the peer ports ``rports`` (waiting for a handshake). Several readers
    of one flow share that socket, as processes share a file after fork."""

    kernel_name: ClassVar[str] = "inet_accept"
    on_sock: ClassVar[bool] = False
    lport: int
    rports: list[int]


@dataclass(frozen=True, slots=True)
class TcpInq(SockOp):
    """SIOCINQ: bytes readable now; with ``hint``, tcp_inq_hint (TCP_INQ's cmsg: after
    a FIN, at least 1, so the reader comes back)."""

    kernel_name: ClassVar[str] = "tcp_inq"
    sock: int
    hint: bool = False


@dataclass(frozen=True, slots=True)
class TcpGetInfo(SockOp):
    """What ``ss -tmi`` shows of the socket (tcp_get_info + sk_get_meminfo)."""

    kernel_name: ClassVar[str] = "tcp_get_info"
    sock: int


@dataclass(frozen=True, slots=True)
class SockSetsockopt(SockOp):
    """setsockopt(SOL_SOCKET, ``name``): SO_RCVBUF or SO_RCVLOWAT."""

    kernel_name: ClassVar[str] = "sock_setsockopt"
    sock: int
    name: str
    value: int


@dataclass(frozen=True, slots=True)
class TcpClose(SockOp):
    """close(2) by the owner: RST if unread data remains, else our FIN; releases."""

    kernel_name: ClassVar[str] = "tcp_close"
    sock: int


@dataclass(frozen=True, slots=True)
class TcpShutdown(SockOp):
    """shutdown(2): 0 SHUT_RD, 1 SHUT_WR, 2 SHUT_RDWR."""

    kernel_name: ClassVar[str] = "tcp_shutdown"
    sock: int
    how: int = 1


@dataclass(frozen=True, slots=True)
class TcpSendmsg(SockOp):
    """write(2): send ``data`` at once, as far as the peer's window allows."""

    kernel_name: ClassVar[str] = "tcp_sendmsg"
    sock: int
    data: bytes


@dataclass(frozen=True, slots=True)
class InetListen(SockOp):
    """socket() + bind() + listen(): a listener on ``laddr:port``, with the SO_RCVBUF
    (None: not set) and SO_RCVLOWAT its file had before listen(). ``init_rcvbuf``: the
    sk_rcvbuf tcp_init_sock gave it when socket() ran (tcp_rmem[1] then; None: now)."""

    kernel_name: ClassVar[str] = "inet_listen"
    on_sock: ClassVar[bool] = False
    laddr: str
    port: int
    backlog: int = 128
    rcvbuf: int | None = None
    rcvlowat: int = 1
    init_rcvbuf: int | None = None


@dataclass(frozen=True, slots=True)
class TcpV4Connect(SockOp):
    """socket() + connect(): a socket that sends its SYN to ``raddr:rport`` (from
    ``lport``; None: an ephemeral port). ``init_rcvbuf`` as for :class:`InetListen`."""

    kernel_name: ClassVar[str] = "tcp_v4_connect"
    on_sock: ClassVar[bool] = False
    laddr: str
    raddr: str
    rport: int
    lport: int | None = None
    rcvbuf: int | None = None
    rcvlowat: int = 1
    init_rcvbuf: int | None = None


@dataclass(frozen=True, slots=True)
class InetWaitForConnect(SockOp):
    """A blocking connect(): sleep until the handshake ends (or fails)."""

    kernel_name: ClassVar[str] = "inet_wait_for_connect"
    sock: int


@dataclass(frozen=True, slots=True)
class TcpPoll(SockOp):
    """poll / epoll's look at one socket: its readiness mask and wakeup count."""

    kernel_name: ClassVar[str] = "tcp_poll"
    sock: int


@dataclass(frozen=True, slots=True)
class EpPoll(SockOp):
    """epoll_wait's sleep: until a wakeup on one of ``socks`` after the ``seen`` counts
    (one per socket, from :class:`Polled`), or until ``timeo_ns`` passes."""

    kernel_name: ClassVar[str] = "ep_poll"
    on_sock: ClassVar[bool] = False
    socks: list[int]
    seen: list[int]
    timeo_ns: int | None = None


@dataclass(frozen=True, slots=True)
class ProcSysWrite(SockOp):
    """A write to /proc/sys/net/ipv4/``name`` (a field of ``Sysctls``): its ``values``
    (one, or three for tcp_rmem / tcp_wmem)."""

    kernel_name: ClassVar[str] = "proc_sys_write"
    on_sock: ClassVar[bool] = False
    name: str
    values: list[int]


@dataclass(frozen=True, slots=True)
class DoExit(SockOp):
    """The task died: as do_exit closes its files, its lock, prequeue installation and
    waits on every socket go (the backlog is processed on release)."""

    kernel_name: ClassVar[str] = "do_exit"
    on_sock: ClassVar[bool] = False


# --- results --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SockState:
    """What a step tells its task of the socket, whatever the step was."""

    readable: bool = False  # sk_receive_queue is not empty
    backlog: bool = False  # sk_backlog is not empty
    prequeue: int = 0  # skbs in the legacy prequeue
    caught_up: bool = False  # rcv_nxt == copied_seq
    done: bool = False  # SOCK_DONE (a FIN was read)
    shutdown: bool = False  # RCV_SHUTDOWN
    err: int = 0  # sk_err
    closed: bool = False  # TCP_CLOSE
    listen: bool = False  # TCP_LISTEN
    ucopy_len: int = 0


NO_STATE = SockState()


@dataclass(frozen=True, slots=True, kw_only=True)
class SockOpResult:
    """A step's answer: the socket's state, and bytes the stack copied straight into
    the task's buffer while working in its context (legacy direct copy), with the
    stream offset of their first byte."""

    state: SockState = NO_STATE
    direct: bytes = b""
    direct_offset: int = -1


@dataclass(frozen=True, slots=True, kw_only=True)
class Copied(SockOpResult):
    """SkbCopyDatagramMsg: bytes copied (none with MSG_TRUNC), the count, whether the
    FIN was reached, the sequence after them and the stream offset of the first."""

    data: bytes
    copied: int
    fin: bool
    seq: int
    offset: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SockErrorResult(SockOpResult):
    sock_err: int


@dataclass(frozen=True, slots=True, kw_only=True)
class UcopyInstalled(SockOpResult):
    installed: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Woken(SockOpResult):
    """SkWaitData ended: ``relock`` says the task must take the lock itself (it was
    woken without it, as sk_wait_event ends with lock_sock).  After EpPoll, ``ready``
    lists the watched sockets woken since the ``seen`` counts (epoll's ready list) and
    ``wakeups`` their counts now, for the next EpPoll."""

    timed_out: bool = False
    relock: bool = False
    ready: list[int] = field(default_factory=list)
    wakeups: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class Accepted(SockOpResult):
    sock: int
    rport: int = 0  # the peer port of the connection (getpeername)


@dataclass(frozen=True, slots=True, kw_only=True)
class Opened(SockOpResult):
    """InetListen / TcpV4Connect: the new socket."""

    sock: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Polled(SockOpResult):
    """TcpPoll: tcp_poll's mask (EPOLLIN...) and the wakeups the socket had so far."""

    mask: int
    wakeups: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Failed(SockOpResult):
    """The call fails with ``error`` (an errno), as the kernel function would."""

    error: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Inq(SockOpResult):
    inq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpInfo(SockOpResult):
    info: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Sent(SockOpResult):
    sent: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected(SockOpResult):
    """The stack refused the request (malformed, no such socket, not the owner...)."""

    message: str


# --- codec ----------------------------------------------------------------------------

# By class name on the wire (two operations may stand for one kernel function).
OPS: dict[str, type[SockOp]] = {}
RESULTS: dict[str, type[SockOpResult]] = {}
# Per class: field name -> accepted types, in declaration order.
_FIELDS: dict[type, dict[str, tuple[type, ...]]] = {}


def _accepted(annotation: Any) -> tuple[type, ...]:
    if isinstance(annotation, UnionType):
        return tuple(t for a in get_args(annotation) for t in _accepted(a))
    if annotation is None:
        return (NoneType,)
    origin = getattr(annotation, "__origin__", None)
    return (origin if origin is not None else annotation,)


_OP_CLASSES: tuple[type[SockOp], ...] = (
    LockSock, ReleaseSock, SkFlushBacklog, SkbCopyDatagramMsg, TcpCleanupRbuf, SockError,
    UcopyInstall, UcopyClear, TcpPrequeueProcess, SkWaitData, InetAccept, InetAcceptFlow,
    TcpInq, TcpGetInfo, SockSetsockopt, TcpClose, TcpShutdown, TcpSendmsg, InetListen,
    TcpV4Connect, InetWaitForConnect, TcpPoll, EpPoll, ProcSysWrite, DoExit)
_RESULT_CLASSES: tuple[type[SockOpResult], ...] = (
    SockOpResult, Copied, SockErrorResult, UcopyInstalled, Woken, Accepted, Opened, Polled,
    Failed, Inq, TcpInfo, Sent, Rejected)
for _op in _OP_CLASSES:
    _FIELDS[_op] = {f.name: _accepted(f.type) for f in fields(_op)}
    OPS[_op.__name__] = _op
for _res in _RESULT_CLASSES:
    _FIELDS[_res] = {f.name: _accepted(f.type) for f in fields(_res)}
    RESULTS[_res.__name__] = _res
_STATE_FIELDS = tuple(f.name for f in fields(SockState))
# Every step's answer carries a SockState, and few distinct ones occur (mostly flags
# and zeros): equal states are one frozen object, not a new one per step.
_STATES: dict[tuple[bool | int, ...], SockState] = {}
_STATES_MAX = 4096


def sock_state_of(values: tuple[bool | int, ...]) -> SockState:
    """The SockState with these field values (in :class:`SockState`'s order)."""
    st = _STATES.get(values)
    if st is None:
        if len(_STATES) >= _STATES_MAX:
            _STATES.clear()
        fields_: dict[str, Any] = dict(zip(_STATE_FIELDS, values, strict=True))
        st = _STATES[values] = SockState(**fields_)
    return st


def _check(cls: type, name: str, value: Any) -> Any:
    types = _FIELDS[cls].get(name)
    if types is None:
        raise MalformedOp(f"{cls.__name__}: unknown field {name!r}")
    kind = type(value)
    if kind is list and list in types:  # every list field is a list of ints
        if any(type(v) is not int for v in value):
            raise MalformedOp(f"{cls.__name__}.{name}: not a list of integers")
        return value
    if kind in types:  # a bool only where bool is declared: type(True) is bool, not int
        return value
    if types == (SockState,):
        return _decode_state(value)
    if kind is bool or not isinstance(value, types):
        raise MalformedOp(f"{cls.__name__}.{name}: {kind.__name__} is not "
                          + " or ".join(t.__name__ for t in types))
    return value


def encode_op(op: SockOp) -> dict[str, Any]:
    """The ``sock_op`` body of ``op`` (without its request id)."""
    args = {name: getattr(op, name) for name in _FIELDS[type(op)] if name != "sock"}
    return {"op": type(op).__name__, "sock": getattr(op, "sock", 0), "args": args}


def decode_op(op: Any, sock: Any, args: Any) -> SockOp:
    """The operation ``op`` on socket ``sock`` with ``args``; MalformedOp if not one."""
    cls = OPS.get(op) if isinstance(op, str) else None
    if cls is None:
        raise MalformedOp(f"unknown operation {op!r}")
    if not isinstance(args, dict):
        raise MalformedOp(f"{op}: arguments are a map, not {type(args).__name__}")
    if not isinstance(sock, int) or isinstance(sock, bool):
        raise MalformedOp(f"{op}: bad socket {sock!r}")
    values = {k: _check(cls, k, v) for k, v in args.items()}
    if cls.on_sock:
        values["sock"] = sock
    try:
        return cls(**values)
    except TypeError as err:  # a required field is missing
        raise MalformedOp(f"{op}: {err}") from None


def _decode_state(value: Any) -> SockState:
    if not isinstance(value, list | tuple) or len(value) != len(_STATE_FIELDS):
        raise MalformedOp(f"bad socket state {value!r}")
    for name, v in zip(_STATE_FIELDS, value, strict=True):
        if type(v) not in (bool, int):
            raise MalformedOp(f"socket state {name}: {v!r}")
    return sock_state_of(tuple(value))


def encode_result(res: SockOpResult) -> dict[str, Any]:
    """A plain map of ``res`` (the ``sock_op_done`` body's result)."""
    out: dict[str, Any] = {"result": type(res).__name__}
    for name in _FIELDS[type(res)]:
        value = getattr(res, name)
        if name == "state":
            if value != NO_STATE:
                out[name] = [getattr(value, f) for f in _STATE_FIELDS]
        elif name == "direct":
            if value:
                out[name] = value
        elif name != "direct_offset" or res.direct:
            out[name] = value
    return out


def decode_result(body: Any) -> SockOpResult:
    """The result encoded by :func:`encode_result`; MalformedOp if it is not one."""
    if not isinstance(body, dict):
        raise MalformedOp(f"a result is a map, not {type(body).__name__}")
    name = body.get("result")
    cls = RESULTS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise MalformedOp(f"unknown result {name!r}")
    values = {k: _check(cls, k, v) for k, v in body.items() if k != "result"}
    try:
        return cls(**values)
    except TypeError as err:
        raise MalformedOp(f"{name}: {err}") from None
