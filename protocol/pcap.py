"""A pcap writer for the emulated wire: raw IPv4 frames (LINKTYPE_RAW), microsecond stamps.

Wireshark and tshark read it; their TCP analysis sees real headers and byte sequence
numbers, so retransmissions, out-of-order segments, duplicate ACKs and zero windows show.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

PCAP_MAGIC = 0xA1B2C3D4
LINKTYPE_RAW = 101  # each packet starts with an IPv4 (or IPv6) header
SNAPLEN = 65535

_FILE_HEADER = struct.Struct("<IHHiIII")
_RECORD_HEADER = struct.Struct("<IIII")  # seconds, microseconds, captured length, length


class PcapWriter:
    def __init__(self, path: str | Path, *, buffer_frames: int = 256) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f: BinaryIO = self.path.open("wb")
        self._f.write(_FILE_HEADER.pack(PCAP_MAGIC, 2, 4, 0, 0, SNAPLEN, LINKTYPE_RAW))
        self._buf: list[bytes] = []
        self._limit = 2 * buffer_frames  # two list items per frame
        self.frames = 0

    def write(self, frame: bytes, wall_ns: int) -> None:
        self.write_many((frame,), wall_ns)

    def write_many(self, frames: Sequence[bytes], wall_ns: int) -> None:
        """Frames that crossed the wire at one instant (a burst): one stamp for all."""
        sec, ns = divmod(wall_ns, 1_000_000_000)
        usec = ns // 1000
        pack = _RECORD_HEADER.pack
        buf = self._buf
        append = buf.append
        # Header and frame as two pieces: flush() joins them, so no per-frame copy here.
        for frame in frames:
            n = len(frame)
            if n > SNAPLEN:
                append(pack(sec, usec, SNAPLEN, n))
                append(frame[:SNAPLEN])
            else:
                append(pack(sec, usec, n, n))
                append(frame)
        self.frames += len(frames)
        if len(buf) >= self._limit:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self._f.write(b"".join(self._buf))
            self._buf.clear()
            self._f.flush()

    def close(self) -> None:
        self.flush()
        self._f.close()


def read_pcap(path: str | Path) -> list[tuple[int, bytes]]:
    """(timestamp in µs, frame) of every packet: for tests and the report."""
    data = Path(path).read_bytes()
    magic, _, _, _, _, _, linktype = _FILE_HEADER.unpack_from(data, 0)
    if magic != PCAP_MAGIC or linktype != LINKTYPE_RAW:
        raise ValueError(f"{path}: not a raw-IPv4 pcap written by rxpath")
    out = []
    i = 24
    while i + 16 <= len(data):
        sec, usec, caplen, _ = _RECORD_HEADER.unpack_from(data, i)
        i += 16
        out.append((sec * 1_000_000 + usec, data[i:i + caplen]))
        i += caplen
    return out


# --------------------------------------------------------------------------- reading any capture

PCAP_MAGIC_NS = 0xA1B23C4D  # the same format with nanosecond stamps
LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113     # Linux "cooked" capture (tcpdump -i any), 16-byte header
LINKTYPE_IPV4 = 228          # raw IPv4 only
LINKTYPE_LINUX_SLL2 = 276    # its successor, 20-byte header
LINKTYPES = {LINKTYPE_ETHERNET: "Ethernet", LINKTYPE_RAW: "raw IP", LINKTYPE_IPV4: "raw IPv4",
             LINKTYPE_LINUX_SLL: "Linux cooked", LINKTYPE_LINUX_SLL2: "Linux cooked v2"}
ETH_P_IP = 0x0800
_VLAN_TYPES = (0x8100, 0x88A8)  # 802.1Q / 802.1ad tags in front of the real EtherType


class PcapError(ValueError):
    """A file that is not a pcap this reader can use (the message says why)."""


class PcapRecord:
    """One captured packet: stamp (ns), its length on the wire, the bytes captured."""

    __slots__ = ("data", "orig_len", "ts_ns")

    def __init__(self, ts_ns: int, orig_len: int, data: bytes) -> None:
        self.ts_ns, self.orig_len, self.data = ts_ns, orig_len, data

    @property
    def truncated(self) -> bool:
        """Captured with a snap length shorter than the packet."""
        return len(self.data) < self.orig_len


def read_capture(path: str | Path) -> tuple[int, list[PcapRecord]]:
    """(link type, records) of a classic pcap file, either byte order, µs or ns stamps.

    pcapng is refused with a hint (``editcap -F pcap`` converts it); a last record cut
    short (a capture still being written) is dropped.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise PcapError(f"{p}: cannot read: {exc.strerror or exc}") from None
    if len(data) < _FILE_HEADER.size:
        raise PcapError(f"{p}: {len(data)} bytes is too short for a pcap file header")
    for order in ("<", ">"):
        magic = struct.unpack_from(order + "I", data, 0)[0]
        if magic in (PCAP_MAGIC, PCAP_MAGIC_NS):
            break
    else:
        if data[:4] == b"\x0a\x0d\x0d\x0a":
            raise PcapError(f"{p}: a pcapng file; convert it with "
                            f"`editcap -F pcap {p.name} out.pcap`")
        raise PcapError(f"{p}: not a pcap file (magic {data[:4].hex()})")
    scale = 1 if magic == PCAP_MAGIC_NS else 1000
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0x0FFFFFFF  # high bits: FCS info
    if linktype not in LINKTYPES:
        raise PcapError(f"{p}: link type {linktype} is not one of "
                        + ", ".join(f"{k} ({v})" for k, v in LINKTYPES.items()))
    record = struct.Struct(order + "IIII")
    out: list[PcapRecord] = []
    i = _FILE_HEADER.size
    while i + record.size <= len(data):
        sec, frac, caplen, orig_len = record.unpack_from(data, i)
        i += record.size
        if caplen > max(SNAPLEN, 262144):
            raise PcapError(f"{p}: record {len(out) + 1} claims {caplen} captured bytes "
                            "(a corrupt file)")
        if i + caplen > len(data):
            break  # cut short at the end
        out.append(PcapRecord(sec * 1_000_000_000 + frac * scale, orig_len,
                              data[i:i + caplen]))
        i += caplen
    return linktype, out


def link_ipv4(linktype: int, frame: bytes) -> bytes | None:
    """The IPv4 packet inside a captured frame, or None when it carries something else."""
    if linktype == LINKTYPE_ETHERNET:
        off, ethertype = 14, int.from_bytes(frame[12:14], "big") if len(frame) >= 14 else -1
        while ethertype in _VLAN_TYPES and len(frame) >= off + 4:
            ethertype = int.from_bytes(frame[off + 2:off + 4], "big")
            off += 4
        if ethertype != ETH_P_IP:
            return None
        packet = frame[off:]
    elif linktype == LINKTYPE_LINUX_SLL:
        if len(frame) < 16 or int.from_bytes(frame[14:16], "big") != ETH_P_IP:
            return None
        packet = frame[16:]
    elif linktype == LINKTYPE_LINUX_SLL2:
        if len(frame) < 20 or int.from_bytes(frame[0:2], "big") != ETH_P_IP:
            return None
        packet = frame[20:]
    else:  # raw IP (101 may hold IPv6 too) or raw IPv4
        packet = frame
    return packet if packet and packet[0] >> 4 == 4 else None
