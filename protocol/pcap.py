"""A pcap writer for the emulated wire: raw IPv4 frames (LINKTYPE_RAW), microsecond stamps.

Wireshark and tshark read it; their TCP analysis sees real headers and byte sequence
numbers, so retransmissions, out-of-order segments, duplicate ACKs and zero windows show.
"""

from __future__ import annotations

import struct
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
        sec, ns = divmod(wall_ns, 1_000_000_000)
        data = frame[:SNAPLEN]
        buf = self._buf
        # Header and frame as two pieces: flush() joins them, so no per-frame copy here.
        buf.append(_RECORD_HEADER.pack(sec, ns // 1000, len(data), len(frame)))
        buf.append(data)
        self.frames += 1
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
