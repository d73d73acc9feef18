"""One test per receive-path rule of the stack model, with the kernel's numbers.

Each test names a rule (the section headers below give its part of
docs/receive-path.md)
and checks the counters, queues and segments it produces, for both profiles where
they differ. Stream offsets are relative to the first byte after the peer's SYN.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.profiles import MS, get_profile, sysctls_for
from actors.reader.tcp_recvmsg import RecvFlags
from actors.stack.net import OpDone, Transmit
from actors.stack.skb import RMEM_MAX, Skb
from actors.stack.sock import AckPending, TcpState
from actors.stack.tcp_input import tcp_measure_rcv_mss, tcp_set_window_clamp
from actors.stack.tcp_ipv4 import Stack
from actors.stack.tcp_output import tcp_receive_window
from protocol.segment import Segment, TcpFlags, TcpOptions
from protocol.seq import seq_add, seq_sub
from protocol.sockops import (
    Accepted,
    Failed,
    InetAccept,
    LockSock,
    ReleaseSock,
    SkWaitData,
    SockSetsockopt,
)
from tests.stack_harness import (
    ISN,
    LOCAL,
    PORT,
    REMOTE,
    SPORT,
    Conn,
    Reader,
    connect,
    read_all,
)

PROFILES = ("legacy", "modern")
MSS = 1460
JIFFY = 4 * MS  # HZ=250, the default


def mib(c: Conn, name: str) -> int:
    return c.stack.net.mib[name]


def mib_of(stack: Stack, name: str) -> int:
    return stack.net.mib[name]


def payload(n: int, start: int = 0) -> bytes:
    """Stream bytes ``start .. start+n`` (position-dependent, so reorders show)."""
    return bytes((start + i) % 251 for i in range(n))


def syn(sport: int = SPORT, *, ts: bool = False, sack: bool = True, wscale: int | None = 7,
        isn: int = ISN, src: str = REMOTE) -> Segment:
    opts = TcpOptions(mss=1460, sack_permitted=sack, wscale=wscale,
                      timestamp=(1, 0) if ts else None)
    return Segment(src=src, sport=sport, dst=LOCAL, dport=PORT, seq=isn, flags=TcpFlags.SYN,
                   window=65535, options=opts)


def handshake_ack(synack: Segment, sport: int = SPORT, isn: int = ISN) -> Segment:
    return Segment(src=REMOTE, sport=sport, dst=LOCAL, dport=PORT, seq=isn + 1,
                   ack=seq_add(synack.seq, 1), flags=TcpFlags.ACK, window=1000)


def transmitted(stack: Stack) -> list[Segment]:
    return [o.segment for o in stack.take_outputs() if isinstance(o, Transmit)]


def new_stack(profile: str, **sysctl: object) -> Stack:
    prof = get_profile(profile)
    return Stack(prof, sysctls_for(prof, **sysctl), seed=3)  # type: ignore[arg-type]


def fill(c: Conn, start: int, count: int, size: int = MSS, **kw: object) -> int:
    """Deliver ``count`` in-order segments from stream offset ``start``; returns the end."""
    off = start
    for _ in range(count):
        c.deliver(c.segment(off, payload(size, off), **kw))  # type: ignore[arg-type]
        off += size
    return off


def last_ack(c: Conn) -> Segment:
    acks = c.acks()
    assert acks, "no ACK was sent"
    return acks[-1]


def ack_count(c: Conn) -> int:
    return len(c.acks())


# ---------------------------------------------------------------------------------------
# Connection setup: SYN-ACK, SO_RCVBUF, accept queue, listen overflow, RST, ingress counters


@pytest.mark.parametrize(("profile", "wscale"), [("legacy", 7), ("modern", 10)])
@pytest.mark.parametrize("ts", [False, True])
def test_synack_options(profile: str, wscale: int, ts: bool) -> None:
    """MSS 1460, sackOK, wscale from tcp_rmem[2] (6 MB -> 7, 32 MB -> 10), TS echoes TSval."""
    c = connect(profile, ts=ts)
    synack = c.sent[0]
    opts = synack.options
    assert synack.flags == TcpFlags.SYN | TcpFlags.ACK
    assert synack.ack == ISN + 1
    assert opts.mss == 1460
    assert opts.sack_permitted is True
    assert opts.wscale == wscale
    assert c.sk.rx_opt.rcv_wscale == wscale
    if ts:
        assert opts.timestamp is not None
        assert opts.timestamp[1] == 1  # tsecr = the SYN's TSval
    else:
        assert opts.timestamp is None


def test_synack_wscale_follows_tcp_rmem_max() -> None:
    # ilog2(max(tcp_rmem[2], rmem_max)) - 15: 16 MB -> 9; small values are floored by rmem_max.
    c = connect("legacy", tcp_rmem=(4096, 87380, 16 << 20))
    assert c.sent[0].options.wscale == 9
    c = connect("legacy", tcp_rmem=(4096, 87380, 65536))
    assert c.sent[0].options.wscale == 2  # rmem_max 212992 -> ilog2 17 - 15


def test_synack_omits_what_the_syn_did_not_offer() -> None:
    c = connect("legacy", sack=False, wscale=None)
    opts = c.sent[0].options
    assert opts.mss == 1460
    assert not opts.sack_permitted
    assert opts.wscale is None
    assert not c.sk.rx_opt.sack_ok and c.sk.rx_opt.rcv_wscale == 0


@pytest.mark.parametrize(("ts", "window"), [(False, 29200), (True, 28960)])
def test_synack_window_legacy_is_twenty_segments(ts: bool, window: int) -> None:
    """rcvbuf 87380 -> space 43690, cut to tcp_default_init_rwnd 20 * mss (1460, or
    1448 with TS)."""
    c = connect("legacy", ts=ts)
    assert c.sent[0].window == window
    assert c.sk.rcv_wnd == window


@pytest.mark.parametrize(("ts", "window"), [(False, 64240), (True, 65160)])
def test_synack_window_modern_is_half_of_rmem_default(ts: bool, window: int) -> None:
    """rcvbuf 131072 * scaling_ratio 128/256 = 65536, rounded down to the mss."""
    c = connect("modern", ts=ts)
    assert c.sent[0].window == window


@pytest.mark.parametrize("profile", PROFILES)
def test_so_rcvbuf_is_doubled_and_locked(profile: str) -> None:
    c = connect(profile, rcvbuf=8192)
    sk = c.sk
    assert sk.rcvbuf == 16384
    assert sk.rcvbuf_locked
    # A locked buffer is not raised by tcp_fixup_rcvbuf / autotuning at ESTABLISHED.
    listener = c.stack.socks[c.listener]
    assert listener.rcvbuf == 16384
    # The window starts from that buffer: win_from_space(16384) = 8192, rounded to mss.
    assert c.sent[0].window == 8192 - 8192 % MSS
    # Reading a lot does not grow a locked buffer.
    off = 0
    for _ in range(20):
        off = fill(c, off, 4)
        c.now += 50 * MS
        read_all(c)
    assert sk.rcvbuf == 16384


def test_so_rcvbuf_limits() -> None:
    c = connect("legacy", rcvbuf=1)
    assert c.sk.rcvbuf == 2304  # SOCK_MIN_RCVBUF = TCP_SKB_MIN_TRUESIZE = 2048 + 256
    c = connect("legacy", rcvbuf=10 << 20)
    assert c.sk.rcvbuf == 2 * RMEM_MAX  # clamped at net.core.rmem_max, then doubled
    # setsockopt on a connected socket: doubled and locked too.
    c = connect("modern")
    assert not c.sk.rcvbuf_locked
    res = c.stack.sock_op("app", SockSetsockopt(c.sock, "SO_RCVBUF", 50000), 0)
    assert res is not None and not isinstance(res, Failed)
    assert c.sk.rcvbuf == 100000 and c.sk.rcvbuf_locked


def test_unlocked_legacy_rcvbuf_is_fixed_up_at_established() -> None:
    # tcp_fixup_rcvbuf: 2 * SKB_TRUESIZE(1460 + 320) * 20 segments, x4 with moderate_rcvbuf.
    c = connect("legacy")
    assert c.sk.rcvbuf == 2 * 2368 * 20 * 4
    c = connect("legacy", tcp_moderate_rcvbuf=0)
    assert c.sk.rcvbuf == 2 * 2368 * 20


@pytest.mark.parametrize("profile", PROFILES)
def test_accept_queue_order_and_nonblocking_accept(profile: str) -> None:
    stack = new_stack(profile)
    lsn = stack.listen(LOCAL, PORT, 0)
    res = stack.sock_op("app", InetAccept(lsn, nonblock=True), 0)
    assert isinstance(res, Failed) and res.error == 11  # -EAGAIN
    children = []
    for port in (41000, 41001):
        stack.tcp_v4_rcv(syn(port), 0)
        synack = transmitted(stack)[0]
        stack.tcp_v4_rcv(handshake_ack(synack, port), 0)
        stack.take_outputs()
        children.append(stack.ehash[(REMOTE, port, LOCAL, PORT)])
    assert list(stack.socks[lsn].accept_queue) == children
    got = [stack.sock_op("app", InetAccept(lsn), 0) for _ in children]
    assert [g.sock for g in got if isinstance(g, Accepted)] == children
    assert mib_of(stack, "TcpPassiveOpens") == 2
    assert mib_of(stack, "TcpCurrEstab") == 2


def test_blocking_accept_is_woken_by_the_handshake() -> None:
    stack = new_stack("legacy")
    lsn = stack.listen(LOCAL, PORT, 0)
    assert stack.sock_op("app", InetAccept(lsn), 0) is None  # sleeps
    stack.tcp_v4_rcv(syn(), 0)
    synack = transmitted(stack)[0]
    stack.tcp_v4_rcv(handshake_ack(synack), 1)
    done = [o for o in stack.take_outputs() if isinstance(o, OpDone)]
    assert len(done) == 1 and done[0].task == "app"
    assert done[0].result == Accepted(sock=stack.ehash[(REMOTE, SPORT, LOCAL, PORT)],
                                      rport=SPORT)


@pytest.mark.parametrize("profile", PROFILES)
def test_listen_overflow_when_accept_queue_is_full(profile: str) -> None:
    """sk_acceptq_is_full is ack_backlog > max_ack_backlog: listen(1) holds two children."""
    stack = new_stack(profile)
    lsn = stack.listen(LOCAL, PORT, 0, backlog=1)
    for port in (41000, 41001):
        stack.tcp_v4_rcv(syn(port), 0)
        synack = transmitted(stack)[0]
        stack.tcp_v4_rcv(handshake_ack(synack, port), 0)
        stack.take_outputs()
    assert len(stack.socks[lsn].accept_queue) == 2
    assert mib_of(stack, "TcpExtListenOverflows") == 0
    stack.tcp_v4_rcv(syn(41002), 0)
    assert transmitted(stack) == []  # the SYN is dropped: no SYN-ACK
    assert mib_of(stack, "TcpExtListenOverflows") == 1
    assert mib_of(stack, "TcpExtListenDrops") == 1
    assert (REMOTE, 41002, LOCAL, PORT) not in stack.ehash
    # Once the application accepts, a new SYN is answered again.
    stack.sock_op("app", InetAccept(lsn), 0)
    stack.tcp_v4_rcv(syn(41003), 0)
    assert [s.flags for s in transmitted(stack)] == [TcpFlags.SYN | TcpFlags.ACK]


def test_listen_overflow_on_the_final_ack() -> None:
    """Two SYNs answered while the queue had room; the second ACK finds it full."""
    stack = new_stack("legacy")
    lsn = stack.listen(LOCAL, PORT, 0, backlog=0)
    synacks = {}
    for port in (41000, 41001):
        stack.tcp_v4_rcv(syn(port), 0)
        synacks[port] = transmitted(stack)[0]
    stack.tcp_v4_rcv(handshake_ack(synacks[41000], 41000), 0)
    assert len(stack.socks[lsn].accept_queue) == 1
    stack.tcp_v4_rcv(handshake_ack(synacks[41001], 41001), 0)
    assert len(stack.socks[lsn].accept_queue) == 1
    assert mib_of(stack, "TcpExtListenOverflows") == 1
    assert mib_of(stack, "TcpExtListenDrops") == 1


def test_rst_for_segment_without_socket() -> None:
    """tcp_v4_send_reset: seq = the ACK's ack_seq; without ACK: seq 0, ack = end_seq."""
    stack = new_stack("legacy")
    # An ACK-bearing data segment to a closed port.
    seg = Segment(src=REMOTE, sport=SPORT, dst=LOCAL, dport=9, seq=5000, ack=777,
                  flags=TcpFlags.ACK | TcpFlags.PSH, window=100, payload=b"x" * 10)
    stack.tcp_v4_rcv(seg, 0)
    (rst,) = transmitted(stack)
    assert rst.flags == TcpFlags.RST
    assert rst.seq == 777 and rst.ack == 0
    assert (rst.src, rst.sport, rst.dst, rst.dport) == (LOCAL, 9, REMOTE, SPORT)
    # A SYN to a closed port: RST|ACK acking the SYN's sequence space.
    stack.tcp_v4_rcv(syn().with_(dport=9), 0)
    (rst,) = transmitted(stack)
    assert rst.flags == TcpFlags.RST | TcpFlags.ACK
    assert rst.seq == 0 and rst.ack == ISN + 1
    # Data + FIN without ACK: ack covers payload and FIN.
    seg = Segment(src=REMOTE, sport=SPORT, dst=LOCAL, dport=9, seq=100,
                  flags=TcpFlags.FIN, window=0, payload=b"abc")
    stack.tcp_v4_rcv(seg, 0)
    (rst,) = transmitted(stack)
    assert rst.ack == 104
    # A RST is never answered.
    stack.tcp_v4_rcv(seg.with_(flags=TcpFlags.RST, payload=b""), 0)
    assert transmitted(stack) == []
    assert mib_of(stack, "TcpOutRsts") == 3
    assert mib_of(stack, "TcpInSegs") == 4


