"""The stack's per-instance context (the kernel's ``struct net`` plus ``current``).

Model functions reach the profile, the sysctls, the MIB and the output list
through ``sk.net``; nothing here touches a socket or a clock.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from heapq import heappush
from typing import TYPE_CHECKING

from actors.mib import Mib
from actors.profiles import Profile, Sysctls, jiffy_ns
from protocol.segment import Segment
from protocol.sockops import SockOpResult

if TYPE_CHECKING:
    from actors.stack.skb import Skb
    from actors.stack.sock import TcpSock
    from actors.stack.tcp_minisocks import InetTimewaitSock


@dataclass(slots=True, frozen=True)
class Transmit:
    """A segment the stack sends to the wire (an ACK, SYN-ACK, FIN or RST)."""

    segment: Segment
    sock_id: int | None


@dataclass(slots=True, frozen=True)
class OpDone:
    """A reader's process-context request that had to wait has completed."""

    task: str
    sock_id: int
    result: SockOpResult


@dataclass(slots=True, frozen=True)
class Event:
    """Something worth a trace or log line: lock changes, queue moves, drops."""

    name: str
    sock_id: int | None
    fields: dict[str, object]


StackOutput = Transmit | OpDone | Event


# Every way an arriving segment can end, under its name in Linux 6.18's enum
# skb_drop_reason (include/net/dropreason-core.h), which users see as
# SKB_DROP_REASON_<name>. 4.13 has no drop reasons at all, so both profiles use 6.18's
# names, each at the drop site where 6.18's tcp_input.c / tcp_ipv4.c / tcp_minisocks.c
# use it. A few sites free the skb without a reason in 6.18 (consume_skb, __kfree_skb);
# the model still counts them as drops, under the 6.18 reason for the same thing.
# The value: the MIB counters the kernel increments at the reason's drop sites (the
# header's "corresponds to"/"see" notes and the sites themselves), one per site that
# moves one; empty when they move none besides sk_drops. A profile without the counter
# (4.13 has no TCPZeroWindowDrop, TCPRcvQDrop, BeyondWindow or PAWSOldAck) moves nothing.
DROP_REASONS: dict[str, tuple[str, ...]] = {
    # kfree_skb(): tcp_fin's skb_rbtree_purge, tcp_rcv_state_process; tcp_v4_rcv's
    # discard_it for every segment a timewait sock took (answered or not)
    "NOT_SPECIFIED": (),
    "NO_SOCKET": ("TcpOutRsts",),  # tcp_v4_send_reset answers it (not for a RST)
    "QUEUE_PURGE": (),  # __skb_queue_purge: inet_csk_destroy_sock frees an orphan's queue
    "SOCKET_CLOSE": (),  # tcp_close frees unread data (6.18: tcp_eat_recv_skb, no reason)
    "PKT_TOO_SMALL": ("TcpInErrs",),
    "TCP_CSUM": ("TcpInCsumErrors",),  # and TcpInErrs
    # tcp_data_queue: TCPRcvQDrop; tcp_data_queue_ofo: TCPOFODrop (6.18 names both so).
    "PROTO_MEM": ("TcpExtTCPRcvQDrop", "TcpExtTCPOFODrop"),
    "SOCKET_BACKLOG": ("TcpExtTCPBacklogDrop",),  # tcp_add_backlog
    "TCP_FLAGS": (),
    "TCP_ABORT_ON_DATA": ("TcpExtTCPAbortOnData",),
    "TCP_ZEROWINDOW": ("TcpExtTCPZeroWindowDrop",),
    # tcp_data_queue: reason = TCP_OLD_DATA; NET_INC_STATS(LINUX_MIB_DELAYEDACKLOST).
    # DelayedACKLost also counts TCP_OLD_SEQUENCE drops that carried data (below), so
    # nstat's DelayedACKLost is OLD_DATA plus those, not OLD_DATA alone.
    "TCP_OLD_DATA": ("TcpExtDelayedACKLost",),
    "TCP_OVERWINDOW": (),
    "TCP_OFOMERGE": ("TcpExtTCPOFOMerge",),
    "TCP_RFC7323_PAWS": ("TcpExtPAWSEstab",),
    "TCP_RFC7323_PAWS_ACK": ("TcpExtPAWSOldAck",),  # tcp_validate_incoming's old pure ACK
    # tcp_timewait_state_process's PAWS reject (6.15+; 4.13 counts PAWSEstab and frees
    # it as tcp_v4_rcv frees every TIME_WAIT segment, which 6.18 calls NOT_SPECIFIED)
    "TCP_RFC7323_TW_PAWS": ("TcpExtPAWSTimewait",),
    "TCP_LISTEN_OVERFLOW": ("TcpExtListenOverflows",),  # and ListenDrops (tcp_listendrop)
    # No counter of its own: tcp_send_dupack counts DelayedACKLost if it carried data.
    "TCP_OLD_SEQUENCE": (),
    "TCP_INVALID_SEQUENCE": ("TcpExtBeyondWindow",),  # not for a RST or a SYN
    "TCP_INVALID_END_SEQUENCE": ("TcpExtBeyondWindow",),
    "TCP_INVALID_ACK_SEQUENCE": (),
    "TCP_RESET": (),
    "TCP_INVALID_SYN": ("TcpExtTCPSYNChallenge",),  # RFC 5961 4.2: a challenge ACK
    "TCP_CLOSE": (),
    "TCP_OLD_ACK": (),
    "TCP_TOO_OLD_ACK": (),  # RFC 5961 5.2: answered with a challenge ACK
    "TCP_ACK_UNSENT_DATA": (),
    "TCP_OFO_QUEUE_PRUNE": ("TcpExtOfoPruned",),  # once per tcp_prune_ofo_queue
    "TCP_OFO_DROP": (),  # tcp_ofo_queue: in-order data overtook it
    "PFMEMALLOC": ("TcpExtPFMemallocDrop",),
}

