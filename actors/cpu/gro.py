"""Generic receive offload for TCP/IPv4: ``napi_gro_receive`` over one NAPI poll's frames.

With GRO on (``ethtool -K gro on``, the ``nic.gro`` setting), a poll's frames go through
``dev_gro_receive`` → ``inet_gro_receive`` → ``tcp4_gro_receive`` before ``ip_rcv``: the
in-order, full-sized segments of one flow are merged into one skb that the stack takes
as a single ``tcp_v4_rcv`` with a ``gso_size`` (one ACK, one queue insertion, one
copy-out for up to 64 KB). The rules are the kernel's (net/core/dev.c, net/ipv4/af_inet.c,
net/ipv4/tcp_offload.c, the same in 4.13 and 6.18 for what rxpath's peers send):

* Only IPv4 with a 20-byte header, a good header checksum, no fragment bits and TCP
  inside, with a sound TCP header and a good checksum, takes part; any other frame goes
  up at once, as it is (``NAPI_GRO_CB(skb)->flush``), without flushing what a flow holds.
* A held skb of the same flow (addresses, protocol, ports) takes the segment only if
  the TTL, TOS and DF bit match, the IP id follows on (or, with DF, stays the same),
  no CWR is set, the flags match except CWR/FIN/PSH, the ACK number and every byte of
  the options and the window are the same, the payload is no larger than the held
  skb's first (its ``gso_size``), the sequence follows on, and the merged IP length
  stays under 65536. Otherwise the held skb is flushed and the segment starts anew.
* After merging, a segment shorter than ``gso_size`` or with URG/PSH/RST/SYN/FIN ends
  the skb: it is flushed at once. A segment that starts a skb with such a flag, or with
  no payload, is not held.
* At most ``MAX_GRO_SKBS`` (8) flows are held; a ninth flushes the oldest, as in 4.13.
  (6.x keeps 8 in each of 8 hash buckets; rxpath holds 8 in both profiles, which only
  differs with more than 8 flows on one RX queue in one poll.) The end of the poll
  flushes all, oldest first (``napi_gro_flush``; with HZ below 1000, as the profiles'
  default, nothing is kept across polls; at HZ=1000 Linux keeps skbs younger than a
  jiffy when the poll used its whole weight, which rxpath does not).

A merged skb leaves as one IPv4 packet: the first segment's headers with the total
length, PSH/FIN of the merged ones, and both checksums set anew, so the stack reads it
like any frame. Like Linux, it is CHECKSUM_UNNECESSARY: ``rcv_batch`` gives its wire
frame count (``segs``), and the stack takes a skb of several frames as validated here
instead of reading its bytes again. A held skb of one segment goes up as the original
frame, and the stack checks it as any other.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from protocol.wire import internet_checksum

MAX_GRO_SKBS = 8  # held flows per NAPI (include/linux/netdevice.h)
GRO_MAX_SIZE = 65536  # p->len + len >= this: -E2BIG (GRO_LEGACY_MAX_SIZE in 6.x)

_VIHL_PLAIN = 0x45
_IPPROTO_TCP = 6
_IP_DF = 0x4000
_IP_FRAG_BITS = 0x3FFF  # MF | offset
_CWR, _URG, _PSH, _RST, _SYN, _FIN = 0x80, 0x20, 0x08, 0x04, 0x02, 0x01
_FINAL = _URG | _PSH | _RST | _SYN | _FIN
_U16 = struct.Struct("!H")
_U16X2 = struct.Struct("!HH")


@dataclass(slots=True, eq=False)
class _Held:
    """One skb on the NAPI's gro_list: its first frame and what merged into it."""

    first: bytes
    payloads: list[bytes]
    indices: list[int]  # positions in the poll of the frames it holds
    mss: int  # gso_size: the first segment's payload length
    next_seq: int
    ip_len: int  # the merged packet's IP total length
    ip_id: int
    fin_psh: int  # FIN/PSH of merged segments, ORed into the header
    hdr_len: int  # IP + TCP header bytes of the first frame
    # The payloads read as one big-endian number, mod 0xFFFF: the merged checksum
    # follows from it without reading the bytes again.
    residue: int
    odd: bool  # the payloads' total length is odd


@dataclass(frozen=True, slots=True)
class GroSkb:
    """What goes up to ``ip_rcv``: a frame (merged or not), its GSO size (0 for a single
    segment) and the positions in the poll of the wire frames it carries."""

    frame: bytes
    gso_size: int
    indices: tuple[int, ...] | list[int]


def _payload_residue(frame: bytes, hl: int, ip_len: int) -> int | None:
    """The payload's residue (its bytes as one number, mod 0xFFFF) if the segment's TCP
    checksum is good, else None: skb_gro_checksum_validate, one pass over the bytes.
    A number's residue mod 0xFFFF is its 16-bit word sum's (2**16 = 1), and appending n
    bytes multiplies what came before by 256**n: 1 for even n, 256 for odd."""
    payload = int.from_bytes(memoryview(frame)[hl:ip_len], "big") % 0xFFFF
    odd = (ip_len - hl) & 1
    whole = int.from_bytes(frame[20:hl], "big") * (256 if odd else 1) + payload
    if odd:
        whole <<= 8  # the zero pad byte
    pseudo = int.from_bytes(frame[12:20], "big") + _IPPROTO_TCP + ip_len - 20
    return payload if (pseudo + whole) % 0xFFFF == 0 else None


