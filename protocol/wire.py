"""Real IPv4 + TCP bytes for a :class:`~protocol.segment.Segment`, and back.

Encoding writes a 20-byte IPv4 header (DF set, no IP options) and the TCP
header, options and payload, with both checksums correct. With no explicit
``options.layout`` the TCP options come out exactly as Linux's
``tcp_options_write`` lays them out.

Decoding is split the way the kernel splits it:

* :func:`decode_ipv4` performs ``ip_rcv_core``'s header checks, in the
  kernel's order, and trims link-layer padding beyond the total length;
* :func:`decode_tcp` performs ``tcp_v4_rcv``'s header checks and parses the
  options like ``tcp_parse_options``;
* :func:`tcp_checksum_ok` is separate because Linux may defer full checksum
  verification (see :data:`CHECKSUM_BREAK`).

Every malformed input raises a subclass of :class:`MalformedPacket` whose
``counters`` name the MIB counters Linux increments for it and whose
``drop_reason`` is the ``SKB_DROP_REASON_*`` suffix it drops with.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import ClassVar

from protocol.segment import (
    IPPROTO_TCP,
    IPV4_HEADER_LEN,
    NO_OPTIONS,
    TCP_HEADER_LEN,
    Segment,
)
from protocol.tcp_options import (
    NOP_NOP_TS_PREFIX,
    OPTION_NAMES,
    TCPOPT_EOL,
    TCPOPT_MSS,
    TCPOPT_NOP,
    TCPOPT_SACK,
    TCPOPT_SACK_PERM,
    TCPOPT_TIMESTAMP,
    TCPOPT_WINDOW,
    default_layout,
    encode_options,
    parse_options,
    timestamp_only,
)

__all__ = [
    "CHECKSUM_BREAK",
    "IPV4_MAX_HEADER_LEN",
    "IP_DF",
    "IP_MF",
    "IP_OFFSET",
    "OPTION_NAMES",
    "TCPOPT_EOL",
    "TCPOPT_MSS",
    "TCPOPT_NOP",
    "TCPOPT_SACK",
    "TCPOPT_SACK_PERM",
    "TCPOPT_TIMESTAMP",
    "TCPOPT_WINDOW",
    "Ipv4BadTotalLength",
    "Ipv4BadVersionOrIhl",
    "Ipv4ChecksumError",
    "Ipv4Fragment",
    "Ipv4HeaderError",
    "Ipv4HeaderTruncated",
    "Ipv4Packet",
    "Ipv4TooShort",
    "Ipv4Truncated",
    "MalformedPacket",
    "NotTcp",
    "TcpBadDataOffset",
    "TcpChecksumError",
    "TcpHeaderError",
    "TcpHeaderTruncated",
    "TcpTooShort",
    "decode",
    "decode_ipv4",
    "decode_tcp",
    "default_layout",
    "encode",
    "encode_options",
    "encode_with",
    "internet_checksum",
    "parse_options",
    "tcp_checksum",
    "tcp_checksum_ok",
]

# IPv4 frag_off field bits (include/net/ip.h).
IP_CE = 0x8000  # the reserved "congestion" bit; Linux ignores it on receive
IP_DF = 0x4000
IP_MF = 0x2000
IP_OFFSET = 0x1FFF
IPV4_MAX_HEADER_LEN = 60

# skb_checksum_init() verifies the whole TCP checksum at once when the segment
# (TCP header + payload) is at most this long; longer ones are verified later
# (include/linux/skbuff.h). Without NIC offload this decides when a bad
# checksum is noticed, so the stack model may want it.
CHECKSUM_BREAK = 76

# Addresses travel as 32-bit ints inside the codec: struct packs them directly and
# their checksum contribution is arithmetic (see _residue).
_IP_HDR = struct.Struct("!BBHHHBBHII")
_TCP_HDR = struct.Struct("!HHIIHHHH")
_IP_TCP_HDR = struct.Struct("!BBHHHBBHIIHHIIHHHH")  # both fixed headers in one pack
# Both headers and a timestamps-only option block (NOP, NOP, TS): every established
# segment with timestamps, in one pack.
_IP_TCP_TS_HDR = struct.Struct("!BBHHHBBHIIHHIIHHHHBBBBII")
# Those option bytes' checksum words besides TSval and TSecr: NOP NOP, then kind 8, length 10.
_TS_ONLY_WORDS = (TCPOPT_NOP << 8 | TCPOPT_NOP) + (TCPOPT_TIMESTAMP << 8 | 10)
_TS_ONLY_DOFF = (TCP_HEADER_LEN + 12) << 10  # data offset 8 words, in the top 4 bits
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U32X2 = struct.Struct("!II")
_VIHL_PLAIN = 0x45  # version 4, 20-byte header: every header rxpath writes
_TS_ONLY_HLEN = TCP_HEADER_LEN + 12


# --------------------------------------------------------------------------- errors


class MalformedPacket(ValueError):
    """A frame the receive path rejects.

    ``counters`` are the MIB counters Linux increments for this rejection (on
    top of ``IpInReceives`` / ``TcpInSegs``, which the caller counts before the
    checks); ``drop_reason`` is the ``SKB_DROP_REASON_*`` name without prefix.
    """

    # Class-level facts of each rejection (ClassVar: mypyc compiles them as such).
    counters: ClassVar[tuple[str, ...]] = ()
    drop_reason: ClassVar[str] = "NOT_SPECIFIED"


class Ipv4HeaderError(MalformedPacket):
    """ip_rcv_core's ``inhdr_error`` label."""

    counters: ClassVar[tuple[str, ...]] = ("IpInHdrErrors",)
    drop_reason = "IP_INHDR"


