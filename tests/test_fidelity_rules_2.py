"""More rules pinned to the kernel functions that define them (4.13 for legacy, 6.18.y
for modern): the handshake's RTT sample and what follows from it, the 0 ms timestamp
RTT sample, the GSO marking of injected packets, ``ss``'s Recv-Q. Each test names the
function it checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.profiles import MS, US, get_profile, sysctls_for, usecs_to_jiffies
from actors.stack.net import Transmit
from actors.stack.skb import Skb
from actors.stack.sock import TcpSock, TcpState
from actors.stack.tcp import tcp_get_info
from actors.stack.tcp_input import tcp_event_data_recv, tcp_rcv_rtt_measure_ts
from actors.stack.tcp_ipv4 import Stack
from actors.stack.tcp_output import tcp_time_stamp
from cli.drill import run_script
from cli.drill.runner import Outcome, virtio_net_hdr_gso_size
from protocol.segment import Segment, TcpFlags, TcpOptions
from protocol.seq import seq_add
from protocol.sockops import Accepted, InetAccept
from tests.stack_harness import ISN, LOCAL, PORT, REMOTE, SPORT, Conn, connect, read_all

PROFILES = ("legacy", "modern")


def _transmitted(stack: Stack) -> list[Segment]:
    return [o.segment for o in stack.take_outputs() if isinstance(o, Transmit)]


def passive_open(profile: str, *, rtt: int, ts: bool = False, synack_timeouts: int = 0,
                 echo_ms: int | None = None) -> Conn:
    """SYN at 0; the SYN-ACK (resent by its timer ``synack_timeouts`` times) is ACKed
    ``rtt`` ns after the last one left. ``echo_ms``: the ACK's TSecr, if not that
    SYN-ACK's TSval."""
    prof = get_profile(profile)
    stack = Stack(prof, sysctls_for(prof), seed=1)
    lsn = stack.listen(LOCAL, PORT, 0)
    opts = TcpOptions(mss=1460, sack_permitted=True, wscale=7,
                      timestamp=(1, 0) if ts else None)
    stack.tcp_v4_rcv(Segment(src=REMOTE, sport=SPORT, dst=LOCAL, dport=PORT, seq=ISN,
                             flags=TcpFlags.SYN, window=65535, options=opts), 0)
    synack = _transmitted(stack)[0]
    now = 0
    for _ in range(synack_timeouts):
        deadline = stack.next_deadline()
        assert deadline is not None
        now = deadline
        stack.run_timers(now)
        synack = next(s for s in _transmitted(stack) if s.flags & TcpFlags.SYN)
    now += rtt
    ack_opts = TcpOptions()
    if ts:
        assert synack.options.timestamp is not None
        tsecr = synack.options.timestamp[0] if echo_ms is None else echo_ms
        ack_opts = TcpOptions(timestamp=(2, tsecr))
    stack.tcp_v4_rcv(Segment(src=REMOTE, sport=SPORT, dst=LOCAL, dport=PORT, seq=ISN + 1,
                             ack=seq_add(synack.seq, 1), flags=TcpFlags.ACK, window=1000,
                             options=ack_opts), now)
    stack.take_outputs()
    res = stack.sock_op("app", InetAccept(lsn), now)
    assert isinstance(res, Accepted), res
    return Conn(stack=stack, sock=res.sock, listener=lsn, isn=ISN, now=now, ts=ts,
                sent=[synack])


# ---------------------------------------------------------------- the handshake's RTT


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(("rtt", "rto"), [(3 * MS, 204 * MS), (150 * MS, 452 * MS),
                                          (1234 * US, 204 * MS)])
