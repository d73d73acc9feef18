"""TCP options: the value type, the one table of the kinds rxpath knows, and their codec.

:data:`TCP_OPTIONS` has one row per option: its name (as packetdrill writes it and as
``TcpOptions.layout`` records it), kind byte, wire length, the :class:`TcpOptions` field
that carries its value, and how to parse, emit and print it. The wire codec here
(:func:`encode_options`, :func:`parse_options`), the packetdrill parser and printer, the
drill runner and ``Segment.describe`` all read the table; no other module spells the
option vocabulary out.

Values are held the way :class:`TcpOptions` holds them: MSS and window scale as ints,
SACK-permitted as ``True``, SACK blocks as a tuple of ``(start, end)`` pairs, timestamps
as ``(TSval, TSecr)``; NOP and EOL carry none.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "LAYOUT_TS_ONLY",
    "MAX_TCP_OPTION_SPACE",
    "NOP_NOP_TS_PREFIX",
    "NO_OPTIONS",
    "OPTION_BY_KIND",
    "OPTION_BY_NAME",
    "OPTION_NAMES",
    "TCPOPT_EOL",
    "TCPOPT_MSS",
    "TCPOPT_NOP",
    "TCPOPT_SACK",
    "TCPOPT_SACK_PERM",
    "TCPOPT_TIMESTAMP",
    "TCPOPT_WINDOW",
    "TCP_OPTIONS",
    "TcpOption",
    "TcpOptions",
    "default_layout",
    "encode_options",
    "options_len",
    "options_text",
    "parse_options",
    "timestamp_only",
]

MAX_TCP_OPTION_SPACE = 40

# TCP option kinds (include/net/tcp.h).
TCPOPT_EOL = 0
TCPOPT_NOP = 1
TCPOPT_MSS = 2
TCPOPT_WINDOW = 3
TCPOPT_SACK_PERM = 4
TCPOPT_SACK = 5
TCPOPT_TIMESTAMP = 8


# --------------------------------------------------------------------------- the value


@dataclass(slots=True, unsafe_hash=True)
class TcpOptions:
    """The TCP options rxpath understands (RFC 793, 7323, 2018).

    A value: never changed after construction (``dataclasses.replace`` makes a new
    one). ``layout`` optionally fixes the exact order of option kinds on the wire (as
    the names of :data:`TCP_OPTIONS`); when empty, the wire uses Linux's usual layout
    (:func:`default_layout`).
    """

    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    timestamp: tuple[int, int] | None = None  # (TSval, TSecr)
    layout: tuple[str, ...] = ()
    # Bytes the options take on the wire, padding included: recorded by the parser
    # (doff * 4 - 20, whatever the bytes held), computed once on demand otherwise
    # (:func:`options_len`). Not part of the value, and never copied by replace().
    wire_len: int = field(default=-1, init=False, repr=False, compare=False)

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
NO_OPTIONS.wire_len = 0


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True, slots=True)
class TcpOption:
    """One option kind: what it is called, how it looks on the wire and in scripts.

    ``length`` is the whole option on the wire; SACK adds ``per_item`` bytes per
    block to it. ``parse(data, offset)`` reads the value of an option starting at
    ``data[offset]`` whose length byte has already been checked; ``emit(value)`` writes
    it; ``text(value)`` is packetdrill's text form. ``syntax`` is the shape of that
    text after the name ("" nothing, "int" one number up to ``limit``, "blocks"
    ``a:b`` pairs, "ts" ``val X ecr Y``); ``what`` names the number in parse errors.
    """

    name: str
    kind: int
    length: int
    attr: str  # the TcpOptions field; "" for NOP and EOL, which carry nothing
    absent: Any  # that field's value when the option is not there
    parse: Callable[[bytes, int], Any]
    emit: Callable[[Any], bytes]
    text: Callable[[Any], str]
    per_item: int = 0
    syntax: str = ""
    limit: int = 0
    what: str = ""

    def wire_len(self, value: Any) -> int:
        """Bytes on the wire for this option carrying ``value``."""
        return self.length + self.per_item * len(value) if self.per_item else self.length

    def size_ok(self, size: int) -> bool:
        """Whether a length byte of ``size`` is valid for this kind (else it is skipped)."""
        if self.per_item:
            return size > self.length and (size - self.length) % self.per_item == 0
        return size == self.length

    def value_in(self, opts: TcpOptions) -> Any:
        """This option's value in ``opts`` (None for NOP and EOL)."""
        return getattr(opts, self.attr) if self.attr else None

    def present_in(self, opts: TcpOptions) -> bool:
        return bool(self.attr) and getattr(opts, self.attr) != self.absent


