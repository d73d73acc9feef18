"""TIME_WAIT as a minisock: ``tcp_time_wait`` and ``tcp_timewait_state_process``
(net/ipv4/tcp_minisocks.c), acted on by ``tcp_v4_rcv``'s ``do_time_wait``
(net/ipv4/tcp_ipv4.c: ``tcp_v4_timewait_ack``, ``tcp_v4_send_reset``, the listener for
TCP_TW_SYN) in Linux 4.13 and 6.18. tests/drill/timewait_*.pkt show the same on the
wire against Linux 6.18.44."""

from __future__ import annotations

import pytest

from actors.profiles import MS
from actors.stack.net import DROP_REASONS
from actors.stack.sock import TcpState
from actors.stack.tcp_minisocks import TCP_TIMEWAIT_LEN, InetTimewaitSock, tcp_twsk_diag
from protocol.segment import Segment, TcpFlags, TcpOptions
from protocol.seq import seq_add
from protocol.sockops import LockSock, ReleaseSock, TcpClose, TcpShutdown
from tests.stack_harness import LOCAL, PORT, REMOTE, SPORT, Conn, connect

PROFILES = ("legacy", "modern")


def _close(c: Conn) -> None:
    c.stack.sock_op("app", LockSock(c.sock), c.now)
    c.stack.sock_op("app", TcpClose(c.sock), c.now)
    c.collect()


def _peer(c: Conn, offset: int, flags: int, *, data: bytes = b"", ack_off: int = 1,
          tsval: int | None = None, seq: int | None = None) -> Segment:
    """A segment from the peer: ``ack_off`` past our iss (2 acks our FIN)."""
    ts = (tsval, 1) if tsval is not None else None
    return Segment(src=REMOTE, sport=SPORT, dst=LOCAL, dport=PORT,
                   seq=c.seq(offset) if seq is None else seq,
                   ack=seq_add(c.sk.iss, ack_off) if flags & TcpFlags.ACK else 0,
                   flags=flags, window=1000, options=TcpOptions(timestamp=ts), payload=data)


def _tw(c: Conn) -> InetTimewaitSock:
    return c.stack.net.twhash[c.sk.four_tuple()]


def _to_time_wait(profile: str, ts: bool = False, **sysctl: int) -> Conn:
    """We close first: FIN, the peer's ACK (an orphaned FIN_WAIT2: already a timewait
    sock), the peer's FIN (TIME_WAIT) and our ACK of it."""
    c = connect(profile, ts=ts, **sysctl)
    _close(c)
    assert c.sent[-1].flags & TcpFlags.FIN
    c.now += 10 * MS
    c.deliver(_peer(c, 0, TcpFlags.ACK, ack_off=2, tsval=100 if ts else None))
    assert _tw(c).substate is TcpState.FIN_WAIT2
    c.now += 10 * MS
    c.deliver(_peer(c, 0, TcpFlags.ACK | TcpFlags.FIN, ack_off=2,
                    tsval=200 if ts else None))
    return c


@pytest.mark.parametrize("profile", PROFILES)
def test_tcp_time_wait_replaces_the_socket(profile: str) -> None:
    """tcp_time_wait: the orphan's full socket is closed (tcp_done) and unhashed; the
    timewait sock holds rcv_nxt, snd_nxt, the window and its scale, and is counted
    once (TW, at __inet_twsk_schedule), though FIN_WAIT2 -> TIME_WAIT re-arms it."""
    c = _to_time_wait(profile)
    tw = _tw(c)
    assert c.sk.state is TcpState.CLOSE
    assert c.sk.four_tuple() not in c.stack.ehash
    assert tw.substate is TcpState.TIME_WAIT
    assert tw.rcv_nxt == c.seq(1) and tw.snd_nxt == seq_add(c.sk.iss, 2)
    assert tw.rcv_wscale == c.sk.rx_opt.rcv_wscale and tw.rcv_wnd > 0
    ack = c.sent[-1]
    assert ack.flags == TcpFlags.ACK and ack.ack == c.seq(1)
    assert c.stack.net.mib["TcpExtTW"] == 1
    # the 60 s timer (TCP_TIMEWAIT_LEN), on the wheel: never early
    assert tw.deadline >= c.now + TCP_TIMEWAIT_LEN - 10 * MS


