"""The msgpack envelope every inter-actor message travels in.

Wire form: one msgpack array ``[1, kind, sender, seq, ts_ns, body]``:

- ``1``: the envelope format version;
- ``kind``: one of a closed set of message kinds, each declared once in ``protocol/``
  (:mod:`protocol.messages`) with a schema for its body;
- ``sender``: the sending actor's name;
- ``seq``: a sequence number per *link* (sender -> destination), starting at 0, so a
  receiver that sees a gap knows the transport lost something (:class:`LinkSeqTracker`);
- ``ts_ns``: the sender's ``time.monotonic_ns()`` when it sent (one host shares the clock);
- ``body``: a map with string keys, checked against the kind's schema.

Declaring a kind::

    PING = register_kind("ping", {"request_id": int, "payload": bytes},
                         optional={"note": str}, doc="...")

Schema field types: ``bytes``, ``str``, ``int`` (never ``bool``), ``float`` (an ``int``
is accepted), ``bool``, ``list``, ``dict``, ``type(None)``, ``object`` (anything), a tuple
of these (any of them), or ``ListOf(T)`` (a list whose every item is a ``T``).  A body
must carry every required field, may carry the optional ones, and nothing else unless
the kind is declared with ``extra_fields=True``.

Decoding is strict: ``raw=False``, string map keys, no ext types at all (the msgpack
timestamp ext included), no pickle anywhere, and a configurable maximum frame size.
Whatever is wrong, :meth:`EnvelopeCodec.decode` raises :class:`MalformedMessage` with a
short ``reason`` key (one of :data:`REJECT_REASONS`) that receivers count.

One :class:`EnvelopeCodec` per thread: it reuses a single ``msgpack.Packer``, which is
about twice as cheap as ``msgpack.packb`` (that builds a new Packer on every call).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import msgpack

ENVELOPE_VERSION = 1
DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
_U64_MAX = (1 << 64) - 1

# Every reason a received frame can be rejected for; counters are keyed by these.
REJECT_REASONS = (
    "oversized",          # frame longer than the codec's max_size
    "not_msgpack",        # bytes that are not one msgpack object
    "truncated",          # msgpack cut short
    "trailing_data",      # bytes after the msgpack object
    "ext_type",           # an ext (or timestamp) type anywhere
    "bad_shape",          # not a 6-element array
    "bad_version",        # unknown envelope version
    "bad_header",         # kind/sender/seq/ts_ns of the wrong type or range
    "unknown_kind",       # kind not in the registry
    "missing_field",      # a required body field is absent
    "bad_field_type",     # a body field has the wrong type
    "unexpected_field",   # a body field the kind does not declare
    # Raised by the transport / actor layers rather than by the codec:
    "bad_frames",         # not exactly [routing id, payload]
    "sender_mismatch",    # envelope sender differs from the connection's routing id
    "unhandled_kind",     # a valid kind this actor has no handler for
    "rejected_by_handler",  # a handler refused the message (RejectMessage)
)


class MalformedMessage(ValueError):
    """A message that does not fit the envelope or its kind's schema."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Envelope(NamedTuple):
    kind: str
    sender: str
    seq: int
    ts_ns: int
    body: dict[str, Any]


@dataclass(frozen=True)
class ListOf:
    """Schema type: a list whose items all match ``item``."""

    item: FieldSpec