_U16 = struct.Struct("!H")
_U32X2 = struct.Struct("!II")
_OPT_MSS = struct.Struct("!BBH")
_OPT_TS = struct.Struct("!BBII")
_OPT_NOP_NOP_TS = struct.Struct("!BBBBII")


def _emit_sack(blocks: tuple[tuple[int, int], ...]) -> bytes:
    return bytes((TCPOPT_SACK, 2 + 8 * len(blocks))) + b"".join(
        [_U32X2.pack(start, end) for start, end in blocks])


def _parse_sack(data: bytes, i: int) -> tuple[tuple[int, int], ...]:
    return tuple(_U32X2.unpack_from(data, off) for off in range(i + 2, i + data[i + 1], 8))


def _no_value(data: bytes, i: int) -> None:
    return None


TCP_OPTIONS: tuple[TcpOption, ...] = (
    TcpOption("eol", TCPOPT_EOL, 1, "", None, _no_value,
              lambda _v: bytes((TCPOPT_EOL,)), lambda _v: "eol"),
    TcpOption("nop", TCPOPT_NOP, 1, "", None, _no_value,
              lambda _v: bytes((TCPOPT_NOP,)), lambda _v: "nop"),
    TcpOption("mss", TCPOPT_MSS, 4, "mss", None,
              lambda d, i: _U16.unpack_from(d, i + 2)[0],
              lambda v: _OPT_MSS.pack(TCPOPT_MSS, 4, v), lambda v: f"mss {v}",
              syntax="int", limit=0xFFFF, what="mss value"),
    TcpOption("wscale", TCPOPT_WINDOW, 3, "wscale", None,
              lambda d, i: d[i + 2],
              lambda v: bytes((TCPOPT_WINDOW, 3, v)), lambda v: f"wscale {v}",
              syntax="int", limit=0xFF, what="window scale shift count"),
    TcpOption("sackOK", TCPOPT_SACK_PERM, 2, "sack_permitted", False,
              lambda d, i: True,
              lambda _v: bytes((TCPOPT_SACK_PERM, 2)), lambda _v: "sackOK"),
    TcpOption("sack", TCPOPT_SACK, 2, "sack_blocks", (), _parse_sack, _emit_sack,
              lambda v: "sack " + " ".join(f"{a}:{b}" for a, b in v),
              per_item=8, syntax="blocks"),
    TcpOption("TS", TCPOPT_TIMESTAMP, 10, "timestamp", None,
              lambda d, i: _U32X2.unpack_from(d, i + 2),
              lambda v: _OPT_TS.pack(TCPOPT_TIMESTAMP, 10, *v),
              lambda v: f"TS val {v[0]} ecr {v[1]}", syntax="ts"),
)

OPTION_BY_NAME: dict[str, TcpOption] = {o.name: o for o in TCP_OPTIONS}
OPTION_BY_KIND: dict[int, TcpOption] = {o.kind: o for o in TCP_OPTIONS}
OPTION_NAMES: tuple[str, ...] = tuple(OPTION_BY_NAME)
_VALUED = tuple(o for o in TCP_OPTIONS if o.attr)
_EOL = "eol"
_NOP = "nop"

LAYOUT_TS_ONLY = (_NOP, _NOP, "TS")
# How every established segment with timestamps starts its options (then TSval, TSecr).
NOP_NOP_TS_PREFIX = bytes((TCPOPT_NOP, TCPOPT_NOP, TCPOPT_TIMESTAMP, 10))


def timestamp_only(timestamp: tuple[int, int]) -> TcpOptions:
    """The options of a segment carrying ``NOP, NOP, TS`` and nothing else, as parsed."""
    opts = TcpOptions(None, None, False, (), timestamp, LAYOUT_TS_ONLY)
    opts.wire_len = 12
    return opts


# --------------------------------------------------------------------------- layout


def default_layout(opts: TcpOptions) -> tuple[str, ...]:
    """The option layout Linux's ``tcp_options_write`` uses for these options.

    Order: MSS; timestamps (sharing their leading two bytes with SACK-permitted
    when both are present, else behind two NOPs); SACK-permitted behind two
    NOPs; window scale behind one NOP; SACK blocks behind two NOPs. Every group
    is a whole number of 32-bit words.
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
            layout += LAYOUT_TS_ONLY
    if sack_ok_pending:
        layout += (_NOP, _NOP, "sackOK")
    if opts.wscale is not None:
        layout += (_NOP, "wscale")
    if opts.sack_blocks:
        layout += (_NOP, _NOP, "sack")
    return tuple(layout)


def _only_timestamp(opts: TcpOptions) -> bool:
    """The established-connection case: timestamps alone, in Linux's layout."""
    return (opts.timestamp is not None and not opts.layout and opts.mss is None
            and opts.wscale is None and not opts.sack_permitted and not opts.sack_blocks)


