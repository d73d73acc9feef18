"""Socket setup and readiness as stack operations: inet_listen, tcp_v4_connect with
inet_wait_for_connect, tcp_poll, ep_poll's sleep, and sysctl writes."""

from __future__ import annotations

from actors.profiles import MS, get_profile
from actors.stack.net import OpDone, Transmit
from actors.stack.tcp_ipv4 import Stack
from protocol.constants import (
    EADDRINUSE,
    ECONNREFUSED,
    EINVAL,
    EPOLLIN,
    EPOLLOUT,
    EPOLLRDNORM,
)
from protocol.segment import Segment, TcpFlags, TcpOptions
from protocol.seq import seq_add
from protocol.sockops import (
    EpPoll,
    Failed,
    InetListen,
    InetWaitForConnect,
    Opened,
    Polled,
    ProcSysWrite,
    SockOpResult,
    TcpPoll,
    TcpV4Connect,
    Woken,
)
from tests.stack_harness import connect

LOCAL, REMOTE = "10.0.0.2", "10.0.0.1"


def outputs(stack: Stack) -> tuple[list[Segment], dict[str, object]]:
    sent, done = [], {}
    for out in stack.take_outputs():
        if isinstance(out, Transmit):
            sent.append(out.segment)
        elif isinstance(out, OpDone):
            done[out.task] = out.result
    return sent, done


def test_inet_listen_opens_a_listener_and_refuses_a_taken_port() -> None:
    stack = Stack(get_profile("modern"))
    res = stack.sock_op("app", InetListen(LOCAL, 5001, rcvbuf=4096, rcvlowat=7), 0)
    assert isinstance(res, Opened)
    sk = stack.socks[res.sock]
    assert stack.listeners[5001] == res.sock
    assert sk.rcvbuf == 8192 and sk.rcvbuf_locked and sk.rcvlowat == 7
    again = stack.sock_op("app", InetListen(LOCAL, 5001), 0)
    assert again == Failed(error=EADDRINUSE)


def _syn_ack_for(syn: Segment, *, rst: bool = False) -> Segment:
    if rst:
        return Segment(src=REMOTE, sport=syn.dport, dst=LOCAL, dport=syn.sport, seq=0,
                       ack=seq_add(syn.seq, 1), flags=TcpFlags.RST | TcpFlags.ACK, window=0)
    return Segment(src=REMOTE, sport=syn.dport, dst=LOCAL, dport=syn.sport, seq=5000,
                   ack=seq_add(syn.seq, 1), flags=TcpFlags.SYN | TcpFlags.ACK, window=10000,
                   options=TcpOptions(mss=1000))


def test_blocking_connect_sleeps_until_the_syn_ack() -> None:
    stack = Stack(get_profile("modern"))
    res = stack.sock_op("app", TcpV4Connect(LOCAL, REMOTE, 8080), 0)
    assert isinstance(res, Opened)
    (syn,), _ = outputs(stack)
    assert syn.flags == TcpFlags.SYN and syn.dport == 8080
    # Asleep in inet_wait_for_connect; nothing is answered yet.
    assert stack.sock_op("app", InetWaitForConnect(res.sock), 0) is None
    assert outputs(stack)[1] == {}
    stack.tcp_v4_rcv(_syn_ack_for(syn), 10 * MS)
    sent, done = outputs(stack)
    assert [s.flags for s in sent] == [TcpFlags.ACK]
    result = done["app"]
    assert type(result) is SockOpResult
    # Once connected, the wait returns at once.
    assert type(stack.sock_op("app", InetWaitForConnect(res.sock), 20 * MS)) is SockOpResult


def test_refused_connect_wakes_with_econnrefused() -> None:
    stack = Stack(get_profile("legacy"))
    res = stack.sock_op("app", TcpV4Connect(LOCAL, REMOTE, 8080), 0)
    assert isinstance(res, Opened)
    (syn,), _ = outputs(stack)
    assert stack.sock_op("app", InetWaitForConnect(res.sock), 0) is None
    stack.tcp_v4_rcv(_syn_ack_for(syn, rst=True), 1 * MS)
    result = outputs(stack)[1]["app"]
    assert isinstance(result, Failed) and result.error == ECONNREFUSED


