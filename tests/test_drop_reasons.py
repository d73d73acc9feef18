"""Each drop reason the model uses, pinned at its drop site under Linux 6.18's name.

The names are enum skb_drop_reason's (include/net/dropreason-core.h, v6.18) and each
test cites the 6.18 function that drops with it. Both profiles use them: 4.13 had no
drop reasons at all.
"""

from __future__ import annotations

import pytest

from actors.mib import ALL_NAMES
from actors.profiles import get_profile, sysctls_for
from actors.stack.net import (
    DROP_REASONS,
    RENAMED_DROP_REASONS,
    Transmit,
    current_drops,
    drop_counters,
    drop_reason,
)
from actors.stack.sock import TcpState
from actors.stack.tcp_ipv4 import Stack
from protocol.segment import Segment, TcpFlags, TcpOptions
from protocol.seq import seq_add
from protocol.sockops import LockSock, Opened, SockSetsockopt, TcpV4Connect
from tests.stack_harness import ISN, LOCAL, PORT, REMOTE, Conn, connect

PROFILES = ("legacy", "modern")
MS = 1_000_000

# Every enum skb_drop_reason entry of 6.18's dropreason-core.h the model drops with.
LINUX_6_18_NAMES = frozenset({
    "NOT_SPECIFIED", "NO_SOCKET", "SOCKET_CLOSE", "PKT_TOO_SMALL", "TCP_CSUM", "PROTO_MEM",
    "SOCKET_BACKLOG", "TCP_FLAGS", "TCP_ABORT_ON_DATA", "TCP_ZEROWINDOW", "TCP_OLD_DATA",
    "TCP_OVERWINDOW", "TCP_OFOMERGE", "TCP_RFC7323_PAWS", "TCP_RFC7323_PAWS_ACK",
    "TCP_LISTEN_OVERFLOW", "TCP_OLD_SEQUENCE", "TCP_INVALID_SEQUENCE",
    "TCP_INVALID_END_SEQUENCE", "TCP_INVALID_ACK_SEQUENCE", "TCP_RESET", "TCP_INVALID_SYN",
    "TCP_CLOSE", "TCP_OLD_ACK", "TCP_TOO_OLD_ACK", "TCP_ACK_UNSENT_DATA",
    "TCP_OFO_QUEUE_PRUNE", "TCP_OFO_DROP", "PFMEMALLOC", "TCP_RFC7323_TW_PAWS", "QUEUE_PURGE",
})


def payload(n: int, start: int = 0) -> bytes:
    return bytes((start + i) % 251 for i in range(n))


def fate(c: Conn, sid: int) -> str:
    return c.stack.net.fates[sid]


def syn(sport: int) -> Segment:
    return Segment(src=REMOTE, sport=sport, dst=LOCAL, dport=PORT, seq=ISN,
                   flags=TcpFlags.SYN, window=65535, options=TcpOptions(mss=1460))


def synack_of(stack: Stack) -> Segment:
    return next(o.segment for o in stack.take_outputs() if isinstance(o, Transmit))


def ack_for(synack: Segment, sport: int, *, ack: int | None = None) -> Segment:
    return Segment(src=REMOTE, sport=sport, dst=LOCAL, dport=PORT, seq=ISN + 1,
                   ack=seq_add(synack.seq, 1) if ack is None else ack, flags=TcpFlags.ACK,
                   window=1000)


def new_stack(profile: str) -> Stack:
    prof = get_profile(profile)
    return Stack(prof, sysctls_for(prof), seed=3)


def test_every_reason_is_a_6_18_name_with_real_counters() -> None:
    assert set(DROP_REASONS) == LINUX_6_18_NAMES
    for counters in DROP_REASONS.values():
        assert all(c in ALL_NAMES for c in counters)
    # the names the model used before, none of them 6.18's
    assert not set(RENAMED_DROP_REASONS) & LINUX_6_18_NAMES
    assert set(RENAMED_DROP_REASONS.values()) <= LINUX_6_18_NAMES