def test_passive_open_takes_an_rtt_sample_from_the_synack(profile: str, rtt: int,
                                                          rto: int) -> None:
    """tcp_check_req -> tcp_synack_rtt_meas: the time since the SYN-ACK left (sent once,
    req->num_retrans == 0) goes through tcp_ack_update_rtt -> tcp_rtt_estimator (first
    sample: srtt = m, mdev = 2m, rttvar = max(mdev, tcp_rto_min)) and tcp_set_rto
    (usecs_to_jiffies(srtt + rttvar), rounded up to a jiffy: 4 ms at HZ=250)."""
    c = passive_open(profile, rtt=rtt)
    sk = c.sk
    assert sk.srtt_us == (rtt // US) << 3
    assert sk.rttvar_us == max(2 * rtt // US, 200_000)
    assert sk.rto == rto


@pytest.mark.parametrize(("profile", "echo_back_ms", "srtt_ms"),
                         [("legacy", 5, 5), ("modern", 5, 5), ("legacy", 0, 0),
                          ("modern", 0, 1)])
def test_resent_synack_rtt_comes_from_the_timestamp_echo(profile: str, echo_back_ms: int,
                                                         srtt_ms: int) -> None:
    """A SYN-ACK sent again gives no timing sample (Karn; tcp_synack_rtt_meas needs
    num_retrans == 0); tcp_rcv_state_process's second tcp_synack_rtt_meas (srtt still
    0) lets tcp_ack_update_rtt use the ACK's TSecr. 6.18 tcp_rtt_tsopt_us(tp, 1) turns a
    0 ms delta into 1 ms; 4.13 takes delta * 1000 as it is, and tcp_rtt_estimator's
    max(1, srtt) keeps srtt non-zero."""
    c = passive_open(profile, rtt=7 * MS, ts=True, synack_timeouts=1, echo_ms=0)
    sk = c.sk
    # the ACK echoes a TSval echo_back_ms old
    c2 = passive_open(profile, rtt=7 * MS, ts=True, synack_timeouts=1,
                      echo_ms=tcp_time_stamp(sk, c.now) - echo_back_ms)
    sk2 = c2.sk
    assert sk2.srtt_us == max(1, (srtt_ms * 1000) << 3)
    assert sk2.rto == usecs_to_jiffies((sk2.srtt_us >> 3) + sk2.rttvar_us, 250) * 4 * MS


@pytest.mark.parametrize("profile", PROFILES)
def test_no_handshake_rtt_falls_back_to_3s(profile: str) -> None:
    """tcp_init_metrics (tcp_init_transfer): no cached RTT and srtt still 0 after the
    handshake (a resent SYN-ACK, no timestamps): RFC 6298 5.7's TCP_TIMEOUT_FALLBACK."""
    c = passive_open(profile, rtt=7 * MS, synack_timeouts=1)
    assert c.sk.srtt_us == 0
    assert c.sk.rto == 3000 * MS


@pytest.mark.parametrize("profile", PROFILES)
def test_active_open_takes_an_rtt_sample_from_the_syn(profile: str) -> None:
    """tcp_rcv_synsent_state_process -> tcp_ack -> tcp_clean_rtx_queue: the SYN, sent
    once, is acked 20 ms after it left: srtt 20 ms, rto 20 + max(40, 200) = 220 ms."""
    prof = get_profile(profile)
    stack = Stack(prof, sysctls_for(prof), seed=1)
    sid = stack.connect(LOCAL, REMOTE, PORT, 0)
    syn = _transmitted(stack)[0]
    synack = Segment(src=REMOTE, sport=PORT, dst=LOCAL, dport=syn.sport, seq=ISN,
                     ack=seq_add(syn.seq, 1), flags=TcpFlags.SYN | TcpFlags.ACK,
                     window=65535, options=TcpOptions(mss=1460, sack_permitted=True, wscale=7))
    stack.tcp_v4_rcv(synack, 20 * MS)
    sk: TcpSock = stack.socks[sid]
    assert sk.srtt_us == 20_000 << 3
    assert sk.rto == 220 * MS


def _quick_acked_after_gap(profile: str, gap: int) -> bool:
    """After a 3 ms handshake (rto 204 ms) and a first segment, with the quick-ACK
    credit spent: is a small segment arriving ``gap`` later ACKed at once?"""
    c = passive_open(profile, rtt=3 * MS)
    c.deliver(c.segment(0, bytes(100)))
    c.advance(250 * MS if gap > 250 * MS else gap // 2)  # the delayed ACK fires
    c.sk.icsk_ack.quick = 0
    c.sk.icsk_ack.pingpong = 0
    c.advance(gap - (250 * MS if gap > 250 * MS else gap // 2))
    before = len(c.sent)
    c.deliver(c.segment(100, bytes(100)))
    return len(c.sent) > before


@pytest.mark.parametrize("profile", PROFILES)
def test_gap_longer_than_rto_reenters_quickack(profile: str) -> None:
    """tcp_event_data_recv: data after a gap longer than icsk_rto (here 203 ms, from the
    handshake's sample) means the sender restarted its window: tcp_incr_quickack, and
    the segment is ACKed at once; a shorter gap (above ato) is not."""
    assert _quick_acked_after_gap(profile, 300 * MS)
    assert not _quick_acked_after_gap(profile, 150 * MS)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(("last_us", "now_us", "ato"), [
    # 20.05 ms from jiffy 0 to jiffy 5 (HZ=250): m = 5 <= TCP_ATO_MIN / 2, the fastest
    # case: ato = 15 / 2 + 5 = 12 jiffies
    (900, 20_950, 48 * MS),
    # 20.2 ms, but from the end of jiffy 0 to the start of jiffy 6: m = 6, so
    # ato = 15 / 2 + m = 13 jiffies
    (3_900, 24_100, 52 * MS),
])
def test_tcp_event_data_recv_counts_in_jiffies(profile: str, last_us: int, now_us: int,
                                               ato: int) -> None:
    """tcp_event_data_recv compares tcp_jiffies32 - lrcvtime, in whole jiffies, so
    where each segment falls in its jiffy decides which rule applies."""
    c = passive_open(profile, rtt=3 * MS)
    sk = c.sk
    sk.icsk_ack.ato = 60 * MS
    sk.icsk_ack.lrcvtime = last_us * US
    skb = Skb.from_segment(c.segment(0, bytes(100)), 0, now_us * US, header_len=20)
    tcp_event_data_recv(sk, skb, now_us * US)
    assert sk.icsk_ack.ato == ato


# ---------------------------------------------------------------- tcp_rcv_rtt_measure_ts


def _measure(c: Conn, length: int, tsecr: int, now: int) -> None:
    sk = c.sk
    sk.rx_opt.saw_tstamp, sk.rx_opt.rcv_tsecr = True, tsecr
    skb = Skb.from_segment(c.segment(0, bytes(length)), 0, now, header_len=32)
    tcp_rcv_rtt_measure_ts(sk, skb, now)


@pytest.mark.parametrize(("profile", "rtt_us_x8"), [("legacy", 1 << 3), ("modern", 0)])
def test_zero_ms_timestamp_rtt_sample(profile: str, rtt_us_x8: int) -> None:
    """A full-sized segment echoing a TSval of this very millisecond: 4.13
    tcp_rcv_rtt_measure_ts passes delta * 1000 = 0 us and tcp_rcv_rtt_update counts it
    as 1 us; 6.18 tcp_rtt_tsopt_us(tp, 0) returns 0 and `delta > 0` drops it."""
    c = passive_open(profile, rtt=3 * MS, ts=True)
    sk = c.sk
    _measure(c, sk.icsk_ack.rcv_mss, tcp_time_stamp(sk, c.now), c.now)
    assert sk.rcv_rtt_us == rtt_us_x8


@pytest.mark.parametrize("profile", PROFILES)
def test_timestamp_rtt_sample_in_ms(profile: str) -> None:
    """A 7 ms old echo: 7000 us, x8 (tcp_rcv_rtt_update's first sample)."""
    c = passive_open(profile, rtt=3 * MS, ts=True)
    sk = c.sk
    _measure(c, sk.icsk_ack.rcv_mss, tcp_time_stamp(sk, c.now) - 7, c.now)
    assert sk.rcv_rtt_us == 7000 << 3


@pytest.mark.parametrize(("profile", "sampled"), [("legacy", True), ("modern", False)])
def test_short_segment_uses_up_its_tsecr_in_6_18(profile: str, sampled: bool) -> None:
    """6.18 tcp_rcv_rtt_measure_ts tests tsecr == rcv_rtt_last_tsecr (and records it)
    before the length test: a short segment spends the echo, so a full-sized one
    echoing the same TSval takes no sample. 4.13 has no rcv_rtt_last_tsecr."""
    c = passive_open(profile, rtt=3 * MS, ts=True)
    sk = c.sk
    tsecr = tcp_time_stamp(sk, c.now) - 5
    _measure(c, 10, tsecr, c.now)
    assert sk.rcv_rtt_us == 0
    _measure(c, sk.icsk_ack.rcv_mss, tsecr, c.now)
    assert (sk.rcv_rtt_us == 5000 << 3) is sampled


# ---------------------------------------------------------------- tun: virtio_net_hdr_to_skb


@pytest.mark.parametrize(("options", "payload", "gso"), [
    (12, 988, 0),      # 1000 bytes past the base header: not more than gso_size
    (12, 989, 1000),   # 1001: a GSO packet
    (0, 1000, 0),
    (0, 1001, 1000),
    (12, 0, 0),        # a pure ACK
])
def test_tun_write_keeps_gso_size_only_past_it(options: int, payload: int, gso: int) -> None:
    """virtio_net_hdr_to_skb (6.18, include/linux/virtio_net.h), called by tun_get_user:
    shinfo->gso_size is set only if skb->len - p_off > gso_size, with p_off = transport
    offset + sizeof(struct tcphdr). packetdrill (--mss=1000) marks every TCP write; a
    timestamped 988-byte segment (IP length 1040) is not GSO, so tcp_measure_rcv_mss
    learns 988, not 1000."""
    assert virtio_net_hdr_gso_size(1000, options + payload) == gso
    assert virtio_net_hdr_gso_size(0, options + payload) == 0


# ---------------------------------------------------------------- ss: tcp_diag_get_info


@pytest.mark.parametrize("profile", PROFILES)
def test_ss_recv_q_counts_the_fin_until_the_reader_sees_eof(profile: str) -> None:
    """tcp_diag_get_info: Recv-Q = max(rcv_nxt - copied_seq, 0), the FIN's sequence
    number included (tcp_inq, SIOCINQ, takes it off; ss does not). tcp_recvmsg's
    found_fin_ok moves copied_seq past the FIN when the reader gets EOF: 0 after."""
    c = connect(profile)
    c.deliver(c.segment(0, bytes(100)))
    assert read_all(c, length=100).ret == 100
    c.deliver(c.segment(100, b"", fin=True))
    sk = c.sk
    assert sk.state == TcpState.CLOSE_WAIT
    assert tcp_get_info(sk, c.now)["recv_q"] == 1
    assert sk.inq() == 0
    assert read_all(c, length=100).ret == 0  # EOF
    assert tcp_get_info(sk, c.now)["recv_q"] == 0


@pytest.mark.parametrize("profile", PROFILES)
def test_ss_recv_q_of_unread_data_and_fin(profile: str) -> None:
    """100 unread bytes and the FIN: ss shows 101 (SIOCINQ 100)."""
    c = connect(profile)
    c.deliver(c.segment(0, bytes(100), fin=True))
    assert tcp_get_info(c.sk, c.now)["recv_q"] == 101
    assert c.sk.inq() == 100


def test_ss_recv_q_of_a_listener_is_its_accept_queue() -> None:
    """tcp_diag_get_info: for TCP_LISTEN, idiag_rqueue = sk_ack_backlog."""
    c = connect("modern")
    lsk = c.stack.socks[c.listener]
    assert tcp_get_info(lsk, c.now)["recv_q"] == 0
    # a second connection, handshake done, not accepted yet
    stack = c.stack
    syn = Segment(src=REMOTE, sport=SPORT + 1, dst=LOCAL, dport=PORT, seq=ISN,
                  flags=TcpFlags.SYN, window=65535, options=TcpOptions(mss=1460))
    stack.tcp_v4_rcv(syn, c.now)
    synack = _transmitted(stack)[0]
    stack.tcp_v4_rcv(Segment(src=REMOTE, sport=SPORT + 1, dst=LOCAL, dport=PORT,
                             seq=ISN + 1, ack=seq_add(synack.seq, 1), flags=TcpFlags.ACK,
                             window=1000), c.now)
    assert tcp_get_info(lsk, c.now)["recv_q"] == len(lsk.accept_queue) == 1


@pytest.mark.parametrize(("payload", "rcv_mss"), [(988, 988), (989, 1000)])
def test_drill_timestamped_segment_at_mss_is_not_gso(tmp_path: Path, payload: int,
                                                     rcv_mss: int) -> None:
    """End to end through the drill runner (--mss=1000, timestamps): 12 option bytes +
    988 = 1000 is not past gso_size, so tcp_measure_rcv_mss sees the skb's 988 bytes;
    989 makes a GSO skb and rcv_mss takes gso_size, 1000."""
    script = tmp_path / "gso.pkt"
    script.write_text(f"""\
--mss=1000
`./defaults.sh`
    0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3
   +0 setsockopt(3, SOL_SOCKET, SO_REUSEADDR, [1], 4) = 0
   +0 bind(3, ..., ...) = 0
   +0 listen(3, 1) = 0
   +0 < S 0:0(0) win 32792 <mss 1000,sackOK,TS val 100 ecr 0,nop,wscale 7>
   +0 > S. 0:0(0) ack 1 <mss 1460,sackOK,TS val 100 ecr 100,nop,wscale 8>
  +.1 < . 1:1(0) ack 1 win 257 <nop,nop,TS val 200 ecr 100>
   +0 accept(3, ..., ...) = 4
   +0 < . 1:{1 + payload}({payload}) ack 1 win 257 <nop,nop,TS val 300 ecr 100>
   +0 > . 1:1(0) ack {1 + payload} <nop,nop,TS val 200 ecr 300>
   +0 %{{ assert tcpi_rcv_mss == {rcv_mss}, tcpi_rcv_mss }}%
""")
    res = run_script(script, "modern", verbose=True)
    assert res.outcome is Outcome.PASS, res.mismatch
