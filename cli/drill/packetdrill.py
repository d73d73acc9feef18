"""The packetdrill script language, as receive-side scripts use it: lexer, parser, typed AST.

A script is a list of options (``--mss=1000``), an optional first shell command (the
init command), timed events and an optional last shell command (the cleanup). Each
event has a time and one action:

- a packet: ``+0 < P. 1:1001(1000) ack 1 win 257 <nop,nop,sack 1:2>`` (``<`` injected
  into the receiver, ``>`` expected from it);
- a system call: ``+0...0.100 read(4, ..., 2000) = 2000`` (with ``...end`` it blocks);
- a shell command in backticks;
- a ``%{ python }%`` block that checks tcp_info values.

The grammar follows packetdrill's parser.y where these scripts need it. The parser
knows nothing about sockets or time; :mod:`cli.drill.runner` gives the AST meaning.
Every error carries ``path:line``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any, Union

from protocol.tcp_options import OPTION_BY_NAME

__all__ = [
    "BinaryExpr",
    "CallExpr",
    "CodeSpec",
    "CommandSpec",
    "EllipsisExpr",
    "Event",
    "EventTime",
    "Expr",
    "IntExpr",
    "ListExpr",
    "PacketSpec",
    "ParseError",
    "Script",
    "StringExpr",
    "StructEntry",
    "StructExpr",
    "SyscallSpec",
    "TcpOptionSpec",
    "TimeKind",
    "WordExpr",
    "parse_file",
    "parse_script",
]


class ParseError(ValueError):
    """A script that is not valid packetdrill; the message starts with ``path:line:``."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line
        self.message = message


# ----------------------------------------------------------------------------- AST


class TimeKind(Enum):
    ABSOLUTE = "absolute"  # 0.100
    RELATIVE = "relative"  # +0.1 (from the previous event)
    ANY = "any"  # *   (outbound packets only)
    ABSOLUTE_RANGE = "absolute_range"  # 0.1~0.2  (outbound packets only)
    RELATIVE_RANGE = "relative_range"  # +0~+.04  (outbound packets only)


@dataclass(frozen=True, slots=True)
class EventTime:
    kind: TimeKind
    start_us: int = 0
    end_us: int | None = None  # the range end, for the *_RANGE kinds


@dataclass(frozen=True, slots=True)
class TcpOptionSpec:
    """One option in a ``<...>`` list, in the order written.

    ``kind`` is a name from :data:`protocol.tcp_options.TCP_OPTIONS`; which of the
    other fields it uses follows that row's ``syntax``.
    """

    kind: str  # nop, eol, mss, wscale, sackOK, sack, TS
    value: int | None = None  # mss / wscale
    blocks: tuple[tuple[int, int], ...] = ()  # sack
    tsval: int | None = None
    tsecr: int | None = None

    @classmethod
    def of(cls, kind: str, value: Any) -> TcpOptionSpec:
        """The spec for option ``kind`` carrying ``value`` as ``TcpOptions`` holds it."""
        syntax = OPTION_BY_NAME[kind].syntax
        if syntax == "int":
            return cls(kind, value)
        if syntax == "blocks":
            return cls(kind, blocks=tuple(value))
        if syntax == "ts":
            return cls(kind, tsval=value[0], tsecr=value[1])
        return cls(kind)

    @property
    def option_value(self) -> Any:
        """The value as ``TcpOptions`` holds it (None for nop and eol)."""
        row = OPTION_BY_NAME[self.kind]
        syntax = row.syntax
        if syntax == "int":
            return self.value
        if syntax == "blocks":
            return self.blocks
        if syntax == "ts":
            return (self.tsval, self.tsecr)
        return True if row.attr else None

    @property
    def length(self) -> int:
        """Bytes on the wire."""
        return OPTION_BY_NAME[self.kind].wire_len(self.blocks)

    def __str__(self) -> str:
        return OPTION_BY_NAME[self.kind].text(self.option_value)


