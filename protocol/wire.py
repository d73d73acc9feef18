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

from protocol.segment import (
    IPPROTO_TCP,
    IPV4_HEADER_LEN,
    MAX_TCP_OPTION_SPACE,
    NO_OPTIONS,
    TCP_HEADER_LEN,
    Segment,
    TcpFlags,
    TcpOptions,
)

__all__ = [
    "CHECKSUM_BREAK",
    "IPV4_MAX_HEADER_LEN",
    "IP_DF",
    "IP_MF",
    "IP_OFFSET",
    "OPTION_NAMES",
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

# TCP option kinds (include/net/tcp.h).
TCPOPT_EOL = 0
TCPOPT_NOP = 1
TCPOPT_MSS = 2
TCPOPT_WINDOW = 3
TCPOPT_SACK_PERM = 4
TCPOPT_SACK = 5
TCPOPT_TIMESTAMP = 8

OPTION_NAMES = ("mss", "nop", "wscale", "sackOK", "sack", "TS", "eol")

_IP_HDR = struct.Struct("!BBHHHBBH4s4s")
_TCP_HDR = struct.Struct("!HHIIHHHH")
_PSEUDO_TAIL = struct.Struct("!HH")  # zero byte + protocol, then TCP length
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U32X2 = struct.Struct("!II")
_OPT_MSS = struct.Struct("!BBH")
_OPT_TS = struct.Struct("!BBII")
_OPT_NOP_NOP_TS = struct.Struct("!BBBBII")  # also sackOK+TS: one 12-byte word group

_FLAGS = tuple(TcpFlags(i) for i in range(256))
_LAYOUT_TS_ONLY = ("nop", "nop", "TS")
_NOP_NOP_TS_PREFIX = bytes((TCPOPT_NOP, TCPOPT_NOP, TCPOPT_TIMESTAMP, 10))


# --------------------------------------------------------------------------- errors


class MalformedPacket(ValueError):
    """A frame the receive path rejects.

    ``counters`` are the MIB counters Linux increments for this rejection (on
    top of ``IpInReceives`` / ``TcpInSegs``, which the caller counts before the
    checks); ``drop_reason`` is the ``SKB_DROP_REASON_*`` name without prefix.
    """

    counters: tuple[str, ...] = ()
    drop_reason: str = "NOT_SPECIFIED"


class Ipv4HeaderError(MalformedPacket):
    """ip_rcv_core's ``inhdr_error`` label."""

    counters = ("IpInHdrErrors",)
    drop_reason = "IP_INHDR"


class Ipv4TooShort(Ipv4HeaderError):
    """Fewer than 20 bytes: ``pskb_may_pull(skb, sizeof(struct iphdr))`` fails."""


class Ipv4BadVersionOrIhl(Ipv4HeaderError):
    """``iph->ihl < 5 || iph->version != 4``."""


class Ipv4HeaderTruncated(Ipv4HeaderError):
    """The frame is shorter than ``ihl * 4``."""


class Ipv4ChecksumError(Ipv4HeaderError):
    """``ip_fast_csum`` over the header is not zero (``csum_error`` label)."""

    counters = ("IpInCsumErrors", "IpInHdrErrors")
    drop_reason = "IP_CSUM"


class Ipv4Truncated(MalformedPacket):
    """The frame is shorter than the header's total length."""

    counters = ("IpInTruncatedPkts",)
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


def _residue(data: bytes) -> int:
    """The sum of ``data``'s big-endian 16-bit words, modulo 0xFFFF.

    2**16 is 1 modulo 0xFFFF, so the whole byte string read as one integer has
    the same residue as the sum of its 16-bit words: the ones'-complement sum
    (RFC 1071) without a Python-level loop.
    """
    if len(data) & 1:
        data += b"\x00"
    return int.from_bytes(data, "big") % 0xFFFF


def _fold(residue: int) -> int:
    """Checksum field value from a (non-zero data) residue, as ``csum_fold`` gives it."""
    # A residue of 0 means the ones'-complement sum is 0xFFFF, whose complement is 0.
    return 0xFFFF - residue if residue else 0


def internet_checksum(data: bytes) -> int:
    """RFC 1071 checksum of ``data`` (which must not be all zero bytes)."""
    return _fold(_residue(data))


def _pseudo_header(src: bytes, dst: bytes, tcp_len: int) -> bytes:
    return src + dst + _PSEUDO_TAIL.pack(IPPROTO_TCP, tcp_len)


def tcp_checksum(src: str, dst: str, tcp_segment: bytes) -> int:
    """The TCP checksum for ``tcp_segment`` (its checksum field taken as zero)."""
    s, d = _aton(src), _aton(dst)
    residue = (_residue(_pseudo_header(s, d, len(tcp_segment)))
               + _residue(tcp_segment[:16] + b"\x00\x00" + tcp_segment[18:])) % 0xFFFF
    return _fold(residue)


def _aton(addr: str) -> bytes:
    try:
        return socket.inet_pton(socket.AF_INET, addr)
    except OSError:
        raise ValueError(f"not a dotted-quad IPv4 address: {addr!r}") from None


# --------------------------------------------------------------------------- options


def default_layout(opts: TcpOptions) -> tuple[str, ...]:
    """The option layout Linux's ``tcp_options_write`` uses for these options.

    Order: MSS; timestamps (sharing their leading two bytes with SACK-permitted
    when both are present, else behind two NOPs); SACK-permitted behind two
    NOPs; window scale behind one NOP; SACK blocks behind two NOPs.
    """
    layout: list[str] = []
    if opts.mss is not None:
        layout.append("mss")
    sack_ok_pending = opts.sack_permitted
    if opts.timestamp is not None:
        if sack_ok_pending:
            layout += ("sackOK", "TS")
            sack_ok_pending = False
        else:
            layout += _LAYOUT_TS_ONLY
    if sack_ok_pending:
        layout += ("nop", "nop", "sackOK")
    if opts.wscale is not None:
        layout += ("nop", "wscale")
    if opts.sack_blocks:
        layout += ("nop", "nop", "sack")
    return tuple(layout)


def _write_option(name: str, opts: TcpOptions, out: bytearray) -> None:
    if name == "nop":
        out.append(TCPOPT_NOP)
    elif name == "eol":
        out.append(TCPOPT_EOL)
    elif name == "TS":
        if opts.timestamp is None:
            raise ValueError("layout names 'TS' but options.timestamp is None")
        out += _OPT_TS.pack(TCPOPT_TIMESTAMP, 10, *opts.timestamp)
    elif name == "mss":
        if opts.mss is None:
            raise ValueError("layout names 'mss' but options.mss is None")
        out += _OPT_MSS.pack(TCPOPT_MSS, 4, opts.mss)
    elif name == "wscale":
        if opts.wscale is None:
            raise ValueError("layout names 'wscale' but options.wscale is None")
        out += bytes((TCPOPT_WINDOW, 3, opts.wscale))
    elif name == "sackOK":
        if not opts.sack_permitted:
            raise ValueError("layout names 'sackOK' but options.sack_permitted is False")
        out += bytes((TCPOPT_SACK_PERM, 2))
    elif name == "sack":
        blocks = opts.sack_blocks
        if not blocks:
            raise ValueError("layout names 'sack' but options.sack_blocks is empty")
        out += bytes((TCPOPT_SACK, 2 + 8 * len(blocks)))
        for start, end in blocks:
            out += _U32X2.pack(start, end)
    else:
        raise ValueError(f"unknown TCP option name {name!r} (known: {', '.join(OPTION_NAMES)})")


def _check_layout_covers(opts: TcpOptions) -> None:
    layout = opts.layout
    for name, present in (("mss", opts.mss is not None), ("wscale", opts.wscale is not None),
                          ("sackOK", opts.sack_permitted), ("sack", bool(opts.sack_blocks)),
                          ("TS", opts.timestamp is not None)):
        if present and name not in layout:
            raise ValueError(f"options carry {name!r} but the explicit layout {layout} omits it")


def encode_options(opts: TcpOptions) -> bytes:
    """TCP option bytes, padded to a multiple of 4.

    With ``opts.layout`` set, the named options are written in that order
    (every option present in ``opts`` must be named, and every named one
    present); a layout that does not end on a 4-byte boundary is padded with
    zero bytes (an EOL, then zeros: RFC 793's padding). Raises ValueError if
    the result exceeds 40 bytes or a value does not fit its field.
    """
    if opts is NO_OPTIONS:
        return b""
    out = bytearray()
    try:
        if opts.layout:
            _check_layout_covers(opts)
            for name in opts.layout:
                _write_option(name, opts, out)
        else:
            # tcp_options_write(): every group is a whole number of 32-bit words.
            if opts.mss is not None:
                out += _OPT_MSS.pack(TCPOPT_MSS, 4, opts.mss)
            sack_ok_pending = opts.sack_permitted
            if opts.timestamp is not None:
                if sack_ok_pending:
                    out += _OPT_NOP_NOP_TS.pack(TCPOPT_SACK_PERM, 2, TCPOPT_TIMESTAMP, 10,
                                                *opts.timestamp)
                    sack_ok_pending = False
                else:
                    out += _OPT_NOP_NOP_TS.pack(TCPOPT_NOP, TCPOPT_NOP, TCPOPT_TIMESTAMP, 10,
                                                *opts.timestamp)
            if sack_ok_pending:
                out += bytes((TCPOPT_NOP, TCPOPT_NOP, TCPOPT_SACK_PERM, 2))
            if opts.wscale is not None:
                out += bytes((TCPOPT_NOP, TCPOPT_WINDOW, 3, opts.wscale))
            if opts.sack_blocks:
                out += bytes((TCPOPT_NOP, TCPOPT_NOP, TCPOPT_SACK, 2 + 8 * len(opts.sack_blocks)))
                for start, end in opts.sack_blocks:
                    out += _U32X2.pack(start, end)
    except struct.error as exc:
        raise ValueError(f"TCP option value out of range: {exc}") from None
    if len(out) & 3:
        out += bytes(4 - (len(out) & 3))
    if len(out) > MAX_TCP_OPTION_SPACE:
        raise ValueError(f"TCP options need {len(out)} bytes; at most "
                         f"{MAX_TCP_OPTION_SPACE} fit (options: {opts})")
    return bytes(out)


def parse_options(data: bytes) -> TcpOptions:
    """Parse TCP option bytes like ``tcp_parse_options``.

    EOL ends parsing; NOP is skipped; a length byte below 2, a length running
    past the end, or a lone trailing kind byte stops parsing silently; an
    unknown kind, or a known kind with the wrong length, is skipped and left out
    of the result. Values are recorded whatever the segment's flags (Linux
    honours MSS, window scale and SACK-permitted only on a SYN; the model
    decides). A repeated option overrides the earlier one, as in Linux.
    ``layout`` records the kinds seen, in order.
    """
    if not data:
        return NO_OPTIONS
    # tcp_fast_parse_options(): the aligned timestamp-only layout of established segments.
    if len(data) == 12 and data[:4] == _NOP_NOP_TS_PREFIX:
        return TcpOptions(timestamp=_U32X2.unpack_from(data, 4), layout=_LAYOUT_TS_ONLY)
    mss: int | None = None
    wscale: int | None = None
    sack_ok = False
    blocks: tuple[tuple[int, int], ...] = ()
    timestamp: tuple[int, int] | None = None
    layout: list[str] = []
    i = 0
    n = len(data)
    while i < n:
        kind = data[i]
        if kind == TCPOPT_EOL:
            layout.append("eol")
            break
        if kind == TCPOPT_NOP:
            layout.append("nop")
            i += 1
            continue
        if n - i < 2:
            break
        size = data[i + 1]
        if size < 2 or size > n - i:  # "silly options" / partial option
            break
        if kind == TCPOPT_MSS and size == 4:
            mss = _U16.unpack_from(data, i + 2)[0]
            layout.append("mss")
        elif kind == TCPOPT_WINDOW and size == 3:
            wscale = data[i + 2]
            layout.append("wscale")
        elif kind == TCPOPT_SACK_PERM and size == 2:
            sack_ok = True
            layout.append("sackOK")
        elif kind == TCPOPT_SACK and size >= 10 and (size - 2) % 8 == 0:
            blocks = tuple(_U32X2.unpack_from(data, off) for off in range(i + 2, i + size, 8))
            layout.append("sack")
        elif kind == TCPOPT_TIMESTAMP and size == 10:
            timestamp = _U32X2.unpack_from(data, i + 2)
            layout.append("TS")
        i += size
    return TcpOptions(mss=mss, wscale=wscale, sack_permitted=sack_ok, sack_blocks=blocks,
                      timestamp=timestamp, layout=tuple(layout))


# --------------------------------------------------------------------------- encode


def encode(seg: Segment) -> bytes:
    """The IPv4 packet (header + TCP segment) carrying ``seg``, checksums correct."""
    return encode_with(seg)


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
    src = _aton(seg.src)
    dst = _aton(seg.dst)
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
        doff_flags = ((doff & 0xF) << 12) | ((tcp_reserved & 0xF) << 8) | (int(seg.flags) & 0xFF)
        tcp_head = _TCP_HDR.pack(seg.sport, seg.dport, seg.seq, seg.ack, doff_flags,
                                 seg.window, 0, seg.urg_ptr)
        if tcp_checksum is None:
            residue = (_residue(_pseudo_header(src, dst, tcp_len)) + _residue(tcp_head + options)
                       + _residue(seg.payload)) % 0xFFFF
            tcp_checksum = _fold(residue)
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


@dataclass(slots=True, frozen=True)
class Ipv4Packet:
    """An IPv4 packet that passed ``ip_rcv_core``'s checks.

    ``header`` is the whole header (``ihl * 4`` bytes, options included);
    ``l4`` is the transport segment, trimmed to ``total_length``.
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


def decode_ipv4(frame: bytes) -> Ipv4Packet:
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
    if _residue(header):
        raise Ipv4ChecksumError(f"IPv4 header checksum 0x{_U16.unpack_from(header, 10)[0]:04x} "
                                f"is wrong (header {header.hex()})")
    (_vihl, tos, total_length, ip_id, frag_off, ttl, protocol, checksum, src, dst
     ) = _IP_HDR.unpack_from(header)
    if n < total_length:
        raise Ipv4Truncated(f"total length {total_length} but only {n} bytes arrived")
    if total_length < hlen:
        raise Ipv4BadTotalLength(f"total length {total_length} is less than the "
                                 f"{hlen}-byte header")
    return Ipv4Packet(socket.inet_ntoa(src), socket.inet_ntoa(dst), protocol, ttl, tos, ip_id,
                      ihl, total_length, frag_off, checksum, header, frame[hlen:total_length])


def tcp_checksum_ok(pkt: Ipv4Packet) -> bool:
    """Whether the TCP checksum over pseudo-header and segment is correct."""
    seg = pkt.l4
    header = pkt.header
    residue = (_residue(header[12:20] + _PSEUDO_TAIL.pack(IPPROTO_TCP, len(seg)))
               + _residue(seg)) % 0xFFFF
    return residue == 0


def decode_tcp(pkt: Ipv4Packet, *, verify_checksum: bool = True) -> Segment:
    """The TCP segment in ``pkt``, checked as ``tcp_v4_rcv`` checks it.

    In order: not a fragment (:class:`Ipv4Fragment`) and protocol TCP
    (:class:`NotTcp`), which ``ip_local_deliver`` settles before TCP runs; then
    at least 20 bytes (:class:`TcpTooShort`), ``doff >= 5``
    (:class:`TcpBadDataOffset`), ``doff * 4`` within the segment
    (:class:`TcpHeaderTruncated`), and, if ``verify_checksum``, the checksum
    (:class:`TcpChecksumError`). Options are parsed by :func:`parse_options`.
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
    options = parse_options(data[TCP_HEADER_LEN:hlen]) if hlen > TCP_HEADER_LEN else NO_OPTIONS
    return Segment(pkt.src, sport, pkt.dst, dport, seq, ack, _FLAGS[doff_flags & 0xFF], window,
                   options, data[hlen:], urg_ptr, pkt.ttl, pkt.tos, pkt.ip_id)


def decode(frame: bytes, *, verify_checksum: bool = True) -> Segment:
    """:func:`decode_ipv4` then :func:`decode_tcp`."""
    return decode_tcp(decode_ipv4(frame), verify_checksum=verify_checksum)
