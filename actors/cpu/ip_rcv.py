"""IPv4 ingress on the cpu actor: ``ip_rcv`` → ``ip_rcv_core`` → ``ip_rcv_finish`` →
``ip_local_deliver``, up to the hand-off to ``tcp_v4_rcv``.

The same checks, counters and drop reasons as net/ipv4/ip_input.c and
net/ipv4/route.c, for a host that does not forward:

1. ``IpInReceives`` for every frame.
2. ``ip_rcv_core`` header checks (:func:`protocol.wire.decode_ipv4`):
   ``IpInHdrErrors`` (+ ``IpExtInCsumErrors`` for a bad checksum) or
   ``IpExtInTruncatedPkts`` (both on /proc/net/netstat's IpExt line).
3. ``ip_route_input_slow``'s martian checks: multicast, limited-broadcast or
   0/8 source (``IP_INVALID_SOURCE``), 0/8 destination (``IP_INVALID_DEST``),
   127/8 on either side (``IP_LOCALNET``), and, for a local destination, a
   source that is one of our own addresses (``IP_LOCAL_SOURCE``). Linux counts
   none of these in the IP MIB.
4. ``ip_rcv_options`` when ``ihl > 5``: a structurally broken option list
   counts ``IpInHdrErrors``.
5. A destination that is not ours: with forwarding off the route is
   ``RTN_UNREACHABLE`` and ``ip_error`` counts ``IpInAddrErrors``.
6. ``ip_local_deliver``: fragments are not reassembled (see below).
7. ``ip_protocol_deliver_rcu``: a protocol other than TCP counts
   ``IpInUnknownProtos``; TCP counts ``IpInDelivers`` (Linux does so after
   ``tcp_v4_rcv`` returns, which for IPv4 TCP is unconditional, so counting at
   hand-off gives the same totals).

Not modelled: ``PACKET_OTHERHOST`` and other link-layer packet types,
netfilter hooks, early demux's cached route, rp_filter, per-option semantics
of ``ip_options_compile`` (only its length walk), source routing, ICMP errors,
and broadcast/multicast destinations (they count as not local).

Fragments: rxpath's peers always set DF, so a fragment only arrives when a test
or impairment builds one. Linux would queue it for reassembly
(``IpReasmReqds``) and, its siblings never arriving, free it ``ipfrag_time``
later with ``IpReasmFails`` and ``IpReasmTimeout`` (``FRAG_REASM_TIMEOUT``);
rxpath, which does not reassemble, reaches that outcome at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from actors.mib import Mib
from protocol.segment import IPPROTO_TCP, IPV4_HEADER_LEN
from protocol.wire import (
    IP_MF,
    IP_OFFSET,
    Ipv4Fragment,
    Ipv4Packet,
    MalformedPacket,
    NotTcp,
    decode_ipv4,
)

__all__ = ["IpRcvResult", "ip_options_ok", "ip_rcv"]

_LIMITED_BROADCAST = b"\xff\xff\xff\xff"
_IPOPT_END = 0
_IPOPT_NOOP = 1


@dataclass(slots=True, frozen=True)
class IpRcvResult:
    """What ``ip_rcv`` did with one frame.

    Exactly one of ``packet`` (handed to TCP) and ``drop_reason`` (the
    ``SKB_DROP_REASON_*`` name without its prefix) is set; ``detail`` says in
    words what was wrong.
    """

    packet: Ipv4Packet | None
    drop_reason: str | None = None
    detail: str = ""

    @property
    def delivered(self) -> bool:
        return self.packet is not None


def ip_options_ok(options: bytes) -> bool:
    """The length walk of ``ip_options_compile``: every option fits the header.

    EOL ends the list; NOP is one byte; any other option needs a length byte of
    at least 2 that does not run past the end.
    """
    i = 0
    n = len(options)
    while i < n:
        kind = options[i]
        if kind == _IPOPT_END:
            return True
        if kind == _IPOPT_NOOP:
            i += 1
            continue
        if n - i < 2:
            return False
        size = options[i + 1]
        if size < 2 or size > n - i:
            return False
        i += size
    return True


def _martian(pkt: Ipv4Packet, dst_is_local: bool, local_addrs: frozenset[str]) -> str | None:
    """ip_route_input_slow's source/destination sanity checks, in its order."""
    saddr = pkt.header[12:16]
    daddr = pkt.header[16:20]
    s0 = saddr[0]
    d0 = daddr[0]
    if 224 <= s0 <= 239 or saddr == _LIMITED_BROADCAST:
        return "IP_INVALID_SOURCE"
    if s0 == 0:
        return "IP_INVALID_SOURCE"
    if d0 == 0:
        return "IP_INVALID_DEST"
    if d0 == 127 or s0 == 127:  # route_localnet is off
        return "IP_LOCALNET"
    # fib_validate_source() with accept_local = 0: our own address as source.
    if dst_is_local and pkt.src in local_addrs:
        return "IP_LOCAL_SOURCE"
    return None


def _drop(mib: Mib, counters: tuple[str, ...], reason: str, detail: str) -> IpRcvResult:
    for name in counters:
        mib.add(name)
    return IpRcvResult(None, reason, detail)


def ip_rcv(frame: bytes, mib: Mib, local_addrs: frozenset[str]) -> IpRcvResult:
    """Run one received IPv4 frame through the IP layer; count into ``mib``.

    Returns the packet to hand to ``tcp_v4_rcv``, or the reason it was dropped.
    """
    mib.add("IpInReceives")
    try:
        pkt = decode_ipv4(frame)
    except MalformedPacket as err:
        return _drop(mib, err.counters, err.drop_reason, str(err))

    # ip_rcv_finish -> ip_route_input_noref
    dst_is_local = pkt.dst in local_addrs
    martian = _martian(pkt, dst_is_local, local_addrs)
    if martian is not None:
        return _drop(mib, (), martian, f"martian packet {pkt.src} -> {pkt.dst}")

    if pkt.ihl > 5 and not ip_options_ok(pkt.header[IPV4_HEADER_LEN:]):
        return _drop(mib, ("IpInHdrErrors",), "IP_INHDR",
                     f"malformed IP options {pkt.header[IPV4_HEADER_LEN:].hex()}")

    # dst_input -> ip_error: no forwarding, so a foreign destination is unreachable.
    if not dst_is_local:
        return _drop(mib, ("IpInAddrErrors",), "IP_INADDRERRORS",
                     f"destination {pkt.dst} is not a local address")

    # ip_local_deliver
    if pkt.frag_off & (IP_MF | IP_OFFSET):
        return _drop(mib, Ipv4Fragment.counters, Ipv4Fragment.drop_reason,
                     f"fragment (frag_off 0x{pkt.frag_off:04x}) from {pkt.src}; "
                     "rxpath does not reassemble")

    # ip_protocol_deliver_rcu
    if pkt.protocol != IPPROTO_TCP:
        return _drop(mib, NotTcp.counters, NotTcp.drop_reason,
                     f"IP protocol {pkt.protocol} has no handler")

    mib.add("IpInDelivers")
    return IpRcvResult(pkt)