# What runs recorded before the names above followed 6.18 called a reason, for reading
# older run directories (rxpath stat, diff, report, explain, replay). Not here:
# TCP_OFO_DROP, which then named tcp_data_queue_ofo's memory drop (now PROTO_MEM) and now
# names tcp_ofo_queue's (then TCP_OFO_DUP); a run directory does not say which it means.
# Old names a site used that 6.18 names differently there (TCP_FLAGS for a SYN
# challenge, now TCP_INVALID_SYN) stay as they were: the name alone does not say the site.
RENAMED_DROP_REASONS: dict[str, str] = {
    "TCP_BACKLOG": "SOCKET_BACKLOG",
    "TCP_OFO_DUP": "TCP_OFO_DROP",
    "TCP_DATA_AFTER_FIN": "NOT_SPECIFIED",
    "LISTEN_OVERFLOW": "TCP_LISTEN_OVERFLOW",
}


def drop_reason(name: str) -> str:
    """A reason as 6.18 names it, also for a name an older run recorded."""
    return RENAMED_DROP_REASONS.get(name, name)


def current_drops(drops: Mapping[str, int]) -> dict[str, int]:
    """Drops by reason under 6.18's names (an older run's merged into them)."""
    out: dict[str, int] = {}
    for name, n in drops.items():
        new = drop_reason(name)
        out[new] = out.get(new, 0) + int(n)
    return out


def drop_counters(name: str, absent: Collection[str] = ()) -> tuple[str, ...]:
    """The counters a drop under ``name`` may have moved, less those ``absent`` (the
    profile's missing counters)."""
    return tuple(c for c in DROP_REASONS.get(drop_reason(name), ()) if c not in absent)

# Fates that are not drops: the bytes reached a reader, or the segment carried no
# data for a queue (a pure ACK, a SYN, a FIN that was processed).
DELIVERED = "delivered"
CONSUMED = "consumed"
MERGED = "merged"  # its bytes were coalesced into another skb; follows that skb


@dataclass(frozen=True, slots=True)
class Proto:
    """The protocol's functions that generic socket code calls back (``struct proto``
    and ``request_sock_ops`` in Linux), so the modules below ``tcp_ipv4`` need not
    import it."""

    backlog_rcv: Callable[[TcpSock, Skb, int], None]  # sk_backlog_rcv: tcp_v4_do_rcv
    release_cb: Callable[[TcpSock, int], None]  # tcp_release_cb
    send_reset: Callable[[Net, Segment], None]  # tcp_v4_send_reset


