"""Rules pinned to the kernel functions that define them (4.13 for legacy, 6.18 for
modern), third part: SO_RCVLOWAT (tcp_set_rcvlowat, tcp_epollin_ready), net_rx_action's
time limit in jiffies, ``ss``'s Send-Q (tcp_diag_get_info) and the one parser of
``--sysctl``. Each test names the function it checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.cpu.napi import net_rx_action_time_limit
from actors.profiles import (
    LEGACY,
    MODERN,
    MS,
    US,
    Sysctls,
    jiffy_ns,
    sysctl_write,
    sysctls_for,
    timer_fires_at,
)
from actors.stack import tcp
from actors.stack.sock import AckPending, TcpState
from actors.stack.tcp import sock_setsockopt, tcp_diag_wqueue, tcp_get_info, tcp_poll
from actors.stack.tcp_input import tcp_epollin_ready, tcp_rmem_pressure
from actors.stack.tcp_output import tcp_win_from_space
from cli.config import ConfigError, load_scenario, parse_sysctl_assignment
from cli.drill.command import _sysctl_setting
from protocol.constants import EPOLLIN
from protocol.seq import seq_add
from protocol.sockops import SockOpResult
from tests.stack_harness import connect

PROFILES = ("legacy", "modern")


# ------------------------------------------------------- SO_RCVLOWAT: tcp_set_rcvlowat


def test_tcp_set_rcvlowat_caps_at_half_of_tcp_rmem_max() -> None:
    """tcp_set_rcvlowat: without SO_RCVBUF the mark is at most tcp_rmem[2] >> 1."""
    c = connect("modern")
    rmem_max = c.stack.sysctls.tcp_rmem[2]
    sock_setsockopt(c.sk, "SO_RCVLOWAT", 1 << 30, c.now)
    assert c.sk.rcvlowat == rmem_max >> 1


def test_tcp_set_rcvlowat_caps_at_half_of_a_locked_rcvbuf() -> None:
    """tcp_set_rcvlowat: with SOCK_RCVBUF_LOCK the cap is sk_rcvbuf >> 1 and the
    buffer and clamp are left alone."""
    c = connect("modern", rcvbuf=20000)
    sk = c.sk
    rcvbuf, clamp = sk.rcvbuf, sk.window_clamp
    sock_setsockopt(sk, "SO_RCVLOWAT", 1 << 20, c.now)
    assert sk.rcvlowat == rcvbuf >> 1
    assert (sk.rcvbuf, sk.window_clamp) == (rcvbuf, clamp)


def test_legacy_so_rcvlowat_is_not_capped() -> None:
    """4.13 sock_setsockopt: sk_rcvlowat = val ? : 1, no tcp_set_rcvlowat; a negative
    value means INT_MAX in both."""
    c = connect("legacy")
    sock_setsockopt(c.sk, "SO_RCVLOWAT", 1 << 30, c.now)
    assert c.sk.rcvlowat == 1 << 30
    sock_setsockopt(c.sk, "SO_RCVLOWAT", 0, c.now)
    assert c.sk.rcvlowat == 1
    sock_setsockopt(c.sk, "SO_RCVLOWAT", -1, c.now)
    assert c.sk.rcvlowat == 2**31 - 1


def test_tcp_set_rcvlowat_grows_an_unlocked_rcvbuf_and_a_smaller_clamp() -> None:
    """tcp_set_rcvlowat: space = tcp_space_from_win(val); if above sk_rcvbuf, sk_rcvbuf
    becomes it, and a window_clamp below val is raised to val."""
    c = connect("modern")
    sk = c.sk
    sk.window_clamp = 50_000
    val = 2 * sk.rcvbuf
    sock_setsockopt(sk, "SO_RCVLOWAT", val, c.now)
    assert sk.rcvbuf == c.stack.net.profile.space_from_win(val, sk.scaling_ratio)
    assert tcp_win_from_space(sk, sk.rcvbuf) >= val - 1
    assert sk.window_clamp == val
    # a mark the buffer already backs changes neither
    rcvbuf = sk.rcvbuf
    sock_setsockopt(sk, "SO_RCVLOWAT", 10, c.now)
    assert (sk.rcvbuf, sk.window_clamp, sk.rcvlowat) == (rcvbuf, val, 10)


def test_tcp_set_rcvlowat_wakes_the_reader_when_lowered() -> None:
    """tcp_set_rcvlowat calls tcp_data_ready: 100 bytes queued under a mark of 1000
    wake nobody; lowering the mark to 50 does."""
    c = connect("modern", rcvlowat=1000)
    sk = c.sk
    sk.data_ready = False
    c.deliver(c.segment(0, bytes(100)))
    assert not sk.data_ready
    assert not tcp_poll(sk).mask & EPOLLIN
    sock_setsockopt(sk, "SO_RCVLOWAT", 50, c.now)
    assert sk.data_ready
    assert tcp_poll(sk).mask & EPOLLIN


def test_tcp_epollin_ready_needs_bytes_and_uses_tcp_rmem_pressure() -> None:
    """tcp_epollin_ready: false with nothing queued, whatever the window; else the
    mark, tcp_rmem_pressure (rmem > rcvbuf - (rcvbuf >> 3), exactly), or a receive
    window of at most rcv_mss."""
    c = connect("modern")
    sk = c.sk
    sk.rcv_wnd = 0  # a closed window alone does not make an empty queue readable
    assert not tcp_epollin_ready(sk, 1)
    sk.rcvbuf = 10_001
    sk.rmem_alloc = 10_001 - (10_001 >> 3)  # 8751: at the threshold, not above
    assert not tcp_rmem_pressure(sk)
    sk.rmem_alloc += 1
    assert tcp_rmem_pressure(sk)


# ------------------------------------------------------- net_rx_action time limit


@pytest.mark.parametrize(("hz", "start_us", "usecs", "limit_us"), [
    (1000, 0, 2000, 2000), (1000, 5, 2000, 2000), (1000, 999, 2000, 2000),
    (1000, 1000, 2000, 3000), (1000, 0, 100, 1000), (1000, 1500, 1001, 3000),
    (1000, 700, 0, 0),
    # HZ=250: 4 ms jiffies; 2000 us rounds up to one of them, 8000 us is two
    (250, 0, 2000, 4000), (250, 3999, 2000, 4000), (250, 4000, 2000, 8000),
    (250, 5000, 8000, 12000), (100, 9000, 2000, 10000),
])
def test_net_rx_action_time_limit_in_jiffies(hz: int, start_us: int, usecs: int,
                                             limit_us: int) -> None:
    """net_rx_action (4.13 and 6.18): time_limit = jiffies + usecs_to_jiffies(
    netdev_budget_usecs): the start's jiffy plus the usecs rounded up to jiffies."""
    assert net_rx_action_time_limit(start_us * US, usecs, hz) == limit_us * US