FieldSpec = type | tuple[type, ...] | ListOf
_Checker = Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_float(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_SIMPLE_CHECKERS: dict[type, _Checker] = {
    int: _is_int,
    float: _is_float,
    bool: lambda v: isinstance(v, bool),
    str: lambda v: isinstance(v, str),
    # bytes-likes are accepted when encoding; decoding always yields bytes.
    bytes: lambda v: isinstance(v, (bytes, bytearray, memoryview)),
    # tuples pack as arrays; decoding always yields lists.
    list: lambda v: isinstance(v, (list, tuple)),
    dict: lambda v: isinstance(v, dict),
    type(None): lambda v: v is None,
    object: lambda v: True,
}


def _checker(spec: FieldSpec) -> _Checker:
    if isinstance(spec, ListOf):
        item = _checker(spec.item)
        return lambda v: isinstance(v, (list, tuple)) and all(item(x) for x in v)
    if isinstance(spec, tuple):
        if not spec:
            raise TypeError("an empty tuple is not a field type")
        parts = tuple(_checker(s) for s in spec)
        return lambda v: any(p(v) for p in parts)
    try:
        return _SIMPLE_CHECKERS[spec]
    except (KeyError, TypeError):
        raise TypeError(f"unsupported schema field type {spec!r}") from None


def _spec_name(spec: FieldSpec) -> str:
    if isinstance(spec, ListOf):
        return f"list[{_spec_name(spec.item)}]"
    if isinstance(spec, tuple):
        return " | ".join(_spec_name(s) for s in spec)
    return "None" if spec is type(None) else spec.__name__


@dataclass(frozen=True)
class KindSpec:
    """One message kind: its name, body schema and a line of documentation."""

    kind: str
    required: Mapping[str, FieldSpec]
    optional: Mapping[str, FieldSpec]
    extra_fields: bool = False
    doc: str = ""
    _checks: tuple[tuple[str, _Checker, bool], ...] = field(
        default=(), repr=False, compare=False)

    def validate(self, body: Any) -> None:
        """Raise :class:`MalformedMessage` unless ``body`` fits this kind's schema."""
        if not isinstance(body, dict):
            raise MalformedMessage("bad_shape", f"{self.kind}: body is {type(body).__name__}")
        present = 0
        for name, check, required in self._checks:
            if name in body:
                present += 1
                if not check(body[name]):
                    spec = self.required.get(name, self.optional.get(name))
                    raise MalformedMessage(
                        "bad_field_type",
                        f"{self.kind}.{name}: expected {_spec_name(spec)}, "
                        f"got {type(body[name]).__name__}")
            elif required:
                raise MalformedMessage("missing_field", f"{self.kind}.{name}")
        if present != len(body) and not self.extra_fields:
            declared = set(self.required) | set(self.optional)
            extra = sorted(repr(k) for k in body if k not in declared)
            raise MalformedMessage("unexpected_field", f"{self.kind}: {', '.join(extra)}")


class KindRegistry:
    """The closed set of message kinds a codec accepts.

    Registration happens at import time of the ``protocol`` modules; :meth:`freeze`
    closes the set (an actor process freezes it once its modules are imported).
    """

    def __init__(self) -> None:
        self._kinds: dict[str, KindSpec] = {}
        self._frozen = False

    def register(self, kind: str, required: Mapping[str, FieldSpec] | None = None, *,
                 optional: Mapping[str, FieldSpec] | None = None,
                 extra_fields: bool = False, doc: str = "") -> KindSpec:
        if not isinstance(kind, str) or not kind or not kind.replace("_", "").isalnum():
            raise ValueError(f"invalid message kind name {kind!r}")
        required = dict(required or {})
        optional = dict(optional or {})
        both = set(required) & set(optional)
        if both:
            raise ValueError(f"{kind}: fields both required and optional: {sorted(both)}")
        checks = tuple(
            [(n, _checker(s), True) for n, s in required.items()]
            + [(n, _checker(s), False) for n, s in optional.items()])
        spec = KindSpec(kind, MappingProxyType(required), MappingProxyType(optional),
                        extra_fields, doc, checks)
        old = self._kinds.get(kind)
        if old is not None:
            if old == spec:
                return old  # re-import of the same declaration
            raise ValueError(f"message kind {kind!r} is already registered with another schema")
        if self._frozen:
            raise RuntimeError(f"cannot register {kind!r}: the kind registry is frozen")
        self._kinds[kind] = spec
        return spec

    def freeze(self) -> None:
        self._frozen = True

    @property
    def frozen(self) -> bool:
        return self._frozen

    def get(self, kind: str) -> KindSpec | None:
        return self._kinds.get(kind)

    def __getitem__(self, kind: str) -> KindSpec:
        return self._kinds[kind]

    def __contains__(self, kind: object) -> bool:
        return kind in self._kinds

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)


# The process-wide registry that protocol/messages.py and role protocol modules fill.
KINDS = KindRegistry()


def register_kind(kind: str, required: Mapping[str, FieldSpec] | None = None, *,
                  optional: Mapping[str, FieldSpec] | None = None,
                  extra_fields: bool = False, doc: str = "") -> str:
    """Declare a message kind in the process-wide registry; returns ``kind``."""
    KINDS.register(kind, required, optional=optional, extra_fields=extra_fields, doc=doc)
    return kind