@dataclass(frozen=True, slots=True)
class PacketSpec:
    """A ``<`` or ``>`` TCP packet line. Sequence numbers are script-relative."""

    direction: str  # "<" inbound (injected), ">" outbound (expected)
    flags: str  # packetdrill letters: "S.", "P.", "F.", "R", ".", "" (for "-")
    seq: int
    end_seq: int
    payload_len: int
    ack: int = 0
    window: int | None = None  # None: not given (outbound: not checked)
    urg_ptr: int = 0
    # None means ``<...>``: any options (outbound only); () means none at all.
    options: tuple[TcpOptionSpec, ...] | None = ()
    ecn: str | None = None  # [ect0] / (ce) ... as written, not modelled further
    ports: tuple[int, int] | None = None

    @property
    def inbound(self) -> bool:
        return self.direction == "<"

    def has(self, letter: str) -> bool:
        return letter in self.flags

    def __str__(self) -> str:
        flags = self.flags or "-"
        text = f"{self.direction} {flags} {self.seq}:{self.end_seq}({self.payload_len})"
        if "." in self.flags:
            text += f" ack {self.ack}"
        if self.window is not None:
            text += f" win {self.window}"
        if self.urg_ptr:
            text += f" urg {self.urg_ptr}"
        if self.options is None:
            text += " <...>"
        elif self.options:
            text += " <" + ",".join(str(o) for o in self.options) + ">"
        return text


# Expressions (system call arguments and results).


@dataclass(frozen=True, slots=True)
class EllipsisExpr:
    def __str__(self) -> str:
        return "..."


@dataclass(frozen=True, slots=True)
class IntExpr:
    value: int
    hex: bool = False

    def __str__(self) -> str:
        return hex(self.value) if self.hex else str(self.value)


@dataclass(frozen=True, slots=True)
class WordExpr:
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class StringExpr:
    value: str
    prefix: bool = False  # "abc"... : only the start is given

    def __str__(self) -> str:
        return f'"{self.value}"' + ("..." if self.prefix else "")


@dataclass(frozen=True, slots=True)
class ListExpr:
    items: tuple[Expr, ...]

    def __str__(self) -> str:
        return "[" + ", ".join(str(i) for i in self.items) + "]"


@dataclass(frozen=True, slots=True)
class StructEntry:
    key: str | None  # None for a positional entry ({..., 2000})
    value: Expr
    param: Expr | None = None  # msg_iov(1)=...

    def __str__(self) -> str:
        if self.key is None:
            return str(self.value)
        param = f"({self.param})" if self.param is not None else ""
        return f"{self.key}{param}={self.value}"


@dataclass(frozen=True, slots=True)
class StructExpr:
    entries: tuple[StructEntry, ...]

    def get(self, key: str) -> Expr | None:
        for e in self.entries:
            if e.key == key:
                return e.value
        return None

    def positional(self) -> tuple[Expr, ...]:
        return tuple(e.value for e in self.entries if e.key is None)

    def __str__(self) -> str:
        return "{" + ", ".join(str(e) for e in self.entries) + "}"


@dataclass(frozen=True, slots=True)
class BinaryExpr:
    op: str  # "|"
    lhs: Expr
    rhs: Expr

    def __str__(self) -> str:
        return f"{self.lhs}{self.op}{self.rhs}"


@dataclass(frozen=True, slots=True)
class CallExpr:
    name: str  # htons, inet_addr
    args: tuple[Expr, ...]

    def __str__(self) -> str:
        return f"{self.name}(" + ", ".join(str(a) for a in self.args) + ")"


Expr = Union[EllipsisExpr, IntExpr, WordExpr, StringExpr, ListExpr, StructExpr, BinaryExpr,  # noqa: UP007
             CallExpr]


@dataclass(frozen=True, slots=True)
class SyscallSpec:
    name: str
    args: tuple[Expr, ...]
    result: Expr
    errno: str | None = None
    note: str | None = None
    end_us: int | None = None  # blocking call: ``...end`` (relative end for relative events)

    @property
    def blocking(self) -> bool:
        return self.end_us is not None

    def __str__(self) -> str:
        text = f"{self.name}(" + ", ".join(str(a) for a in self.args) + f") = {self.result}"
        if self.errno:
            text += f" {self.errno}"
        return text


@dataclass(frozen=True, slots=True)
class CommandSpec:
    text: str  # the shell command between backticks
    line: int = 0  # where it starts (for the init and cleanup commands)

    def __str__(self) -> str:
        return f"`{self.text}`"