def test_default_budget_usecs_follows_the_profile_and_hz() -> None:
    """netdev_budget_usecs: 2000 in 4.13 whatever HZ; 2 * USEC_PER_SEC / HZ in 6.18
    (8000 at Kconfig's default HZ=250, 2000 at HZ=1000)."""
    assert LEGACY.default_sysctls.hz == MODERN.default_sysctls.hz == 250
    assert LEGACY.default_sysctls.netdev_budget_usecs == 2000
    assert MODERN.default_sysctls.netdev_budget_usecs == 8000
    assert sysctls_for(MODERN, hz=1000).netdev_budget_usecs == 2000
    assert sysctls_for(MODERN, hz=100).netdev_budget_usecs == 20000
    assert sysctls_for(LEGACY, hz=1000).netdev_budget_usecs == 2000
    assert sysctls_for(MODERN, hz=1000, netdev_budget_usecs=500).netdev_budget_usecs == 500
    assert net_rx_action_time_limit(0, MODERN.default_sysctls.netdev_budget_usecs, 250) == 8 * MS


# ------------------------------------------------------- ss Send-Q: tcp_diag_get_info


def test_ss_send_q_of_a_listener_is_its_max_ack_backlog() -> None:
    """tcp_diag_get_info: for TCP_LISTEN, idiag_wqueue = sk_max_ack_backlog, which
    listen() caps at somaxconn."""
    c = connect("modern")
    lsk = c.stack.socks[c.listener]
    assert lsk.state == TcpState.LISTEN
    assert tcp_get_info(lsk, c.now)["send_q"] == lsk.backlog_max == 128
    lid = c.stack.listen("10.0.0.9", 81, c.now, backlog=100_000)
    assert tcp_diag_wqueue(c.stack.socks[lid]) == c.stack.sysctls.somaxconn


@pytest.mark.parametrize("profile", PROFILES)
def test_ss_send_q_is_write_seq_minus_snd_una(profile: str) -> None:
    """tcp_diag_get_info: idiag_wqueue = write_seq - snd_una; the FIN's sequence
    number counts until it is acknowledged."""
    c = connect(profile)
    sk = c.sk
    assert tcp_get_info(sk, c.now)["send_q"] == 0
    res = tcp.tcp_sendmsg(sk, bytes(100), c.now)
    assert getattr(res, "sent", 0) == 100
    c.collect()
    assert tcp_diag_wqueue(sk) == 100
    tcp.tcp_shutdown(sk, 1, c.now)
    c.collect()
    assert tcp_diag_wqueue(sk) == 101
    c.deliver(c.segment(0, b"").with_(ack=seq_add(sk.iss, 1 + 101)))
    assert tcp_diag_wqueue(sk) == 0


# ------------------------------------------------------- --sysctl: one parser


def test_drill_sysctl_uses_the_run_parser() -> None:
    """rxpath drill --sysctl goes through cli.config.parse_sysctl_assignment: the
    same names (kernel, dotted or short, tcp_invalid_ratelimit for the ms field) and
    the same refusals as rxpath run."""
    assert _sysctl_setting("net.ipv4.tcp_rmem=4096,87380,6291456") == \
        ("tcp_rmem", "4096 87380 6291456")
    assert _sysctl_setting("net.core.rmem_max=4194304") == ("rmem_max", "4194304")
    assert parse_sysctl_assignment("net.ipv4.tcp_invalid_ratelimit=250") == \
        ("tcp_invalid_ratelimit_ms", 250)
    assert _sysctl_setting("tcp_invalid_ratelimit=250") == ("tcp_invalid_ratelimit_ms", "250")
    with pytest.raises(ConfigError):
        parse_sysctl_assignment("tcp_nonesuch=1")
    for bad in ("tcp_nonesuch=1", "tcp_rmem=1,2", "tcp_sack=on", "nonsense"):
        with pytest.raises(ValueError):
            _sysctl_setting(bad)