def test_ack_to_listener_gets_rst() -> None:
    stack = new_stack("modern")
    stack.listen(LOCAL, PORT, 0)
    seg = Segment(src=REMOTE, sport=SPORT, dst=LOCAL, dport=PORT, seq=10, ack=4242,
                  flags=TcpFlags.ACK, window=100)
    stack.tcp_v4_rcv(seg, 0)
    (rst,) = transmitted(stack)
    assert rst.flags == TcpFlags.RST and rst.seq == 4242


@pytest.mark.parametrize("profile", PROFILES)
def test_bad_checksum_counts_insegs_incsumerrors_inerrs(profile: str) -> None:
    c = connect(profile)
    base = {n: mib(c, n) for n in ("TcpInSegs", "TcpInCsumErrors", "TcpInErrs")}
    sent = len(c.sent)
    # No socket: counted, never answered with a RST.
    seg = Segment(src=REMOTE, sport=SPORT, dst=LOCAL, dport=9, seq=1, ack=1,
                  flags=TcpFlags.ACK, window=1, payload=b"zz")
    c.deliver(seg, csum_ok=False)
    # Established socket: dropped, counted, nothing queued.
    c.deliver(c.segment(0, b"hello"), csum_ok=False)
    assert mib(c, "TcpInSegs") == base["TcpInSegs"] + 2
    assert mib(c, "TcpInCsumErrors") == base["TcpInCsumErrors"] + 2
    assert mib(c, "TcpInErrs") == base["TcpInErrs"] + 2
    assert len(c.sent) == sent
    assert not c.sk.receive_queue and c.sk.rcv_nxt == c.seq(0)
    assert c.sk.sk_drops == 1
    # The same bytes with a good checksum are accepted.
    c.deliver(c.segment(0, b"hello"))
    assert read_all(c).data == b"hello"


# ---------------------------------------------------------------------------------------
# Header prediction (§2)

TRUESIZE_SMALL = 2304  # rx_truesize of any frame up to 2 KiB: one 2 KiB buffer + sk_buff


def prime_forward_alloc(c: Conn, off: int, size: int = 1000, window: int = 1000) -> int:
    """Deliver in-order data until the prepaid quota covers one more skb (fast path ready)."""
    for _ in range(10):
        if c.sk.forward_alloc >= TRUESIZE_SMALL:
            return off
        off = fill(c, off, 1, size, window=window)
    raise AssertionError("forward_alloc never covered an skb")


@pytest.mark.parametrize("profile", PROFILES)
def test_header_prediction_hits_in_order_data(profile: str) -> None:
    """pred_flags armed at ESTABLISHED; a hit needs seq == rcv_nxt and truesize <= forward_alloc."""
    c = connect(profile)
    sk = c.sk
    # hlen 20 in the top nibble (5 << 28), ACK only, the peer's raw window 1000.
    assert sk.pred_flags == (5 << 28) | (int(TcpFlags.ACK) << 16) | 1000
    expected = 0
    off = 0
    for i in range(10):
        fast = sk.forward_alloc >= TRUESIZE_SMALL
        if i == 0:
            assert not fast  # nothing prepaid yet: the first segment takes the slow path
        expected += fast
        off = fill(c, off, 1, 1000, psh=True)  # PSH is masked out of the prediction
        assert mib(c, "TcpExtTCPHPHits") == expected
    assert expected >= 4
    assert read_all(c).data == payload(10_000)


@pytest.mark.parametrize("profile", PROFILES)
def test_pure_ack_takes_the_fast_path_unless_the_window_changes(profile: str) -> None:
    c = connect(profile)
    c.deliver(c.segment(0, b""))
    assert mib(c, "TcpExtTCPPureAcks") == 0  # predicted: no slow path
    c.deliver(c.segment(0, b"", window=1500))
    assert mib(c, "TcpExtTCPPureAcks") == 1
    assert c.sk.snd_wnd == 1500 << 7


@pytest.mark.parametrize("profile", PROFILES)
def test_window_change_misses_prediction_then_rearms(profile: str) -> None:
    c = connect(profile)
    sk = c.sk
    off = prime_forward_alloc(c, 0)
    hits = mib(c, "TcpExtTCPHPHits")
    off = fill(c, off, 1, 1000, window=2000)
    assert mib(c, "TcpExtTCPHPHits") == hits  # header word differs: slow path
    # tcp_ack_update_window cleared pred_flags and tcp_fast_path_check re-armed it.
    assert sk.pred_flags & 0xFFFF == 2000
    off = prime_forward_alloc(c, off, window=2000)
    hits = mib(c, "TcpExtTCPHPHits")
    fill(c, off, 1, 1000, window=2000)
    assert mib(c, "TcpExtTCPHPHits") == hits + 1


@pytest.mark.parametrize("profile", PROFILES)
def test_ofo_queue_disables_prediction_until_drained(profile: str) -> None:
    c = connect(profile)
    sk = c.sk
    off = prime_forward_alloc(c, 0)
    c.deliver(c.segment(off + 2000, payload(1000, off + 2000)))  # hole [off, off+2000)
    assert sk.pred_flags == 0 and len(sk.ofo) == 1
    hits = mib(c, "TcpExtTCPHPHits")
    off = fill(c, off, 1, 1000)  # in order, but the ofo queue is not empty
    assert mib(c, "TcpExtTCPHPHits") == hits
    assert sk.pred_flags == 0
    fill(c, off, 1, 1000)  # fills the hole: ofo drains, fast path re-armed
    assert not sk.ofo and sk.pred_flags != 0
    assert read_all(c).data == payload(off + 2000)


def test_legacy_hp_direct_copy_from_prequeue_replay() -> None:
    """TCPHPHitsToUser: the segment is replayed from the prequeue in the reader's context."""
    c = connect("legacy")
    r = Reader(c, "r", 10_000)
    r.run()
    assert r.waiting and c.sk.ucopy.task == "r"
    fill(c, 0, 2, 1000)
    assert len(c.sk.ucopy.prequeue) == 2 and c.sk.rcv_nxt == c.seq(0)
    assert mib(c, "TcpExtTCPHPHitsToUser") == 0  # softirq never copies to user
    res = r.run()
    assert res is not None and res.ret == 2000 and res.data == payload(2000)
    assert res.direct == 2000
    assert mib(c, "TcpExtTCPHPHitsToUser") == 2
    assert mib(c, "TcpExtTCPHPHits") == 0
    assert not c.sk.receive_queue and c.sk.copied_seq == c.sk.rcv_nxt == c.seq(2000)


def test_legacy_direct_copy_from_backlog_replay() -> None:
    """Segments that reach the backlog while the installed reader owns the lock are
    copied to it when sk_wait_data's release_sock replays them (TCPDirectCopyFromBacklog)."""
    c = connect("legacy")
    r = Reader(c, "r", 10_000)
    while r.driver.next is not None and not isinstance(r.driver.next, SkWaitData):
        r.step()
    assert c.sk.owner == "r" and c.sk.ucopy.task == "r"
    fill(c, 0, 2, 1000)
    assert len(c.sk.backlog) == 2
    res = r.run()
    assert res is not None and res.data == payload(2000) and res.direct == 2000
    assert mib(c, "TcpExtTCPDirectCopyFromBacklog") == 2000
    assert mib(c, "TcpExtTCPHPHitsToUser") == 2


def test_modern_has_no_direct_copy() -> None:
    c = connect("modern")
    r = Reader(c, "r", 10_000)
    r.run()
    assert r.waiting and c.sk.ucopy.task is None
    fill(c, 0, 2, 1000)
    assert c.sk.rcv_nxt == c.seq(2000)  # processed in softirq
    res = r.run()
    assert res is not None and res.data == payload(2000) and res.direct == 0
    for name in ("TcpExtTCPHPHitsToUser", "TcpExtTCPDirectCopyFromBacklog",
                 "TcpExtTCPDirectCopyFromPrequeue"):
        with pytest.raises(KeyError):
            c.stack.net.inc(name)


# ---------------------------------------------------------------------------------------
# tcp_add_backlog (§1, §7)


def lock(c: Conn, task: str = "holder") -> None:
    assert c.stack.sock_op(task, LockSock(c.sock), c.now) is not None
    c.collect()


def release(c: Conn, task: str = "holder") -> None:
    c.stack.sock_op(task, ReleaseSock(c.sock), c.now)
    c.collect()


@pytest.mark.parametrize("profile", PROFILES)
def test_owned_socket_sends_segments_to_backlog(profile: str) -> None:
    c = connect(profile)
    lock(c)
    acks = ack_count(c)
    c.deliver(c.segment(0, payload(500)))
    c.deliver(c.segment(2000, payload(500, 2000)))  # not contiguous: no coalescing
    sk = c.sk
    assert len(sk.backlog) == 2
    assert sk.backlog_len == 2 * TRUESIZE_SMALL
    assert sk.rcv_nxt == c.seq(0) and not sk.receive_queue and not sk.ofo
    assert ack_count(c) == acks  # nothing processed, nothing acknowledged
    release(c)
    assert not sk.backlog and sk.backlog_len == 0
    assert sk.rcv_nxt == c.seq(500) and len(sk.ofo) == 1


