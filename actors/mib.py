"""SNMP/MIB counters under the names Linux gives them.

Keys are nstat names (group prefix + counter), e.g. ``TcpExtTCPBacklogDrop``,
``TcpInSegs``, ``IpInReceives``, so ``rxpath stat`` reads like ``nstat``.
An unknown name raises, so a typo in the model cannot invent a counter.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

# Within each group, the order net/ipv4/proc.c prints them (snmp4_ipstats_list,
# snmp4_tcp_list, snmp4_net_list, snmp4_ipextstats_list), which is the order nstat
# shows: 4.13's prequeue counters sit where 4.13 had them, 6.x's additions where 6.x
# has them. Only the counters the model moves are listed.
IP_COUNTERS = (
    "InReceives", "InHdrErrors", "InAddrErrors", "InUnknownProtos", "InDiscards",
    "InDelivers", "OutRequests", "ReasmTimeout", "ReasmReqds", "ReasmFails",
    # IP fragment reassembly above: rxpath never reassembles (see actors/cpu/ip_rcv.py).
)

TCP_COUNTERS = (
    "ActiveOpens", "PassiveOpens", "AttemptFails", "EstabResets", "CurrEstab",
    "InSegs", "OutSegs", "RetransSegs", "InErrs", "OutRsts", "InCsumErrors",
)

TCPEXT_COUNTERS = (
    "EmbryonicRsts", "PruneCalled", "RcvPruned", "OfoPruned", "OutOfWindowIcmps",
    "TW", "TWKilled", "PAWSEstab", "BeyondWindow", "PAWSOldAck", "PAWSTimewait",
    "DelayedACKs", "DelayedACKLocked",
    "DelayedACKLost", "ListenOverflows", "ListenDrops",
    "TCPPrequeued", "TCPDirectCopyFromBacklog", "TCPDirectCopyFromPrequeue",
    "TCPPrequeueDropped", "TCPHPHits", "TCPHPHitsToUser", "TCPPureAcks", "TCPHPAcks",
    "TCPTimeouts", "TCPSchedulerFailed", "TCPRcvCollapsed", "TCPBacklogCoalesce",
    "TCPDSACKOldSent", "TCPDSACKOfoSent", "TCPAbortOnData", "TCPAbortOnClose",
    "TCPBacklogDrop", "PFMemallocDrop", "TCPMinTTLDrop", "TCPRcvCoalesce", "TCPOFOQueue",
    "TCPOFODrop", "TCPOFOMerge", "TCPChallengeACK", "TCPSYNChallenge",
    "TCPFromZeroWindowAdv", "TCPToZeroWindowAdv", "TCPWantZeroWindowAdv",
    "TCPACKSkippedPAWS", "TCPACKSkippedSeq", "TCPACKSkippedFinWait2",
    "TCPACKSkippedTimeWait", "TCPACKSkippedChallenge", "TCPAckCompressed",
    "TCPZeroWindowDrop", "TCPRcvQDrop",
)

# IPSTATS_MIB_* that /proc/net/netstat prints on its IpExt line, after TcpExt (both
# kernels have these two, in this order).
IPEXT_COUNTERS = ("InTruncatedPkts", "InCsumErrors")

# In the order nstat prints them: it loads /proc/net/netstat, then /proc/net/snmp6, then
# /proc/net/snmp, each in front of what it has (iproute2's misc/nstat.c), so the output
# is /proc/net/snmp's groups (Ip, ..., Tcp, ...), then /proc/net/netstat's (TcpExt, IpExt).
GROUPS: dict[str, tuple[str, ...]] = {
    "Ip": IP_COUNTERS,
    "Tcp": TCP_COUNTERS,
    "TcpExt": TCPEXT_COUNTERS,
    "IpExt": IPEXT_COUNTERS,
}

ALL_NAMES: tuple[str, ...] = tuple(g + n for g, names in GROUPS.items() for n in names)
_KNOWN = frozenset(ALL_NAMES)

# Names runs recorded before IpExt was its own group, for reading older run directories.
RENAMED_COUNTERS: dict[str, str] = {
    "IpInTruncatedPkts": "IpExtInTruncatedPkts",
    "IpInCsumErrors": "IpExtInCsumErrors",
}


def current_counters(values: Mapping[str, int]) -> dict[str, int]:
    """Counters under today's names (an older run's renamed)."""
    return {RENAMED_COUNTERS.get(k, k): v for k, v in values.items()}


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
