"""The msgpack envelope: codec round trip, every reject reason, per-link sequence tracking."""

from __future__ import annotations

import datetime

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import messages as msg
from protocol.envelope import (
    ENVELOPE_VERSION,
    REJECT_REASONS,
    Envelope,
    EnvelopeCodec,
    KindRegistry,
    LinkSeqTracker,
    ListOf,
    MalformedMessage,
)


@pytest.fixture
def registry() -> KindRegistry:
    reg = KindRegistry()
    reg.register("ping", {"request_id": int, "payload": bytes},
                 optional={"note": str, "ratio": float})
    reg.register("batch", {"frames": ListOf(bytes), "queue": (int, type(None))})
    reg.register("loose", {"a": int}, extra_fields=True)
    return reg


@pytest.fixture
def codec(registry: KindRegistry) -> EnvelopeCodec:
    return EnvelopeCodec(registry=registry, max_size=4096)


def raw(*parts: object) -> bytes:
    return msgpack.packb(list(parts), use_bin_type=True)


def reason_of(codec: EnvelopeCodec, data: bytes) -> str:
    with pytest.raises(MalformedMessage) as info:
        codec.decode(data)
    return info.value.reason


# --- round trip ---------------------------------------------------------------------------


def test_round_trip_keeps_every_header_field(codec: EnvelopeCodec) -> None:
    body = {"request_id": 7, "payload": b"\x00\xff", "note": "hi", "ratio": 2}
    data = codec.encode("ping", "cpu1", 41, 123_456_789, body)
    assert codec.decode(data) == Envelope("ping", "cpu1", 41, 123_456_789, body)


def test_encode_envelope_matches_encode(codec: EnvelopeCodec) -> None:
    env = Envelope("batch", "nic", 0, 1, {"frames": [b"a", b"b"], "queue": None})
    assert codec.decode(codec.encode_envelope(env)) == env


def test_wire_form_is_a_plain_six_element_array(codec: EnvelopeCodec) -> None:
    data = codec.encode("loose", "a", 3, 4, {"a": 1, "extra": [1, 2]})
    assert msgpack.unpackb(data) == [ENVELOPE_VERSION, "loose", "a", 3, 4,
                                     {"a": 1, "extra": [1, 2]}]


def test_tuples_and_bytearrays_decode_as_lists_and_bytes(codec: EnvelopeCodec) -> None:
    data = codec.encode("batch", "nic", 0, 0, {"frames": (bytearray(b"x"),), "queue": 1})
    assert codec.decode(data).body == {"frames": [b"x"], "queue": 1}


def test_packer_is_reusable_after_a_failed_encode(codec: EnvelopeCodec) -> None:
    with pytest.raises(MalformedMessage):
        codec.encode("loose", "a", 0, 0, {"a": 1, "bad": object()})
    data = codec.encode("loose", "a", 1, 0, {"a": 2})
    assert codec.decode(data).body == {"a": 2}


@given(request_id=st.integers(0, 2**64 - 1), payload=st.binary(max_size=200),
       note=st.none() | st.text(max_size=40), seq=st.integers(0, 2**64 - 1),
       ts=st.integers(0, 2**64 - 1), sender=st.text(min_size=1, max_size=20))
def test_round_trip_property(request_id: int, payload: bytes, note: str | None, seq: int,
                             ts: int, sender: str) -> None:
    reg = KindRegistry()
    reg.register("ping", {"request_id": int, "payload": bytes}, optional={"note": str})
    codec = EnvelopeCodec(registry=reg)
    body: dict[str, object] = {"request_id": request_id, "payload": payload}
    if note is not None:
        body["note"] = note
    assert codec.decode(codec.encode("ping", sender, seq, ts, body)) == \
        Envelope("ping", sender, seq, ts, body)


@given(st.binary(max_size=300))
def test_decode_of_arbitrary_bytes_never_raises_anything_else(data: bytes) -> None:
    codec = EnvelopeCodec(max_size=256)
    try:
        codec.decode(data)
    except MalformedMessage as exc:
        assert exc.reason in REJECT_REASONS


