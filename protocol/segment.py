"""The TCP/IPv4 segment as rxpath's actors and kernel model see it.

A :class:`Segment` is the decoded form; :mod:`protocol.wire` turns it into real
IPv4 + TCP header bytes with correct checksums and back. Its options are a
:class:`~protocol.tcp_options.TcpOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Final

from protocol.seq import seq_add
from protocol.tcp_options import (
    MAX_TCP_OPTION_SPACE,
    NO_OPTIONS,
    TcpOptions,
    options_len,
    options_text,
)

__all__ = [
    "IPPROTO_TCP",
    "IPV4_HEADER_LEN",
    "MAX_TCP_OPTION_SPACE",
    "NO_OPTIONS",
    "TCP_HEADER_LEN",
    "Segment",
    "TcpFlags",
    "TcpOptions",
    "flags_text",
]


class TcpFlags:
    """The TCP header's flag bits, as plain ints (``TcpFlags.ACK | TcpFlags.PSH`` is an int).

    Not an ``enum.Flag``: flag arithmetic runs for every segment, and enum
    arithmetic costs a Python-level call per operation.
    """

    FIN: Final = 0x01
    SYN: Final = 0x02
    RST: Final = 0x04
    PSH: Final = 0x08
    ACK: Final = 0x10
    URG: Final = 0x20
    ECE: Final = 0x40
    CWR: Final = 0x80


def _letters(flags: int) -> str:
    out = ""
    for flag, letter in ((TcpFlags.SYN, "S"), (TcpFlags.FIN, "F"), (TcpFlags.RST, "R"),
                         (TcpFlags.PSH, "P"), (TcpFlags.URG, "U"), (TcpFlags.ECE, "E"),
                         (TcpFlags.CWR, "W")):
        if flags & flag:
            out += letter
    if flags & TcpFlags.ACK:
        out += "."
    return out or "none"


_FLAG_TEXT = tuple(_letters(i) for i in range(256))


def flags_text(flags: int) -> str:
    """tcpdump style letters for a flags byte: S, F, R, P, U, E, W, then "." for ACK."""
    return _FLAG_TEXT[flags & 0xFF]


IPPROTO_TCP = 6
IPV4_HEADER_LEN = 20
TCP_HEADER_LEN = 20


@dataclass(slots=True, unsafe_hash=True)
class Segment:
    """One TCP segment in one IPv4 packet.

    A value: never changed after construction (:meth:`with_` makes a new one).
    ``flags`` is the header's flags byte (:class:`TcpFlags` bits); ``window`` is the
    raw 16-bit header field (unscaled).
    """

    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    ack: int = 0
    flags: int = TcpFlags.ACK
    window: int = 65535
    options: TcpOptions = field(default=NO_OPTIONS)
    payload: bytes = b""
    urg_ptr: int = 0
    ttl: int = 64
    tos: int = 0
    ip_id: int = 0

    @property
    def seg_len(self) -> int:
        """Sequence space consumed: payload plus one for SYN and one for FIN."""
        flags = self.flags
        return len(self.payload) + ((flags >> 1) & 1) + (flags & 1)  # SYN is 0x02, FIN 0x01

    @property
    def end_seq(self) -> int:
        return seq_add(self.seq, self.seg_len)

    @property
    def four_tuple(self) -> tuple[str, int, str, int]:
        return (self.src, self.sport, self.dst, self.dport)

    @property
    def header_len(self) -> int:
        """TCP header bytes (``doff * 4``): as received for a decoded segment."""
        return TCP_HEADER_LEN + options_len(self.options)

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)

    def with_(self, **changes: object) -> Segment:
        return replace(self, **changes)  # type: ignore[arg-type]

    def describe(self) -> str:
        """A one-line tcpdump-like summary for logs and test failures."""
        text = f"{self.src}:{self.sport} > {self.dst}:{self.dport} {flags_text(self.flags)} "
        if self.seg_len:
            text += f"{self.seq}:{self.end_seq}({len(self.payload)}) "
        else:
            text += f"seq {self.seq} "
        if self.flags & TcpFlags.ACK:
            text += f"ack {self.ack} "
        text += f"win {self.window}"
        opts = options_text(self.options)
        if opts:
            text += f" <{opts}>"
        return text