def test_an_older_runs_names_read_as_6_18s() -> None:
    old = {"TCP_BACKLOG": 3, "LISTEN_OVERFLOW": 1, "TCP_OFO_DUP": 2,
           "TCP_DATA_AFTER_FIN": 1, "NOT_SPECIFIED": 4, "TCP_OLD_DATA": 5}
    assert current_drops(old) == {"SOCKET_BACKLOG": 3, "TCP_LISTEN_OVERFLOW": 1,
                                  "TCP_OFO_DROP": 2, "NOT_SPECIFIED": 5, "TCP_OLD_DATA": 5}
    assert drop_reason("TCP_BACKLOG") == "SOCKET_BACKLOG"
    assert drop_counters("TCP_BACKLOG") == ("TcpExtTCPBacklogDrop",)
    # 4.13 lacks TCPRcvQDrop: only tcp_data_queue_ofo's TCPOFODrop is left for PROTO_MEM
    legacy = get_profile("legacy").absent_counters
    assert drop_counters("PROTO_MEM", legacy) == ("TcpExtTCPOFODrop",)


@pytest.mark.parametrize("profile", PROFILES)
def test_socket_backlog(profile: str) -> None:
    # tcp_add_backlog: sk_add_backlog fails -> SOCKET_BACKLOG, LINUX_MIB_TCPBACKLOGDROP
    c = connect(profile, rcvbuf=4096)
    assert c.stack.sock_op("holder", LockSock(c.sock), c.now) is not None
    c.collect()
    sids = [c.deliver(c.segment(1 + 200 * i, payload(100))) for i in range(200)]
    dropped = [s for s in sids if c.stack.net.fates.get(s) == "drop:SOCKET_BACKLOG"]
    assert dropped and c.stack.net.mib["TcpExtTCPBacklogDrop"] == len(dropped)


def ofo_without_memory(c: Conn) -> int:
    """In-order data the reader leaves unread above a shrunk SO_RCVBUF (as
    test_in_order_data_that_cannot_fit), then a segment after a hole."""
    off = 0
    for _ in range(10):
        c.deliver(c.segment(off, payload(1460, off)))
        off += 1460
    c.stack.sock_op("app", SockSetsockopt(c.sock, "SO_RCVBUF", 4096), c.now)
    assert c.sk.rmem_alloc > c.sk.rcvbuf
    return c.deliver(c.segment(off + 1460, payload(1460, off + 1460)))


@pytest.mark.parametrize("profile", PROFILES)
def test_proto_mem_in_tcp_data_queue_ofo(profile: str) -> None:
    # tcp_data_queue_ofo: tcp_try_rmem_schedule fails -> LINUX_MIB_TCPOFODROP,
    # tcp_drop_reason(sk, skb, SKB_DROP_REASON_PROTO_MEM) (the model once said TCP_OFO_DROP)
    c = connect(profile)
    sid = ofo_without_memory(c)
    assert fate(c, sid) == "drop:PROTO_MEM"
    assert c.stack.net.mib["TcpExtTCPOFODrop"] == 1
    assert "TcpExtTCPOFODrop" in DROP_REASONS["PROTO_MEM"]


@pytest.mark.parametrize("profile", PROFILES)
def test_tcp_ofo_drop_in_tcp_ofo_queue(profile: str) -> None:
    # tcp_ofo_queue: an ofo skb that in-order data wholly covered ->
    # tcp_drop_reason(sk, skb, SKB_DROP_REASON_TCP_OFO_DROP) (the model's TCP_OFO_DUP)
    c = connect(profile)
    sid = c.deliver(c.segment(1000, payload(500, 1000)))
    assert c.sk.ofo
    c.deliver(c.segment(0, payload(2000)))
    assert fate(c, sid) == "drop:TCP_OFO_DROP"
    assert c.sk.rcv_nxt == c.seq(2000) and not c.sk.ofo