def test_control_kinds_are_registered_with_their_schemas() -> None:
    codec = EnvelopeCodec()
    for kind, body in [
        (msg.READY, {"pid": 1, "role": "nic", "instance": 0, "endpoint": "ipc:///x"}),
        (msg.START, {"t0_ns": 5}), (msg.STOP, {"reason": "done"}),
        (msg.HEARTBEAT, {"counters": {"a": 1}}), (msg.STATS_REQUEST, {"request_id": 1}),
        (msg.STATS, {"counters": {}, "final": True}),
        (msg.STATS, {"counters": {}, "final": False, "request_id": 3}),
        (msg.LOG_EVENT, {"level": "info", "event": "x", "fields": {}}),
        (msg.END_OF_STREAM, {"request_id": 1}), (msg.END_OF_STREAM_ACK, {"request_id": 1}),
    ]:
        assert kind in msg.CONTROL_KINDS
        assert codec.decode(codec.encode(kind, "a", 0, 0, body)).body == body


# --- every reject reason --------------------------------------------------------------------

GOOD_BODY = {"request_id": 1, "payload": b""}


def test_oversized(codec: EnvelopeCodec) -> None:
    assert reason_of(codec, raw(1, "ping", "a", 0, 0, {**GOOD_BODY, "payload": b"x" * 5000})
                     ) == "oversized"
    with pytest.raises(MalformedMessage) as info:
        codec.encode("ping", "a", 0, 0, {**GOOD_BODY, "payload": b"x" * 5000})
    assert info.value.reason == "oversized"


@pytest.mark.parametrize("data", [b"\xc1", b"\xa2\xff\xfe", b"\x81\x01\x02", b"\x91" * 3000],
                         ids=["reserved-byte", "bad-utf8", "int-map-key", "too-deep"])
def test_not_msgpack(data: bytes) -> None:
    assert reason_of(EnvelopeCodec(), data) == "not_msgpack"


@pytest.mark.parametrize("cut", [1, 5, 10, -1])
def test_truncated(codec: EnvelopeCodec, cut: int) -> None:
    data = codec.encode("ping", "sender", 1, 2, {**GOOD_BODY, "payload": b"p" * 40})
    assert reason_of(codec, data[:cut]) == "truncated"


def test_trailing_data(codec: EnvelopeCodec) -> None:
    assert reason_of(codec, codec.encode("ping", "a", 0, 0, GOOD_BODY) + b"\x00") == \
        "trailing_data"


def test_ext_types_are_refused_even_timestamps(codec: EnvelopeCodec) -> None:
    ext = raw(1, "ping", "a", 0, 0, {"request_id": 1, "payload": msgpack.ExtType(3, b"ab")})
    assert reason_of(codec, ext) == "ext_type"
    stamp = msgpack.packb([1, "ping", "a", 0,
                           datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC), GOOD_BODY],
                          datetime=True)
    assert reason_of(codec, stamp) == "ext_type"


@pytest.mark.parametrize("obj", [{"a": 1}, [1, "ping", "a", 0, 0], 5,
                                 [1, "ping", "a", 0, 0, GOOD_BODY, 1]])
def test_bad_shape(codec: EnvelopeCodec, obj: object) -> None:
    assert reason_of(codec, msgpack.packb(obj)) == "bad_shape"


def test_body_that_is_not_a_map_is_bad_shape(codec: EnvelopeCodec) -> None:
    assert reason_of(codec, raw(1, "ping", "a", 0, 0, [1, 2])) == "bad_shape"


@pytest.mark.parametrize("version", [0, 2, "1", True, None])
def test_bad_version(codec: EnvelopeCodec, version: object) -> None:
    assert reason_of(codec, raw(version, "ping", "a", 0, 0, GOOD_BODY)) == "bad_version"


@pytest.mark.parametrize("header", [
    (5, "a", 0, 0), ("ping", "", 0, 0), ("ping", b"a", 0, 0), ("ping", "a", -1, 0),
    ("ping", "a", True, 0), ("ping", "a", 0, -5), ("ping", "a", 0, 1.5),
    ("ping", "a", "0", 0),
])
def test_bad_header(codec: EnvelopeCodec, header: tuple[object, ...]) -> None:
    assert reason_of(codec, raw(1, *header, GOOD_BODY)) == "bad_header"


def test_unknown_kind(codec: EnvelopeCodec) -> None:
    assert reason_of(codec, raw(1, "nope", "a", 0, 0, {})) == "unknown_kind"
    with pytest.raises(MalformedMessage) as info:
        codec.encode("nope", "a", 0, 0, {})
    assert info.value.reason == "unknown_kind"


def test_missing_field(codec: EnvelopeCodec) -> None:
    assert reason_of(codec, raw(1, "ping", "a", 0, 0, {"request_id": 1})) == "missing_field"