@dataclass(frozen=True, slots=True)
class CodeSpec:
    text: str  # python between %{ and }%

    def __str__(self) -> str:
        return "%{ " + " ".join(self.text.split()) + " }%"


Action = Union[PacketSpec, SyscallSpec, CommandSpec, CodeSpec]  # noqa: UP007


@dataclass(frozen=True, slots=True)
class Event:
    line: int
    time: EventTime
    action: Action
    text: str = ""  # the source line, for reports

    def __str__(self) -> str:
        return self.text or str(self.action)


@dataclass(frozen=True, slots=True)
class Script:
    path: str
    options: tuple[tuple[str, str | None], ...] = ()
    init_command: CommandSpec | None = None
    events: tuple[Event, ...] = ()
    cleanup_command: CommandSpec | None = None
    lines: tuple[str, ...] = field(default=(), repr=False)

    def option(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.options:
            if key == name:
                return value
        return default


# ----------------------------------------------------------------------------- lexer


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # INT HEX FLOAT WORD STRING BACKQ CODE OPTION ELLIPSIS IPV4 PUNCT EOF
    text: str
    line: int

    def __str__(self) -> str:
        return "end of file" if self.kind == "EOF" else repr(self.text)


_TOKEN_RE = re.compile(r"""
    (?P<ws>[ \t\r\f\v]+)
  | (?P<nl>\n)
  | (?P<lcomment>//[^\n]*)
  | (?P<bcomment>/\*.*?\*/)
  | (?P<option>--[A-Za-z0-9_]+(?:=[^\s]*)?)
  | (?P<backq>`[^`]*`)
  | (?P<code>%\{.*?\}%)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<ellipsis>\.\.\.)
  | (?P<ipv4>\d+\.\d+\.\d+\.\d+)
  | (?P<hex>0[xX][0-9A-Fa-f]+)
  | (?P<float>\d*\.\d+)
  | (?P<int>\d+)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[<>.:(),=\[\]{}|+\-*~;%/!&])
""", re.VERBOSE | re.DOTALL)


def tokenize(text: str, path: str = "<script>") -> list[Token]:
    tokens: list[Token] = []
    line = 1
    pos = 0
    n = len(text)
    while pos < n:
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            what = {"`": "unterminated backquoted command", '"': "unterminated string",
                    "%": "unterminated %{ code block"}.get(text[pos])
            raise ParseError(path, line, what or f"unexpected character {text[pos]!r}")
        kind = m.lastgroup
        assert kind is not None
        value = m.group()
        if kind == "nl":
            line += 1
        elif kind in ("ws", "lcomment"):
            pass
        elif kind == "bcomment":
            line += value.count("\n")
        else:
            tokens.append(Token(kind.upper(), value, line))
            line += value.count("\n")
        pos = m.end()
    tokens.append(Token("EOF", "", line))
    return tokens


# ----------------------------------------------------------------------------- parser


def _time_us(tok: Token, path: str) -> int:
    """Seconds as written (``0.210``, ``+.04``) to integer microseconds, exactly."""
    return int(Decimal(tok.text) * 1_000_000)


_U16 = 0xFFFF
_U32 = 0xFFFFFFFF
_VALID_FLAGS = set(".FSRPEWAU")


class _Parser:
    def __init__(self, tokens: list[Token], path: str) -> None:
        self.toks = tokens
        self.i = 0
        self.path = path

    # -- helpers
    @property
    def tok(self) -> Token:
        return self.toks[self.i]

    def peek(self, k: int = 1) -> Token:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self) -> Token:
        t = self.toks[self.i]
        if t.kind != "EOF":
            self.i += 1
        return t

    def error(self, message: str, tok: Token | None = None) -> ParseError:
        t = tok or self.tok
        return ParseError(self.path, t.line, message)

    def is_punct(self, ch: str, tok: Token | None = None) -> bool:
        t = tok or self.tok
        return t.kind == "PUNCT" and t.text == ch

    def expect_punct(self, ch: str, what: str = "") -> Token:
        if not self.is_punct(ch):
            raise self.error(f"expected {ch!r}{' ' + what if what else ''}, found {self.tok}")
        return self.next()

    def expect_int(self, what: str, lo: int = 0, hi: int = _U32) -> int:
        t = self.tok
        if t.kind not in ("INT", "HEX"):
            raise self.error(f"expected {what}, found {t}")
        self.next()
        value = int(t.text, 0) if t.kind == "HEX" else int(t.text)
        if not lo <= value <= hi:
            raise self.error(f"{what} {value} out of range", t)
        return value

    def is_word(self, *words: str) -> bool:
        return self.tok.kind == "WORD" and self.tok.text in words

    # -- script
    def script(self, lines: tuple[str, ...]) -> Script:
        options: list[tuple[str, str | None]] = []
        while self.tok.kind == "OPTION":
            text = self.next().text[2:]
            name, sep, value = text.partition("=")
            options.append((name, value if sep else None))
        init: CommandSpec | None = None
        if self.tok.kind == "BACKQ":
            tok = self.next()
            init = CommandSpec(tok.text[1:-1], tok.line)
        events: list[Event] = []
        cleanup: CommandSpec | None = None
        while self.tok.kind != "EOF":
            if self.tok.kind == "BACKQ":
                tok = self.next()
                cmd = CommandSpec(tok.text[1:-1], tok.line)
                if self.tok.kind != "EOF":
                    raise self.error("a command without a time is only allowed first or last")
                cleanup = cmd
                break
            events.append(self.event(lines))
        return Script(self.path, tuple(options), init, tuple(events), cleanup, lines)

    def event(self, lines: tuple[str, ...]) -> Event:
        line = self.tok.line
        etime = self.event_time()
        action = self.action(etime)
        if etime.kind in (TimeKind.ANY, TimeKind.ABSOLUTE_RANGE, TimeKind.RELATIVE_RANGE) and not (
                isinstance(action, PacketSpec) and not action.inbound):
            what = "<star>" if etime.kind == TimeKind.ANY else "range"
            raise ParseError(self.path, line,
                             f"event time {what} can only be used with outbound packets")
        text = lines[line - 1].strip() if 0 < line <= len(lines) else ""
        return Event(line, etime, action, text)

    def event_time(self) -> EventTime:
        if self.is_punct("*"):
            self.next()
            return EventTime(TimeKind.ANY)
        relative = False
        if self.is_punct("+"):
            self.next()
            relative = True
        start = self.time()
        if self.is_punct("~"):
            self.next()
            if relative:
                self.expect_punct("+", "(a relative range is +a~+b)")
            end = self.time()
            if end < start:
                raise self.error("time range is backwards")
            kind = TimeKind.RELATIVE_RANGE if relative else TimeKind.ABSOLUTE_RANGE
            return EventTime(kind, start, end)
        return EventTime(TimeKind.RELATIVE if relative else TimeKind.ABSOLUTE, start)

    def time(self) -> int:
        t = self.tok
        if t.kind not in ("INT", "FLOAT"):
            raise self.error(f"expected a time, found {t}")
        self.next()
        return _time_us(t, self.path)

    def action(self, etime: EventTime) -> Action:
        t = self.tok
        if t.kind == "PUNCT" and t.text in "<>":
            return self.packet()
        if t.kind == "BACKQ":
            self.next()
            return CommandSpec(t.text[1:-1], t.line)
        if t.kind == "CODE":
            self.next()
            return CodeSpec(t.text[2:-2])
        if t.kind in ("WORD", "ELLIPSIS"):
            return self.syscall()
        raise self.error(f"expected a packet, system call, command or code, found {t}")

    # -- packets
    def packet(self) -> PacketSpec:
        line = self.tok.line
        direction = self.next().text
        ecn = self.opt_ip_info()
        ports: tuple[int, int] | None = None
        if self.tok.kind == "INT" and self.is_punct(">", self.peek()):
            sport = self.expect_int("source port", 0, _U16)
            self.next()
            dport = self.expect_int("destination port", 0, _U16)
            ports = (sport, dport)
        flags = self.flags()
        seq = self.expect_int("start sequence number")
        self.expect_punct(":", "in start:end(length)")
        end = self.expect_int("end sequence number")
        self.expect_punct("(", "in start:end(length)")
        length = self.expect_int("payload length", 0, _U16)
        self.expect_punct(")")
        if end != seq + length:
            raise ParseError(self.path, line, "inconsistent TCP sequence numbers and payload size")
        ack = 0
        window: int | None = None
        urg = 0
        if self.is_word("ack"):
            self.next()
            ack = self.expect_int("ack sequence number")
        if self.is_word("win"):
            self.next()
            window = self.expect_int("window", 0, _U16)
        if self.is_word("urg"):
            self.next()
            urg = self.expect_int("urgent pointer", 0, _U16)
        options: tuple[TcpOptionSpec, ...] | None = ()
        if self.is_punct("<"):
            options = self.tcp_options()
        if options is None and direction == "<":
            raise ParseError(self.path, line,
                             "<...> for TCP options can only be used with outbound packets")
        if window is None and direction == "<":
            raise ParseError(self.path, line, "window must be specified for inbound packets")
        if options:
            total = sum(o.length for o in options)
            if total & 3:
                raise ParseError(self.path, line, "TCP options are not padded to a multiple "
                                 f"of 4 bytes ({total} bytes)")
            if total > 40:
                raise ParseError(self.path, line, f"TCP option list too long ({total} bytes)")
        return PacketSpec(direction, flags, seq, end, length, ack, window, urg, options, ecn, ports)

    def opt_ip_info(self) -> str | None:
        if not (self.is_punct("(") or self.is_punct("[")):
            return None
        close = ")" if self.next().text == "(" else "]"
        parts: list[str] = []
        while not self.is_punct(close):
            if self.tok.kind == "EOF":
                raise self.error("unterminated IP info")
            parts.append(self.next().text)
        self.next()
        return " ".join(parts)

    def flags(self) -> str:
        t = self.tok
        if self.is_punct("-"):
            self.next()
            return ""
        if self.is_punct("."):
            self.next()
            return "."
        if t.kind == "WORD":
            self.next()
            letters = t.text
            if self.is_punct(".") and self.peek().kind in ("INT", "HEX"):
                self.next()
                letters += "."
            bad = [c for c in letters if c not in _VALID_FLAGS]
            if bad:
                raise self.error(f"invalid TCP flag {bad[0]!r}", t)
            return letters
        raise self.error(f"expected TCP flags, found {t}")

    def tcp_options(self) -> tuple[TcpOptionSpec, ...] | None:
        self.expect_punct("<")
        if self.tok.kind == "ELLIPSIS":
            self.next()
            self.expect_punct(">")
            return None
        opts: list[TcpOptionSpec] = [self.tcp_option()]
        while self.is_punct(","):
            self.next()
            opts.append(self.tcp_option())
        self.expect_punct(">", "to close the option list")
        return tuple(opts)

    def tcp_option(self) -> TcpOptionSpec:
        t = self.tok
        if t.kind != "WORD":
            raise self.error(f"expected a TCP option, found {t}")
        name = self.next().text
        row = OPTION_BY_NAME.get(name)
        if row is None:
            raise self.error(f"TCP option {name!r} is not supported", t)
        if row.syntax == "int":
            return TcpOptionSpec(name, self.expect_int(row.what, 0, row.limit))
        if row.syntax == "blocks":
            blocks: list[tuple[int, int]] = []
            while self.tok.kind == "INT":
                left = self.expect_int("SACK left edge")
                self.expect_punct(":", "in a SACK block")
                blocks.append((left, self.expect_int("SACK right edge")))
            if not blocks:
                raise self.error(f"{name} needs at least one block")
            return TcpOptionSpec(name, blocks=tuple(blocks))
        if row.syntax == "ts":
            if not self.is_word("val"):
                raise self.error(f"expected 'val' after {name}")
            self.next()
            val = self.expect_int(f"{name} val")
            if not self.is_word("ecr"):
                raise self.error(f"expected 'ecr' in the {name} option")
            self.next()
            return TcpOptionSpec(name, tsval=val, tsecr=self.expect_int(f"{name} ecr"))
        return TcpOptionSpec(name)

    # -- system calls
    def syscall(self) -> SyscallSpec:
        end_us: int | None = None
        if self.tok.kind == "ELLIPSIS":
            self.next()
            end_us = self.time()
        t = self.tok
        if t.kind != "WORD":
            raise self.error(f"expected a system call name, found {t}")
        name = self.next().text
        self.expect_punct("(", f"after {name}")
        args: list[Expr] = []
        if not self.is_punct(")"):
            args.append(self.expr())
            while self.is_punct(","):
                self.next()
                args.append(self.expr())
        self.expect_punct(")", f"to close the arguments of {name}")
        self.expect_punct("=", f"and the expected result of {name}")
        result = self.expr()
        errno: str | None = None
        note: str | None = None
        if self.tok.kind == "WORD" and self.tok.text.startswith("E"):
            errno = self.next().text
        if self.is_punct("("):
            note = self.note()
        return SyscallSpec(name, tuple(args), result, errno, note, end_us)

    def note(self) -> str:
        self.expect_punct("(")
        words: list[str] = []
        depth = 1
        while True:
            t = self.tok
            if t.kind == "EOF":
                raise self.error("unterminated note")
            self.next()
            if self.is_punct("(", t):
                depth += 1
            elif self.is_punct(")", t):
                depth -= 1
                if depth == 0:
                    return " ".join(words)
            words.append(t.text)

    def expr(self) -> Expr:
        lhs = self.primary()
        while self.is_punct("|"):
            self.next()
            lhs = BinaryExpr("|", lhs, self.primary())
        return lhs

    def primary(self) -> Expr:
        t = self.tok
        if t.kind == "ELLIPSIS":
            self.next()
            return EllipsisExpr()
        if t.kind == "INT":
            self.next()
            return IntExpr(int(t.text))
        if t.kind == "HEX":
            self.next()
            return IntExpr(int(t.text, 16), hex=True)
        if self.is_punct("-") and self.peek().kind in ("INT", "HEX"):
            self.next()
            inner = self.primary()
            assert isinstance(inner, IntExpr)
            return IntExpr(-inner.value, inner.hex)
        if t.kind == "STRING":
            value = ""
            while self.tok.kind == "STRING":
                value += _unquote(self.next().text)
            if self.tok.kind == "ELLIPSIS":
                self.next()
                return StringExpr(value, prefix=True)
            return StringExpr(value)
        if t.kind == "WORD":
            self.next()
            if self.is_punct("("):
                self.next()
                args: list[Expr] = []
                if not self.is_punct(")"):
                    args.append(self.expr())
                    while self.is_punct(","):
                        self.next()
                        args.append(self.expr())
                self.expect_punct(")", f"to close {t.text}(")
                return CallExpr(t.text, tuple(args))
            return WordExpr(t.text)
        if self.is_punct("["):
            self.next()
            items: list[Expr] = []
            if not self.is_punct("]"):
                items.append(self.expr())
                while self.is_punct(","):
                    self.next()
                    items.append(self.expr())
            self.expect_punct("]", "to close the list")
            return ListExpr(tuple(items))
        if self.is_punct("{"):
            return self.struct()
        raise self.error(f"expected an expression, found {t}")

    def struct(self) -> StructExpr:
        self.expect_punct("{")
        entries: list[StructEntry] = []
        if not self.is_punct("}"):
            entries.append(self.struct_entry())
            while self.is_punct(","):
                self.next()
                entries.append(self.struct_entry())
        self.expect_punct("}", "to close the structure")
        return StructExpr(tuple(entries))

    def struct_entry(self) -> StructEntry:
        t = self.tok
        if t.kind == "WORD":
            nxt = self.peek()
            if self.is_punct("=", nxt):
                self.next()
                self.next()
                return StructEntry(t.text, self.expr())
            if self.is_punct("(", nxt):
                # key(param)=value, or a call used as a value
                save = self.i
                self.next()
                self.next()
                param = self.expr()
                if self.is_punct(")") and self.is_punct("=", self.peek()):
                    self.next()
                    self.next()
                    return StructEntry(t.text, self.expr(), param)
                self.i = save
        return StructEntry(None, self.expr())


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "0": "\0"}.get(m.group(1),
                                                                          m.group(1)), body)


def parse_script(text: str, path: str = "<script>") -> Script:
    """Parse a whole script; raises :class:`ParseError` with ``path:line``."""
    tokens = tokenize(text, path)
    parser = _Parser(tokens, path)
    return parser.script(tuple(text.splitlines()))


def parse_file(path: str | Path) -> Script:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ParseError(str(p), 0, f"cannot read script: {exc.strerror}") from None
    return parse_script(text, str(p))
