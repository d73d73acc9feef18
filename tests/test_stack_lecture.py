"""The classic receive-path walk-through cases (4.13), with their numbers.

Segment k carries stream bytes [(k-1)*1000, k*1000): "segment 5" is bytes 4000..4999.
"""

from __future__ import annotations

import pytest

from actors.reader.tcp_recvmsg import RecvFlags
from protocol.seq import seq_sub
from protocol.sockops import LockSock, ReleaseSock
from tests.stack_harness import Conn, Reader, connect, read_all

SEG = 1000
PROFILES = ["legacy", "modern"]


def payload(k: int) -> bytes:
    return bytes((k * 7 + i) % 251 for i in range(SEG))


def stream(first: int, last: int) -> bytes:
    return b"".join(payload(k) for k in range(first, last + 1))


def send(conn: Conn, k: int) -> int:
    return conn.deliver(conn.segment((k - 1) * SEG, payload(k)))


def acked(conn: Conn) -> int:
    """Stream offset the last ACK acknowledges."""
    return seq_sub(conn.acks()[-1].ack, conn.seq(0))


def counters(conn: Conn) -> dict[str, int]:
    return dict(conn.stack.net.mib.nonzero())


@pytest.mark.parametrize("profile", PROFILES)
def test_segments_5_to_9_with_7_and_8_before_5_and_6(profile: str) -> None:
    conn = connect(profile)
    for k in range(1, 5):
        send(conn, k)
    assert conn.sk.rcv_nxt == conn.seq(4 * SEG)
    n_acks = len(conn.acks())

    send(conn, 7)
    send(conn, 8)
    sk = conn.sk
    # 7 and 8 wait in the out-of-order queue, coalesced into one range, one SACK block.
    assert [(seq_sub(s.seq, conn.seq(0)), seq_sub(s.end_seq, conn.seq(0))) for s in sk.ofo] \
        == [(6000, 8000)]
    assert sk.rcv_nxt == conn.seq(4 * SEG)
    dupacks = conn.acks()[n_acks:]
    assert dupacks, "out-of-order data is acknowledged at once (dupacks carrying SACK)"
    assert all(seq_sub(a.ack, conn.seq(0)) == 4000 for a in dupacks)
    assert dupacks[-1].options.sack_blocks == ((conn.seq(6000), conn.seq(8000)),)
    c = counters(conn)
    assert c["TcpExtTCPOFOQueue"] == 2

    send(conn, 5)
    assert sk.rcv_nxt == conn.seq(5 * SEG)
    assert len(sk.ofo) == 1  # 6 is still missing: 7-8 cannot move yet

    send(conn, 6)
    # 6 fills the hole: tcp_ofo_queue moves 7-8 to the receive queue in one go.
    assert not sk.ofo
    assert sk.rcv_nxt == conn.seq(8 * SEG)
    assert acked(conn) == 8000, "the ACK after a filled hole covers 7 and 8 immediately"
    assert conn.acks()[-1].options.sack_blocks == ()

    send(conn, 9)
    assert read_all(conn).data == stream(1, 9)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("ack_pending", [False, True])
def test_duplicate_3_when_5_is_expected(profile: str, ack_pending: bool) -> None:
    conn = connect(profile)
    for k in range(1, 4):
        send(conn, k)
    if ack_pending:
        # Interactive (pingpong) mode, out of quickack: segment 4 waits for a delayed ACK.
        conn.sk.icsk_ack.pingpong = 1
    send(conn, 4)
    sk = conn.sk
    before_acks = len(conn.acks())
    sid = send(conn, 3)
    assert sk.rcv_nxt == conn.seq(4000)
    c = counters(conn)
    assert c["TcpExtDelayedACKLost"] == 1
    assert c["TcpExtTCPDSACKOldSent"] == 1
    # With 4 already acknowledged (rcv_wup = 4000), tcp_sequence rejects 3 before
    # tcp_data_queue sees it; with the ACK still pending, tcp_data_queue's
    # duplicate case drops it. Both answer with a D-SACK at once.
    expected = "drop:TCP_OLD_DATA" if ack_pending else "drop:TCP_OLD_SEQUENCE"
    assert conn.stack.net.fates[sid] == expected
    new = conn.acks()[before_acks:]
    assert len(new) == 1
    assert new[0].options.sack_blocks[0] == (conn.seq(2000), conn.seq(3000))
    assert seq_sub(new[0].ack, conn.seq(0)) == 4000
    assert sk.icsk_ack.quick > 0  # quickack mode, so the sender learns quickly
    assert read_all(conn).data == stream(1, 4)