@pytest.mark.parametrize("profile", PROFILES)
def test_fin_again_and_old_data_get_the_timewait_ack(profile: str) -> None:
    """tcp_timewait_state_process: an out-of-window segment is TCP_TW_ACK (data is never
    rate limited); tcp_v4_timewait_ack sends seq tw_snd_nxt, ack tw_rcv_nxt and
    tw_rcv_wnd >> tw_rcv_wscale. Every segment ends at discard_it: NOT_SPECIFIED."""
    c = _to_time_wait(profile)
    tw = _tw(c)
    for seg in (_peer(c, 0, TcpFlags.ACK | TcpFlags.FIN, ack_off=2),
                _peer(c, 0, TcpFlags.ACK | TcpFlags.PSH, ack_off=2, data=b"x" * 10)):
        c.now += 10 * MS
        sid = c.deliver(seg)
        ack = c.sent[-1]
        assert (ack.flags, ack.seq, ack.ack) == (TcpFlags.ACK, tw.snd_nxt, tw.rcv_nxt)
        assert ack.window == min(tw.rcv_wnd >> tw.rcv_wscale, 65535)
        assert c.stack.net.fates[sid] == "drop:NOT_SPECIFIED"


@pytest.mark.parametrize("profile", PROFILES)
def test_old_pure_acks_are_rate_limited(profile: str) -> None:
    """tcp_timewait_check_oow_rate_limit: tcp_oow_rate_limited on tw_last_oow_ack_time;
    a second old pure ACK inside tcp_invalid_ratelimit counts TCPACKSkippedTimeWait."""
    c = _to_time_wait(profile)
    n = len(c.sent)
    c.now += 10 * MS
    c.deliver(_peer(c, 0, TcpFlags.ACK, ack_off=2))
    assert len(c.sent) == n + 1
    c.now += 10 * MS
    c.deliver(_peer(c, 0, TcpFlags.ACK, ack_off=2))
    assert len(c.sent) == n + 1
    assert c.stack.net.mib["TcpExtTCPACKSkippedTimeWait"] == 1
    c.now += 600 * MS
    c.deliver(_peer(c, 0, TcpFlags.ACK, ack_off=2))
    assert len(c.sent) == n + 2


@pytest.mark.parametrize("profile", PROFILES)
def test_rst_kills_unless_rfc1337(profile: str) -> None:
    """A RST at rcv_nxt: TIME_WAIT assassination with tcp_rfc1337 = 0 (then the tuple
    has no socket: tcp_v4_send_reset); with tcp_rfc1337 = 1 it only re-arms the timer.
    A RST out of window is ignored (TCP_TW_SUCCESS)."""
    c = _to_time_wait(profile)
    n = len(c.sent)
    c.deliver(_peer(c, 50, TcpFlags.RST))
    assert c.sk.four_tuple() in c.stack.net.twhash and len(c.sent) == n
    c.deliver(_peer(c, 1, TcpFlags.RST))
    assert c.sk.four_tuple() not in c.stack.net.twhash
    # gone: the listener on the port refuses the ACK with a RST (TCP_FLAGS)
    sid = c.deliver(_peer(c, 1, TcpFlags.ACK, ack_off=2))
    assert c.sent[-1].flags == TcpFlags.RST and c.sent[-1].seq == seq_add(c.sk.iss, 2)
    assert c.stack.net.fates[sid] == "drop:TCP_FLAGS"

    c = _to_time_wait(profile, tcp_rfc1337=1)
    c.now += 1000 * MS
    c.deliver(_peer(c, 1, TcpFlags.RST))
    tw = _tw(c)
    assert tw.deadline >= c.now + TCP_TIMEWAIT_LEN - 10 * MS


@pytest.mark.parametrize("profile", PROFILES)
def test_syn_above_rcv_nxt_opens_a_new_connection(profile: str) -> None:
    """TCP_TW_SYN: the listener takes the SYN with isn = tw_snd_nxt + 65535 + 2 and the
    timewait sock goes; a SYN below rcv_nxt (no timestamps) is just ACKed."""
    c = _to_time_wait(profile)
    snd_nxt = _tw(c).snd_nxt
    c.now += 10 * MS
    c.deliver(_peer(c, -1, TcpFlags.SYN, seq=c.isn))
    assert c.sent[-1].flags == TcpFlags.ACK
    c.now += 10 * MS
    c.deliver(_peer(c, 0, TcpFlags.SYN, seq=c.isn + 5000))
    synack = c.sent[-1]
    assert synack.flags == TcpFlags.SYN | TcpFlags.ACK
    assert synack.seq == seq_add(snd_nxt, 65535 + 2)
    assert c.sk.four_tuple() not in c.stack.net.twhash
    assert c.stack.ehash[c.sk.four_tuple()] != c.sock