@pytest.mark.parametrize("profile", PROFILES)
def test_not_specified_when_tcp_fin_purges_the_ofo_queue(profile: str) -> None:
    # tcp_fin: skb_rbtree_purge(&tp->out_of_order_queue), whose kfree_skb() frees with
    # SKB_DROP_REASON_NOT_SPECIFIED (the model once said TCP_CLOSE)
    c = connect(profile)
    sid = c.deliver(c.segment(3000, payload(500, 3000)))
    c.deliver(c.segment(0, payload(1000), fin=True))
    assert c.sk.state == TcpState.CLOSE_WAIT
    assert fate(c, sid) == "drop:NOT_SPECIFIED"


@pytest.mark.parametrize("profile", PROFILES)
def test_not_specified_for_data_after_the_peers_fin(profile: str) -> None:
    # tcp_rcv_state_process, step 7: CLOSE_WAIT and seq >= rcv_nxt breaks out unqueued,
    # then discard: tcp_drop_reason(sk, skb, reason), reason NOT_SPECIFIED since step 5's
    # SKB_DR_SET (the model's TCP_DATA_AFTER_FIN)
    c = connect(profile)
    c.deliver(c.segment(0, payload(1000), fin=True))
    assert c.sk.state == TcpState.CLOSE_WAIT
    sid = c.deliver(c.segment(1001, payload(100, 1001)))
    assert fate(c, sid) == "drop:NOT_SPECIFIED"


@pytest.mark.parametrize("profile", PROFILES)
def test_tcp_listen_overflow_for_a_syn(profile: str) -> None:
    # tcp_conn_request: sk_acceptq_is_full -> LINUX_MIB_LISTENOVERFLOWS, tcp_listendrop;
    # 6.18 consume_skb()s the SYN, the model counts it as tcp_check_req's
    # TCP_LISTEN_OVERFLOW (the model's LISTEN_OVERFLOW)
    stack = new_stack(profile)
    stack.listen(LOCAL, PORT, 0, backlog=0)
    stack.tcp_v4_rcv(syn(41000), 0)
    stack.tcp_v4_rcv(ack_for(synack_of(stack), 41000), 0)
    stack.take_outputs()
    sid = stack.tcp_v4_rcv(syn(41001), 0)
    assert stack.net.fates[sid] == "drop:TCP_LISTEN_OVERFLOW"
    assert stack.net.mib["TcpExtListenOverflows"] == 1


def test_tcp_listen_overflow_on_the_final_ack() -> None:
    # tcp_check_req: syn_recv_sock returns NULL -> listen_overflow:
    # SKB_DR_SET(*drop_reason, TCP_LISTEN_OVERFLOW)
    stack = new_stack("modern")
    stack.listen(LOCAL, PORT, 0, backlog=0)
    synacks = {}
    for port in (41000, 41001):
        stack.tcp_v4_rcv(syn(port), 0)
        synacks[port] = synack_of(stack)
    stack.tcp_v4_rcv(ack_for(synacks[41000], 41000), 0)
    sid = stack.tcp_v4_rcv(ack_for(synacks[41001], 41001), 0)
    assert stack.net.fates[sid] == "drop:TCP_LISTEN_OVERFLOW"


@pytest.mark.parametrize("profile", PROFILES)
def test_tcp_flags_for_an_ack_to_a_listener(profile: str) -> None:
    # tcp_rcv_state_process, TCP_LISTEN: if (th->ack) return SKB_DROP_REASON_TCP_FLAGS;
    # tcp_v4_do_rcv answers with a RST (the model once said NO_SOCKET)
    stack = new_stack(profile)
    stack.listen(LOCAL, PORT, 0)
    seg = Segment(src=REMOTE, sport=41000, dst=LOCAL, dport=PORT, seq=10, ack=4242,
                  flags=TcpFlags.ACK, window=100)
    sid = stack.tcp_v4_rcv(seg, 0)
    assert stack.net.fates[sid] == "drop:TCP_FLAGS"
    (rst,) = [o.segment for o in stack.take_outputs() if isinstance(o, Transmit)]
    assert rst.flags == TcpFlags.RST