@pytest.mark.parametrize("profile", PROFILES)
def test_segment_11_when_the_window_ends_at_10(profile: str) -> None:
    conn = connect(profile)
    for k in range(1, 6):
        send(conn, k)
    read_all(conn)  # an empty receive queue: modern then judges by tcp_data_queue too
    sk = conn.sk
    # The last advertised window ends at the end of segment 10.
    sk.rcv_wup = sk.rcv_nxt
    sk.rcv_wnd = 5 * SEG
    before_acks = len(conn.acks())
    sid = send(conn, 11)
    assert sk.rcv_nxt == conn.seq(5 * SEG)
    assert not sk.ofo and not sk.receive_queue
    assert conn.stack.net.fates[sid] == "drop:TCP_OVERWINDOW"
    new = conn.acks()[before_acks:]
    assert len(new) == 1 and seq_sub(new[0].ack, conn.seq(0)) == 5000

    # Segment 10 itself fits: it is queued out of order.
    send(conn, 10)
    assert len(sk.ofo) == 1


def test_modern_rejects_data_beyond_the_window_while_data_is_queued() -> None:
    conn = connect("modern")
    for k in range(1, 6):
        send(conn, k)
    sk = conn.sk
    sk.rcv_wup = sk.rcv_nxt
    sk.rcv_wnd = 5 * SEG
    big = conn.segment(9 * SEG, payload(10) + payload(11))  # 10 fits, 11 does not
    sid = conn.deliver(big)
    assert conn.stack.net.fates[sid] == "drop:TCP_INVALID_END_SEQUENCE"
    assert counters(conn)["TcpExtBeyondWindow"] == 1


@pytest.mark.parametrize("profile", PROFILES)
def test_partial_overlap(profile: str) -> None:
    conn = connect(profile)
    for k in range(1, 5):
        send(conn, k)
    data = stream(1, 6)
    # A retransmission cut differently: bytes 3500..5499 while 4000 is expected.
    conn.deliver(conn.segment(3500, data[3500:5500]))
    sk = conn.sk
    assert sk.rcv_nxt == conn.seq(5500)
    c = counters(conn)
    assert c["TcpExtTCPDSACKOldSent"] == 1
    ack = conn.acks()[-1]
    assert ack.options.sack_blocks[0] == (conn.seq(3500), conn.seq(4000))
    conn.deliver(conn.segment(5500, data[5500:6000]))
    got = read_all(conn).data
    assert got == data, "the overlapping 500 bytes are read once"


@pytest.mark.parametrize("profile", PROFILES)
def test_lowest_queued_range_is_not_the_one_that_fits(profile: str) -> None:
    conn = connect(profile)
    send(conn, 1)
    data = stream(1, 8)
    # ofo: 3000..5000 then a range starting inside it that reaches further
    conn.deliver(conn.segment(3000, data[3000:5000]))
    conn.deliver(conn.segment(4500, data[4500:7000]))
    sk = conn.sk
    assert len(sk.ofo) == 2
    conn.deliver(conn.segment(1000, data[1000:3000]))
    assert not sk.ofo
    assert sk.rcv_nxt == conn.seq(7000)
    assert read_all(conn).data == data[:7000]


def test_legacy_prequeue_then_direct_copy() -> None:
    """A reader asleep in sk_wait_data gets segments through the prequeue (legacy)."""
    conn = connect("legacy")
    r = Reader(conn, "reader", 3000, RecvFlags(waitall=True))
    r.run()
    assert r.waiting and conn.sk.ucopy.task == "reader"
    send(conn, 1)  # queued to the prequeue, wakes the reader
    assert len(conn.sk.ucopy.prequeue) == 1
    send(conn, 2)
    r.run()
    send(conn, 3)
    res = r.run()
    for _ in range(10):
        if res is not None:
            break
        res = r.run()
    assert res is not None and res.data == stream(1, 3)
    c = counters(conn)
    assert c["TcpExtTCPPrequeued"] >= 1
    assert c["TcpExtTCPDirectCopyFromPrequeue"] + c.get("TcpExtTCPDirectCopyFromBacklog", 0) \
        == 3000
    assert c["TcpExtTCPHPHitsToUser"] >= 1


def test_modern_never_prequeues() -> None:
    conn = connect("modern")
    r = Reader(conn, "reader", 2000, RecvFlags(waitall=True))
    r.run()
    assert r.waiting
    send(conn, 1)
    send(conn, 2)
    assert not conn.sk.ucopy.prequeue and conn.sk.ucopy.task is None
    res = r.run()
    assert res is not None and res.data == stream(1, 2)
    assert res.direct == 0


@pytest.mark.parametrize("profile", PROFILES)
def test_owned_socket_queues_to_backlog_and_release_drains(profile: str) -> None:
    conn = connect(profile)
    assert conn.stack.sock_op("holder", LockSock(conn.sock), 0) is not None
    sk = conn.sk
    assert sk.owner == "holder"
    for k in range(1, 4):
        send(conn, k)
    assert sk.rcv_nxt == conn.seq(0)
    if profile == "legacy":
        assert len(sk.backlog) == 3
    else:  # modern coalesces contiguous segments with identical headers in the backlog
        assert len(sk.backlog) == 1 and counters(conn)["TcpExtTCPBacklogCoalesce"] == 2
    conn.stack.sock_op("holder", ReleaseSock(conn.sock), 0)
    conn.collect()
    assert not sk.backlog and sk.backlog_len == 0
    assert sk.rcv_nxt == conn.seq(3000)
    assert read_all(conn).data == stream(1, 3)