@pytest.mark.parametrize("profile", PROFILES)
def test_paws_reject_counts_per_kernel(profile: str) -> None:
    """A TSval older than tw_ts_recent: tcp_paws_reject. 6.18 counts
    LINUX_MIB_PAWS_TW_REJECTED (PAWSTimewait) and frees it as TCP_RFC7323_TW_PAWS;
    4.13 counts PAWSEstab (NOT_SPECIFIED). Either way it is ACKed, echoing ts_recent."""
    c = _to_time_wait(profile, ts=True)
    assert _tw(c).ts_recent == 200
    c.now += 10 * MS
    sid = c.deliver(_peer(c, 0, TcpFlags.ACK | TcpFlags.PSH, ack_off=2, data=b"y",
                          tsval=150))
    ack = c.sent[-1]
    assert ack.options.timestamp is not None and ack.options.timestamp[1] == 200
    mib, fate = c.stack.net.mib, c.stack.net.fates[sid]
    if profile == "modern":
        assert mib["TcpExtPAWSTimewait"] == 1 and fate == "drop:TCP_RFC7323_TW_PAWS"
        assert DROP_REASONS["TCP_RFC7323_TW_PAWS"] == ("TcpExtPAWSTimewait",)
    else:
        assert mib["TcpExtPAWSEstab"] == 1 and fate == "drop:NOT_SPECIFIED"


@pytest.mark.parametrize("profile", PROFILES)
def test_timer_frees_it(profile: str) -> None:
    """tw_timer_handler -> inet_twsk_kill after TCP_TIMEWAIT_LEN (on the timer wheel:
    15000 jiffies at HZ=250 sit in a level of 512-jiffy buckets, up to 2 s late)."""
    c = _to_time_wait(profile)
    c.advance(TCP_TIMEWAIT_LEN - 10 * MS)
    assert c.stack.net.twhash
    c.advance(2100 * MS)
    assert not c.stack.net.twhash
    c.deliver(_peer(c, 1, TcpFlags.ACK, ack_off=2))
    assert c.sent[-1].flags == TcpFlags.RST


@pytest.mark.parametrize("profile", PROFILES)
def test_orphaned_fin_wait2(profile: str) -> None:
    """An orphan whose FIN is acked becomes a FIN_WAIT2 timewait sock with
    tcp_fin_time (tcp_fin_timeout, 60 s); it repeats tcp_rcv_state_process's checks:
    out of window -> ACK (TCPACKSkippedFinWait2 when limited), new data -> RST, a
    timer of tcp_fin_timeout <= 4 s counts TWKilled."""
    c = connect(profile, tcp_fin_timeout=3)
    _close(c)
    c.deliver(_peer(c, 0, TcpFlags.ACK, ack_off=2))
    tw = _tw(c)
    assert tw.substate is TcpState.FIN_WAIT2
    assert c.stack.net.mib["TcpExtTWKilled"] == 1
    n = len(c.sent)
    for _ in range(2):
        c.now += 10 * MS
        c.deliver(_peer(c, -1, TcpFlags.ACK, ack_off=2, seq=c.isn))
    assert len(c.sent) == n + 1 and c.stack.net.mib["TcpExtTCPACKSkippedFinWait2"] == 1
    c.deliver(_peer(c, 0, TcpFlags.ACK | TcpFlags.PSH, ack_off=2, data=b"late"))
    assert c.sent[-1].flags & TcpFlags.RST
    assert c.sk.four_tuple() not in c.stack.net.twhash


@pytest.mark.parametrize("profile", PROFILES)
def test_half_closed_socket_enters_time_wait_and_ss_shows_a_timewait_sock(
        profile: str) -> None:
    """shutdown(SHUT_WR) keeps the file: after tcp_time_wait its socket is CLOSE, and
    ss shows the connection as a timewait sock (inet_twsk_diag_fill): state only."""
    c = connect(profile)
    c.stack.sock_op("app", LockSock(c.sock), c.now)
    c.stack.sock_op("app", TcpShutdown(c.sock, how=1), c.now)
    c.stack.sock_op("app", ReleaseSock(c.sock), c.now)
    c.collect()
    c.deliver(_peer(c, 0, TcpFlags.ACK, ack_off=2))
    assert c.sk.state is TcpState.FIN_WAIT2  # not an orphan: a full socket still
    c.deliver(_peer(c, 0, TcpFlags.ACK | TcpFlags.FIN, ack_off=2))
    assert c.sk.state is TcpState.CLOSE
    view = tcp_twsk_diag(_tw(c), c.now)
    assert view["state"] == "TIME-WAIT" and view["recv_q"] == view["send_q"] == 0
    assert "skmem" not in view and view["timer"][0] == "timewait"