class EnvelopeCodec:
    """Encode and decode envelopes; not thread-safe (it owns one reused Packer)."""

    def __init__(self, *, max_size: int = DEFAULT_MAX_MESSAGE_BYTES,
                 registry: KindRegistry = KINDS, validate_outgoing: bool = True) -> None:
        if max_size <= 0:
            raise ValueError("max_size must be positive")
        self.max_size = max_size
        self.registry = registry
        self.validate_outgoing = validate_outgoing
        # No `default=` hook: anything msgpack cannot represent natively is a TypeError.
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True, datetime=False)

    def encode(self, kind: str, sender: str, seq: int, ts_ns: int,
               body: Mapping[str, Any]) -> bytes:
        """Pack one envelope; raises MalformedMessage if it would not decode."""
        if self.validate_outgoing:
            spec = self.registry.get(kind)
            if spec is None:
                raise MalformedMessage("unknown_kind", repr(kind))
            spec.validate(body if isinstance(body, dict) else dict(body))
            _check_header(sender, seq, ts_ns)
        try:
            data = self._packer.pack([ENVELOPE_VERSION, kind, sender, seq, ts_ns, body])
        except (TypeError, ValueError, OverflowError) as exc:
            self._packer.reset()
            raise MalformedMessage("bad_field_type", f"{kind}: {exc}") from None
        if len(data) > self.max_size:
            raise MalformedMessage("oversized", f"{kind}: {len(data)} > {self.max_size} bytes")
        return data

    def encode_envelope(self, env: Envelope) -> bytes:
        return self.encode(env.kind, env.sender, env.seq, env.ts_ns, env.body)

    def decode(self, data: bytes | bytearray | memoryview) -> Envelope:
        """Unpack and validate one frame, or raise MalformedMessage."""
        if len(data) > self.max_size:
            raise MalformedMessage("oversized", f"{len(data)} > {self.max_size} bytes")
        try:
            obj = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True,
                                  max_ext_len=0)
        except msgpack.ExtraData:
            raise MalformedMessage("trailing_data") from None
        except ValueError as exc:  # includes FormatError, StackError, UnicodeDecodeError
            text = str(exc)
            if "max_ext_len" in text:
                raise MalformedMessage("ext_type") from None
            # msgpack caps each container/str/bin length at the bytes left in the buffer
            # (so a forged length cannot make it allocate); a claim above that cap means
            # the frame was cut short, like "incomplete input".
            if "incomplete input" in text or "exceeds max_" in text:
                raise MalformedMessage("truncated", text[:200]) from None
            raise MalformedMessage("not_msgpack", text[:200]) from None
        except Exception as exc:  # the parser is the trust boundary: nothing may escape
            raise MalformedMessage("not_msgpack", f"{type(exc).__name__}: {exc}"[:200]) from None
        if type(obj) is not list or len(obj) != 6:
            raise MalformedMessage("bad_shape", f"top level is {type(obj).__name__}")
        version, kind, sender, seq, ts_ns, body = obj
        if version != ENVELOPE_VERSION or type(version) is not int:
            raise MalformedMessage("bad_version", repr(version)[:40])
        if type(kind) is not str:
            raise MalformedMessage("bad_header", "kind is not a string")
        _check_header(sender, seq, ts_ns)
        spec = self.registry.get(kind)
        if spec is None:
            raise MalformedMessage("unknown_kind", repr(kind)[:80])
        spec.validate(body)
        return Envelope(kind, sender, seq, ts_ns, body)


def _check_header(sender: Any, seq: Any, ts_ns: Any) -> None:
    if type(sender) is not str or not sender:
        raise MalformedMessage("bad_header", "sender is not a non-empty string")
    if not _is_int(seq) or not 0 <= seq <= _U64_MAX:
        raise MalformedMessage("bad_header", f"seq {seq!r:.40}")
    if not _is_int(ts_ns) or not 0 <= ts_ns <= _U64_MAX:
        raise MalformedMessage("bad_header", f"ts_ns {ts_ns!r:.40}")


class LinkSeqTracker:
    """Per-sender expected sequence numbers on one receiver's inbox.

    ZeroMQ keeps order within a connection, so a seq above the expected one means the
    transport lost ``seq - expected`` messages (``lost``), and a seq below it means the
    sender started over, e.g. after a restart (``restarts``).  Transport loss is never an
    emulated drop; it is its own, visible counter.

    A restarted receiver cannot know where its senders' links stand: with
    ``adopt_first=True`` the first seq seen from each sender is taken as the starting
    point (counted in ``adopted`` when it is not 0) instead of as a loss.
    """

    __slots__ = ("_expected", "adopt_first", "adopted", "lost", "restarts")

    def __init__(self, *, adopt_first: bool = False) -> None:
        self._expected: dict[str, int] = {}
        self.adopt_first = adopt_first
        self.lost = 0
        self.restarts = 0
        self.adopted = 0

    def observe(self, sender: str, seq: int) -> int:
        """Record ``seq`` from ``sender``; return how many messages went missing before it."""
        expected = self._expected.get(sender)
        self._expected[sender] = seq + 1
        if expected is None:
            if self.adopt_first:
                if seq:
                    self.adopted += 1
                return 0
            expected = 0
        if seq == expected:
            return 0
        if seq > expected:
            gap = seq - expected
            self.lost += gap
            return gap
        self.restarts += 1
        return 0

    def expected(self, sender: str) -> int:
        return self._expected.get(sender, 0)

    def forget(self, sender: str) -> None:
        """Drop what is known of ``sender``'s link (its next seq is taken as 0 again)."""
        self._expected.pop(sender, None)