@pytest.mark.parametrize("body", [
    {"request_id": "1", "payload": b""}, {"request_id": True, "payload": b""},
    {"request_id": 1, "payload": "text"}, {"request_id": 1, "payload": b"", "note": 3},
    {"request_id": 1, "payload": b"", "ratio": "x"},
])
def test_bad_field_type(codec: EnvelopeCodec, body: dict[str, object]) -> None:
    assert reason_of(codec, raw(1, "ping", "a", 0, 0, body)) == "bad_field_type"


def test_list_of_checks_every_item(codec: EnvelopeCodec) -> None:
    assert reason_of(codec, raw(1, "batch", "a", 0, 0, {"frames": [b"a", 1], "queue": 0})
                     ) == "bad_field_type"


def test_unexpected_field(codec: EnvelopeCodec) -> None:
    assert reason_of(codec, raw(1, "ping", "a", 0, 0, {**GOOD_BODY, "zzz": 1})) == \
        "unexpected_field"
    # A kind declared with extra_fields takes them.
    assert codec.decode(raw(1, "loose", "a", 0, 0, {"a": 1, "zzz": 1})).body["zzz"] == 1


def test_every_codec_reason_is_a_declared_reason() -> None:
    codec_reasons = {"oversized", "not_msgpack", "truncated", "trailing_data", "ext_type",
                     "bad_shape", "bad_version", "bad_header", "unknown_kind",
                     "missing_field", "bad_field_type", "unexpected_field"}
    assert codec_reasons <= set(REJECT_REASONS)


def test_outgoing_validation_can_be_disabled(registry: KindRegistry) -> None:
    loose = EnvelopeCodec(registry=registry, validate_outgoing=False)
    data = loose.encode("ping", "a", 0, 0, {"request_id": "wrong"})
    assert reason_of(EnvelopeCodec(registry=registry), data) == "bad_field_type"


# --- registry -------------------------------------------------------------------------------


def test_registry_rejects_conflicts_and_bad_names() -> None:
    reg = KindRegistry()
    reg.register("k", {"a": int})
    assert reg.register("k", {"a": int}) is reg["k"]  # the same declaration again is fine
    with pytest.raises(ValueError):
        reg.register("k", {"a": str})
    with pytest.raises(ValueError):
        reg.register("bad name", {})
    with pytest.raises(ValueError):
        reg.register("both", {"a": int}, optional={"a": int})
    with pytest.raises(TypeError):
        reg.register("weird", {"a": set})
    reg.freeze()
    with pytest.raises(RuntimeError):
        reg.register("late", {})
    assert "k" in reg and len(reg) == 1 and list(reg) == ["k"]


# --- per-link sequence tracking -----------------------------------------------------------


def test_tracker_in_order_has_no_gap() -> None:
    t = LinkSeqTracker()
    assert [t.observe("a", s) for s in range(5)] == [0] * 5
    assert (t.lost, t.restarts, t.expected("a")) == (0, 0, 5)


def test_tracker_counts_gaps_per_sender() -> None:
    t = LinkSeqTracker()
    t.observe("a", 0)
    assert t.observe("a", 4) == 3
    assert t.observe("b", 2) == 2  # a new link starts at 0
    assert t.observe("a", 5) == 0
    assert t.lost == 5


def test_tracker_counts_a_restart_when_seq_goes_back() -> None:
    t = LinkSeqTracker()
    for s in range(10):
        t.observe("a", s)
    assert t.observe("a", 0) == 0
    assert (t.restarts, t.lost, t.expected("a")) == (1, 0, 1)


def test_tracker_adopts_the_first_seq_of_each_link_when_asked() -> None:
    t = LinkSeqTracker(adopt_first=True)
    assert t.observe("a", 57) == 0
    assert t.observe("b", 0) == 0
    assert t.observe("a", 59) == 1  # after adoption, gaps count again
    assert (t.adopted, t.lost) == (1, 1)


def test_tracker_forget_restarts_the_link() -> None:
    t = LinkSeqTracker()
    t.observe("a", 0)
    t.observe("a", 1)
    t.forget("a")
    assert t.observe("a", 0) == 0
    assert (t.lost, t.restarts) == (0, 0)


@given(st.lists(st.booleans(), min_size=1, max_size=300))
def test_tracker_lost_equals_dropped_messages(delivered: list[bool]) -> None:
    t = LinkSeqTracker()
    for seq, ok in enumerate(delivered):
        if ok:
            t.observe("s", seq)
    last = max((i for i, ok in enumerate(delivered) if ok), default=-1)
    assert t.lost == sum(1 for ok in delivered[:last + 1] if not ok)
    assert t.restarts == 0