@pytest.mark.parametrize(("profile", "limit"), [("legacy", 32768 + 87040 + 65536),
                                                ("modern", 2 * 32768 + 87040 // 2 + 65536)])
@pytest.mark.parametrize("preload", [0, 3])
def test_backlog_limit_drops(profile: str, limit: int, preload: int) -> None:
    """Full when backlog_len + rmem_alloc > limit (legacy rcvbuf+sndbuf+64K,
    modern 2*rcvbuf+sndbuf/2+64K); each refusal counts TCPBacklogDrop and sk_drops."""
    c = connect(profile, rcvbuf=16384)  # sk_rcvbuf 32768; tcp_sndbuf_expand: 87040
    sk = c.sk
    assert (sk.rcvbuf, sk.sndbuf) == (32768, 87040)
    assert c.stack.profile.backlog_limit(sk.rcvbuf, sk.sndbuf) == limit
    off = fill(c, 0, preload, 100)
    rmem = sk.rmem_alloc
    assert (rmem > 0) == (preload > 0)
    lock(c)
    drops = sk.sk_drops
    accepted = 0
    for i in range(100):
        before_len = sk.backlog_len
        c.deliver(c.segment(off + 1 + 200 * i, payload(100)))  # gaps: never coalesced
        if sk.backlog_len == before_len:
            assert before_len + rmem > limit
            break
        assert before_len + rmem <= limit
        accepted += 1
    assert accepted == (limit - rmem) // TRUESIZE_SMALL + 1
    assert mib(c, "TcpExtTCPBacklogDrop") == 1
    assert sk.sk_drops == drops + 1
    c.deliver(c.segment(off + 1 + 200 * 200, payload(100)))
    assert mib(c, "TcpExtTCPBacklogDrop") == 2


def test_modern_backlog_coalesces_only_identical_options() -> None:
    c = connect("modern", ts=True)
    sk = c.sk
    lock(c)
    c.deliver(c.segment(0, payload(100)))
    c.deliver(c.segment(100, payload(100, 100)))  # same TSval: coalesced
    assert len(sk.backlog) == 1 and mib(c, "TcpExtTCPBacklogCoalesce") == 1
    assert sk.backlog[0].end_seq == c.seq(200)
    # 100 bytes fit the tail's tailroom: copied there, truesize unchanged
    # (skb_try_coalesce)
    assert sk.backlog_len == TRUESIZE_SMALL and sk.backlog[0].truesize == TRUESIZE_SMALL
    c.now += 5 * MS  # a new TSval: options differ, so no coalescing
    c.deliver(c.segment(200, payload(100, 200)))
    assert len(sk.backlog) == 2 and mib(c, "TcpExtTCPBacklogCoalesce") == 1
    release(c)
    assert read_all(c).data == payload(300)


def test_modern_backlog_coalesces_even_above_the_limit() -> None:
    c = connect("modern", rcvbuf=16384)
    sk = c.sk
    lock(c)
    off = 0
    while mib(c, "TcpExtTCPBacklogDrop") == 0:
        off += 300
        c.deliver(c.segment(off, payload(100, off)))  # gaps
    # The tail's successor still merges: coalescing is tried before the limit.
    tail_end = seq_sub(sk.backlog[-1].end_seq, c.seq(0))
    c.deliver(c.segment(tail_end, payload(100, tail_end)))
    assert mib(c, "TcpExtTCPBacklogCoalesce") == 1
    assert mib(c, "TcpExtTCPBacklogDrop") == 1


def test_legacy_backlog_never_coalesces() -> None:
    c = connect("legacy")
    lock(c)
    fill(c, 0, 3, 100)
    assert len(c.sk.backlog) == 3
    with pytest.raises(KeyError):
        c.stack.net.inc("TcpExtTCPBacklogCoalesce")


@pytest.mark.parametrize("profile", PROFILES)
def test_backlog_checksum_verification(profile: str) -> None:
    """Modern verifies the checksum at enqueue; legacy finds it when the backlog is replayed."""
    c = connect(profile)
    lock(c)
    c.deliver(c.segment(0, payload(100)), csum_ok=False)
    if profile == "modern":
        assert not c.sk.backlog
        assert mib(c, "TcpInCsumErrors") == 1 and mib(c, "TcpInErrs") == 1
    else:
        assert len(c.sk.backlog) == 1
        assert mib(c, "TcpInCsumErrors") == 0
    release(c)
    assert mib(c, "TcpInCsumErrors") == 1 and mib(c, "TcpInErrs") == 1
    assert c.sk.rcv_nxt == c.seq(0) and c.sk.sk_drops == 1


def test_legacy_backlog_replay_is_the_softirq_path() -> None:
    """release_sock replays through tcp_v4_do_rcv: same queues, counters and ACKs as softirq."""
    segs = [(0, 1000), (1000, 1000), (3000, 500), (2000, 1000), (2500, 1000), (3500, 200)]

    def run(owned: bool) -> tuple[dict[str, int], list[tuple[int, int, tuple]], bytes]:
        c = connect("legacy")
        if owned:
            lock(c)
        for off, n in segs:
            c.deliver(c.segment(off, payload(n, off)))
        if owned:
            release(c)
        counters = {k: v for k, v in c.stack.net.mib.nonzero().items()}
        acks = [(a.ack, a.window, a.options.sack_blocks) for a in c.acks()]
        return counters, acks, read_all(c).data

    direct, replayed = run(False), run(True)
    assert replayed == direct
    assert direct[2] == payload(3700)


# ---------------------------------------------------------------------------------------
# Legacy prequeue (§1, §5, §6)


def sleeping_reader(c: Conn, length: int = 100_000, task: str = "r") -> Reader:
    r = Reader(c, task, length)
    r.run()
    assert r.waiting and c.sk.owner is None
    return r


def test_prequeue_needs_an_installed_reader() -> None:
    c = connect("legacy")
    fill(c, 0, 1, 500)  # no reader: processed in softirq at once
    assert c.sk.rcv_nxt == c.seq(500) and not c.sk.ucopy.prequeue
    read_all(c)
    sleeping_reader(c)
    assert c.sk.ucopy.task == "r"
    fill(c, 500, 1, 500)
    assert len(c.sk.ucopy.prequeue) == 1 and c.sk.rcv_nxt == c.seq(500)


def test_prequeue_off_with_tcp_low_latency() -> None:
    c = connect("legacy", tcp_low_latency=1)
    r = sleeping_reader(c)
    assert c.sk.ucopy.task is None  # the reader never installs itself
    fill(c, 0, 1, 500)
    assert not c.sk.ucopy.prequeue and c.sk.rcv_nxt == c.seq(500)
    res = r.run()
    assert res is not None and res.data == payload(500) and res.direct == 0
    assert mib(c, "TcpExtTCPPrequeued") == 0


def test_pure_ack_bypasses_an_empty_prequeue() -> None:
    c = connect("legacy")
    sleeping_reader(c)
    c.deliver(c.segment(0, b""))
    assert not c.sk.ucopy.prequeue
    assert "r" not in c.done  # a pure ACK wakes nobody
    fill(c, 0, 1, 500)
    c.deliver(c.segment(500, b""))  # behind queued data it keeps its place
    assert len(c.sk.ucopy.prequeue) == 2


def test_prequeue_first_packet_wakes_reader_and_arms_150ms_delack() -> None:
    c = connect("legacy")
    sleeping_reader(c)
    c.now = 7 * MS
    fill(c, 0, 1, 500)
    assert c.done["r"].relock is True  # woken; it takes the lock when it runs
    ack = c.sk.icsk_ack
    assert ack.pending & AckPending.TIMER
    # 3 * tcp_rto_min / 4 in jiffies (HZ=250): 3 * 50 / 4 = 37 of them, 148 ms, from
    # the start of the jiffy at 7 ms (4 ms); the wheel runs it a tick after that.
    assert ack.timeout == 4 * MS + 148 * MS
    assert ack.fire_at == 4 * MS + 152 * MS
    c.done.clear()
    fill(c, 500, 1, 500)
    assert c.done == {}  # only the first queued packet wakes
    assert ack.timeout == 4 * MS + 148 * MS


def test_prequeue_first_packet_keeps_a_scheduled_ack() -> None:
    """With a delayed ACK already scheduled, the first prequeued packet leaves its timer."""
    c = connect("legacy", rcvbuf=32768)
    off = steady(c)
    t0 = c.now
    off = fill(c, off, 1, MSS)  # delayed ACK due 40 ms after t0's jiffy began
    jiffies = t0 - t0 % JIFFY
    assert c.sk.icsk_ack.timeout == jiffies + 40 * MS
    r = Reader(c, "r", 100_000, RecvFlags(waitall=True))
    r.run()  # reads it, installs itself and sleeps; the ACK is still pending
    assert r.waiting and c.sk.icsk_ack.pending & AckPending.SCHED
    c.now += 5 * MS
    fill(c, off, 1, MSS)
    assert len(c.sk.ucopy.prequeue) == 1
    assert c.sk.icsk_ack.timeout == jiffies + 40 * MS


def test_prequeue_overflow_at_32_segments() -> None:
    c = connect("legacy")
    sleeping_reader(c)
    off = fill(c, 0, 31, 100)
    assert len(c.sk.ucopy.prequeue) == 31 and c.sk.rcv_nxt == c.seq(0)
    assert mib(c, "TcpExtTCPPrequeueDropped") == 0
    off = fill(c, off, 1, 100)
    # The whole queue is processed in softirq right away; nothing is really dropped.
    assert mib(c, "TcpExtTCPPrequeueDropped") == 32
    assert not c.sk.ucopy.prequeue and c.sk.ucopy.memory == 0
    assert c.sk.rcv_nxt == c.seq(3200)
    assert c.sk.sk_drops == 0


def test_prequeue_overflow_on_memory() -> None:
    """ucopy.memory + rmem_alloc > rcvbuf: 7 * 2304 fits 16384, the 8th does not."""
    c = connect("legacy", rcvbuf=8192)
    sleeping_reader(c)
    fill(c, 0, 7, 100)
    assert len(c.sk.ucopy.prequeue) == 7
    assert c.sk.ucopy.memory == 7 * TRUESIZE_SMALL
    fill(c, 700, 1, 100)
    assert mib(c, "TcpExtTCPPrequeueDropped") == 8
    assert not c.sk.ucopy.prequeue and c.sk.rcv_nxt == c.seq(800)


def test_delack_timer_drains_the_prequeue() -> None:
    """The reader did not run within 3/4 of rto_min (37 jiffies, then the tick the wheel
    adds): TCPSchedulerFailed, replay in softirq."""
    c = connect("legacy")
    r = sleeping_reader(c)
    t = c.now
    fill(c, 0, 3, 1000)
    fires = t - t % JIFFY + 38 * JIFFY
    c.advance(fires - 1 - c.now)
    assert len(c.sk.ucopy.prequeue) == 3
    c.advance(1)
    assert mib(c, "TcpExtTCPSchedulerFailed") == 1
    assert not c.sk.ucopy.prequeue and c.sk.rcv_nxt == c.seq(3000)
    assert last_ack(c).ack == c.seq(3000)
    res = r.run()
    assert res is not None and res.data == payload(3000)
    assert res.direct == 0  # replayed in softirq: queued, not copied to the user
    assert mib(c, "TcpExtTCPPrequeued") == 0


def test_reader_drains_the_prequeue() -> None:
    c = connect("legacy")
    r = sleeping_reader(c)
    fill(c, 0, 3, 1000)
    res = r.run()
    assert res is not None and res.data == payload(3000) and res.direct == 3000
    assert mib(c, "TcpExtTCPPrequeued") == 1  # once per tcp_prequeue_process call
    assert mib(c, "TcpExtTCPDirectCopyFromPrequeue") == 3000
    assert mib(c, "TcpExtTCPSchedulerFailed") == 0
    assert c.sk.ucopy.task is None and not c.sk.ucopy.prequeue


def test_modern_never_prequeues() -> None:
    c = connect("modern", tcp_low_latency=0)
    r = sleeping_reader(c)
    assert c.sk.ucopy.task is None
    fill(c, 0, 2, 1000)
    assert not c.sk.ucopy.prequeue and c.sk.rcv_nxt == c.seq(2000)
    res = r.run()
    assert res is not None and res.data == payload(2000)
    for name in ("TcpExtTCPPrequeued", "TcpExtTCPPrequeueDropped", "TcpExtTCPSchedulerFailed"):
        with pytest.raises(KeyError):
            c.stack.net.inc(name)


# ---------------------------------------------------------------------------------------
# tcp_data_queue: cases A-E (§3), the ofo queue and DSACK (§4)


def rel(c: Conn, seq: int) -> int:
    return seq_sub(seq, c.seq(0))


def blocks(c: Conn, ack: Segment | None = None) -> list[tuple[int, int]]:
    """SACK blocks of an ACK (default: the last one) as stream offsets."""
    a = last_ack(c) if ack is None else ack
    return [(rel(c, s), rel(c, e)) for s, e in a.options.sack_blocks]


def close_window(c: Conn) -> None:
    """As if the last ACK advertised a zero window (tcp_select_window also clears
    pred_flags then)."""
    c.sk.rcv_wup = c.sk.rcv_nxt
    c.sk.rcv_wnd = 0
    c.sk.pred_flags = 0


@pytest.mark.parametrize("profile", PROFILES)
def test_case_a1_zero_window_drops_in_order_data(profile: str) -> None:
    c = connect(profile)
    off = fill(c, 0, 1, 500)
    read_all(c)  # empty receive queue: modern tcp_sequence lets it reach tcp_data_queue
    close_window(c)
    acks = ack_count(c)
    sid = c.deliver(c.segment(off, payload(100, off)))
    assert c.stack.net.fates[sid] == "drop:TCP_ZEROWINDOW"
    assert c.sk.rcv_nxt == c.seq(off)
    assert ack_count(c) == acks + 1  # out_of_window: quickack, ACK at once
    assert last_ack(c).ack == c.seq(off)
    if profile == "modern":
        assert mib(c, "TcpExtTCPZeroWindowDrop") == 1
    else:
        with pytest.raises(KeyError):
            c.stack.net.inc("TcpExtTCPZeroWindowDrop")


@pytest.mark.parametrize("profile", PROFILES)
def test_case_a1_bare_fin_into_zero_window(profile: str) -> None:
    """Modern accepts a FIN without payload into a zero window; legacy drops it."""
    c = connect(profile)
    off = fill(c, 0, 1, 500)
    read_all(c)
    close_window(c)
    c.deliver(c.segment(off, b"", fin=True))
    if profile == "modern":
        assert c.sk.state == TcpState.CLOSE_WAIT and c.sk.rcv_nxt == c.seq(off + 1)
        assert mib(c, "TcpExtTCPZeroWindowDrop") == 0
    else:
        assert c.sk.state == TcpState.ESTABLISHED and c.sk.rcv_nxt == c.seq(off)


def test_modern_zero_window_with_queued_data_is_beyond_window() -> None:
    """With data queued, modern tcp_sequence rejects it first (BeyondWindow)."""
    c = connect("modern")
    off = fill(c, 0, 1, 500)
    close_window(c)
    sid = c.deliver(c.segment(off, payload(100, off)))
    assert c.stack.net.fates[sid] == "drop:TCP_INVALID_END_SEQUENCE"
    assert mib(c, "TcpExtBeyondWindow") == 1 and mib(c, "TcpExtTCPZeroWindowDrop") == 0


@pytest.mark.parametrize("profile", PROFILES)
def test_case_b_full_duplicate(profile: str) -> None:
    c = connect(profile)
    off = fill(c, 0, 2, 1000)
    c.deliver(c.segment(4000, payload(500, 4000)))  # an ofo range for a SACK block
    c.sk.icsk_ack.quick = 0  # out of quickack mode, to see the duplicate re-enter it
    acks = ack_count(c)
    sid = c.deliver(c.segment(1000, payload(1000, 1000)))  # bytes 1000..2000 again
    assert c.stack.net.fates[sid] == "drop:TCP_OLD_DATA"
    assert mib(c, "TcpExtDelayedACKLost") == 1
    assert mib(c, "TcpExtTCPDSACKOldSent") == 1
    assert ack_count(c) == acks + 1
    assert rel(c, last_ack(c).ack) == off
    assert blocks(c) == [(1000, 2000), (4000, 4500)]  # DSACK first, then the SACK
    assert c.sk.icsk_ack.quick > 0
    # A DSACK is reported once.
    c.deliver(c.segment(4500, payload(100, 4500)))
    assert (1000, 2000) not in blocks(c)


@pytest.mark.parametrize("profile", PROFILES)
def test_case_c_beyond_the_right_edge(profile: str) -> None:
    c = connect(profile)
    wnd = tcp_receive_window(c.sk)
    acks = ack_count(c)
    sid = c.deliver(c.segment(wnd, payload(100, wnd)))  # seq == rcv_nxt + rwnd
    assert c.stack.net.fates[sid] == "drop:TCP_OVERWINDOW"
    assert not c.sk.ofo and c.sk.rcv_nxt == c.seq(0)
    assert ack_count(c) == acks + 1 and last_ack(c).ack == c.seq(0)
    sid = c.deliver(c.segment(wnd - 100, payload(100, wnd - 100)))  # the last bytes fit
    assert len(c.sk.ofo) == 1


@pytest.mark.parametrize("profile", PROFILES)
def test_case_d_partial_overlap(profile: str) -> None:
    c = connect(profile)
    off = fill(c, 0, 4, 1000)
    c.sk.icsk_ack.quick = 0
    c.deliver(c.segment(3500, payload(2000, 3500)))  # 3500..5500 while 4000 is expected
    sk = c.sk
    assert sk.rcv_nxt == c.seq(5500)
    assert mib(c, "TcpExtTCPDSACKOldSent") == 1
    assert sk.duplicate_sack == (c.seq(3500), c.seq(off))
    # Legacy enters quickack mode for a partial overlap; modern does not.
    assert (sk.icsk_ack.quick > 0) == (profile == "legacy")
    c.advance(200 * MS)
    a = c.acks()[-1]
    assert rel(c, a.ack) == 5500
    assert (3500, 4000) in blocks(c, a)
    res = read_all(c)
    assert res.data == payload(5500)  # the overlap is read once


@pytest.mark.parametrize("profile", PROFILES)
def test_case_d_into_zero_window(profile: str) -> None:
    c = connect(profile)
    off = fill(c, 0, 2, 1000)
    read_all(c)
    close_window(c)
    sid = c.deliver(c.segment(off - 500, payload(1000, off - 500)))
    assert c.stack.net.fates[sid] == "drop:TCP_ZEROWINDOW"
    assert mib(c, "TcpExtTCPDSACKOldSent") == 1
    if profile == "modern":
        assert mib(c, "TcpExtTCPZeroWindowDrop") == 1


def test_case_e_legacy_acks_every_ofo_segment() -> None:
    c = connect("legacy")
    fill(c, 0, 1, 1000)
    acks = ack_count(c)
    for k in range(6):
        c.deliver(c.segment(2000 + 1000 * k, payload(1000, 2000 + 1000 * k)))
        assert ack_count(c) == acks + k + 1  # immediate dupack each time
        assert rel(c, last_ack(c).ack) == 1000
        assert blocks(c) == [(2000, 3000 + 1000 * k)]
    assert mib(c, "TcpExtTCPOFOQueue") == 6
    assert c.sk.icsk_ack.quick > 0 and c.sk.pred_flags == 0


def test_case_e_modern_sack_compression() -> None:
    """Three immediate dupacks per rcv_nxt, then compressed; the timer sends one ACK."""
    c = connect("modern")
    fill(c, 0, 1, 1000)
    c.sk.icsk_ack.quick = 0  # quickack mode would ACK every segment anyway
    acks = ack_count(c)
    for k in range(6):
        c.deliver(c.segment(2000 + 1000 * k, payload(1000, 2000 + 1000 * k)))
    assert mib(c, "TcpExtTCPOFOQueue") == 6
    assert ack_count(c) == acks + 3
    assert c.sk.compressed_ack == 3
    assert mib(c, "TcpExtTCPAckCompressed") == 0
    c.advance(1 * MS)  # tcp_comp_sack_delay_ns caps the hrtimer at 1 ms
    assert ack_count(c) == acks + 4
    assert blocks(c) == [(2000, 8000)]
    assert mib(c, "TcpExtTCPAckCompressed") == 2  # 3 compressed, less the one sent
    # rcv_nxt moves: the dupack counter starts again.
    fill(c, 1000, 1, 1000)
    acks = ack_count(c)
    assert not c.sk.ofo
    c.deliver(c.segment(9000, payload(500, 9000)))
    assert ack_count(c) == acks + 1


def test_case_e_non_sack_modern_peer_gets_every_dupack() -> None:
    c = connect("modern", sack=False)
    fill(c, 0, 1, 1000)
    acks = ack_count(c)
    for k in range(5):
        c.deliver(c.segment(2000 + 1000 * k, payload(1000, 2000 + 1000 * k)))
    assert ack_count(c) == acks + 5
    assert all(not a.options.sack_blocks for a in c.acks())


@pytest.mark.parametrize("profile", PROFILES)
def test_ofo_drain_skips_a_stale_lowest_range(profile: str) -> None:
    """The lowest queued range is wholly covered by new in-order data: it is dropped
    (DSACK), and the next range, which overlaps rcv_nxt, is the one that fits."""
    c = connect(profile)
    fill(c, 0, 1, 1000)
    c.deliver(c.segment(2000, payload(1000, 2000)))
    c.deliver(c.segment(2500, payload(1500, 2500)))  # overlaps the first: DSACK 2500..3000
    sk = c.sk
    assert [(rel(c, s.seq), rel(c, s.end_seq)) for s in sk.ofo] == [(2000, 3000), (2500, 4000)]
    assert mib(c, "TcpExtTCPDSACKOfoSent") == 1
    c.deliver(c.segment(1000, payload(2500, 1000)))  # 1000..3500
    assert not sk.ofo and sk.rcv_nxt == c.seq(4000)
    assert blocks(c)[0] == (2000, 3500)  # both overlaps, extended into one DSACK
    assert mib(c, "TcpExtTCPDSACKOldSent") == 1
    assert read_all(c).data == payload(4000)


@pytest.mark.parametrize("profile", PROFILES)
def test_ofo_fully_covered_segment_is_merged_away(profile: str) -> None:
    c = connect(profile)
    c.deliver(c.segment(3000, payload(2000, 3000)))
    sid = c.deliver(c.segment(3500, payload(500, 3500)))
    assert c.stack.net.fates[sid] == "drop:TCP_OFOMERGE"
    assert mib(c, "TcpExtTCPOFOMerge") == 1
    assert mib(c, "TcpExtTCPDSACKOfoSent") == 1
    assert len(c.sk.ofo) == 1
    assert c.sk.duplicate_sack == (c.seq(3500), c.seq(4000))
    assert c.sk.selective_acks[0] == (c.seq(3000), c.seq(5000))


@pytest.mark.parametrize("profile", PROFILES)
def test_ofo_new_skb_replaces_one_it_covers_from_the_same_seq(profile: str) -> None:
    c = connect(profile)
    old = c.deliver(c.segment(3000, payload(1000, 3000)))
    c.deliver(c.segment(3000, payload(2000, 3000)))
    sk = c.sk
    assert [(rel(c, s.seq), rel(c, s.end_seq)) for s in sk.ofo] == [(3000, 5000)]
    assert c.stack.net.fates[old] == "drop:TCP_OFOMERGE"
    assert mib(c, "TcpExtTCPOFOMerge") == 1
    assert sk.duplicate_sack == (c.seq(3000), c.seq(4000))
    assert sk.rmem_alloc == sum(s.truesize for s in sk.ofo)


@pytest.mark.parametrize("profile", PROFILES)
def test_ofo_new_skb_swallows_its_successors(profile: str) -> None:
    c = connect(profile)
    c.deliver(c.segment(3000, payload(500, 3000)))
    c.deliver(c.segment(4000, payload(500, 4000)))
    c.deliver(c.segment(5000, payload(1000, 5000)))
    c.deliver(c.segment(2500, payload(2500, 2500)))  # 2500..5000 covers the first two
    sk = c.sk
    assert [(rel(c, s.seq), rel(c, s.end_seq)) for s in sk.ofo] == [(2500, 5000), (5000, 6000)]
    assert mib(c, "TcpExtTCPOFOMerge") == 2
    # tcp_dsack_extend only widens a touching range: 4000..4500 is not reported.
    assert sk.duplicate_sack == (c.seq(3000), c.seq(3500))
    fill(c, 0, 1, 2500)
    assert read_all(c).data == payload(6000)


# ---------------------------------------------------------------------------------------
# SACK blocks (§4)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(("ts", "room"), [(False, 4), (True, 3)])
def test_sack_blocks_most_recent_first_and_bounded(profile: str, ts: bool, room: int) -> None:
    c = connect(profile, ts=ts)
    fill(c, 0, 1, 1000)
    starts = [2000, 4000, 6000, 8000, 10000]
    for s in starts:
        c.deliver(c.segment(s, payload(500, s)))
        c.advance(1 * MS)  # flush any compressed SACK
    sk = c.sk
    assert sk.rx_opt.num_sacks == 4  # TCP_NUM_SACKS: the oldest block fell off
    assert [rel(c, s) for s, _ in sk.selective_acks] == [10000, 8000, 6000, 4000]
    assert blocks(c) == [(s, s + 500) for s in (10000, 8000, 6000, 4000)][:room]


@pytest.mark.parametrize("profile", PROFILES)
def test_sack_blocks_merge_when_touching(profile: str) -> None:
    c = connect(profile)
    fill(c, 0, 1, 1000)
    c.deliver(c.segment(2000, payload(500, 2000)))
    c.deliver(c.segment(3000, payload(500, 3000)))
    c.deliver(c.segment(5000, payload(500, 5000)))
    assert c.sk.rx_opt.num_sacks == 3
    c.deliver(c.segment(2500, payload(500, 2500)))  # bridges 2000..2500 and 3000..3500
    sk = c.sk
    assert [(rel(c, s), rel(c, e)) for s, e in sk.selective_acks] == [(2000, 3500), (5000, 5500)]
    c.advance(1 * MS)
    assert blocks(c) == [(2000, 3500), (5000, 5500)]


@pytest.mark.parametrize("profile", PROFILES)
def test_sack_blocks_removed_as_rcv_nxt_advances(profile: str) -> None:
    c = connect(profile)
    fill(c, 0, 1, 1000)
    c.deliver(c.segment(2000, payload(500, 2000)))
    c.deliver(c.segment(4000, payload(500, 4000)))
    fill(c, 1000, 1, 1000)  # fills up to 2000: the first range drains
    sk = c.sk
    assert sk.rcv_nxt == c.seq(2500)
    assert [(rel(c, s), rel(c, e)) for s, e in sk.selective_acks] == [(4000, 4500)]
    fill(c, 2500, 1, 1500)
    assert sk.rx_opt.num_sacks == 0 and not sk.selective_acks
    c.advance(200 * MS)
    assert blocks(c) == []


# ---------------------------------------------------------------------------------------
# Receive memory: zero window, prune, collapse (§3, §5)


def right_edge(c: Conn) -> int:
    """Stream offset up to which the last advertised window lets the peer send."""
    a = c.sent[-1]
    acks = c.acks()
    if acks:
        a = acks[-1]
        return rel(c, a.ack) + (a.window << c.sk.rx_opt.rcv_wscale)
    return a.window  # the SYN-ACK: unscaled, acks offset 0


def send_within_window(c: Conn, off: int, size: int, limit: int = 2000) -> int:
    """A well-behaved peer: send while the advertised window allows, waiting (and
    letting delayed ACKs fire) when it does not; stop when the window stays shut."""
    for _ in range(limit):
        n = min(size, right_edge(c) - off)
        if n <= 0:
            c.advance(500 * MS)
            if right_edge(c) - off <= 0:
                return off
            continue
        c.deliver(c.segment(off, payload(n, off)))
        off = rel(c, c.sk.rcv_nxt)
    raise AssertionError("the window never closed")


@pytest.mark.parametrize("profile", PROFILES)
def test_small_rcvbuf_without_reader_closes_the_window(profile: str) -> None:
    c = connect(profile, rcvbuf=4096)  # sk_rcvbuf 8192
    off = send_within_window(c, 0, MSS)
    sk = c.sk
    assert last_ack(c).window == 0 and rel(c, last_ack(c).ack) == off
    assert mib(c, "TcpExtTCPToZeroWindowAdv") == 1
    assert sk.pred_flags == 0
    assert sk.rmem_alloc <= sk.rcvbuf
    assert mib(c, "TcpExtTCPFromZeroWindowAdv") == 0
    # Reading empties the queue; tcp_cleanup_rbuf sends the window update at once.
    acks = ack_count(c)
    assert read_all(c).data == payload(off)
    assert ack_count(c) == acks + 1
    assert last_ack(c).window > 0
    assert mib(c, "TcpExtTCPFromZeroWindowAdv") == 1
    assert sk.pred_flags == 0  # re-armed only by the next slow-path segment
    fill(c, off, 1, MSS)
    assert sk.pred_flags != 0
    off2 = send_within_window(c, off + MSS, MSS)
    assert off2 > off + MSS


@pytest.mark.parametrize("profile", PROFILES)
def test_window_that_cannot_shrink_counts_want_zero(profile: str) -> None:
    """__tcp_select_window wants 0 while part of the old window is unused: the offer
    is kept (never shrink) and TCPWantZeroWindowAdv counts it."""
    c = connect(profile, rcvbuf=4096)
    sk = c.sk
    # Tiny segments in buffers with no tailroom (a driver that leaves the payload in
    # page fragments: skb_try_coalesce cannot copy, each costs a whole buffer) fill
    # memory far faster than they use the window. A collapse makes room (its kmalloc'd
    # skbs keep their slack as tailroom), so stop while memory is over sk_rcvbuf again.
    for off in range(0, 1200, 100):
        c.stack.tcp_v4_rcv(c.segment(off, payload(100, off)), c.now, truesize=TRUESIZE_SMALL)
        c.collect()
    c.advance(500 * MS)
    assert mib(c, "TcpExtTCPWantZeroWindowAdv") >= 1
    a = last_ack(c)
    # The advertised right edge never moved left.
    assert rel(c, a.ack) + (a.window << sk.rx_opt.rcv_wscale) >= 2920


@pytest.mark.parametrize("profile", PROFILES)
def test_prune_collapses_bloated_receive_queue(profile: str) -> None:
    """100-byte segments cost 2304 bytes each: memory runs out long before the window;
    tcp_prune_queue collapses the queue into dense skbs and nothing is lost."""
    c = connect(profile, rcvbuf=4096)
    sk = c.sk
    off = 0
    for _ in range(200):
        n = min(100, right_edge(c) - off)
        if n <= 0:
            break
        pruned = mib(c, "TcpExtPruneCalled")
        rmem, hits, fwd = sk.rmem_alloc, mib(c, "TcpExtTCPHPHits"), sk.forward_alloc
        c.deliver(c.segment(off, payload(n, off)))
        off = rel(c, sk.rcv_nxt)
        if mib(c, "TcpExtTCPHPHits") > hits:
            # The fast path only checks the prepaid quota, not sk_rcvbuf.
            assert sk.rmem_alloc - rmem <= fwd
        elif mib(c, "TcpExtPruneCalled") == pruned:
            # Admitted without pruning only while memory was under the limit.
            if profile == "legacy":
                assert rmem <= sk.rcvbuf
            else:
                assert rmem + n <= sk.rcvbuf
        else:
            assert sk.rmem_alloc <= sk.rcvbuf + TRUESIZE_SMALL
    assert mib(c, "TcpExtPruneCalled") >= 1
    assert mib(c, "TcpExtTCPRcvCollapsed") >= 1
    assert mib(c, "TcpExtRcvPruned") == 0
    assert sk.sk_drops == 0
    assert read_all(c).data == payload(off)
    assert sk.rmem_alloc == 0


@pytest.mark.parametrize("profile", PROFILES)
def test_prune_ofo_queue_from_the_top(profile: str) -> None:
    """Out-of-order tiny segments arriving highest first: pruning frees the highest
    ranges (OfoPruned), keeps the newest, lowest one, and forgets the SACK state."""
    c = connect(profile, rcvbuf=4096)
    sk = c.sk
    ids = {}
    for off in range(2850, 50, -100):
        ids[off] = c.deliver(c.segment(off, payload(50, off)))
    assert mib(c, "TcpExtOfoPruned") >= 1
    assert mib(c, "TcpExtPruneCalled") >= 1
    kept = [rel(c, s.seq) for s in sk.ofo]
    assert 150 in kept  # the last arrival survived
    fates = c.stack.net.fates
    assert fates[ids[2850]] == "drop:TCP_OFO_QUEUE_PRUNE"
    assert sk.rmem_alloc <= sk.rcvbuf + TRUESIZE_SMALL
    # The SACK blocks describe only what is still queued.
    for s, e in sk.selective_acks[: sk.rx_opt.num_sacks]:
        assert any(rel(c, s) <= rel(c, q.seq) and rel(c, q.end_seq) <= rel(c, e)
                   for q in sk.ofo)


@pytest.mark.parametrize("profile", PROFILES)
def test_in_order_data_that_cannot_fit(profile: str) -> None:
    """The application shrinks SO_RCVBUF under queued data: pruning cannot make room
    (RcvPruned). Legacy drops the segment; modern sets ICSK_ACK_NOMEM, drops it
    (TCPRcvQDrop) and advertises a zero window at once."""
    c = connect(profile)
    sk = c.sk
    off = fill(c, 0, 10, MSS)
    c.stack.sock_op("app", SockSetsockopt(c.sock, "SO_RCVBUF", 4096), c.now)
    assert sk.rcvbuf == 8192 and sk.rmem_alloc > sk.rcvbuf
    acks = ack_count(c)
    sid = c.deliver(c.segment(off, payload(MSS, off), window=1001))  # slow path
    assert mib(c, "TcpExtPruneCalled") == 1
    assert mib(c, "TcpExtRcvPruned") == 1
    # One coalesced skb, not "bloated" (win_from_space(truesize) <= len): no collapse.
    assert mib(c, "TcpExtTCPRcvCollapsed") == 0
    assert c.stack.net.fates[sid] == "drop:PROTO_MEM"
    assert sk.rcv_nxt == c.seq(off)
    assert sk.pred_flags == 0
    if profile == "modern":
        assert mib(c, "TcpExtTCPRcvQDrop") == 1
        assert ack_count(c) == acks + 1
        assert last_ack(c).window == 0
        # tcp_select_window's ICSK_ACK_NOMEM return counts no TCPToZeroWindowAdv
        assert mib(c, "TcpExtTCPToZeroWindowAdv") == 0
    else:
        with pytest.raises(KeyError):
            c.stack.net.inc("TcpExtTCPRcvQDrop")
    # Every byte that was accepted is still readable, then the window reopens.
    assert read_all(c).data == payload(off)
    assert last_ack(c).window > 0
    if profile == "modern":
        assert mib(c, "TcpExtTCPFromZeroWindowAdv") == 1


@pytest.mark.parametrize("profile", PROFILES)
def test_empty_queue_always_takes_the_segment(profile: str) -> None:
    """An in-order skb into an empty receive queue is always taken: tcp_can_ingest
    tests rmem_alloc (0) against sk_rcvbuf without the skb's length (4.13, and 6.18.y
    since "tcp: give up on stronger sk_rcvbuf checks"), so nothing is pruned and no
    NOMEM zero-window ACK goes out; the (delayed) ACK offers the window that is left."""
    c = connect(profile, rcvbuf=1)  # SOCK_MIN_RCVBUF, 2304 bytes
    sk = c.sk
    # One large (GRO-sized) segment, more than the whole buffer.
    c.deliver(c.segment(0, payload(5000)))
    assert sk.rcv_nxt == c.seq(5000) and sk.rmem_alloc == 3 * 2048 + 256
    assert sk.sk_drops == 0
    assert mib(c, "TcpExtPruneCalled") == 0
    if profile == "modern":
        assert mib(c, "TcpExtTCPRcvQDrop") == 0
    c.advance(200 * MS)
    assert last_ack(c).window == 0  # the buffer is overfull
    assert read_all(c).data == payload(5000)


# ---------------------------------------------------------------------------------------
# ACK timing (§5, §7)


def steady(c: Conn, off: int = 0) -> int:
    """Bulk MSS segments, read at once, until quickack credits are gone and nothing is
    pending: from here ACKs follow the delayed-ACK rules alone."""
    sk = c.sk
    for _ in range(100):
        off = fill(c, off, 1, MSS)
        read_all(c)
        c.now += 1 * MS
        if sk.icsk_ack.quick == 0 and not sk.icsk_ack.pending and sk.rcv_nxt == sk.rcv_wup:
            return off
    raise AssertionError("never left quickack mode")


@pytest.mark.parametrize(("profile", "credits"), [("legacy", 29200 // 2920),
                                                  ("modern", 16)])
def test_quickack_credits_at_connection_start(profile: str, credits: int) -> None:
    """First data: quick = rcv_wnd / (2 * rcv_mss), at most 16; each ACK spends one."""
    c = connect(profile)
    sk = c.sk
    off = fill(c, 0, 1, MSS)
    assert ack_count(c) == 1  # the first segment is acknowledged at once
    # legacy 29200 / 2920 = 10, and tcp_grow_window (rcv_ssthresh below window_clamp)
    # sets quick |= 1: 11; modern 64240 / 2920 = 22, capped at 16, and the first full
    # segment's scaling_ratio (1460/2304) raises window_clamp above rcv_ssthresh
    # (tcp_measure_rcv_mss -> tcp_set_window_clamp), so tcp_grow_window sets quick |= 1
    # as well: 17. One is spent.
    assert sk.icsk_ack.quick == (credits | 1) - 1
    assert sk.icsk_ack.ato == 40 * MS
    if profile == "modern":
        k = 1
        while sk.icsk_ack.quick:
            off = fill(c, off, 1, MSS)
            read_all(c)
            k += 1
            assert ack_count(c) == k  # every one acknowledged at once
        assert k >= credits
        fill(c, off, 1, MSS)
        assert ack_count(c) == k  # the next waits for the delayed ACK


@pytest.mark.parametrize("profile", PROFILES)
def test_delayed_ack_fires_after_ato_40ms(profile: str) -> None:
    c = connect(profile, rcvbuf=32768)
    off = steady(c)
    acks = ack_count(c)
    t0 = c.now
    off = fill(c, off, 1, MSS)
    assert ack_count(c) == acks
    # jiffies + ato (10 jiffies at HZ=250); the wheel's level-0 bucket is the next one
    jiffies = t0 - t0 % JIFFY
    assert c.sk.icsk_ack.timeout == jiffies + 40 * MS
    assert c.sk.icsk_ack.fire_at == jiffies + 44 * MS
    c.advance(jiffies + 44 * MS - 1 - c.now)
    assert ack_count(c) == acks and mib(c, "TcpExtDelayedACKs") == 0
    c.now += 1
    assert c.stack.run_timers(c.now) == [c.sk]  # the sockets whose timers ran
    c.collect()
    assert ack_count(c) == acks + 1
    assert last_ack(c).ack == c.seq(off)
    assert mib(c, "TcpExtDelayedACKs") == 1
    # The timer fired outside pingpong mode: ato doubles (bounded by the RTO).
    assert c.sk.icsk_ack.ato == 80 * MS


@pytest.mark.parametrize("profile", PROFILES)
def test_ack_every_second_full_segment(profile: str) -> None:
    """rcv_nxt - rcv_wup > rcv_mss and the right edge would not move back: ACK now."""
    c = connect(profile)
    off = steady(c)
    acks = ack_count(c)
    off = fill(c, off, 1, MSS)
    read_all(c)  # a reader that keeps up
    assert ack_count(c) == acks  # rcv_nxt - rcv_wup == rcv_mss: not more than one frame
    off = fill(c, off, 1, MSS)
    assert ack_count(c) == acks + 1  # 2 * 1460 > rcv_mss
    assert last_ack(c).ack == c.seq(off)
    # Unread data lowers the free space below rcv_ssthresh, so the window would move
    # back and the ACK waits for the timer (legacy: rcv_ssthresh = window_clamp; modern:
    # rcv_ssthresh just under the window_clamp scaling_ratio set, capped by tcp_space).
    acks = ack_count(c)
    off = fill(c, off, 4, MSS)
    assert ack_count(c) - acks == 0


def _skb(length: int, truesize: int) -> Skb:
    return Skb(seq=0, end_seq=length, flags=TcpFlags.ACK, ack_seq=0, window=0,
               options=TcpOptions(), data=bytes(length), truesize=truesize)


@pytest.mark.parametrize("profile", PROFILES)
def test_window_clamp_follows_scaling_ratio(profile: str) -> None:
    """v6.10+: a changed scaling_ratio re-derives window_clamp = tcp_win_from_space(sk_rcvbuf),
    pulls rcv_ssthresh under a shrinking clamp and caps rcvq_space.space at the clamp."""
    c = connect(profile)
    sk = c.sk
    if profile == "modern":  # off by default (see actors/profiles.py): switch it on here
        c.stack.net.profile = replace(c.stack.net.profile, window_clamp_follows_ratio=True)
    clamp0 = sk.window_clamp
    fill(c, 0, 1, MSS)
    if profile == "legacy":
        assert sk.window_clamp == clamp0  # adv_win_scale: nothing is learnt
    else:
        assert sk.scaling_ratio == (MSS << 8) // 2304 == 162
        assert sk.window_clamp == (sk.rcvbuf * 162) >> 8 == 82944
    clamp1, ssthresh1, space1 = sk.window_clamp, sk.rcv_ssthresh, sk.rcvq_space
    # A longer skb with a poor payload/truesize ratio: 2000 * 256 / 40000 = 12.
    tcp_measure_rcv_mss(sk, _skb(2000, 40000))
    if profile == "legacy":
        assert (sk.window_clamp, sk.rcv_ssthresh, sk.rcvq_space) == (clamp1, ssthresh1, space1)
        return
    assert sk.scaling_ratio == 12
    assert sk.window_clamp == (sk.rcvbuf * 12) >> 8 == 6144
    assert sk.rcv_ssthresh == 6144 < ssthresh1
    assert sk.rcvq_space == 6144 < space1
    # Same ratio from another length change: the clamp is left alone.
    sk.window_clamp = 7000
    tcp_measure_rcv_mss(sk, _skb(2500, 50000))
    assert sk.scaling_ratio == 12 and sk.window_clamp == 7000


def test_tcp_set_window_clamp_rules() -> None:
    sk = connect("modern").sk
    sk.window_clamp, sk.rcv_ssthresh, sk.rcv_wnd = 80000, 70000, 60000
    tcp_set_window_clamp(sk, 50000)  # shrink: rcv_ssthresh follows it down
    assert (sk.window_clamp, sk.rcv_ssthresh) == (50000, 50000)
    sk.rcv_ssthresh = 30000
    tcp_set_window_clamp(sk, 90000)  # grow: rcv_ssthresh may rise to rcv_wnd
    assert (sk.window_clamp, sk.rcv_ssthresh) == (90000, 60000)
    sk.rcv_ssthresh = 65000
    tcp_set_window_clamp(sk, 95000)  # ...but is never lowered by a growing clamp
    assert sk.rcv_ssthresh == 65000
    tcp_set_window_clamp(sk, 100)  # floor: SOCK_MIN_RCVBUF / 2
    assert (sk.window_clamp, sk.rcv_ssthresh) == (1152, 1152)


@settings(max_examples=200, deadline=None)
@given(clamp=st.integers(1152, 1 << 24), ssthresh=st.integers(0, 1 << 24),
       rcv_wnd=st.integers(0, 1 << 24), val=st.integers(0, 1 << 24))
def test_tcp_set_window_clamp_property(clamp: int, ssthresh: int, rcv_wnd: int,
                                       val: int) -> None:
    sk = connect("modern").sk
    sk.window_clamp, sk.rcv_ssthresh, sk.rcv_wnd = clamp, ssthresh, rcv_wnd
    tcp_set_window_clamp(sk, val)
    new = max(val, 1152)
    assert sk.window_clamp == new
    if new < clamp:
        assert sk.rcv_ssthresh == min(ssthresh, new)
    elif new > clamp:
        assert sk.rcv_ssthresh >= ssthresh
        assert sk.rcv_ssthresh == ssthresh or sk.rcv_ssthresh == min(rcv_wnd, new)
    else:
        assert sk.rcv_ssthresh == ssthresh


@pytest.mark.parametrize("profile", PROFILES)
def test_rcv_mss_learns_from_two_equal_small_segments(profile: str) -> None:
    c = connect(profile)
    off = fill(c, 0, 1, MSS)
    assert c.sk.icsk_ack.rcv_mss == MSS
    off = fill(c, off, 1, 700)
    assert c.sk.icsk_ack.rcv_mss == MSS  # one small segment only records its size
    assert c.sk.icsk_ack.last_seg_size == 700
    fill(c, off, 1, 700)
    assert c.sk.icsk_ack.rcv_mss == 700


@pytest.mark.parametrize("profile", PROFILES)
def test_delack_timer_while_owned(profile: str) -> None:
    """The timer finds the socket owned: DelayedACKLocked, and release_sock sends the ACK."""
    c = connect(profile, rcvbuf=32768)
    off = steady(c)
    acks = ack_count(c)
    off = fill(c, off, 1, MSS)
    lock(c)
    c.advance(100 * MS)
    assert mib(c, "TcpExtDelayedACKLocked") == 1
    assert ack_count(c) == acks
    if profile == "legacy":
        assert c.sk.icsk_ack.blocked  # legacy icsk_ack.blocked
    release(c)
    assert ack_count(c) == acks + 1 and last_ack(c).ack == c.seq(off)
    assert mib(c, "TcpExtDelayedACKs") == 1


@pytest.mark.parametrize("profile", PROFILES)
def test_backlog_replay_acks(profile: str) -> None:
    """In quickack mode every segment wants an ACK. Legacy sends them from inside the
    replay; modern defers to one ACK from tcp_release_cb (tcp_backlog_ack_defer)."""
    c = connect(profile, ts=True)
    lock(c)
    off = 0
    for _ in range(4):
        c.now += 1 * MS  # a new TSval each time: modern cannot coalesce them
        off = fill(c, off, 1, MSS - 12)
    assert len(c.sk.backlog) == 4 and ack_count(c) == 0
    release(c)
    acks = c.acks()
    assert acks[-1].ack == c.seq(off)
    assert len(acks) == (4 if profile == "legacy" else 1)


def test_modern_ack_defer_can_be_disabled() -> None:
    c = connect("modern", ts=True, tcp_backlog_ack_defer=0)
    lock(c)
    off = 0
    for _ in range(4):
        c.now += 1 * MS
        off = fill(c, off, 1, MSS - 12)
    release(c)
    assert len(c.acks()) == 4


# ---------------------------------------------------------------------------------------
# tcp_recvmsg (§6, §7)


def recv(c: Conn, length: int, task: str = "r", **flags: bool) -> Reader:
    r = Reader(c, task, length, RecvFlags(**flags))
    r.run()
    return r


@pytest.mark.parametrize("profile", PROFILES)
def test_recv_peek_leaves_the_data(profile: str) -> None:
    c = connect(profile)
    fill(c, 0, 1, 1000)
    r = recv(c, 600, peek=True, dontwait=True)
    assert r.result is not None and r.result.data == payload(600)
    assert c.sk.copied_seq == c.seq(0) and c.sk.inq() == 1000
    assert read_all(c).data == payload(1000)


@pytest.mark.parametrize("profile", PROFILES)
def test_recv_trunc_consumes_without_copying(profile: str) -> None:
    c = connect(profile)
    fill(c, 0, 1, 1000)
    r = recv(c, 400, trunc=True, dontwait=True)
    assert r.result is not None and r.result.ret == 400 and r.result.data == b""
    assert c.sk.copied_seq == c.seq(400)
    assert read_all(c).data == payload(600, 400)


@pytest.mark.parametrize("profile", PROFILES)
def test_recv_dontwait_on_empty_queue(profile: str) -> None:
    c = connect(profile)
    res = read_all(c)
    assert res.ret == -11 and res.data == b""
    assert c.sk.owner is None


@pytest.mark.parametrize("profile", PROFILES)
def test_recv_rcvlowat_target(profile: str) -> None:
    """SO_RCVLOWAT 1500: a read returns once 1500 bytes are copied. Modern only wakes
    the reader when 1500 unread bytes are available (tcp_data_ready); legacy on every
    segment."""
    c = connect(profile, rcvlowat=1500)
    fill(c, 0, 1, 1000)
    r = recv(c, 4000)
    assert r.waiting and r.result is None  # copied 1000 < target
    fill(c, 1000, 1, 1000)
    if profile == "legacy":
        res = r.run()
        assert res is not None and res.data == payload(2000)
        return
    assert "r" not in c.done  # 1000 unread < rcvlowat: no wakeup
    fill(c, 2000, 1, 500)
    res = r.run()
    assert res is not None and res.data == payload(2500)


@pytest.mark.parametrize("profile", PROFILES)
def test_recv_waitall(profile: str) -> None:
    c = connect(profile)
    r = recv(c, 3000, waitall=True)
    for k in range(3):
        assert r.result is None
        fill(c, 1000 * k, 1, 1000)
        r.run()
    assert r.result is not None and r.result.data == payload(3000)


@pytest.mark.parametrize("profile", PROFILES)
def test_recv_fin_gives_zero_after_the_data(profile: str) -> None:
    c = connect(profile)
    c.deliver(c.segment(0, payload(500), fin=True))
    assert c.sk.state == TcpState.CLOSE_WAIT
    assert read_all(c).data == payload(500)
    assert read_all(c).ret == 0
    r = recv(c, 100)  # a blocking read does not block at EOF
    assert r.result is not None and r.result.ret == 0


@pytest.mark.parametrize("profile", PROFILES)
def test_recv_blocked_reader_gets_eof(profile: str) -> None:
    c = connect(profile)
    r = recv(c, 100)
    assert r.waiting
    c.deliver(c.segment(0, b"", fin=True))
    res = r.run()
    assert res is not None and res.ret == 0


@pytest.mark.parametrize("profile", PROFILES)
def test_recv_rst_gives_econnreset(profile: str) -> None:
    c = connect(profile)
    r = recv(c, 100)
    assert r.waiting
    c.deliver(c.segment(0, b"", flags=TcpFlags.RST))
    assert c.sk.state == TcpState.CLOSE
    res = r.run()
    assert res is not None and res.ret == -104


@pytest.mark.parametrize("profile", PROFILES)
def test_recv_data_before_rst_is_still_read(profile: str) -> None:
    """Queued bytes are returned first; then the error once (sock_error clears it)."""
    c = connect(profile)
    fill(c, 0, 1, 300)
    c.deliver(c.segment(300, b"", flags=TcpFlags.RST))
    assert read_all(c).data == payload(300)
    assert read_all(c).ret == -104
    assert read_all(c).ret == 0


@pytest.mark.parametrize("profile", PROFILES)
def test_recv_blocked_reader_is_woken_by_data(profile: str) -> None:
    c = connect(profile)
    r = recv(c, 5000)
    assert r.waiting and c.sk.waiters and c.sk.owner is None
    c.now = 3 * MS
    fill(c, 0, 1, 700)
    assert "r" in c.done
    res = r.run()
    assert res is not None and res.data == payload(700)


@pytest.mark.parametrize("profile", PROFILES)
def test_recv_timeout(profile: str) -> None:
    c = connect(profile)
    r = Reader(c, "r", 100, timeo_ns=20 * MS)
    r.run()
    assert r.waiting
    c.advance(20 * MS - 1)
    assert r.run() is None
    c.advance(1)
    res = r.run()
    assert res is not None and res.ret == -11
    # With some data copied but not the whole target, the timeout returns what there is.
    fill(c, 0, 1, 400)
    r = Reader(c, "r2", 1000, RecvFlags(waitall=True), timeo_ns=20 * MS)
    r.run()
    c.advance(20 * MS)
    res = r.run()
    assert res is not None and res.data == payload(400)


@pytest.mark.parametrize("profile", PROFILES)
def test_two_readers_contend_for_the_lock(profile: str) -> None:
    c = connect(profile)
    fill(c, 0, 1, 1000)
    a = Reader(c, "a", 300, RecvFlags(dontwait=True))
    a.step()  # lock_sock
    assert c.sk.owner == "a"
    b = Reader(c, "b", 5000, RecvFlags(dontwait=True))
    b.run()
    assert b.waiting and [w.task for w in c.sk.lock_waiters] == ["b"]
    res_a = a.run()
    assert res_a is not None and res_a.data == payload(300)
    assert "b" in c.done  # release_sock handed the lock over
    res_b = b.run()
    assert res_b is not None and res_b.data == payload(700, 300)
    assert c.sk.owner is None


# ---------------------------------------------------------------------------------------
# tcp_validate_incoming: PAWS, tcp_sequence, RST, SYN (§2)


def with_ts(seg: Segment, tsval: int) -> Segment:
    return seg.with_(options=TcpOptions(timestamp=(tsval, 0)))


@pytest.mark.parametrize("profile", PROFILES)
def test_paws_rejects_old_timestamp_with_dupack(profile: str) -> None:
    c = connect(profile, ts=True)
    c.now = 100 * MS
    off = fill(c, 0, 1, 1000)  # TSval 101 becomes ts_recent
    assert c.sk.rx_opt.ts_recent == 101
    acks = ack_count(c)
    sid = c.deliver(with_ts(c.segment(off, payload(500, off)), 50))
    assert c.stack.net.fates[sid] == "drop:TCP_RFC7323_PAWS"
    assert mib(c, "TcpExtPAWSEstab") == 1
    assert c.sk.rcv_nxt == c.seq(off)
    assert ack_count(c) == acks + 1 and last_ack(c).ack == c.seq(off)
    # Data segments are not rate limited: a second one gets its dupack too.
    c.deliver(with_ts(c.segment(off, payload(500, off)), 50))
    assert ack_count(c) == acks + 2 and mib(c, "TcpExtPAWSEstab") == 2
    # TSval one tick behind is inside TCP_PAWS_WINDOW: accepted.
    c.deliver(with_ts(c.segment(off, payload(500, off)), 100))
    assert c.sk.rcv_nxt == c.seq(off + 500)


def test_paws_old_pure_acks_rate_limited_legacy() -> None:
    """Legacy: an old pure ACK is a PAWS failure with a dupack, at most one per 500 ms."""
    c = connect("legacy", ts=True)
    c.now = 100 * MS
    off = fill(c, 0, 2, 1000)
    old = with_ts(c.segment(500, b""), 50)  # seq below rcv_nxt: not a disordered ACK
    acks = ack_count(c)
    c.deliver(old)
    c.deliver(old)
    assert mib(c, "TcpExtPAWSEstab") == 2
    assert ack_count(c) == acks + 1
    assert mib(c, "TcpExtTCPACKSkippedPAWS") == 1
    c.now += 500 * MS
    c.deliver(old)
    assert ack_count(c) == acks + 2
    assert c.sk.rcv_nxt == c.seq(off)


def test_paws_old_pure_ack_modern_counts_pawsoldack() -> None:
    c = connect("modern", ts=True)
    c.now = 100 * MS
    fill(c, 0, 2, 1000)
    acks = ack_count(c)
    c.deliver(with_ts(c.segment(500, b""), 50))
    assert mib(c, "TcpExtPAWSOldAck") == 1
    assert mib(c, "TcpExtPAWSEstab") == 0
    assert ack_count(c) == acks  # no dupack


@pytest.mark.parametrize("profile", PROFILES)
def test_sequence_old_segment_dupack_with_dsack(profile: str) -> None:
    c = connect(profile)
    off = fill(c, 0, 2, 1000)
    assert c.sk.rcv_wup == c.sk.rcv_nxt  # everything acknowledged
    acks = ack_count(c)
    sid = c.deliver(c.segment(0, payload(1000)))  # end_seq < rcv_wup
    assert c.stack.net.fates[sid] == "drop:TCP_OLD_SEQUENCE"
    assert ack_count(c) == acks + 1
    assert blocks(c)[0] == (0, 1000)
    assert mib(c, "TcpExtDelayedACKLost") == 1
    assert c.sk.rcv_nxt == c.seq(off)


@pytest.mark.parametrize("profile", PROFILES)
def test_sequence_zero_length_probe_rate_limited(profile: str) -> None:
    """A zero-window probe at rcv_nxt - 1 fails tcp_sequence: one dupack per 500 ms."""
    c = connect(profile)
    off = fill(c, 0, 2, 1000)
    acks = ack_count(c)
    probe = c.segment(off - 1, b"")
    for _ in range(3):
        c.deliver(probe)
    assert ack_count(c) == acks + 1
    assert mib(c, "TcpExtTCPACKSkippedSeq") == 2
    c.advance(500 * MS)
    c.deliver(probe)
    assert ack_count(c) == acks + 2


@pytest.mark.parametrize("profile", PROFILES)
def test_sequence_beyond_the_window(profile: str) -> None:
    c = connect(profile)
    wnd = tcp_receive_window(c.sk)
    acks = ack_count(c)
    sid = c.deliver(c.segment(wnd + 1, payload(100, wnd + 1)))  # seq > rcv_nxt + rwnd
    assert c.stack.net.fates[sid] == "drop:TCP_INVALID_SEQUENCE"
    assert ack_count(c) == acks + 1 and last_ack(c).ack == c.seq(0)


@pytest.mark.parametrize("profile", PROFILES)
def test_sequence_end_beyond_the_window(profile: str) -> None:
    """Starts inside, ends outside: legacy keeps the segment; modern rejects it while
    data is queued (BeyondWindow) but lets a FIN alone stick out."""
    c = connect(profile)
    off = fill(c, 0, 1, 1000)
    wnd = tcp_receive_window(c.sk)
    edge = off + wnd
    sid = c.deliver(c.segment(edge - 100, payload(300, edge - 100)))
    if profile == "modern":
        assert c.stack.net.fates[sid] == "drop:TCP_INVALID_END_SEQUENCE"
        assert mib(c, "TcpExtBeyondWindow") == 1
        assert not c.sk.ofo
    else:
        assert len(c.sk.ofo) == 1
        with pytest.raises(KeyError):
            c.stack.net.inc("TcpExtBeyondWindow")
    c2 = connect(profile)
    off = fill(c2, 0, 1, 1000)
    edge = off + tcp_receive_window(c2.sk)
    c2.deliver(c2.segment(edge - 100, payload(100, edge - 100), fin=True))
    assert len(c2.sk.ofo) == 1  # only the FIN is beyond: accepted by both
    assert mib(c2, "TcpExtBeyondWindow") == 0


@pytest.mark.parametrize("profile", PROFILES)
def test_rst_in_window_not_exact_gets_challenge_ack(profile: str) -> None:
    c = connect(profile)
    off = fill(c, 0, 1, 1000)
    acks = ack_count(c)
    c.deliver(c.segment(off + 10, b"", flags=TcpFlags.RST))
    assert c.sk.state == TcpState.ESTABLISHED
    assert mib(c, "TcpExtTCPChallengeACK") == 1
    assert ack_count(c) == acks + 1 and last_ack(c).ack == c.seq(off)
    # A second one within 500 ms is not answered (per-socket rate limit).
    c.deliver(c.segment(off + 20, b"", flags=TcpFlags.RST))
    assert ack_count(c) == acks + 1
    assert mib(c, "TcpExtTCPACKSkippedChallenge") == 1
    # Out of the window entirely: silently dropped.
    c.now += 600 * MS
    c.deliver(c.segment(off + 10_000_000, b"", flags=TcpFlags.RST))
    assert ack_count(c) == acks + 1 and c.sk.state == TcpState.ESTABLISHED
    # Exactly rcv_nxt: the connection is reset.
    c.deliver(c.segment(off, b"", flags=TcpFlags.RST))
    assert c.sk.state == TcpState.CLOSE and c.sk.sk_err == 104
    assert mib(c, "TcpEstabResets") == 1


@pytest.mark.parametrize("profile", PROFILES)
def test_rst_at_the_highest_sack_end_is_accepted(profile: str) -> None:
    c = connect(profile)
    fill(c, 0, 1, 1000)
    c.deliver(c.segment(2000, payload(500, 2000)))
    c.deliver(c.segment(2500, b"", flags=TcpFlags.RST))
    assert c.sk.state == TcpState.CLOSE


@pytest.mark.parametrize("profile", PROFILES)
def test_syn_on_established_gets_challenge_ack(profile: str) -> None:
    c = connect(profile)
    off = fill(c, 0, 1, 1000)
    acks = ack_count(c)
    c.deliver(c.segment(off, b"", flags=TcpFlags.SYN))
    assert mib(c, "TcpExtTCPSYNChallenge") == 1
    assert mib(c, "TcpExtTCPChallengeACK") == 1
    assert ack_count(c) == acks + 1 and last_ack(c).ack == c.seq(off)
    assert c.sk.state == TcpState.ESTABLISHED
    # Also when the SYN is outside the window.
    c.now += 600 * MS
    c.deliver(c.segment(off + 5_000_000, b"", flags=TcpFlags.SYN))
    assert mib(c, "TcpExtTCPSYNChallenge") == 2


@pytest.mark.parametrize("profile", PROFILES)
def test_ack_of_unsent_data_is_dropped_and_challenged_in_modern(profile: str) -> None:
    """tcp_ack: SEG.ACK > SND.NXT drops the segment (TCP_ACK_UNSENT_DATA) before its
    timestamp can become ts_recent; 6.18 answers with a challenge ACK, 4.13 does not."""
    c = connect(profile, ts=True)
    off = fill(c, 0, 2, 1000)
    acks = ack_count(c)
    ts_recent = c.sk.rx_opt.ts_recent
    bad = c.segment(off, payload(1000, off)).with_(
        ack=seq_add(c.sk.snd_nxt, 9999), options=TcpOptions(timestamp=(200_000, 0)))
    c.deliver(bad)
    assert c.sk.rcv_nxt == c.seq(off) and c.sk.rx_opt.ts_recent == ts_recent
    assert c.stack.net.drop_counts["TCP_ACK_UNSENT_DATA"] == 1
    challenged = profile == "modern"
    assert mib(c, "TcpExtTCPChallengeACK") == int(challenged)
    assert ack_count(c) == acks + int(challenged)
    if challenged:
        assert last_ack(c).ack == c.seq(off)


@pytest.mark.parametrize("profile", PROFILES)
def test_too_old_ack_is_challenged(profile: str) -> None:
    """tcp_ack, RFC 5961 5.2: an ACK below snd_una - max_window is challenged and
    dropped. 6.18 bounds the window by bytes_acked, so a receiver that never sent
    data treats any ACK below snd_una as too old; 4.13 takes it as an old ACK."""
    c = connect(profile)
    off = fill(c, 0, 1, 1000)
    acks = ack_count(c)
    old = c.segment(off, payload(1000, off)).with_(ack=seq_sub(c.sk.snd_una, 1))
    c.deliver(old)
    if profile == "modern":
        assert c.stack.net.drop_counts["TCP_TOO_OLD_ACK"] == 1
        assert mib(c, "TcpExtTCPChallengeACK") == 1 and c.sk.rcv_nxt == c.seq(off)
        assert ack_count(c) == acks + 1
    else:
        assert c.sk.rcv_nxt == c.seq(off + 1000)  # old ACK: the data is queued
        assert mib(c, "TcpExtTCPChallengeACK") == 0
    # Below every window the peer ever offered: too old for both kernels (a new
    # window keeps it off header prediction, which ignores tcp_ack's verdict).
    c.now += 600 * MS
    at = c.seq_offset_of(c.sk.rcv_nxt)
    ancient = c.segment(at, payload(10, at), window=999).with_(
        ack=seq_sub(c.sk.snd_una, c.sk.max_window + 1))
    drops = c.stack.net.drop_counts["TCP_TOO_OLD_ACK"]
    challenges = mib(c, "TcpExtTCPChallengeACK")
    c.deliver(ancient)
    assert c.stack.net.drop_counts["TCP_TOO_OLD_ACK"] == drops + 1
    assert mib(c, "TcpExtTCPChallengeACK") == challenges + 1


# ---------------------------------------------------------------------------------------
# Properties

# (offset, length) of a segment inside the first 20 kB of the stream
segments_st = st.lists(st.tuples(st.integers(0, 20_000), st.integers(1, 1460)),
                       min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(segs=segments_st)
def test_property_legacy_backlog_replay_equals_softirq(segs: list[tuple[int, int]]) -> None:
    """Whatever arrives, replaying it from the backlog gives the same ACKs, counters and
    bytes as processing it in softirq (legacy sends ACKs while owned)."""

    def run(owned: bool) -> tuple[dict[str, int], list[tuple[int, int, tuple]], bytes, int]:
        c = connect("legacy")
        if owned:
            lock(c)
        for off, n in segs:
            c.deliver(c.segment(off, payload(n, off)))
        if owned:
            release(c)
        counters = dict(c.stack.net.mib.nonzero())
        acks = [(a.ack, a.window, a.options.sack_blocks) for a in c.acks()]
        return counters, acks, read_all(c).data if c.sk.inq() else b"", c.sk.rcv_nxt

    assert run(True) == run(False)


@settings(max_examples=200, deadline=None)
@given(segs=segments_st, profile=st.sampled_from(PROFILES), ts=st.booleans())
def test_property_sack_blocks(segs: list[tuple[int, int]], profile: str, ts: bool) -> None:
    """SACK blocks stay at most 4, disjoint and not touching, above rcv_nxt, inside the
    queued ofo data; the newest ofo arrival is in the first block; an ACK carries at
    most 4 blocks (3 with timestamps)."""
    c = connect(profile, ts=ts)
    sk = c.sk
    for off, n in segs:
        before = rel(c, sk.rcv_nxt)
        sid = c.deliver(c.segment(off, payload(n, off)))
        fate = c.stack.net.fates.get(sid)
        c.advance(2 * MS)  # let compressed SACKs go out
        sacks = [(rel(c, s), rel(c, e)) for s, e in sk.selective_acks[: sk.rx_opt.num_sacks]]
        assert len(sacks) <= 4
        nxt = rel(c, sk.rcv_nxt)
        ofo = [(rel(c, q.seq), rel(c, q.end_seq)) for q in sk.ofo]
        for i, (s, e) in enumerate(sacks):
            assert nxt < s < e
            for s2, e2 in sacks[i + 1:]:
                assert e < s2 or e2 < s  # neither overlapping nor touching
            # every byte of the block is in some queued ofo skb
            covered = s
            for qs, qe in ofo:
                if qs <= covered < qe:
                    covered = qe
            assert covered >= e
        if not ofo:
            assert sacks == []
        elif nxt == before and off > nxt and fate in (None, "drop:TCP_OFOMERGE") \
                and sk.rx_opt.sack_ok:
            # an ofo arrival (queued, coalesced or covered): reported in the first block
            s0, e0 = sacks[0]
            assert s0 <= off and off + n <= e0
        for a in c.acks():
            assert len(a.options.sack_blocks) <= (3 if ts else 4)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["send", "read", "time"]),
                                st.integers(0, 3000), st.integers(1, 1460)),
                      min_size=1, max_size=60),
       profile=st.sampled_from(PROFILES))
def test_property_right_edge_never_moves_left(steps: list[tuple[str, int, int]],
                                              profile: str) -> None:
    """Every ACK's right edge (ack + window << wscale) is at or beyond the previous one,
    whatever arrives and whenever the reader reads (tcp_select_window never shrinks)."""
    c = connect(profile)
    edge = right_edge(c)
    for action, a, n in steps:
        nxt = rel(c, c.sk.rcv_nxt)
        if action == "send":
            off = max(0, min(nxt + a, right_edge(c) - 1))
            n = max(1, min(n, right_edge(c) - off))
            c.deliver(c.segment(off, payload(n, off)))
        elif action == "read":
            r = Reader(c, "r", a + 1, RecvFlags(dontwait=True))
            r.run()
        else:
            c.advance(a * MS // 10)
        new = right_edge(c)
        assert new >= edge
        edge = new
