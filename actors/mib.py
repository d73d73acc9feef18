"""SNMP/MIB counters under the names Linux gives them.

Keys are nstat names (group prefix + counter), e.g. ``TcpExtTCPBacklogDrop``,
``TcpInSegs``, ``IpInReceives``, so ``rxpath stat`` reads like ``nstat``.
An unknown name raises, so a typo in the model cannot invent a counter.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

IP_COUNTERS = (
    "InReceives", "InHdrErrors", "InAddrErrors", "InUnknownProtos", "InDiscards",
    "InDelivers", "InCsumErrors", "InTruncatedPkts", "OutRequests",
    # IP fragment reassembly (rxpath never reassembles; see actors/cpu/ip_rcv.py)
    "ReasmReqds", "ReasmFails", "ReasmTimeout",
)

TCP_COUNTERS = (
    "ActiveOpens", "PassiveOpens", "AttemptFails", "EstabResets", "CurrEstab",
    "InSegs", "OutSegs", "RetransSegs", "InErrs", "OutRsts", "InCsumErrors",
)

TCPEXT_COUNTERS = (
    # tcp_v4_rcv / backlog / prequeue
    "TCPBacklogDrop", "TCPBacklogCoalesce", "PFMemallocDrop", "TCPMinTTLDrop",
    "TCPPrequeued", "TCPDirectCopyFromBacklog", "TCPDirectCopyFromPrequeue",
    "TCPPrequeueDropped", "TCPSchedulerFailed",
    # header prediction and ACK processing
    "TCPHPHits", "TCPHPHitsToUser", "TCPHPAcks", "TCPPureAcks",
    # tcp_data_queue
    "TCPRcvCoalesce", "TCPZeroWindowDrop", "TCPRcvQDrop", "TCPOFOQueue", "TCPOFODrop",
    "TCPOFOMerge", "DelayedACKLost", "TCPDSACKOldSent", "TCPDSACKOfoSent",
    # memory
    "PruneCalled", "RcvPruned", "OfoPruned", "TCPRcvCollapsed",
    # validation
    "PAWSEstab", "PAWSOldAck", "BeyondWindow", "TCPACKSkippedPAWS", "TCPACKSkippedSeq",
    "TCPACKSkippedChallenge",
    "TCPSYNChallenge", "TCPChallengeACK", "OutOfWindowIcmps",
    # ACKs and windows
    "DelayedACKs", "DelayedACKLocked", "TCPAckCompressed", "TCPWantZeroWindowAdv",
    "TCPToZeroWindowAdv", "TCPFromZeroWindowAdv",
    # connections
    "ListenOverflows", "ListenDrops", "TCPAbortOnData", "TCPAbortOnClose",
    "EmbryonicRsts", "TCPTimeouts",
)

GROUPS: dict[str, tuple[str, ...]] = {
    "Ip": IP_COUNTERS,
    "Tcp": TCP_COUNTERS,
    "TcpExt": TCPEXT_COUNTERS,
}

ALL_NAMES: tuple[str, ...] = tuple(g + n for g, names in GROUPS.items() for n in names)
_KNOWN = frozenset(ALL_NAMES)

# Counters whose value is a gauge rather than a running total (nstat shows them too).
GAUGES = frozenset({"TcpCurrEstab"})


class Mib(Mapping[str, int]):
    """A set of named counters; only Linux names are accepted."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, int] | None = None) -> None:
        self._values: dict[str, int] = {}
        if values:
            for name, value in values.items():
                self.add(name, value)

    def add(self, name: str, n: int = 1) -> None:
        values = self._values
        if name in values:  # already counted, so a known name: the per-segment case
            values[name] += n
            return
        if name not in _KNOWN:
            raise KeyError(f"unknown MIB counter {name!r}")
        values[name] = n

    inc = add

    def __getitem__(self, name: str) -> int:
        if name not in _KNOWN:
            raise KeyError(f"unknown MIB counter {name!r}")
        return self._values.get(name, 0)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def nonzero(self) -> dict[str, int]:
        return {k: v for k, v in self._values.items() if v}

    def merge(self, other: Mapping[str, int]) -> None:
        for name, value in other.items():
            self.add(name, value)

    def as_dict(self, names: Iterable[str] | None = None) -> dict[str, int]:
        keys = ALL_NAMES if names is None else names
        return {k: self._values.get(k, 0) for k in keys}
