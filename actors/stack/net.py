"""The stack's per-instance context (the kernel's ``struct net`` plus ``current``).

Model functions reach the profile, the sysctls, the MIB and the output list
through ``sk.net``; nothing here touches a socket or a clock.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from actors.mib import Mib
from actors.profiles import Profile, Sysctls
from protocol.segment import Segment


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
    result: dict[str, object]


@dataclass(slots=True, frozen=True)
class Event:
    """Something worth a trace or log line: lock changes, queue moves, drops."""

    name: str
    sock_id: int | None
    fields: dict[str, object]


StackOutput = Transmit | OpDone | Event


# Every way an arriving segment can end, named after Linux's SKB_DROP_REASON_*.
# The value says which counter Linux increments for it (None: only sk_drops).
DROP_REASONS: dict[str, str | None] = {
    "NO_SOCKET": "TcpOutRsts",
    "TCP_CSUM": "TcpInCsumErrors",
    "PKT_TOO_SMALL": "TcpInErrs",
    "TCP_BACKLOG": "TcpExtTCPBacklogDrop",
    "PFMEMALLOC": "TcpExtPFMemallocDrop",
    "TCP_FLAGS": None,
    "TCP_ZEROWINDOW": None,  # modern also counts TcpExtTCPZeroWindowDrop
    "TCP_OLD_DATA": "TcpExtDelayedACKLost",
    "TCP_OVERWINDOW": None,
    "TCP_OFOMERGE": "TcpExtTCPOFOMerge",
    "TCP_OFO_DROP": "TcpExtTCPOFODrop",
    "TCP_OFO_QUEUE_PRUNE": "TcpExtOfoPruned",
    "PROTO_MEM": "TcpExtTCPRcvQDrop",
    "TCP_INVALID_SEQUENCE": None,
    "TCP_RFC7323_PAWS": None,  # TcpExtPAWSEstab (modern: PAWSOldAck for old pure ACKs)
    "TCP_RESET": None,
    "TCP_INVALID_ACK_SEQUENCE": None,
    "TCP_CLOSE": None,
    "SOCKET_CLOSE": None,
    "TCP_OLD_ACK": None,
    "TCP_OLD_SEQUENCE": None,  # answered by a dupack (DelayedACKLost if it had data)
    "TCP_INVALID_END_SEQUENCE": "TcpExtBeyondWindow",
    "TCP_ACK_UNSENT_DATA": None,
    "TCP_OFO_DUP": None,  # an ofo skb that in-order data overtook entirely
    "TCP_DATA_AFTER_FIN": None,
    "TCP_ABORT_ON_DATA": "TcpExtTCPAbortOnData",
    "LISTEN_OVERFLOW": "TcpExtListenDrops",
}

# Fates that are not drops: the bytes reached a reader, or the segment carried no
# data for a queue (a pure ACK, a SYN, a FIN that was processed).
DELIVERED = "delivered"
CONSUMED = "consumed"
MERGED = "merged"  # its bytes were coalesced into another skb; follows that skb


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

    def inc(self, name: str, n: int = 1) -> None:
        """Count under a Linux MIB name, unless this kernel profile lacks that counter."""
        if name in self.profile.absent_counters:
            raise KeyError(f"{name} does not exist in the {self.profile.name} profile")
        self.mib.add(name, n)

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

    def take_outputs(self) -> list[StackOutput]:
        out, self.outputs = self.outputs, []
        return out