def _build(h: _Held) -> bytes:
    """The merged skb as one IPv4 packet with fresh lengths and checksums."""
    first, hl = h.first, h.hdr_len
    ip = bytearray(first[:20])
    ip[2:4] = _U16.pack(h.ip_len)
    ip[10:12] = b"\0\0"
    ip[10:12] = _U16.pack(internet_checksum(bytes(ip)))
    tcp = bytearray(first[20:hl])
    tcp[13] |= h.fin_psh
    tcp[16:18] = b"\0\0"
    whole = int.from_bytes(tcp, "big") * (256 if h.odd else 1) + h.residue
    if h.odd:
        whole <<= 8
    residue = (int.from_bytes(first[12:20], "big") + _IPPROTO_TCP + h.ip_len - 20
               + whole) % 0xFFFF
    tcp[16:18] = _U16.pack(0xFFFF - residue if residue else 0)
    return bytes(ip) + bytes(tcp) + b"".join(h.payloads)


def _flush(h: _Held) -> GroSkb:
    if len(h.indices) == 1:
        return GroSkb(h.first, 0, h.indices)  # napi_gro_complete: count 1, no gso
    return GroSkb(_build(h), h.mss, h.indices)


def napi_gro_receive(frames: Sequence[bytes], skip: Sequence[bool] | None = None
                     ) -> list[GroSkb]:
    """Run a poll's ``frames`` through GRO; returns the skbs in the order they go up.
    ``skip[i]``: frame ``i`` bypasses GRO (it already carries a GSO size)."""
    out: list[GroSkb] = []
    held: dict[bytes, _Held] = {}  # insertion order: oldest first
    for i, frame in enumerate(frames):
        n = len(frame)
        res: int | None = None
        if (not (skip and skip[i]) and n >= 40 and frame[0] == _VIHL_PLAIN
                and frame[9] == _IPPROTO_TCP):
            ip_len, = _U16.unpack_from(frame, 2)
            frag, = _U16.unpack_from(frame, 6)
            hl = 20 + (frame[32] >> 4) * 4
            if (not frag & _IP_FRAG_BITS and 40 <= ip_len <= n and 40 <= hl <= ip_len
                    and not int.from_bytes(frame[:20], "big") % 0xFFFF):
                res = _payload_residue(frame, hl, ip_len)
        if res is None:
            out.append(GroSkb(frame, 0, (i,)))  # flush: up as it is, nothing flushed
            continue
        if ip_len < n:
            frame = frame[:ip_len]  # link-layer padding
        key = frame[12:24]
        flags = frame[33]
        length = ip_len - hl
        seq = int.from_bytes(frame[24:28], "big")
        h = held.get(key)
        if h is not None:
            first = h.first
            ip_id, = _U16.unpack_from(frame, 4)
            n_held = len(h.indices)
            same = (frame[8] == first[8] and frame[1] == first[1]  # ttl, tos
                    and (frag & _IP_DF) == (_U16.unpack_from(first, 6)[0] & _IP_DF)
                    and ((h.ip_id + n_held) & 0xFFFF == ip_id
                         or (frag & _IP_DF and ip_id == h.ip_id))
                    and not flags & _CWR
                    and not (flags ^ first[33]) & ~(_CWR | _FIN | _PSH) & 0xFF
                    and frame[28:32] == first[28:32]  # ack_seq
                    and hl == h.hdr_len and frame[34:36] == first[34:36]  # window
                    and frame[40:hl] == first[40:hl]  # options
                    and 0 < length <= h.mss and seq == h.next_seq
                    and h.ip_len + length < GRO_MAX_SIZE)
            if same:
                h.payloads.append(frame[hl:])
                h.indices.append(i)
                h.residue = (h.residue * (256 if length & 1 else 1) + res) % 0xFFFF
                h.odd ^= bool(length & 1)
                h.next_seq = (seq + length) & 0xFFFFFFFF
                h.ip_len += length
                h.fin_psh |= flags & (_FIN | _PSH)
                if length < h.mss or flags & _FINAL:
                    out.append(_flush(held.pop(key)))
                continue
            out.append(_flush(held.pop(key)))
        if length == 0 or flags & _FINAL:
            out.append(GroSkb(frame, 0, (i,)))  # not held: goes up now
            continue
        if len(held) >= MAX_GRO_SKBS:
            oldest = next(iter(held))
            out.append(_flush(held.pop(oldest)))
        held[key] = _Held(frame, [frame[hl:]], [i], length,
                          (seq + length) & 0xFFFFFFFF, ip_len,
                          _U16.unpack_from(frame, 4)[0], 0, hl, res, bool(length & 1))
    out.extend(_flush(h) for h in held.values())
    return out