class Ipv4TooShort(Ipv4HeaderError):
    """Fewer than 20 bytes: ``pskb_may_pull(skb, sizeof(struct iphdr))`` fails."""


class Ipv4BadVersionOrIhl(Ipv4HeaderError):
    """``iph->ihl < 5 || iph->version != 4``."""


class Ipv4HeaderTruncated(Ipv4HeaderError):
    """The frame is shorter than ``ihl * 4``."""


class Ipv4ChecksumError(Ipv4HeaderError):
    """``ip_fast_csum`` over the header is not zero (``csum_error`` label)."""

    counters = ("IpExtInCsumErrors", "IpInHdrErrors")
    drop_reason = "IP_CSUM"


class Ipv4Truncated(MalformedPacket):
    """The frame is shorter than the header's total length."""

    counters = ("IpExtInTruncatedPkts",)
    drop_reason = "PKT_TOO_SMALL"


class Ipv4BadTotalLength(Ipv4HeaderError):
    """The total length is smaller than the header itself."""


class Ipv4Fragment(MalformedPacket):
    """A fragment (MF set or a non-zero offset). rxpath does not reassemble.

    Linux queues a fragment for reassembly (``IpReasmReqds``); one whose
    siblings never come is freed ``ipfrag_time`` later with ``IpReasmFails``
    and ``IpReasmTimeout``. rxpath reaches that outcome at once.
    """

    counters = ("IpReasmReqds", "IpReasmFails", "IpReasmTimeout")
    drop_reason = "FRAG_REASM_TIMEOUT"


class NotTcp(MalformedPacket):
    """The IP protocol is not TCP (``ip_protocol_deliver_rcu``, no handler)."""

    counters = ("IpInUnknownProtos",)
    drop_reason = "IP_NOPROTO"


class TcpHeaderError(MalformedPacket):
    """A TCP header tcp_v4_rcv rejects before looking up a socket."""


class TcpTooShort(TcpHeaderError):
    """Fewer than 20 TCP bytes: ``goto discard_it``, no counter."""


class TcpBadDataOffset(TcpHeaderError):
    """``th->doff < 5``: ``goto bad_packet`` (InErrs)."""

    counters = ("TcpInErrs",)
    drop_reason = "PKT_TOO_SMALL"


class TcpHeaderTruncated(TcpHeaderError):
    """``doff * 4`` exceeds the segment: ``pskb_may_pull`` fails, ``goto discard_it``.

    Linux counts nothing here (not even InErrs).
    """


class TcpChecksumError(MalformedPacket):
    """The TCP checksum over the pseudo-header and segment is wrong."""

    counters = ("TcpInCsumErrors", "TcpInErrs")
    drop_reason = "TCP_CSUM"


