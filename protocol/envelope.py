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

from collections.abc import Callable, Iterator, Mapping, Sequence
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
    "sender_key_mismatch",  # CURVE: envelope sender is not the name of the client's key
    "unknown_sender",     # a sender outside the receiver's address book (nobody can answer it)
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
_ABSENT: Any = object()  # a field the body does not carry


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


# The exact types a field of each simple spec takes on the fast path.  Decoding yields
# exactly these; anything else (a bool where an int is due, an IntEnum, a bytearray...)
# goes to the full checker, which alone decides.
_EXACT: dict[type, frozenset[type]] = {
    int: frozenset({int}), float: frozenset({int, float}), bool: frozenset({bool}),
    str: frozenset({str}), bytes: frozenset({bytes}), list: frozenset({list, tuple}),
    dict: frozenset({dict}), type(None): frozenset({type(None)}),
}
_SEQUENCES = frozenset({list, tuple})


def _exact_types(spec: FieldSpec) -> frozenset[type] | None:
    """The exact types that surely fit ``spec`` (None: no fast answer, ask the checker)."""
    if isinstance(spec, tuple):
        parts = [_exact_types(s) for s in spec]
        if any(p is None for p in parts):
            return None
        return frozenset().union(*parts)  # type: ignore[arg-type]
    if isinstance(spec, ListOf):
        return None
    return _EXACT.get(spec)


class _FieldCheck(NamedTuple):
    """One body field, precompiled: ``type(v) in exact`` (and, for a ``ListOf`` of a
    simple type, every item's type in ``items``) accepts at once; otherwise ``check``
    has the last word."""

    name: str
    required: bool
    exact: frozenset[type]
    items: frozenset[type] | None
    check: _Checker


def _field_check(name: str, spec: FieldSpec, required: bool) -> _FieldCheck:
    check = _checker(spec)
    if isinstance(spec, ListOf):
        items = _exact_types(spec.item)
        if items is not None:
            return _FieldCheck(name, required, _SEQUENCES, items, check)
    return _FieldCheck(name, required, _exact_types(spec) or frozenset(), None, check)


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
    _checks: tuple[_FieldCheck, ...] = field(default=(), repr=False, compare=False)

    def validate(self, body: Any) -> None:
        """Raise :class:`MalformedMessage` unless ``body`` fits this kind's schema."""
        if type(body) is not dict and not isinstance(body, dict):
            raise MalformedMessage("bad_shape", f"{self.kind}: body is {type(body).__name__}")
        present = 0
        get = body.get
        for name, required, exact, items, check in self._checks:
            v = get(name, _ABSENT)
            if v is _ABSENT:
                if required:
                    raise MalformedMessage("missing_field", f"{self.kind}.{name}")
                continue
            present += 1
            if type(v) in exact and (items is None or items.issuperset(map(type, v))):
                continue
            if not check(v):
                spec = self.required.get(name, self.optional.get(name))
                assert spec is not None  # name came from one of the two
                raise MalformedMessage(
                    "bad_field_type",
                    f"{self.kind}.{name}: expected {_spec_name(spec)}, "
                    f"got {type(v).__name__}")
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
            [_field_check(n, s, True) for n, s in required.items()]
            + [_field_check(n, s, False) for n, s in optional.items()])
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

