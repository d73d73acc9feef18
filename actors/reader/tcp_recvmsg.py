"""``tcp_recvmsg`` as an explicit step machine, driven by a reader one step at a time.

The generator mirrors the kernel loop (net/ipv4/tcp.c, docs/receive-path.md §6). Each
``yield`` is one step: either a typed stack operation (:mod:`protocol.sockops`), sent
to the stack as a message and answered with its result, or a local step the reader
performs itself (:class:`SpendCpu`: time spent in the reader while it holds the
socket lock). Which branch of the
kernel loop runs is chosen from the profile's data (``has_prequeue``,
``recvmsg_flush_backlog``, ``cleanup_rbuf_only_before_sleep``), never from its name.

Ordering rule the legacy loop keeps: in-flight -> backlog -> prequeue ->
receive queue; so the prequeue is processed only once ``rcv_nxt == copied_seq``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from actors.profiles import Profile, Sysctls
from protocol.constants import EAGAIN, ENOTCONN
from protocol.sockops import (
    Copied,
    LockSock,
    ReleaseSock,
    SkbCopyDatagramMsg,
    SkFlushBacklog,
    SkWaitData,
    SockError,
    SockErrorResult,
    SockOp,
    SockOpResult,
    SockState,
    TcpCleanupRbuf,
    TcpPrequeueProcess,
    UcopyClear,
    UcopyInstall,
    UcopyInstalled,
    Woken,
)


@dataclass(frozen=True, slots=True)
class SpendCpu:
    """A local step: time the reader spends itself (copying, or thinking with the lock
    held); it is answered with an empty result."""

    ns: int
    why: str  # "copy" or "hold"


Step = SockOp | SpendCpu


@dataclass(frozen=True, slots=True)
class RecvFlags:
    peek: bool = False  # MSG_PEEK
    trunc: bool = False  # MSG_TRUNC: consume without copying
    dontwait: bool = False  # MSG_DONTWAIT (or O_NONBLOCK)
    waitall: bool = False  # MSG_WAITALL


@dataclass
class RecvResult:
    """What read() returns: bytes and the return value (count, 0 at EOF, or -errno)."""

    ret: int
    data: bytes = b""
    direct: int = 0  # bytes that arrived by direct copy (prequeue/backlog replay)
    # (stream offset, bytes) of every piece, in the order they were copied: two readers
    # sharing a socket each get pieces of the stream, which they verify by offset.
    chunks: list[tuple[int, bytes]] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ReaderCosts:
    """Time the reader spends holding the lock: per read, and per byte copied."""

    hold_ns: int = 0
    copy_ns_per_byte: float = 0.0


def sock_rcvlowat(waitall: bool, rcvlowat: int, length: int) -> int:
    return max(length if waitall else min(rcvlowat, length), 1)


def tcp_recvmsg(profile: Profile, sysctls: Sysctls, sock: int, length: int,
                flags: RecvFlags = RecvFlags(), *, rcvlowat: int = 1,
                timeo_ns: int | None = None, costs: ReaderCosts = ReaderCosts(),
                clock: Callable[[], int] | None = None,
                ) -> Generator[Step, SockOpResult, RecvResult]:
    """One read() call. ``timeo_ns`` None blocks forever; 0 is O_NONBLOCK."""
    out = bytearray()
    result = RecvResult(ret=0)
    timeo = 0 if flags.dontwait else timeo_ns
    deadline = None
    if timeo and clock is not None:
        deadline = clock() + timeo
    copied = 0  # what the kernel's ``copied`` counts (MSG_TRUNC bytes too)

    def step(op: SockOp) -> Generator[Step, SockOpResult, SockOpResult]:
        nonlocal copied
        res = yield op
        result.steps.append(op.kernel_name)
        direct = res.direct
        if direct:
            # Copied into our buffer by the stack while replaying in our context.
            out.extend(direct)
            copied += len(direct)
            result.direct += len(direct)
            result.chunks.append((res.direct_offset, direct))
        return res

    def wait() -> Generator[Step, SockOpResult, SockState]:
        nonlocal timeo
        left = None
        if timeo:
            left = max(deadline - clock(), 0) if deadline is not None and clock else timeo
        res = yield from step(SkWaitData(sock, timeo_ns=left))
        timed_out = isinstance(res, Woken) and res.timed_out
        if timed_out:
            timeo = 0
        if isinstance(res, Woken) and res.relock:
            # Woken without the lock: sk_wait_event ends with lock_sock, which may wait.
            res = yield from step(LockSock(sock))
        return res.state

    def pick(op: SockOp) -> Generator[Step, SockOpResult, SockState]:
        return (yield from step(op)).state

    state = yield from pick(LockSock(sock))
    if state.listen:
        # tcp_recvmsg_locked: a listening socket has no stream to read.
        yield from step(ReleaseSock(sock))
        result.ret = -ENOTCONN
        return result
    if costs.hold_ns:
        yield SpendCpu(costs.hold_ns, "hold")
    target = sock_rcvlowat(flags.waitall, rcvlowat, length)
    installed = False
    use_prequeue = profile.has_prequeue and not sysctls.tcp_low_latency
    peek_seq: int | None = None
    error = 0
    while length - copied > 0:
        res = yield from step(SkbCopyDatagramMsg(
            sock, length - copied, peek=flags.peek, trunc=flags.trunc,
            peek_seq=peek_seq if flags.peek else None))
        assert isinstance(res, Copied), res
        state = res.state
        got = res.copied
        if flags.peek:
            peek_seq = res.seq
        out.extend(res.data)
        if res.data:
            result.chunks.append((res.offset, res.data))
        copied += got
        if got and costs.copy_ns_per_byte:
            yield SpendCpu(int(got * costs.copy_ns_per_byte), "copy")
        if res.fin:
            break
        if got:
            continue  # round again: the kernel walks the queue once per skb

        # Nothing copyable.
        if copied >= target and not state.backlog:
            break
        if copied:
            if state.err or state.closed or state.shutdown or timeo == 0:
                break
        else:
            # Kernel order: SOCK_DONE, then sk_err, then RCV_SHUTDOWN (a RST sets both
            # sk_err and the shutdown bits, and must read as an error).
            if state.done:
                break
            if state.err:
                err = yield from step(SockError(sock))  # sock_error() consumes sk_err
                assert isinstance(err, SockErrorResult), err
                error = -(err.sock_err or state.err)
                break
            if state.shutdown:
                break
            if state.closed:
                error = -ENOTCONN
                break
            if timeo == 0:
                error = -EAGAIN
                break

        if not profile.cleanup_rbuf_only_before_sleep:
            yield from step(TcpCleanupRbuf(sock, copied))
        if use_prequeue:
            inst = yield from step(UcopyInstall(sock, length - copied,
                                                install=not (flags.peek or flags.trunc)))
            assert isinstance(inst, UcopyInstalled), inst
            installed = installed or inst.installed
            if installed and inst.state.prequeue:
                # Process the prequeue before anything newer (ordering rule).
                yield from step(TcpPrequeueProcess(sock, length - copied))
                continue
        if copied >= target:
            # Enough for the caller: process the backlog without sleeping.
            if profile.recvmsg_flush_backlog:
                yield from step(SkFlushBacklog(sock))
            else:
                yield from step(ReleaseSock(sock))
                state = yield from pick(LockSock(sock))
        else:
            if profile.cleanup_rbuf_only_before_sleep:
                yield from step(TcpCleanupRbuf(sock, copied))
            state = yield from wait()
        if installed and state.caught_up and state.prequeue:
            yield from step(TcpPrequeueProcess(sock, length - copied))

    if installed:
        state = yield from pick(UcopyInstall(sock, length - copied, install=False))
        if state.prequeue:
            yield from step(TcpPrequeueProcess(sock, length - copied if copied > 0 else 0))
        yield from step(UcopyClear(sock))
    yield from step(TcpCleanupRbuf(sock, copied))
    yield from step(ReleaseSock(sock))
    if error and not copied:
        result.ret = error
        return result
    result.ret = copied
    result.data = bytes(out)
    return result


class StepDriver:
    """Runs one recvmsg generator: hand it each step's result, see what it wants next."""

    def __init__(self, gen: Generator[Step, SockOpResult, RecvResult]) -> None:
        self._gen = gen
        self.result: RecvResult | None = None
        self.next: Step | None = None
        self._advance(None)

    @property
    def done(self) -> bool:
        return self.result is not None

    def _advance(self, value: SockOpResult | None) -> None:
        try:
            self.next = self._gen.send(value) if value is not None else next(self._gen)
        except StopIteration as stop:
            self.next = None
            self.result = stop.value

    def feed(self, result: SockOpResult) -> None:
        """The result of the step in ``self.next``."""
        assert self.next is not None
        self._advance(result)