# --------------------------------------------------------------------------- checksums
#
# The Internet checksum (RFC 1071) is the ones'-complement sum of 16-bit words. As
# 2**16 == 1 (mod 0xFFFF), a byte string read as one big-endian integer has the same
# residue modulo 0xFFFF as the sum of its words, and so does a 32-bit field (its two
# halves): the sum needs no Python-level loop. A residue of 0 is a ones'-complement
# sum of 0xFFFF (negative zero) unless every word is zero; TCP's pseudo-header holds
# the protocol number, so a TCP sum is never all zero.


def _residue(data: bytes) -> int:
    """The sum of ``data``'s big-endian 16-bit words (odd length: zero-padded), mod 0xFFFF."""
    residue = int.from_bytes(data, "big") % 0xFFFF
    return (residue << 8) % 0xFFFF if len(data) & 1 else residue


def internet_checksum(data: bytes) -> int:
    """RFC 1071 checksum of ``data``: the complement of its ones'-complement word sum."""
    value = int.from_bytes(data, "big")
    residue = (value << 8 if len(data) & 1 else value) % 0xFFFF
    if residue:
        return 0xFFFF - residue
    return 0 if value else 0xFFFF  # a sum of 0xFFFF, or all zero words (sum 0)


def tcp_checksum(src: str, dst: str, tcp_segment: bytes) -> int:
    """The TCP checksum for ``tcp_segment`` (its checksum field taken as zero)."""
    residue = (_addr(src) + _addr(dst) + IPPROTO_TCP + len(tcp_segment)
               + _residue(tcp_segment) - _U16.unpack_from(tcp_segment, 16)[0]) % 0xFFFF
    return 0xFFFF - residue if residue else 0


_ADDRS: dict[str, int] = {}
_NAMES: dict[int, str] = {}
_ADDR_CACHE_MAX = 4096  # a run has a handful of addresses; bound what garbage can add


def _addr(addr: str) -> int:
    """A dotted quad as a 32-bit int."""
    value = _ADDRS.get(addr)
    if value is None:
        try:
            value = _U32.unpack(socket.inet_pton(socket.AF_INET, addr))[0]
        except (OSError, TypeError):
            raise ValueError(f"not a dotted-quad IPv4 address: {addr!r}") from None
        if len(_ADDRS) >= _ADDR_CACHE_MAX:
            _ADDRS.clear()
        _ADDRS[addr] = value
    return value


def _name(addr: int) -> str:
    """A 32-bit address as a dotted quad."""
    name = _NAMES.get(addr)
    if name is None:
        name = socket.inet_ntoa(_U32.pack(addr))
        if len(_NAMES) >= _ADDR_CACHE_MAX:
            _NAMES.clear()
        _NAMES[addr] = name
    return name


# --------------------------------------------------------------------------- encode


def encode(seg: Segment) -> bytes:
    """The IPv4 packet (header + TCP segment) carrying ``seg``, checksums correct.

    The same bytes as :func:`encode_with` without overrides, built in one pass: the
    checksums come from the field values and one integer conversion of the payload.
    """
    src = _ADDRS.get(seg.src) or _addr(seg.src)
    dst = _ADDRS.get(seg.dst) or _addr(seg.dst)
    opts = seg.options
    ts = opts.timestamp
    if (ts is not None and not opts.layout and opts.mss is None and opts.wscale is None
            and not opts.sack_permitted and not opts.sack_blocks):
        frame = _encode_ts_only(seg, src, dst, ts)
        if frame is not None:
            return frame
    options = b"" if opts is NO_OPTIONS else encode_options(opts)
    payload = seg.payload
    tcp_hlen = TCP_HEADER_LEN + len(options)
    tcp_len = tcp_hlen + len(payload)
    total_length = IPV4_HEADER_LEN + tcp_len
    if total_length > 0xFFFF:
        raise ValueError(f"IPv4 packet of {total_length} bytes exceeds 65535")
    doff_flags = (tcp_hlen << 10) | (seg.flags & 0xFF)  # doff = tcp_hlen / 4, in the top 4 bits
    sport, dport, seq, ack, window, urg_ptr = (seg.sport, seg.dport, seg.seq, seg.ack,
                                               seg.window, seg.urg_ptr)
    body = _payload_residue(payload)
    residue = (src + dst + IPPROTO_TCP + tcp_len + sport + dport + seq + ack + doff_flags
               + window + urg_ptr + int.from_bytes(options, "big") + body) % 0xFFFF
    tcp_csum = 0xFFFF - residue if residue else 0
    tos, ip_id, ttl = seg.tos, seg.ip_id, seg.ttl
    ip_csum = _plain_ip_csum(tos, total_length, ip_id, ttl, src, dst)
    try:
        head = _IP_TCP_HDR.pack(_VIHL_PLAIN, tos, total_length, ip_id, IP_DF, ttl, IPPROTO_TCP,
                                ip_csum, src, dst, sport, dport, seq, ack, doff_flags, window,
                                tcp_csum, urg_ptr)
    except struct.error as exc:
        raise ValueError(f"header field out of range in {seg.describe()}: {exc}") from None
    return b"".join((head, options, payload))