# The envelope's own kind: several messages of one kind from one sender, sent as one
# (:meth:`EnvelopeCodec.encode_many`, ``Mailbox.send_many``).  Receivers unpack it into
# its messages before anything else sees them, so no handler ever gets a ``bundle``.
BUNDLE = "bundle"
_BUNDLE_SPEC = KINDS.register(
    BUNDLE, {"kind": str, "bodies": ListOf(dict)},
    doc="any -> any: several messages of `kind`, in order, under one envelope and seq")


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
        self._unpacker = _small_unpacker()

    def encode(self, kind: str, sender: str, seq: int, ts_ns: int,
               body: Mapping[str, Any]) -> bytes:
        """Pack one envelope; raises MalformedMessage if it would not decode."""
        if self.validate_outgoing:
            spec = self.registry.get(kind)
            if spec is None or kind == BUNDLE:
                raise MalformedMessage("unknown_kind", repr(kind))
            spec.validate(body if isinstance(body, dict) else dict(body))
            if not (type(sender) is str and sender and type(seq) is int
                    and type(ts_ns) is int and 0 <= seq <= _U64_MAX
                    and 0 <= ts_ns <= _U64_MAX):
                _check_header(sender, seq, ts_ns)
        return self._pack(kind, [ENVELOPE_VERSION, kind, sender, seq, ts_ns, body])

    def encode_many(self, kind: str, sender: str, seq: int, ts_ns: int,
                    bodies: Sequence[Mapping[str, Any]]) -> bytes:
        """Pack several bodies of one kind into one ``bundle`` envelope (see
        :meth:`unbundle`); each body is checked as :meth:`encode` checks one."""
        if self.validate_outgoing:
            spec = self.registry.get(kind)
            if spec is None or kind == BUNDLE:
                raise MalformedMessage("unknown_kind", repr(kind))
            validate = spec.validate
            for body in bodies:
                validate(body if isinstance(body, dict) else dict(body))
            _check_header(sender, seq, ts_ns)
        return self._pack(kind, [ENVELOPE_VERSION, BUNDLE, sender, seq, ts_ns,
                                 {"kind": kind, "bodies": bodies}])

    def _pack(self, kind: str, envelope: list[Any]) -> bytes:
        try:
            data: bytes = self._packer.pack(envelope)
        except (TypeError, ValueError, OverflowError) as exc:
            self._packer.reset()
            raise MalformedMessage("bad_field_type", f"{kind}: {exc}") from None
        if len(data) > self.max_size:
            raise MalformedMessage("oversized", f"{kind}: {len(data)} > {self.max_size} bytes")
        return data

    def unbundle(self, bundle: Envelope) -> tuple[list[Envelope], list[MalformedMessage]]:
        """The messages a decoded ``bundle`` envelope carries, in order, each with the
        bundle's sender, seq and ts_ns; and one rejection per body that does not fit
        its kind (the others are kept)."""
        kind = bundle.body["kind"]
        spec = self.registry.get(kind)
        bodies = bundle.body["bodies"]
        if spec is None or kind == BUNDLE:
            reason = "unknown_kind" if spec is None else "bad_shape"
            return [], [MalformedMessage(reason, f"bundle of {kind!r}"[:80])] * len(bodies)
        _, sender, seq, ts_ns, _ = bundle
        envs: list[Envelope] = []
        rejects: list[MalformedMessage] = []
        validate = spec.validate
        for body in bodies:
            try:
                validate(body)
            except MalformedMessage as exc:
                rejects.append(exc)
                continue
            envs.append(_new_envelope(Envelope, (kind, sender, seq, ts_ns, body)))
        return envs, rejects

    def encode_envelope(self, env: Envelope) -> bytes:
        return self.encode(env.kind, env.sender, env.seq, env.ts_ns, env.body)

    def decode(self, data: bytes | bytearray | memoryview) -> Envelope:
        """Unpack and validate one frame, or raise MalformedMessage."""
        n = len(data)
        if n > self.max_size:
            raise MalformedMessage("oversized", f"{n} > {self.max_size} bytes")
        obj = self._unpack_small(data, n) if n <= _SMALL_FRAME else self._unpack_large(data)
        if type(obj) is not list or len(obj) != 6:
            raise MalformedMessage("bad_shape", f"top level is {type(obj).__name__}")
        version, kind, sender, seq, ts_ns, body = obj
        if version != ENVELOPE_VERSION or type(version) is not int:
            raise MalformedMessage("bad_version", repr(version)[:40])
        if type(kind) is not str:
            raise MalformedMessage("bad_header", "kind is not a string")
        if not (type(sender) is str and sender and type(seq) is int and type(ts_ns) is int
                and 0 <= seq <= _U64_MAX and 0 <= ts_ns <= _U64_MAX):
            _check_header(sender, seq, ts_ns)  # names what is wrong
        spec = self.registry.get(kind) if kind != BUNDLE else _BUNDLE_SPEC
        if spec is None:
            raise MalformedMessage("unknown_kind", repr(kind)[:80])
        spec.validate(body)
        return _new_envelope(Envelope, (kind, sender, seq, ts_ns, body))

    def _unpack_small(self, data: bytes | bytearray | memoryview, n: int) -> Any:
        # The reused Unpacker: building one per call (what unpackb does) costs about as
        # much as the unpacking itself.  Whatever it does not accept whole is unpacked
        # again by unpackb, so a bad frame gets exactly the reason it always got (and a
        # forged length is capped at the frame's size, as unpackb caps it).
        unpacker = self._unpacker
        start = unpacker.tell()
        try:
            unpacker.feed(data)
            obj = unpacker.unpack()
            if unpacker.tell() - start == n:
                return obj
        except Exception:  # classified below, by unpackb
            pass
        self._unpacker = _small_unpacker()  # drop what is left of the bad frame
        return self._unpack_large(data)

    @staticmethod
    def _unpack_large(data: bytes | bytearray | memoryview) -> Any:
        try:
            # unpackb caps each length at the bytes in the frame.
            return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True,
                                   max_ext_len=0)
        except msgpack.ExtraData:
            raise MalformedMessage("trailing_data") from None
        except Exception as exc:
            raise _unpack_error(exc) from None


# Frames up to this size are unpacked by the codec's reused Unpacker; larger ones (rare:
# a big stats snapshot) by msgpack.unpackb.
_SMALL_FRAME = 64 * 1024
_new_envelope = tuple.__new__  # skips the NamedTuple's Python-level __new__


def _small_unpacker() -> msgpack.Unpacker:
    return msgpack.Unpacker(
        raw=False, use_list=True, strict_map_key=True, max_ext_len=0,
        max_buffer_size=_SMALL_FRAME, max_str_len=_SMALL_FRAME, max_bin_len=_SMALL_FRAME,
        max_array_len=_SMALL_FRAME, max_map_len=_SMALL_FRAME // 2)


def _unpack_error(exc: Exception) -> MalformedMessage:
    """The reject reason for what msgpack raised (the parser is the trust boundary:
    whatever it raises becomes a MalformedMessage)."""
    if isinstance(exc, ValueError):  # includes FormatError, StackError, UnicodeDecodeError
        text = str(exc)
        if "max_ext_len" in text:
            return MalformedMessage("ext_type")
        # A container/str/bin length claim above the frame's own size means the frame
        # was cut short, like "incomplete input".
        if "incomplete input" in text or "exceeds max_" in text:
            return MalformedMessage("truncated", text[:200])
        return MalformedMessage("not_msgpack", text[:200])
    return MalformedMessage("not_msgpack", f"{type(exc).__name__}: {exc}"[:200])


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

    @property
    def expected_table(self) -> dict[str, int]:
        """sender -> next expected seq.  A receiver may advance an entry itself when the
        seq is exactly the expected one (its hot path); anything else goes through
        :meth:`observe`."""
        return self._expected

    def forget(self, sender: str) -> None:
        """Drop what is known of ``sender``'s link (its next seq is taken as 0 again)."""
        self._expected.pop(sender, None)
