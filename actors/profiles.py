"""Kernel profiles: every difference between the legacy (4.13) and modern kernels, as data.

The model reads these fields; it never tests the profile's name. ``LEGACY`` spells out
every field; ``MODERN`` is ``LEGACY`` with only what differs replaced, grouped as the
Profiles table of README.md lists it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

MS = 1_000_000  # nanoseconds per millisecond: the model's clock is in ns
US = 1_000
NS_PER_S = 1_000_000_000

# CONFIG_HZ values whose jiffy is a whole number of ns (HZ_300's is not)
HZ_CHOICES = (100, 250, 1000)
# Timer wheel (kernel/time/timer.c, 4.8+): 64 buckets a level, each level 8 times coarser
_LVL_BITS, _LVL_CLK_SHIFT, _LVL_DEPTH = 6, 3, 9


def jiffy_ns(hz: int) -> int:
    """The length of one jiffy (one tick) in ns."""
    return NS_PER_S // hz


def usecs_to_jiffies(usecs: int, hz: int) -> int:
    """usecs_to_jiffies: rounds up, so no timeout is shorter than asked."""
    return -(-usecs * hz // 1_000_000)


def timer_fires_at(now: int, expires: int, jiffy: int) -> int:
    """When a wheel timer armed at ``now`` for ``expires`` (the start of its expiry jiffy,
    in ns) runs: calc_wheel_index puts it in the bucket after ``expires`` at the coarsest
    level whose granularity the delay allows (LVL_START), so a timer never fires early,
    at least one tick late (a delayed ACK armed for 10 jiffies at HZ=250 runs 40-44 ms
    later), and later still for long delays (1 s at HZ=1000: up to 64 ms)."""
    clk = now // jiffy
    exp = expires // jiffy
    delta = exp - clk
    if delta < 0:
        return (clk + 1) * jiffy  # already due: the next tick runs it
    lvl = 0
    while lvl < _LVL_DEPTH - 1 and delta >= ((1 << _LVL_BITS) - 1) << (lvl * _LVL_CLK_SHIFT):
        lvl += 1
    shift = lvl * _LVL_CLK_SHIFT
    return (((exp >> shift) + 1) << shift) * jiffy

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
    # net.core.rmem_max: SO_RCVBUF is clamped to it, and tcp_select_initial_window
    # sizes the window scale for at least this much space
    rmem_max: int = 212992
    # CONFIG_HZ, a build option rather than a sysctl: set per run like one, never by a
    # running script. 250 is Kconfig's default (and Debian's). Every jiffy-based rule
    # follows it: ato, RTO and delayed-ACK rounding, timer expiry, net_rx_action's limit.
    hz: int = 250
    # seconds an orphaned FIN_WAIT2 waits for the peer's FIN (tcp_fin_time)
    tcp_fin_timeout: int = 60
    # 1: a RST does not kill a TIME_WAIT socket (RFC 1337's fix for TIME-WAIT
    # assassination); 0, the default, lets it
    tcp_rfc1337: int = 0


# Read by the softirq (the cpu processes), not the TCP stack.
SOFTIRQ_SYSCTLS = frozenset({"netdev_budget", "netdev_budget_usecs", "dev_weight"})


def sysctl_write(sysctls: Sysctls, name: str, values: list[int] | tuple[int, ...]) -> Sysctls:
    """``sysctls`` after writing ``values`` to the setting ``name`` (a field name: one
    value, or three for tcp_rmem / tcp_wmem); ValueError for anything else."""
    if name not in Sysctls.__dataclass_fields__:
        raise ValueError(f"no sysctl {name!r}")
    if name == "hz":
        raise ValueError("hz is CONFIG_HZ, fixed when the kernel was built, not a sysctl")
    current = getattr(sysctls, name)
    new: int | tuple[int, ...]
    if isinstance(current, tuple):
        if len(values) != len(current):
            raise ValueError(f"{name} takes {len(current)} values, not {len(values)}")
        new = tuple(int(v) for v in values)
    elif len(values) != 1:
        raise ValueError(f"{name} takes one value, not {len(values)}")
    else:
        new = int(values[0])
    changes: dict[str, Any] = {name: new}
    return replace(sysctls, **changes)


@dataclass(frozen=True, slots=True)
class Profile:
    """One kernel's behaviour: one field per difference, named for what it does."""

    name: ProfileName
    # tcp_v4_rcv: the prequeue (tcp_prequeue, gone in 4.14)
    has_prequeue: bool
    prequeue_max_len: int
    # tcp_add_backlog: limit = rcvbuf*a + sndbuf*b_num//b_den + headroom
    backlog_rcvbuf_factor: int
    backlog_sndbuf_num: int
    backlog_sndbuf_den: int
    backlog_headroom: int
    backlog_coalesce: bool  # tcp_add_backlog merges into the backlog's tail skb
    backlog_verifies_csum: bool  # tcp_add_backlog checks the checksum before queueing
    # tcp_rcv_established: header prediction copies straight to the user iovec
    hp_direct_copy: bool
    # tcp_data_queue
    quickack_on_ofo_and_partial: bool
    zero_window_counters: bool  # TCPZeroWindowDrop / TCPRcvQDrop exist
    inorder_nomem_ack: bool  # ICSK_ACK_NOMEM: advertise 0 instead of dropping when queue empty
    gap_filled_ack_now: bool  # ICSK_ACK_NOW when the ofo queue empties (else pingpong=0)
    ofo_sack_compression: bool  # SACK compression instead of an ACK per ofo segment
    ofo_grow_window_sack_only: bool  # tcp_data_queue_ofo grows rcv_ssthresh only with SACK
    # tcp_data_queue_ofo runs tcp_measure_rcv_mss, so ofo segments also teach rcv_mss and
    # scaling_ratio (a lossy start would otherwise learn from in-order data only)
    ofo_measures_rcv_mss: bool
    # tcp_data_queue_ofo calls tcp_rcvbuf_grow: the ofo span needs buffer room as well,
    # or a hole keeps the window (and so the recovery) small
    ofo_grows_rcvbuf: bool
    prune_ofo_spare_lower: bool  # tcp_prune_ofo_queue keeps skbs below the incoming one
    # tcp_ofo_queue, an skb below the D-SACK high mark: 6.x reports [seq, min(end_seq,
    # high)); 4.13 reports [seq, high) and lowers the mark to end_seq instead
    ofo_queue_dsack_clips_end: bool
    prune_requires_rmem: bool  # tcp_prune_queue returns -1 when rmem_alloc == 0
    prune_over_rcvbuf_strict: bool  # tcp_prune_queue compares with '>' (legacy '>=')
    # tcp_sequence
    reject_beyond_window: bool  # BeyondWindow: end_seq past the window is refused
    # windows
    adv_win_scale: int | None  # legacy: 1; modern: None (scaling_ratio)
    initial_scaling_ratio: int  # scaling_ratio/256, initial value
    # tcp_measure_rcv_mss re-learns scaling_ratio = len/truesize whenever a full-sized
    # segment's length changes, so the window follows what the buffer really holds
    rcv_mss_learns_scaling_ratio: bool
    space_subtracts_backlog: bool  # tcp_space: the backlog's memory is not free space
    # tcp_select_initial_window: segments of mss the first window is capped at when
    # mss > 1 << rcv_wscale (4.13 tcp_default_init_rwnd: TCP_INIT_CWND * 2, fewer above a
    # 1460-byte mss); 0 for no cap (6.10+: rcv_wnd = space, only a route's initrwnd caps
    # it; a SYN's window field is still at most 65535)
    initial_rwnd_segs: int
    # the tcp_shrink_window sysctl exists (__tcp_select_window, tcp_select_window); the
    # legacy kernel never shrinks the offered window whatever the sysctl says
    tcp_shrink_window_sysctl: bool
    # ACK rules
    quickack_cap: int
    quick_dec_per_ack: bool  # tcp_event_ack_sent: -1 per scheduled ACK (legacy: -pcount)
    ack_deferred_while_owned: bool  # tcp_backlog_ack_defer
    delack_blocked_flag: bool  # icsk_ack.blocked (tcp_cleanup_rbuf, tcp_send_delayed_ack)
    # tcp_send_delayed_ack caps ato at tcp_delack_max: 6.9+ takes min(icsk_delack_max,
    # rto_min - 1 jiffy), 196 ms at HZ=250
    delack_max_from_rto_min: bool
    # tcp_measure_rcv_mss: PSH on a full-sized segment sets ICSK_ACK_PUSHED, so the
    # delayed ACK for the end of a write is not held up to 500 ms
    rcv_mss_push_sets_pushed: bool
    # wakeups
    data_ready_honours_rcvlowat: bool  # tcp_data_ready
    # tcp_recvmsg
    recvmsg_flush_backlog: bool  # __sk_flush_backlog vs release_sock + lock_sock
    cleanup_rbuf_only_before_sleep: bool
    # receive RTT (tcp_rcv_rtt_update, tcp_rcv_rtt_measure_ts)
    # tcp_rcv_rtt_update: a lower sample replaces the estimate; a higher one is smoothed
    # in only from timestamps with the receive queue drained (a stalled reader or a
    # window sample would otherwise overestimate the RTT)
    rcv_rtt_keeps_minimum: bool
    # tcp_rcv_rtt_measure_ts: one sample per new tsecr value (rcv_rtt_last_tsecr), not one
    # per segment of a burst echoing the same timestamp
    rcv_rtt_once_per_tsecr: bool
    # tcp_rtt_tsopt_us (4.19+): a timestamp RTT is refused past INT_MAX us and a 0 ms
    # delta becomes min_delta: 0 for tcp_rcv_rtt_measure_ts (the sample is dropped), 1 ms
    # for tcp_ack_update_rtt. 4.13 takes delta * 1000 as a u32, 0 included (the receive
    # estimator then counts it as 1 us, the sender's srtt as max(1, 0))
    ts_rtt_via_tsopt_us: bool
    # autotuning (DRS)
    tcp_fixup_rcvbuf: bool  # tcp_init_buffer_space sizes rcvbuf for 2*init_rwnd segments
    rcvq_space_init_capped: bool  # rcvq_space starts at min(ssthresh, rcv_wnd, 10 mss)
    # tcp_rcv_space_adjust: bytes received but not read yet do not count as copied, so a
    # slow reader does not look like a fast link
    rcv_space_subtracts_inq: bool
    # tcp_rcvbuf_grow sizes sk_rcvbuf from the window with low-RTT damping; legacy
    # tcp_rcv_space_adjust uses 2*copied + 16*advmss with 1.25x/1.5x boosts
    tcp_rcvbuf_grow: bool
    # tcp_measure_rcv_mss re-derives window_clamp from each new scaling_ratio
    # (tcp_set_window_clamp(sk, tcp_win_from_space(sk, sk_rcvbuf)), 6.18)
    window_clamp_follows_ratio: bool
    # tcp_rcv_state_process (SYN_RECV): a timestamp flow's advmss loses
    # TCPOLEN_TSTAMP_ALIGNED before tcp_init_transfer -> tcp_init_buffer_space (6.16+,
    # "fix initial rcvq_space.space for passive TS enabled flows"), so window_clamp,
    # rcv_ssthresh and rcvq_space start from the 1448-byte advmss; 4.13 takes the 12
    # bytes off only after tcp_init_buffer_space has used 1460
    passive_ts_advmss_before_buffer_space: bool
    # __alloc_skb -> kmalloc_reserve: a linear head of at most SKB_SMALL_HEAD_CACHE_SIZE
    # (SKB_HEAD_ALIGN(MAX_TCP_HEADER), plus L1_CACHE_BYTES when that is a power of two)
    # comes from skb_small_head_cache at exactly that size, not from a kmalloc slab
    # (6.3+; 0: no such cache, 4.13). It sizes a small tun packet's truesize and its
    # tailroom (what skb_try_coalesce may copy into). The size follows the build's
    # MAX_TCP_HEADER: 576 on the 6.18.44 measured (MAX_TCP_HEADER 192: LL_MAX_HEADER 32,
    # no tunnel headroom), so a 140-byte IP packet costs 832, not 1280
    skb_small_head_cache: int
    # tcp_grow_window raises rcv_ssthresh by at most the room below
    # min(window_clamp, tcp_space) (6.18); 4.13 caps it at window_clamp only
    grow_window_room_capped: bool
    # tcp_ack: an ACK above snd_nxt gets a challenge ACK (6.18; 4.13 drops it silently),
    # and "too old" means below snd_una - min(max_window, bytes_acked) (4.13: max_window)
    ack_unsent_challenge: bool
    too_old_ack_uses_bytes_acked: bool
    # tcp_rcv_state_process takes an old ACK in the closing states ("accept old ack
    # during closing", 6.8); 4.13 answers it with a challenge ACK and drops it
    closing_accepts_old_ack: bool
    # tcp_timewait_state_process's PAWS reject: counted as LINUX_MIB_PAWS_TW_REJECTED
    # ("PAWSTimewait", 6.15) and freed as SKB_DROP_REASON_TCP_RFC7323_TW_PAWS; 4.13
    # counts PAWSEstab and frees it as it frees any TIME_WAIT segment (NOT_SPECIFIED)
    tw_paws_counter: str
    tw_paws_drop_reason: bool
    # softirq
    net_rx_action_rescan: bool  # net_rx_action takes NAPIs scheduled meanwhile into the run
    softnet_columns: int  # /proc/net/softnet_stat
    # netdev_budget_usecs' boot default in jiffies (6.x: 2 * USEC_PER_SEC / HZ), or 0
    # where it is a fixed 2000 us (4.13)
    budget_usecs_jiffies: int = 0
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
    "TcpExtPAWSTimewait",
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
    ofo_measures_rcv_mss=False,
    ofo_grows_rcvbuf=False,
    prune_ofo_spare_lower=False,
    ofo_queue_dsack_clips_end=False,
    prune_requires_rmem=False,
    prune_over_rcvbuf_strict=False,
    reject_beyond_window=False,
    adv_win_scale=1,
    initial_scaling_ratio=128,
    rcv_mss_learns_scaling_ratio=False,
    space_subtracts_backlog=False,
    initial_rwnd_segs=20,
    tcp_shrink_window_sysctl=False,
    quickack_cap=16,
    quick_dec_per_ack=False,
    ack_deferred_while_owned=False,
    delack_blocked_flag=True,
    delack_max_from_rto_min=False,
    rcv_mss_push_sets_pushed=False,
    data_ready_honours_rcvlowat=False,
    recvmsg_flush_backlog=False,
    cleanup_rbuf_only_before_sleep=False,
    rcv_rtt_keeps_minimum=False,
    rcv_rtt_once_per_tsecr=False,
    ts_rtt_via_tsopt_us=False,
    tcp_fixup_rcvbuf=True,
    rcvq_space_init_capped=False,
    rcv_space_subtracts_inq=False,
    tcp_rcvbuf_grow=False,
    window_clamp_follows_ratio=False,
    passive_ts_advmss_before_buffer_space=False,
    skb_small_head_cache=0,
    ack_unsent_challenge=False,
    too_old_ack_uses_bytes_acked=False,
    closing_accepts_old_ack=False,
    tw_paws_counter="TcpExtPAWSEstab",
    tw_paws_drop_reason=False,
    grow_window_room_capped=False,
    net_rx_action_rescan=False,
    softnet_columns=11,
    absent_counters=_MODERN_ONLY_COUNTERS,
    # somaxconn: SOMAXCONN was 128 until "net: increase SOMAXCONN to 4096" (v5.4)
    default_sysctls=Sysctls(tcp_rmem=(4096, 87380, 6291456), netdev_budget_usecs=2000,
                            somaxconn=128),
)