def _payload_residue(payload: bytes) -> int:
    """The payload's ones'-complement sum, reduced mod 0xFFFF first so later sums stay
    small (an odd length gets its zero pad byte)."""
    body = int.from_bytes(payload, "big") % 0xFFFF
    return body << 8 if len(payload) & 1 else body


def _plain_ip_csum(tos: int, total_length: int, ip_id: int, ttl: int, src: int, dst: int
                   ) -> int:
    """The header checksum of a 20-byte IPv4 header with DF set, carrying TCP."""
    residue = ((_VIHL_PLAIN << 8) + tos + total_length + ip_id + IP_DF + (ttl << 8)
               + IPPROTO_TCP + src + dst) % 0xFFFF
    return 0xFFFF - residue if residue else 0


def _encode_ts_only(seg: Segment, src: int, dst: int, ts: tuple[int, int]) -> bytes | None:
    """:func:`encode` of a segment whose options are timestamps alone (the bytes
    ``encode_options`` writes for them), or None when a field is out of range: the
    general path then raises as it always has."""
    payload = seg.payload
    tcp_len = TCP_HEADER_LEN + 12 + len(payload)
    total_length = IPV4_HEADER_LEN + tcp_len
    if total_length > 0xFFFF:
        return None
    flags = seg.flags
    doff_flags = _TS_ONLY_DOFF | (flags & 0xFF)
    sport, dport, seq, ack, window, urg_ptr = (seg.sport, seg.dport, seg.seq, seg.ack,
                                               seg.window, seg.urg_ptr)
    tsval, tsecr = ts
    body = _payload_residue(payload)
    # A 32-bit field is two checksum words; as 2**16 == 1 (mod 0xFFFF) it adds as it is.
    residue = (src + dst + IPPROTO_TCP + tcp_len + sport + dport + seq + ack + doff_flags
               + window + urg_ptr + _TS_ONLY_WORDS + tsval + tsecr + body) % 0xFFFF
    tcp_csum = 0xFFFF - residue if residue else 0
    tos, ip_id, ttl = seg.tos, seg.ip_id, seg.ttl
    ip_csum = _plain_ip_csum(tos, total_length, ip_id, ttl, src, dst)
    try:
        head = _IP_TCP_TS_HDR.pack(_VIHL_PLAIN, tos, total_length, ip_id, IP_DF, ttl,
                                   IPPROTO_TCP, ip_csum, src, dst, sport, dport, seq, ack,
                                   doff_flags, window, tcp_csum, urg_ptr, TCPOPT_NOP,
                                   TCPOPT_NOP, TCPOPT_TIMESTAMP, 10, tsval, tsecr)
    except struct.error:
        return None
    return head + payload