@pytest.mark.parametrize("profile", PROFILES)
def test_tcp_flags_for_a_wrong_ack_in_syn_recv(profile: str) -> None:
    # tcp_check_req: ack_seq != snt_isn + 1 returns the listener, whose
    # tcp_rcv_state_process refuses the ACK with TCP_FLAGS (and a RST); the model once
    # said TCP_INVALID_ACK_SEQUENCE, which 6.18 uses in tcp_rcv_synsent_state_process
    stack = new_stack(profile)
    stack.listen(LOCAL, PORT, 0)
    stack.tcp_v4_rcv(syn(41000), 0)
    synack = synack_of(stack)
    sid = stack.tcp_v4_rcv(ack_for(synack, 41000, ack=seq_add(synack.seq, 7)), 0)
    assert stack.net.fates[sid] == "drop:TCP_FLAGS"
    assert any(o.segment.flags & TcpFlags.RST for o in stack.take_outputs()
               if isinstance(o, Transmit))


@pytest.mark.parametrize("profile", PROFILES)
def test_tcp_invalid_syn_for_a_syn_on_an_established_socket(profile: str) -> None:
    # tcp_validate_incoming, syn_challenge: LINUX_MIB_TCPSYNCHALLENGE,
    # SKB_DR_SET(reason, TCP_INVALID_SYN) (the model once said TCP_FLAGS)
    c = connect(profile)
    c.deliver(c.segment(0, payload(1000)))
    sid = c.deliver(c.segment(1000, b"", flags=TcpFlags.SYN))
    assert fate(c, sid) == "drop:TCP_INVALID_SYN"
    assert c.stack.net.mib["TcpExtTCPSYNChallenge"] == 1


@pytest.mark.parametrize("profile", PROFILES)
def test_paws_old_pure_ack(profile: str) -> None:
    # tcp_disordered_ack_check: a pure ACK below rcv_nxt is
    # SKB_DROP_REASON_TCP_RFC7323_PAWS_ACK, and tcp_validate_incoming counts
    # LINUX_MIB_PAWS_OLD_ACK; 4.13 counts PAWSEstab (the model's one name for both)
    c = connect(profile, ts=True)
    c.now = 100 * MS
    c.deliver(c.segment(0, payload(1000)))
    c.deliver(c.segment(1000, payload(1000, 1000)))
    old = c.segment(500, b"").with_(options=TcpOptions(timestamp=(50, 0)))
    sid = c.deliver(old)
    if profile == "modern":
        assert fate(c, sid) == "drop:TCP_RFC7323_PAWS_ACK"
        assert c.stack.net.mib["TcpExtPAWSOldAck"] == 1
    else:
        assert fate(c, sid) == "drop:TCP_RFC7323_PAWS"
        assert c.stack.net.mib["TcpExtPAWSEstab"] == 1


@pytest.mark.parametrize("profile", PROFILES)
def test_not_specified_for_a_segment_without_flags_in_syn_sent(profile: str) -> None:
    # tcp_rcv_synsent_state_process: neither ACK, RST nor SYN falls through to
    # discard_and_undo with the SKB_DR(reason) it started with, NOT_SPECIFIED
    stack = new_stack(profile)
    res = stack.sock_op("app", TcpV4Connect(LOCAL, REMOTE, 8080), 0)
    assert isinstance(res, Opened)
    (out,) = [o.segment for o in stack.take_outputs() if isinstance(o, Transmit)]
    bare = Segment(src=REMOTE, sport=8080, dst=LOCAL, dport=out.sport, seq=5000,
                   flags=0, window=100)
    sid = stack.tcp_v4_rcv(bare, 1 * MS)
    assert stack.net.fates[sid] == "drop:NOT_SPECIFIED"
    rst = bare.with_(flags=TcpFlags.RST)
    sid = stack.tcp_v4_rcv(rst, 2 * MS)
    assert stack.net.fates[sid] == "drop:TCP_RESET"
    assert stack.socks[res.sock].state == TcpState.SYN_SENT