def _no_prot() -> Proto:
    def missing(*args: object) -> None:
        raise RuntimeError("no protocol registered on this Net (see tcp_ipv4.Stack)")
    return Proto(missing, missing, missing)


@dataclass
class Net:
    profile: Profile
    sysctls: Sysctls
    mib: Mib = field(default_factory=Mib)
    outputs: list[StackOutput] = field(default_factory=list)
    # The task on whose behalf code runs: a reader's name in process context,
    # None in softirq context (the kernel's ``current`` for our purposes).
    current: str | None = None
    track_fates: bool = True
    fates: dict[int, str] = field(default_factory=dict)
    drop_counts: Counter[str] = field(default_factory=Counter)
    emit_events: bool = False
    prot: Proto = field(default_factory=_no_prot)
    rng: random.Random = field(default_factory=random.Random)
    # tcp_hashinfo: every socket by id; established ones by the 4-tuple an arriving
    # segment carries (remote addr, remote port, local addr, local port); listeners by port.
    socks: dict[int, TcpSock] = field(default_factory=dict)
    ehash: dict[tuple[str, int, str, int], int] = field(default_factory=dict)
    listeners: dict[int, int] = field(default_factory=dict)
    # timewait socks (tcp_time_wait's minisocks) by the same 4-tuple, and their timers
    # as (deadline, 4-tuple), stale entries dropped when they surface
    twhash: dict[tuple[str, int, str, int], InetTimewaitSock] = field(default_factory=dict)
    tw_timer_heap: list[tuple[int, tuple[str, int, str, int]]] = field(default_factory=list)
    next_sock_id: int = 1
    # (deadline, sock_id) of every timer armed, earliest first; entries a socket no
    # longer holds (re-armed later, cancelled, socket gone) are dropped when they surface.
    timer_heap: list[tuple[int, int]] = field(default_factory=list)
    # Segments the backlog took (appended or coalesced into its tail): Linux has no
    # MIB counter for a successful sk_add_backlog, only for its failure.
    backlog_enqueued: int = 0
    # lock_sock calls that found the socket owned and had to wait for release_sock.
    lock_waits: int = 0
    task_exits: int = 0
    locks_released_by_exit: int = 0  # a task died owning a socket lock
    bad_sock_ops: int = 0  # requests that did not decode or could not be done
    malformed_segments: int = 0  # frames that did not decode as TCP/IPv4
    # ns per jiffy (CONFIG_HZ is fixed at boot: no sysctl write changes it)
    jiffy: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.jiffy = jiffy_ns(self.sysctls.hz)

    def inc(self, name: str, n: int = 1) -> None:
        """Count under a Linux MIB name, unless this kernel profile lacks that counter."""
        if name in self.profile.absent_counters:
            raise KeyError(f"{name} does not exist in the {self.profile.name} profile")
        self.mib.add(name, n)

    def arm_timer(self, sock_id: int, deadline: int) -> None:
        """Note a deadline a socket now holds, so that no timer scan visits every socket."""
        heappush(self.timer_heap, (deadline, sock_id))

    def transmit(self, seg: Segment, sock_id: int | None) -> None:
        self.mib.add("TcpOutSegs")
        self.outputs.append(Transmit(seg, sock_id))

    def event(self, name: str, sock_id: int | None, **fields: object) -> None:
        if self.emit_events:
            self.outputs.append(Event(name, sock_id, fields))

    def set_fate(self, ids: list[int], fate: str) -> None:
        if self.track_fates:
            for i in ids:
                self.fates[i] = fate

    def drop_unowned(self, skb: Skb, reason: str) -> None:
        """Drop a segment no socket took (kfree_skb_reason before any sk is charged)."""
        self.drop_counts[reason] += 1
        self.set_fate(skb.ids, "drop:" + reason)

    def take_outputs(self) -> list[StackOutput]:
        out, self.outputs = self.outputs, []
        return out