def encode_with(
    seg: Segment,
    *,
    ip_checksum: int | None = None,
    tcp_checksum: int | None = None,
    doff: int | None = None,
    total_length: int | None = None,
    version: int = 4,
    ihl: int | None = None,
    ip_options: bytes = b"",
    frag_off: int = IP_DF,
    protocol: int = IPPROTO_TCP,
    tcp_reserved: int = 0,
) -> bytes:
    """Like :func:`encode`, with header fields overridden to build malformed frames.

    Checksums are computed last, over the bytes as written, so an overridden
    field still carries a correct checksum unless the checksum itself is
    overridden. ``ip_options`` (raw bytes, a multiple of 4, at most 40) sit
    between the IPv4 header and TCP; ``ihl`` defaults to match them, and the IP
    checksum always covers the header actually written (20 + options bytes).
    ``frag_off`` is the raw flags + fragment-offset field; ``tcp_reserved`` the
    4 bits between data offset and flags.
    """
    src = _addr(seg.src)
    dst = _addr(seg.dst)
    options = encode_options(seg.options)
    tcp_hlen = TCP_HEADER_LEN + len(options)
    tcp_len = tcp_hlen + len(seg.payload)
    if doff is None:
        doff = tcp_hlen >> 2
    if len(ip_options) & 3 or len(ip_options) > IPV4_MAX_HEADER_LEN - IPV4_HEADER_LEN:
        raise ValueError("ip_options must be a multiple of 4 bytes, at most 40")
    ip_hlen = IPV4_HEADER_LEN + len(ip_options)
    if total_length is None:
        total_length = ip_hlen + tcp_len
        if total_length > 0xFFFF:
            raise ValueError(f"IPv4 packet of {total_length} bytes exceeds 65535")
    if ihl is None:
        ihl = ip_hlen >> 2
    try:
        doff_flags = ((doff & 0xF) << 12) | ((tcp_reserved & 0xF) << 8) | (seg.flags & 0xFF)
        tcp_head = _TCP_HDR.pack(seg.sport, seg.dport, seg.seq, seg.ack, doff_flags,
                                 seg.window, 0, seg.urg_ptr)
        if tcp_checksum is None:
            residue = (src + dst + IPPROTO_TCP + tcp_len + _residue(tcp_head + options)
                       + _residue(seg.payload)) % 0xFFFF
            tcp_checksum = 0xFFFF - residue if residue else 0
        tcp_head = _TCP_HDR.pack(seg.sport, seg.dport, seg.seq, seg.ack, doff_flags,
                                 seg.window, tcp_checksum, seg.urg_ptr)
        ip_head = _IP_HDR.pack(((version & 0xF) << 4) | (ihl & 0xF), seg.tos, total_length,
                               seg.ip_id, frag_off, seg.ttl, protocol, 0, src, dst) + ip_options
        if ip_checksum is None:
            ip_checksum = internet_checksum(ip_head)
    except struct.error as exc:
        raise ValueError(f"header field out of range in {seg.describe()}: {exc}") from None
    ip_head = ip_head[:10] + _U16.pack(ip_checksum) + ip_head[12:]
    return b"".join((ip_head, tcp_head, options, seg.payload))


# --------------------------------------------------------------------------- decode


@dataclass(slots=True, unsafe_hash=True)
class Ipv4Packet:
    """An IPv4 packet that passed ``ip_rcv_core``'s checks.

    A value: never changed after construction. ``header`` is the whole header
    (``ihl * 4`` bytes, options included); ``l4`` is the transport segment, trimmed
    to ``total_length``.
    """

    src: str
    dst: str
    protocol: int
    ttl: int
    tos: int
    ip_id: int
    ihl: int
    total_length: int
    frag_off: int  # raw field: flags (CE, DF, MF) and the 13-bit offset
    checksum: int
    header: bytes
    l4: bytes

    @property
    def df(self) -> bool:
        return bool(self.frag_off & IP_DF)

    @property
    def mf(self) -> bool:
        return bool(self.frag_off & IP_MF)

    @property
    def frag_offset(self) -> int:
        """Fragment offset in bytes (the field counts 8-byte units)."""
        return (self.frag_off & IP_OFFSET) << 3

    @property
    def is_fragment(self) -> bool:
        """``ip_is_fragment()``: MF set or a non-zero offset."""
        return bool(self.frag_off & (IP_MF | IP_OFFSET))

    @property
    def options(self) -> bytes:
        """IP options (the header beyond its first 20 bytes)."""
        return self.header[IPV4_HEADER_LEN:]


