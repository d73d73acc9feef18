"""Kernel profiles: every difference between the legacy (4.13) and modern kernels, as data.

The model reads these fields; it never tests the profile's name. See
the reference's §9 for the table this file encodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

MS = 1_000_000  # nanoseconds per millisecond: the model's clock is in ns
US = 1_000

ProfileName = Literal["legacy", "modern"]


@dataclass(frozen=True, slots=True)
class Sysctls:
    """The tunables a user may set per run (``[sysctl]`` in a scenario)."""

    tcp_low_latency: int = 0
    tcp_rmem: tuple[int, int, int] = (4096, 87380, 6291456)
    tcp_wmem: tuple[int, int, int] = (4096, 16384, 4194304)
    tcp_moderate_rcvbuf: int = 1
    tcp_sack: int = 1
    tcp_dsack: int = 1
    tcp_timestamps: int = 1
    tcp_window_scaling: int = 1
    tcp_app_win: int = 31
    tcp_invalid_ratelimit_ms: int = 500
    tcp_comp_sack_nr: int = 44
    tcp_comp_sack_delay_ns: int = 1 * MS
    tcp_backlog_ack_defer: int = 1
    tcp_shrink_window: int = 0
    tcp_max_syn_backlog: int = 128
    somaxconn: int = 4096
    netdev_budget: int = 300
    netdev_budget_usecs: int = 2000
    dev_weight: int = 64
    netdev_max_backlog: int = 1000


@dataclass(frozen=True, slots=True)
class Profile:
    name: ProfileName
    # tcp_v4_rcv
    has_prequeue: bool
    prequeue_max_len: int
    # tcp_add_backlog limit = rcvbuf*a + sndbuf*b_num//b_den + headroom
    backlog_rcvbuf_factor: int
    backlog_sndbuf_num: int
    backlog_sndbuf_den: int
    backlog_headroom: int
    backlog_coalesce: bool
    backlog_verifies_csum: bool
    # header prediction: direct copy to the user iovec from replay context
    hp_direct_copy: bool
    # tcp_data_queue
    quickack_on_ofo_and_partial: bool
    zero_window_counters: bool  # TCPZeroWindowDrop / TCPRcvQDrop exist
    inorder_nomem_ack: bool  # ICSK_ACK_NOMEM: advertise 0 instead of dropping when queue empty
    gap_filled_ack_now: bool  # ICSK_ACK_NOW when the ofo queue empties (else pingpong=0)
    ofo_sack_compression: bool  # modern: SACK compression instead of ACK per ofo segment
    ofo_grow_window_sack_only: bool
    prune_ofo_spare_lower: bool  # modern tcp_prune_ofo_queue keeps skbs below the incoming one
    prune_requires_rmem: bool  # modern tcp_prune_queue returns -1 when rmem_alloc == 0
    prune_over_rcvbuf_strict: bool  # modern '>' vs legacy '>='
    # sequence validation
    reject_beyond_window: bool  # modern BeyondWindow
    # windows
    adv_win_scale: int | None  # legacy: 1; modern: None (scaling_ratio)
    initial_scaling_ratio: int  # modern scaling_ratio/256, initial value
    space_subtracts_backlog: bool
    # ACK rules
    quickack_cap: int
    quick_dec_per_ack: bool  # modern: -1 per scheduled ACK; legacy: -pcount
    ack_deferred_while_owned: bool  # modern tcp_backlog_ack_defer
    delack_blocked_flag: bool  # legacy icsk_ack.blocked
    # wakeups
    data_ready_honours_rcvlowat: bool
    # tcp_recvmsg
    recvmsg_flush_backlog: bool  # modern __sk_flush_backlog vs release+lock
    cleanup_rbuf_only_before_sleep: bool
    # autotuning
    modern_autotune: bool
    tcp_fixup_rcvbuf: bool  # legacy: tcp_init_buffer_space sizes rcvbuf for 2*init_rwnd segments
    rcvq_space_init_capped: bool  # modern: rcvq_space starts at min(ssthresh, rcv_wnd, 10 mss)
    net_rx_action_rescan: bool  # modern net_rx_action goes back to the head of the poll list
    window_clamp_follows_ratio: bool  # v6.10+: a new scaling_ratio re-derives window_clamp
    # softnet_stat columns
    softnet_columns: int
    # MIB counters that do not exist in this kernel
    absent_counters: frozenset[str] = field(default_factory=frozenset)
    default_sysctls: Sysctls = field(default_factory=Sysctls)

    def backlog_limit(self, rcvbuf: int, sndbuf: int) -> int:
        limit = (self.backlog_rcvbuf_factor * rcvbuf
                 + sndbuf * self.backlog_sndbuf_num // self.backlog_sndbuf_den
                 + self.backlog_headroom)
        return min(limit, 0xFFFFFFFF)

    def win_from_space(self, space: int, scaling_ratio: int) -> int:
        """How much window a given amount of buffer space can advertise."""
        if space <= 0:
            return 0
        if self.adv_win_scale is not None:
            return space - (space >> self.adv_win_scale) if self.adv_win_scale > 0 \
                else space >> -self.adv_win_scale
        return (space * scaling_ratio) >> 8

    def space_from_win(self, win: int, scaling_ratio: int) -> int:
        if self.adv_win_scale is not None:
            return win * 2 if self.adv_win_scale == 1 else win
        return (win << 8) // max(scaling_ratio, 1)


_LEGACY_ONLY_COUNTERS = frozenset({
    "TcpExtTCPPrequeued", "TcpExtTCPDirectCopyFromBacklog", "TcpExtTCPDirectCopyFromPrequeue",
    "TcpExtTCPPrequeueDropped", "TcpExtTCPHPHitsToUser", "TcpExtTCPSchedulerFailed",
})
_MODERN_ONLY_COUNTERS = frozenset({
    "TcpExtTCPBacklogCoalesce", "TcpExtTCPZeroWindowDrop", "TcpExtTCPRcvQDrop",
    "TcpExtBeyondWindow", "TcpExtPAWSOldAck", "TcpExtTCPAckCompressed",
})

LEGACY = Profile(
    name="legacy",
    has_prequeue=True,
    prequeue_max_len=32,
    backlog_rcvbuf_factor=1,
    backlog_sndbuf_num=1,
    backlog_sndbuf_den=1,
    backlog_headroom=64 * 1024,
    backlog_coalesce=False,
    backlog_verifies_csum=False,
    hp_direct_copy=True,
    quickack_on_ofo_and_partial=True,
    zero_window_counters=False,
    inorder_nomem_ack=False,
    gap_filled_ack_now=False,
    ofo_sack_compression=False,
    ofo_grow_window_sack_only=False,
    prune_ofo_spare_lower=False,
    prune_requires_rmem=False,
    prune_over_rcvbuf_strict=False,
    reject_beyond_window=False,
    adv_win_scale=1,
    initial_scaling_ratio=128,
    space_subtracts_backlog=False,
    quickack_cap=16,
    quick_dec_per_ack=False,
    ack_deferred_while_owned=False,
    delack_blocked_flag=True,
    data_ready_honours_rcvlowat=False,
    recvmsg_flush_backlog=False,
    cleanup_rbuf_only_before_sleep=False,
    modern_autotune=False,
    tcp_fixup_rcvbuf=True,
    rcvq_space_init_capped=False,
    net_rx_action_rescan=False,
    window_clamp_follows_ratio=False,
    softnet_columns=11,
    absent_counters=_MODERN_ONLY_COUNTERS,
    default_sysctls=Sysctls(tcp_rmem=(4096, 87380, 6291456), netdev_budget_usecs=2000),
)

MODERN = Profile(
    name="modern",
    has_prequeue=False,
    prequeue_max_len=0,
    backlog_rcvbuf_factor=2,
    backlog_sndbuf_num=1,
    backlog_sndbuf_den=2,
    backlog_headroom=64 * 1024,
    backlog_coalesce=True,
    backlog_verifies_csum=True,
    hp_direct_copy=False,
    quickack_on_ofo_and_partial=False,
    zero_window_counters=True,
    inorder_nomem_ack=True,
    gap_filled_ack_now=True,
    ofo_sack_compression=True,
    ofo_grow_window_sack_only=True,
    prune_ofo_spare_lower=True,
    prune_requires_rmem=True,
    prune_over_rcvbuf_strict=True,
    reject_beyond_window=True,
    adv_win_scale=None,
    initial_scaling_ratio=128,
    space_subtracts_backlog=True,
    quickack_cap=16,
    quick_dec_per_ack=True,
    ack_deferred_while_owned=True,
    delack_blocked_flag=False,
    data_ready_honours_rcvlowat=True,
    recvmsg_flush_backlog=True,
    cleanup_rbuf_only_before_sleep=True,
    modern_autotune=True,
    tcp_fixup_rcvbuf=False,
    rcvq_space_init_capped=True,
    net_rx_action_rescan=True,
    # v6.10+ re-derives window_clamp from each new scaling_ratio. Implemented (see
    # tcp_set_window_clamp) but off: with a tiny SO_RCVBUF it can leave rcv_ssthresh below
    # rcv_mss and the window at zero for good (found by the stream property test); to be
    # checked against the kernel before it becomes the default.
    window_clamp_follows_ratio=False,
    softnet_columns=15,
    absent_counters=_LEGACY_ONLY_COUNTERS,
    # modern netdev_budget_usecs is 2 jiffies; with HZ=1000 that is 2000 us.
    default_sysctls=Sysctls(tcp_rmem=(4096, 131072, 33554432), netdev_budget_usecs=2000),
)

PROFILES: dict[str, Profile] = {"legacy": LEGACY, "modern": MODERN}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}: expected one of {sorted(PROFILES)}") from None


def sysctls_for(profile: Profile, **overrides: int | tuple[int, int, int]) -> Sysctls:
    return replace(profile.default_sysctls, **overrides)  # type: ignore[arg-type]