def test_tcp_poll_masks_and_wakeups() -> None:
    conn = connect("modern")
    polled = conn.stack.sock_op("app", TcpPoll(conn.sock), conn.now)
    assert isinstance(polled, Polled)
    assert polled.mask == EPOLLOUT | 0x100  # writable (EPOLLWRNORM), nothing to read
    conn.deliver(conn.segment(0, b"x" * 100))
    after = conn.stack.sock_op("app", TcpPoll(conn.sock), conn.now)
    assert isinstance(after, Polled)
    assert after.mask & (EPOLLIN | EPOLLRDNORM) == EPOLLIN | EPOLLRDNORM
    assert after.wakeups > polled.wakeups
    listener = conn.stack.sock_op("app", TcpPoll(conn.listener), conn.now)
    assert isinstance(listener, Polled) and listener.mask == 0  # accept queue empty


def test_ep_poll_sleeps_on_every_socket_until_one_wakes() -> None:
    conn = connect("modern")
    stack = conn.stack
    seen = [stack.socks[conn.sock].wakeups, stack.socks[conn.listener].wakeups]
    socks = [conn.sock, conn.listener]
    # A wakeup since the counts given: no sleep at all; the ready list names the socket
    # and its count now (ep_send_events), for the next epoll_wait.
    assert stack.sock_op("app", EpPoll(socks, [seen[0] - 1, seen[1]]), 0) == Woken(
        ready=[conn.sock], wakeups=[seen[0]])
    assert stack.sock_op("app", EpPoll(socks, seen), 0) is None
    assert all(any(w.kind == "epoll" for w in stack.socks[s].waiters) for s in socks)
    conn.deliver(conn.segment(0, b"x" * 10))
    assert conn.done["app"] == Woken(ready=[conn.sock],
                                     wakeups=[stack.socks[conn.sock].wakeups])
    # Off both wait queues once woken.
    assert not any(w.kind == "epoll" for s in socks for w in stack.socks[s].waiters)


def test_ep_poll_times_out() -> None:
    conn = connect("modern")
    stack = conn.stack
    seen = [stack.socks[conn.sock].wakeups]
    assert stack.sock_op("app", EpPoll([conn.sock], seen, 30 * MS), conn.now) is None
    conn.advance(29 * MS)
    assert "app" not in conn.done
    conn.advance(2 * MS)
    assert conn.done["app"] == Woken(timed_out=True)
    assert not stack.socks[conn.sock].waiters
    assert stack.sock_op("app", EpPoll([conn.sock], [0], 0), conn.now) in (
        Woken(), Woken(timed_out=True))
    assert stack.sock_op("app", EpPoll([], []), conn.now) == Failed(error=EINVAL)


def test_proc_sys_write_changes_the_stack_settings() -> None:
    stack = Stack(get_profile("modern"))
    ok = stack.sock_op("sysctl", ProcSysWrite("tcp_rmem", [4096, 65536, 1 << 20]), 0)
    assert type(ok) is SockOpResult and stack.sysctls.tcp_rmem == (4096, 65536, 1 << 20)
    assert stack.sock_op("sysctl", ProcSysWrite("tcp_sack", [0]), 0) == SockOpResult()
    assert stack.sysctls.tcp_sack == 0
    for bad in (ProcSysWrite("tcp_rmem", [1]), ProcSysWrite("no_such", [1]),
                ProcSysWrite("tcp_sack", [1, 2])):
        assert stack.sock_op("sysctl", bad, 0) == Failed(error=EINVAL)
    # A socket made afterwards is sized by the new default.
    res = stack.sock_op("app", TcpV4Connect(LOCAL, REMOTE, 80), 0)
    assert isinstance(res, Opened) and stack.socks[res.sock].rcvbuf == 65536