def decode_ipv4(frame: bytes | bytearray | memoryview) -> Ipv4Packet:
    """Check an IPv4 frame as ``ip_rcv_core`` does and return the packet.

    The checks, in the kernel's order (net/ipv4/ip_input.c):

    1. at least 20 bytes                       -> :class:`Ipv4TooShort`
    2. ``ihl >= 5`` and ``version == 4``       -> :class:`Ipv4BadVersionOrIhl`
    3. at least ``ihl * 4`` bytes              -> :class:`Ipv4HeaderTruncated`
    4. header checksum                         -> :class:`Ipv4ChecksumError`
    5. frame at least total length             -> :class:`Ipv4Truncated`
    6. total length at least ``ihl * 4``       -> :class:`Ipv4BadTotalLength`

    Bytes beyond the total length are link-layer padding and are trimmed.
    """
    if type(frame) is not bytes:
        frame = bytes(frame)
    n = len(frame)
    if n < IPV4_HEADER_LEN:
        raise Ipv4TooShort(f"{n}-byte frame is shorter than the 20-byte IPv4 header")
    vihl = frame[0]
    if vihl == _VIHL_PLAIN:
        ihl = 5
        hlen = IPV4_HEADER_LEN
    else:
        version = vihl >> 4
        ihl = vihl & 0xF
        if ihl < 5 or version != 4:
            raise Ipv4BadVersionOrIhl(f"IPv4 header has version {version}, ihl {ihl} "
                                      "(need version 4, ihl >= 5)")
        hlen = ihl << 2
        if n < hlen:
            raise Ipv4HeaderTruncated(f"ihl {ihl} says the header is {hlen} bytes; "
                                      f"the frame has {n}")
    header = frame[:hlen]
    if int.from_bytes(header, "big") % 0xFFFF:  # even length; never all zero (version 4)
        raise Ipv4ChecksumError(f"IPv4 header checksum 0x{_U16.unpack_from(header, 10)[0]:04x} "
                                f"is wrong (header {header.hex()})")
    (_vihl, tos, total_length, ip_id, frag_off, ttl, protocol, checksum, src, dst
     ) = _IP_HDR.unpack_from(header)
    if n < total_length:
        raise Ipv4Truncated(f"total length {total_length} but only {n} bytes arrived")
    if total_length < hlen:
        raise Ipv4BadTotalLength(f"total length {total_length} is less than the "
                                 f"{hlen}-byte header")
    return Ipv4Packet(_NAMES.get(src) or _name(src), _NAMES.get(dst) or _name(dst), protocol,
                      ttl, tos, ip_id, ihl, total_length, frag_off, checksum, header,
                      frame[hlen:total_length])


def tcp_checksum_ok(pkt: Ipv4Packet) -> bool:
    """Whether the TCP checksum over pseudo-header and segment is correct."""
    seg = pkt.l4
    n = len(seg)
    residue = int.from_bytes(seg, "big") % 0xFFFF  # reduce first: later sums stay small
    if n & 1:
        residue <<= 8  # the zero pad byte
    # Source and destination address, protocol, TCP length: the pseudo-header's words.
    return (int.from_bytes(pkt.header[12:20], "big") + IPPROTO_TCP + n + residue) % 0xFFFF == 0


def decode_tcp(pkt: Ipv4Packet, *, verify_checksum: bool = True) -> Segment:
    """The TCP segment in ``pkt``, checked as ``tcp_v4_rcv`` checks it.

    In order: not a fragment (:class:`Ipv4Fragment`) and protocol TCP
    (:class:`NotTcp`), which ``ip_local_deliver`` settles before TCP runs; then
    at least 20 bytes (:class:`TcpTooShort`), ``doff >= 5``
    (:class:`TcpBadDataOffset`), ``doff * 4`` within the segment
    (:class:`TcpHeaderTruncated`), and, if ``verify_checksum``, the checksum
    (:class:`TcpChecksumError`). Options are parsed by :func:`parse_options`, which
    records their length (``doff * 4 - 20``) for ``Segment.header_len``.
    """
    if pkt.frag_off & (IP_MF | IP_OFFSET):
        raise Ipv4Fragment(f"fragment (frag_off 0x{pkt.frag_off:04x}); rxpath does not "
                           "reassemble")
    if pkt.protocol != IPPROTO_TCP:
        raise NotTcp(f"IP protocol {pkt.protocol} is not TCP")
    data = pkt.l4
    n = len(data)
    if n < TCP_HEADER_LEN:
        raise TcpTooShort(f"{n}-byte segment is shorter than the 20-byte TCP header")
    sport, dport, seq, ack, doff_flags, window, _csum, urg_ptr = _TCP_HDR.unpack_from(data)
    doff = doff_flags >> 12
    if doff < 5:
        raise TcpBadDataOffset(f"TCP data offset {doff} is below 5")
    hlen = doff << 2
    if hlen > n:
        raise TcpHeaderTruncated(f"TCP data offset {doff} says {hlen} header bytes; "
                                 f"the segment has {n}")
    if verify_checksum and not tcp_checksum_ok(pkt):
        raise TcpChecksumError(f"TCP checksum 0x{_csum:04x} is wrong for "
                               f"{pkt.src}:{sport} > {pkt.dst}:{dport} seq {seq}")
    if hlen == TCP_HEADER_LEN:
        options = NO_OPTIONS
    elif hlen == _TS_ONLY_HLEN and data.startswith(NOP_NOP_TS_PREFIX, TCP_HEADER_LEN):
        options = timestamp_only(_U32X2.unpack_from(data, TCP_HEADER_LEN + 4))
    else:
        options = parse_options(data[TCP_HEADER_LEN:hlen])
    return Segment(pkt.src, sport, pkt.dst, dport, seq, ack, doff_flags & 0xFF, window,
                   options, data[hlen:], urg_ptr, pkt.ttl, pkt.tos, pkt.ip_id)