def options_len(opts: TcpOptions) -> int:
    """Bytes ``opts`` take on the wire, padding included, without encoding them.

    A parsed value reports what its segment carried (``doff * 4 - 20``).
    """
    n = opts.wire_len
    if n >= 0:
        return n
    if _only_timestamp(opts):
        n = 12
    elif opts.layout:
        try:
            n = sum(OPTION_BY_NAME[name].wire_len(OPTION_BY_NAME[name].value_in(opts))
                    for name in opts.layout)
        except KeyError as exc:
            raise ValueError(f"unknown TCP option name {exc.args[0]!r}") from None
    else:
        n = sum(o.wire_len(o.value_in(opts)) for o in map(OPTION_BY_NAME.__getitem__,
                                                            default_layout(opts)))
    n = (n + 3) & ~3
    opts.wire_len = n
    return n


# --------------------------------------------------------------------------- codec


def _check_layout_covers(opts: TcpOptions) -> None:
    layout = opts.layout
    for o in _VALUED:
        if o.present_in(opts) and o.name not in layout:
            raise ValueError(f"options carry {o.name!r} but the explicit layout {layout} omits it")


def _emit(name: str, opts: TcpOptions) -> bytes:
    o = OPTION_BY_NAME.get(name)
    if o is None:
        raise ValueError(f"unknown TCP option name {name!r} (known: {', '.join(OPTION_NAMES)})")
    if o.attr and not o.present_in(opts):
        raise ValueError(f"layout names {name!r} but options.{o.attr} is {o.absent!r}")
    return o.emit(o.value_in(opts))


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
    ts = opts.timestamp
    try:
        if ts is not None and not opts.layout and opts.mss is None and opts.wscale is None \
                and not opts.sack_permitted and not opts.sack_blocks:
            # Timestamps alone (every established segment): one word group, one pack.
            return _OPT_NOP_NOP_TS.pack(TCPOPT_NOP, TCPOPT_NOP, TCPOPT_TIMESTAMP, 10,
                                        ts[0], ts[1])
        if opts.layout:
            _check_layout_covers(opts)
            layout = opts.layout
        else:
            layout = default_layout(opts)
        out = b"".join([_emit(name, opts) for name in layout])
    except struct.error as exc:
        raise ValueError(f"TCP option value out of range: {exc}") from None
    if len(out) & 3:
        out += bytes(4 - (len(out) & 3))
    if len(out) > MAX_TCP_OPTION_SPACE:
        raise ValueError(f"TCP options need {len(out)} bytes; at most "
                         f"{MAX_TCP_OPTION_SPACE} fit (options: {opts})")
    return out


def parse_options(data: bytes) -> TcpOptions:
    """Parse TCP option bytes like ``tcp_parse_options``.

    EOL ends parsing; NOP is skipped; a length byte below 2, a length running
    past the end, or a lone trailing kind byte stops parsing silently; an
    unknown kind, or a known kind with the wrong length, is skipped and left out
    of the result. Values are recorded whatever the segment's flags (Linux
    honours MSS, window scale and SACK-permitted only on a SYN; the model
    decides). A repeated option overrides the earlier one, as in Linux.
    ``layout`` records the kinds seen, in order; ``wire_len`` is ``len(data)``.
    """
    n = len(data)
    if not n:
        return NO_OPTIONS
    # tcp_fast_parse_options(): the aligned timestamp-only layout of established segments.
    if n == 12 and data.startswith(NOP_NOP_TS_PREFIX):
        return timestamp_only(_U32X2.unpack_from(data, 4))
    values: dict[str, Any] = {}
    layout: list[str] = []
    i = 0
    while i < n:
        kind = data[i]
        if kind == TCPOPT_EOL:
            layout.append(_EOL)
            break
        if kind == TCPOPT_NOP:
            layout.append(_NOP)
            i += 1
            continue
        if n - i < 2:
            break
        size = data[i + 1]
        if size < 2 or size > n - i:  # "silly options" / partial option
            break
        o = OPTION_BY_KIND.get(kind)
        if o is not None and o.size_ok(size):
            values[o.attr] = o.parse(data, i)
            layout.append(o.name)
        i += size
    opts = TcpOptions(layout=tuple(layout), **values)
    opts.wire_len = n
    return opts


def options_text(opts: TcpOptions) -> str:
    """The options as tcpdump lists them, in wire order: ``mss 1460,sackOK,...``.

    NOP and EOL are left out; empty when there is nothing else.
    """
    if opts is NO_OPTIONS:
        return ""
    parts = []
    for name in opts.layout or default_layout(opts):
        o = OPTION_BY_NAME.get(name)
        if o is not None and o.attr:
            parts.append(o.text(o.value_in(opts)))
    return ",".join(parts)
