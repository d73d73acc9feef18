"""The typed reader <-> stack operations: every op and result survives the wire (msgpack)
unchanged, and anything malformed is refused with MalformedOp."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from actors.profiles import get_profile
from actors.stack import sock as sock_module
from actors.stack.sock import sock_state
from actors.stack.tcp_ipv4 import Stack
from protocol.sockops import (
    OPS,
    RESULTS,
    Accepted,
    Copied,
    DoExit,
    EpPoll,
    Failed,
    InetAccept,
    InetAcceptFlow,
    InetListen,
    InetWaitForConnect,
    Inq,
    LockSock,
    MalformedOp,
    Opened,
    Polled,
    ProcSysWrite,
    Rejected,
    ReleaseSock,
    Sent,
    SkbCopyDatagramMsg,
    SkFlushBacklog,
    SkWaitData,
    SockError,
    SockErrorResult,
    SockOp,
    SockOpResult,
    SockSetsockopt,
    SockState,
    TcpCleanupRbuf,
    TcpClose,
    TcpGetInfo,
    TcpInfo,
    TcpInq,
    TcpPoll,
    TcpPrequeueProcess,
    TcpSendmsg,
    TcpShutdown,
    TcpV4Connect,
    UcopyClear,
    UcopyInstall,
    UcopyInstalled,
    Woken,
    decode_op,
    decode_result,
    encode_op,
    encode_result,
    sock_state_of,
)
from tests.stack_harness import connect

EVERY_OP: list[SockOp] = [
    LockSock(3), ReleaseSock(3), SkFlushBacklog(3),
    SkbCopyDatagramMsg(3, 1000), SkbCopyDatagramMsg(3, 5, peek=True, trunc=True, peek_seq=77),
    TcpCleanupRbuf(3, 1200), SockError(3), UcopyInstall(3, 100, install=False), UcopyClear(3),
    TcpPrequeueProcess(3), TcpPrequeueProcess(3, 400), SkWaitData(3), SkWaitData(3, 5_000_000),
    InetAccept(1), InetAccept(1, nonblock=True, timeo_ns=10), InetAcceptFlow(5001, [40001, 40002]),
    TcpInq(3), TcpGetInfo(3), SockSetsockopt(3, "SO_RCVBUF", 4096), TcpClose(3),
    TcpShutdown(3, 2), TcpSendmsg(3, b"\x00hello"), InetListen("10.0.0.2", 5001),
    InetListen("10.0.0.2", 80, backlog=4, rcvbuf=4096, rcvlowat=10),
    TcpV4Connect("10.0.0.2", "10.0.0.1", 8080), TcpV4Connect("a", "b", 1, 2, 4096, 3),
    InetWaitForConnect(3), TcpPoll(3), TcpInq(3, hint=True), EpPoll([3, 4], [0, 7]),
    EpPoll([3], [1], timeo_ns=20), ProcSysWrite("tcp_rmem", [4096, 1, 2]), DoExit(),
]
STATE = SockState(readable=True, backlog=True, prequeue=2, caught_up=True, done=True,
                  shutdown=True, err=104, closed=True, listen=False, ucopy_len=9)
EVERY_RESULT: list[SockOpResult] = [
    SockOpResult(), SockOpResult(state=STATE, direct=b"abc", direct_offset=12),
    Copied(state=STATE, data=b"xyz", copied=3, fin=True, seq=2**32 - 1, offset=0),
    SockErrorResult(sock_err=104), UcopyInstalled(installed=True), Woken(timed_out=True),
    Woken(relock=True, state=STATE), Accepted(sock=4), Failed(error=11), Inq(inq=0),
    TcpInfo(info={"state": "ESTAB", "skmem": {"r": 1}}), Sent(sent=1460), Opened(sock=2),
    Polled(mask=0x45, wakeups=3),
    Rejected(message="no socket 9"),
]


def wire(body: Any) -> Any:
    """What the body looks like after a msgpack round trip (as the envelope codec does)."""
    return msgpack.unpackb(msgpack.packb(body, use_bin_type=True), raw=False)


def test_every_op_and_result_class_is_covered() -> None:
    assert {type(op) for op in EVERY_OP} == set(OPS.values())
    assert {type(r) for r in EVERY_RESULT} == set(RESULTS.values())


@pytest.mark.parametrize("op", EVERY_OP, ids=repr)
def test_op_round_trip(op: SockOp) -> None:
    body = wire(encode_op(op))
    assert decode_op(body["op"], body["sock"], body["args"]) == op


@pytest.mark.parametrize("res", EVERY_RESULT, ids=repr)
def test_result_round_trip(res: SockOpResult) -> None:
    assert decode_result(wire(encode_result(res))) == res


def test_every_op_names_its_kernel_function() -> None:
    for cls in OPS.values():
        assert cls.kernel_name, cls
    assert SkFlushBacklog.kernel_name == "__sk_flush_backlog"
    assert SkbCopyDatagramMsg.kernel_name == "skb_copy_datagram_msg"
    assert TcpPrequeueProcess.kernel_name == "tcp_prequeue_process"


@pytest.mark.parametrize(("op", "sock", "args"), [
    ("NoSuchOp", 1, {}),
    (7, 1, {}),
    ("LockSock", "1", {}),
    ("LockSock", True, {}),
    ("LockSock", 1, []),
    ("LockSock", 1, {"extra": 1}),
    ("SkbCopyDatagramMsg", 1, {}),  # len is required
    ("SkbCopyDatagramMsg", 1, {"len": "10"}),
    ("SkbCopyDatagramMsg", 1, {"len": True}),
    ("SkbCopyDatagramMsg", 1, {"len": 10, "peek": 1}),
    ("SkWaitData", 1, {"timeo_ns": 1.5}),
    ("TcpSendmsg", 1, {"data": "text"}),
    ("SockSetsockopt", 1, {"name": 5, "value": 1}),
    ("InetAcceptFlow", 0, {"lport": 5001}),
    ("EpPoll", 0, {"socks": [1, "2"], "seen": [0, 0]}),
    ("EpPoll", 0, {"socks": [1], "seen": [True]}),
    ("EpPoll", 0, {"socks": 1, "seen": [0]}),
    ("ProcSysWrite", 0, {"name": "tcp_rmem", "values": [1.5]}),
    ("InetListen", 0, {"laddr": "x"}),  # port is required
])
def test_malformed_ops_are_refused(op: Any, sock: Any, args: Any) -> None:
    with pytest.raises(MalformedOp):
        decode_op(op, sock, args)


@pytest.mark.parametrize("body", [
    None, [], {"result": "Nope"}, {}, {"result": "Accepted"}, {"result": "Accepted", "sock": "4"},
    {"result": "Copied", "data": b"", "copied": 0, "fin": False, "seq": 0},
    {"result": "SockOpResult", "state": [True]},
    {"result": "SockOpResult", "state": [None] * 10},
    {"result": "Failed", "error": 11, "bogus": 1},
])
def test_malformed_results_are_refused(body: Any) -> None:
    with pytest.raises(MalformedOp):
        decode_result(body)


def test_a_malformed_op_is_counted_and_answered_by_the_model() -> None:
    stack = Stack(get_profile("modern"), emit_events=True)
    lsn = stack.listen("10.0.0.2", 5001, 0)
    res = stack.sock_op_msg("r1", "SkbCopyDatagramMsg", lsn, {"len": "x"}, 0)
    assert isinstance(res, Rejected) and "len" in res.message
    res = stack.sock_op_msg("r1", "ReleaseSock", 99, {}, 0)  # no such socket
    assert isinstance(res, Rejected) and "99" in res.message
    res = stack.sock_op_msg("r1", "ReleaseSock", lsn, {}, 0)  # not the owner
    assert isinstance(res, Rejected)
    assert stack.net.bad_sock_ops == 3
    events = [o for o in stack.take_outputs() if getattr(o, "name", None) == "bad_sock_op"]
    assert len(events) == 3
    # The stack still serves.
    res = stack.sock_op_msg("r1", "LockSock", lsn, {}, 0)
    assert type(res) is SockOpResult and res.state.listen
    assert stack.socks[lsn].owner == "r1"


def test_process_context_functions_with_kernel_names_run() -> None:
    """``__release_sock`` and ``__sk_flush_backlog`` are module functions (a call from a
    class body would be name-mangled): both run, through the ops and directly."""
    release = getattr(sock_module, "__release_sock")
    flush = getattr(sock_module, "__sk_flush_backlog")
    stack = Stack(get_profile("modern"))
    lsn = stack.listen("10.0.0.2", 5001, 0)
    sk = stack.socks[lsn]
    assert stack.sock_op("t", LockSock(lsn), 0) is not None
    release(sk, "t", 0)
    flush(sk, "t", 0)
    assert sk.owner == "t"
    assert stack.sock_op("t", SkFlushBacklog(lsn), 0) is not None
    assert stack.sock_op("t", ReleaseSock(lsn), 0) is not None
    assert sk.owner is None


def test_equal_socket_states_are_one_object_with_the_fields_by_name() -> None:
    st = sock_state_of((True, False, 2, True, False, False, 0, False, False, 1448))
    assert st == SockState(readable=True, prequeue=2, caught_up=True, ucopy_len=1448)
    assert sock_state_of((True, False, 2, True, False, False, 0, False, False, 1448)) is st
    assert decode_result(encode_result(Woken(state=st))).state is st


def test_the_stacks_socket_state_names_each_field_from_its_socket() -> None:
    conn = connect("legacy")
    sk = conn.sk
    conn.deliver(conn.segment(0, b"x" * 100))
    sk.sk_err = 104
    st = sock_state(sk)
    assert (st.readable, st.backlog, st.prequeue, st.caught_up, st.err, st.closed,
            st.listen) == (True, False, 0, False, 104, False, False)
    sk.copied_seq = sk.rcv_nxt
    assert sock_state(sk).caught_up