def decode(frame: bytes | bytearray | memoryview, *, verify_checksum: bool = True) -> Segment:
    """:func:`decode_ipv4` then :func:`decode_tcp`.

    A well-formed plain frame (20-byte IPv4 header, an unfragmented TCP segment that
    passes every check) is decoded in one pass without the intermediate
    :class:`Ipv4Packet`; any other frame takes the two steps, which raise as they say."""
    if type(frame) is bytes and len(frame) >= IPV4_HEADER_LEN + TCP_HEADER_LEN \
            and frame[0] == _VIHL_PLAIN:
        seg = _decode_plain(frame, verify_checksum)
        if seg is not None:
            return seg
    return decode_tcp(decode_ipv4(frame), verify_checksum=verify_checksum)


def _decode_plain(frame: bytes, verify_checksum: bool) -> Segment | None:
    """:func:`decode` of a frame with a 20-byte IPv4 header, or None at the first check
    it would fail (the caller then takes the steps that raise the right error)."""
    n = len(frame)
    (_vihl, tos, total_length, ip_id, frag_off, ttl, protocol, _ip_csum, src, dst, sport,
     dport, seq, ack, doff_flags, window, _csum, urg_ptr) = _IP_TCP_HDR.unpack_from(frame)
    # decode_ipv4: header checksum, then total length; decode_tcp: not a fragment, TCP,
    # a whole TCP header, a data offset that fits.
    if (int.from_bytes(frame[:IPV4_HEADER_LEN], "big") % 0xFFFF or n < total_length
            or frag_off & (IP_MF | IP_OFFSET) or protocol != IPPROTO_TCP):
        return None
    tcp_len = total_length - IPV4_HEADER_LEN
    hlen = (doff_flags >> 12) << 2
    if tcp_len < TCP_HEADER_LEN or hlen < TCP_HEADER_LEN or hlen > tcp_len:
        return None
    if verify_checksum:
        residue = int.from_bytes(frame[IPV4_HEADER_LEN:total_length], "big") % 0xFFFF
        if tcp_len & 1:
            residue <<= 8  # the zero pad byte
        if (src + dst + IPPROTO_TCP + tcp_len + residue) % 0xFFFF:
            return None
    end_of_header = IPV4_HEADER_LEN + hlen
    if hlen == TCP_HEADER_LEN:
        options = NO_OPTIONS
    elif hlen == _TS_ONLY_HLEN and frame.startswith(NOP_NOP_TS_PREFIX, _IP_TCP_HDR.size):
        options = timestamp_only(_U32X2.unpack_from(frame, _IP_TCP_HDR.size + 4))
    else:
        options = parse_options(frame[_IP_TCP_HDR.size:end_of_header])
    return Segment(_NAMES.get(src) or _name(src), sport, _NAMES.get(dst) or _name(dst), dport,
                   seq, ack, doff_flags & 0xFF, window, options,
                   frame[end_of_header:total_length], urg_ptr, ttl, tos, ip_id)