def test_so_rcvlowat_before_listen_grows_the_buffer_the_child_inherits() -> None:
    """tcp_set_rcvlowat on the listening socket (sock_set_rcvlowat here): sk_rcvbuf
    grows to tcp_space_from_win(val) with no clamp to raise (window_clamp is 0 before
    the handshake), and the child cloned from it (sk_clone_lock) starts with that
    buffer and mark. 4.13 (no tcp_set_rcvlowat) keeps tcp_rmem[1]."""
    modern = connect("modern", rcvlowat=400_000)
    default = connect("modern")
    assert modern.sk.rcvlowat == 400_000
    prof = modern.stack.net.profile
    grown = prof.space_from_win(400_000, default.stack.socks[default.listener].scaling_ratio)
    assert modern.stack.socks[modern.listener].rcvbuf == grown
    assert modern.sk.rcvbuf >= grown > default.sk.rcvbuf
    legacy = connect("legacy", rcvlowat=400_000)
    assert legacy.sk.rcvlowat == 400_000
    assert legacy.sk.rcvbuf == connect("legacy").sk.rcvbuf


# ------------------------------------------------------- the timer wheel (kernel/time/timer.c)


@pytest.mark.parametrize(("hz", "now_us", "delay_jiffies", "fires_us"), [
    # level 0 (delay < 63 jiffies): the bucket after the expiry jiffy
    (250, 0, 10, 44_000), (250, 3_999, 10, 44_000), (250, 4_000, 10, 48_000),
    (1000, 500, 40, 41_000),
    # level 1 (63..503): 8-jiffy buckets, rounded up past the expiry
    (250, 0, 250, 1_024_000), (1000, 0, 200, 208_000),
    # level 2 (504..4031): 64-jiffy buckets: a 1 s timer at HZ=1000 runs up to 64 ms late
    (1000, 0, 1000, 1_024_000), (1000, 0, 1023, 1_024_000), (1000, 0, 1024, 1_088_000),
])
def test_timer_fires_in_the_wheel_bucket_after_its_expiry(hz: int, now_us: int,
                                                          delay_jiffies: int,
                                                          fires_us: int) -> None:
    """calc_wheel_index / calc_index: a timer for jiffies + delay goes in the bucket
    ((expires >> LVL_SHIFT(lvl)) + 1) << LVL_SHIFT(lvl) of the first level whose range
    holds the delay, so it never fires early and runs at least a tick late."""
    j = jiffy_ns(hz)
    now = now_us * US
    assert timer_fires_at(now, now - now % j + delay_jiffies * j, j) == fires_us * US


def test_hz_is_not_a_sysctl_and_config_checks_it(tmp_path: Path) -> None:
    """CONFIG_HZ is fixed when the kernel is built: no sysctl write changes it, and a
    scenario may only ask for a value whose jiffy is a whole number of ns."""
    with pytest.raises(ValueError, match="CONFIG_HZ"):
        sysctl_write(Sysctls(), "hz", [1000])
    bad = tmp_path / "bad.toml"
    bad.write_text("[sysctl]\nhz = 300\n")
    with pytest.raises(ConfigError) as err:
        load_scenario(bad)
    assert err.value.key == "sysctl.hz" and "100, 250, 1000" in err.value.detail
    good = tmp_path / "good.toml"
    good.write_text('profile = "modern"\n[sysctl]\nhz = 1000\n')
    sc = load_scenario(good)
    assert sc.sysctl.hz == 1000 and sc.sysctl.netdev_budget_usecs == 2000


# ------------------------------------------------------- TCP_QUICKACK


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(("val", "acked", "pingpong_after"), [(1, True, 0), (2, True, 1),
                                                              (0, False, 1)])
def test_tcp_quickack_pushes_a_scheduled_ack(profile: str, val: int, acked: bool,
                                             pingpong_after: int) -> None:
    """__tcp_sock_set_quickack: a non-zero value leaves pingpong mode and, with an ACK
    scheduled and nothing unread, sends it now (tcp_cleanup_rbuf(sk, 1) with
    ICSK_ACK_PUSHED); an even one re-enters pingpong mode after; 0 only enters it."""
    c = connect(profile)
    sk = c.sk
    sk.icsk_ack.pingpong = 1
    sk.icsk_ack.pending |= AckPending.SCHED | AckPending.TIMER
    sent = len(c.stack.net.outputs)
    assert isinstance(tcp.sock_setsockopt(sk, "TCP_QUICKACK", val, c.now), SockOpResult)
    assert (len(c.stack.net.outputs) > sent) is acked
    assert sk.icsk_ack.pingpong == pingpong_after