# Only what differs, one group per row of the README's Profiles table.
MODERN = replace(
    LEGACY,
    name="modern",
    # prequeue: gone; tcp_low_latency is accepted and has no effect
    has_prequeue=False,
    prequeue_max_len=0,
    # header prediction: fast path kept, no direct copy
    hp_direct_copy=False,
    # backlog: 2 x rcvbuf + sndbuf / 2 + 64 KB, tail coalescing, checksum at enqueue
    backlog_rcvbuf_factor=2,
    backlog_sndbuf_den=2,
    backlog_coalesce=True,
    backlog_verifies_csum=True,
    # out-of-order segment: SACK compression, no quickack, ACK_NOW once the gap fills
    quickack_on_ofo_and_partial=False,
    ofo_sack_compression=True,
    gap_filled_ack_now=True,
    ofo_grow_window_sack_only=True,
    ofo_measures_rcv_mss=True,
    # pruning under memory pressure
    prune_ofo_spare_lower=True,
    ofo_queue_dsack_clips_end=True,
    prune_requires_rmem=True,
    prune_over_rcvbuf_strict=True,
    # in-order segment, no memory: zero-window ACK and a wakeup; TCPZeroWindowDrop, TCPRcvQDrop
    inorder_nomem_ack=True,
    zero_window_counters=True,
    # sequence check: data beyond the window is refused (BeyondWindow)
    reject_beyond_window=True,
    # window from buffer: learned ratio of payload to truesize; backlog memory not free
    adv_win_scale=None,
    rcv_mss_learns_scaling_ratio=True,
    space_subtracts_backlog=True,
    # initial window: all the space the buffer offers, not 20 segments
    initial_rwnd_segs=0,
    # window shrinking: allowed with tcp_shrink_window = 1
    tcp_shrink_window_sysctl=True,
    # ACK while the socket is owned: deferred to release_sock
    ack_deferred_while_owned=True,
    # delayed ACK: no blocked flag, ato capped at tcp_delack_max, PSH on full segments
    # counts, quickack credit spent per scheduled ACK
    delack_blocked_flag=False,
    delack_max_from_rto_min=True,
    rcv_mss_push_sets_pushed=True,
    quick_dec_per_ack=True,
    # reader wakeups: only once SO_RCVLOWAT bytes are queued
    data_ready_honours_rcvlowat=True,
    # tcp_recvmsg: __sk_flush_backlog, tcp_cleanup_rbuf only before sleeping
    recvmsg_flush_backlog=True,
    cleanup_rbuf_only_before_sleep=True,
    # receive RTT: keep the minimum, one sample per timestamp echoed
    rcv_rtt_keeps_minimum=True,
    rcv_rtt_once_per_tsecr=True,
    # a 0 ms timestamp sample: dropped by the receive estimator, 1 ms for srtt
    ts_rtt_via_tsopt_us=True,
    # receive autotuning: tcp_rcvbuf_grow, unread bytes not counted as copied, the ofo
    # span counted; no tcp_fixup_rcvbuf, rcvq_space starts capped
    tcp_fixup_rcvbuf=False,
    rcvq_space_init_capped=True,
    rcv_space_subtracts_inq=True,
    tcp_rcvbuf_grow=True,
    # window_clamp follows scaling_ratio; tcp_grow_window capped by tcp_space too
    window_clamp_follows_ratio=True,
    # a passive timestamp flow's advmss is 1448 before tcp_init_buffer_space runs
    passive_ts_advmss_before_buffer_space=True,
    # small skb heads from skb_small_head_cache (576 bytes on the measured build)
    skb_small_head_cache=576,
    ack_unsent_challenge=True,
    too_old_ack_uses_bytes_acked=True,
    closing_accepts_old_ack=True,
    tw_paws_counter="TcpExtPAWSTimewait",
    tw_paws_drop_reason=True,
    grow_window_room_capped=True,
    ofo_grows_rcvbuf=True,
    # net_rx_action: NAPIs scheduled during a run join it (same budget)
    net_rx_action_rescan=True,
    # tcp_rmem default / max: 128 KB / 32 MB; netdev_budget_usecs is 2 jiffies (8000 us
    # at HZ=250)
    # rmem_max: 4 MB since "net: set net.core.rmem_max and net.core.wmem_max to 4 MB"
    # (v6.18); 4.13 has SK_RMEM_MAX, 212992
    default_sysctls=replace(LEGACY.default_sysctls, tcp_rmem=(4096, 131072, 33554432),
                            rmem_max=4 << 20, somaxconn=4096,
                            netdev_budget_usecs=2 * jiffy_ns(Sysctls().hz) // US),
    budget_usecs_jiffies=2,
    # counters
    absent_counters=_LEGACY_ONLY_COUNTERS,
    # softnet_stat: 15 columns
    softnet_columns=15,
)

PROFILES: dict[str, Profile] = {"legacy": LEGACY, "modern": MODERN}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}: expected one of {sorted(PROFILES)}") from None


def sysctls_for(profile: Profile, **overrides: int | tuple[int, ...]) -> Sysctls:
    """The profile's boot-time sysctls with ``overrides``; a kernel built with another HZ
    also boots with that HZ's netdev_budget_usecs default (2 jiffies in 6.x)."""
    sysctls = replace(profile.default_sysctls, **overrides)  # type: ignore[arg-type]
    if "netdev_budget_usecs" not in overrides and profile.budget_usecs_jiffies:
        sysctls = replace(sysctls, netdev_budget_usecs=profile.budget_usecs_jiffies
                          * jiffy_ns(sysctls.hz) // US)
    return sysctls
