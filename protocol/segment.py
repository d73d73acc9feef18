"""The TCP/IPv4 segment as rxpath's actors and kernel model see it.

A :class:`Segment` is the decoded form; :mod:`protocol.wire` turns it into real
IPv4 + TCP header bytes with correct checksums and back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import IntFlag

from protocol.seq import seq_add


class TcpFlags(IntFlag):
    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80

    def short(self) -> str:
        """packetdrill/tcpdump style letters: S, F, R, P, ., U, E, W."""
        out = ""
        for flag, letter in ((TcpFlags.SYN, "S"), (TcpFlags.FIN, "F"), (TcpFlags.RST, "R"),
                             (TcpFlags.PSH, "P"), (TcpFlags.URG, "U"), (TcpFlags.ECE, "E"),
                             (TcpFlags.CWR, "W")):
            if self & flag:
                out += letter
        if self & TcpFlags.ACK:
            out += "."
        return out or "none"


IPPROTO_TCP = 6
IPV4_HEADER_LEN = 20
TCP_HEADER_LEN = 20
MAX_TCP_OPTION_SPACE = 40


@dataclass(slots=True, frozen=True)
class TcpOptions:
    """The TCP options rxpath understands (RFC 793, 7323, 2018).

    ``layout`` optionally fixes the exact order of option kinds on the wire
    (as names: "mss", "nop", "wscale", "sackOK", "sack", "TS", "eol"); when
    empty, :mod:`protocol.wire` uses Linux's usual layout.
    """

    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    timestamp: tuple[int, int] | None = None  # (TSval, TSecr)
    layout: tuple[str, ...] = ()

    @property
    def tsval(self) -> int | None:
        return None if self.timestamp is None else self.timestamp[0]

    @property
    def tsecr(self) -> int | None:
        return None if self.timestamp is None else self.timestamp[1]

    def is_empty(self) -> bool:
        return (self.mss is None and self.wscale is None and not self.sack_permitted
                and not self.sack_blocks and self.timestamp is None)


NO_OPTIONS = TcpOptions()


@dataclass(slots=True, frozen=True)
class Segment:
    """One TCP segment in one IPv4 packet.

    ``window`` is the raw 16-bit header field (unscaled).
    """

    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    ack: int = 0
    flags: TcpFlags = TcpFlags.ACK
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
        return len(self.payload) + bool(self.flags & TcpFlags.SYN) + bool(self.flags & TcpFlags.FIN)

    @property
    def end_seq(self) -> int:
        return seq_add(self.seq, self.seg_len)

    @property
    def four_tuple(self) -> tuple[str, int, str, int]:
        return (self.src, self.sport, self.dst, self.dport)

    def has(self, flag: TcpFlags) -> bool:
        return bool(self.flags & flag)

    def with_(self, **changes: object) -> Segment:
        return replace(self, **changes)  # type: ignore[arg-type]

    def describe(self) -> str:
        """A one-line tcpdump-like summary for logs and test failures."""
        text = f"{self.src}:{self.sport} > {self.dst}:{self.dport} {self.flags.short()} "
        if self.seg_len:
            text += f"{self.seq}:{self.end_seq}({len(self.payload)}) "
        else:
            text += f"seq {self.seq} "
        if self.flags & TcpFlags.ACK:
            text += f"ack {self.ack} "
        text += f"win {self.window}"
        opts = self.options
        parts = []
        if opts.mss is not None:
            parts.append(f"mss {opts.mss}")
        if opts.sack_permitted:
            parts.append("sackOK")
        if opts.timestamp is not None:
            parts.append(f"TS val {opts.timestamp[0]} ecr {opts.timestamp[1]}")
        if opts.wscale is not None:
            parts.append(f"wscale {opts.wscale}")
        if opts.sack_blocks:
            parts.append("sack " + " ".join(f"{a}:{b}" for a, b in opts.sack_blocks))
        if parts:
            text += " <" + ",".join(parts) + ">"
        return text
