"""The peer's and the NIC's one-pass paths give exactly what the general paths give.

``wire.encode`` of a timestamps-only segment, ``wire.decode`` of a plain frame, the
NIC's RSS input and memoised Toeplitz hash, ``Nic.rx_burst`` and the peer's deadline
each have a shortcut for the common case; these tests hold each shortcut to the
step-by-step reference, including every malformed frame the reference rejects and the
error it raises.
"""

from __future__ import annotations

import random
import struct
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.nic.model import (
    MICROSOFT_RSS_KEY,
    Dma,
    DmaWrite,
    Nic,
    RaiseIrq,
    Toeplitz,
    rss_input,
    toeplitz_hash,
)
from actors.peer.host import Peer
from actors.peer.impairments import WireImpairments
from actors.peer.sender import TcpSender
from actors.profiles import US
from protocol import wire
from protocol.segment import Segment, TcpFlags, TcpOptions
from protocol.tcp_options import encode_options, timestamp_only

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


def general_encode(seg: Segment) -> bytes:
    """The reference: :func:`wire.encode_with` without overrides (same bytes by contract)."""
    return wire.encode_with(seg)


def two_step_decode(frame: bytes, verify: bool = True) -> Segment:
    return wire.decode_tcp(wire.decode_ipv4(frame), verify_checksum=verify)


def outcome(fn: object, *args: object) -> object:
    """A result, or the error's type and message, so failures compare too."""
    try:
        return fn(*args)  # type: ignore[operator]
    except (ValueError, wire.MalformedPacket) as exc:
        return type(exc), str(exc)


@st.composite
def ts_segments(draw: st.DrawFn) -> Segment:
    return Segment(draw(st.sampled_from(["10.0.0.1", "192.168.7.9", "1.2.3.4"])), draw(u16),
                   draw(st.sampled_from(["10.0.0.2", "172.16.0.1"])), draw(u16), draw(u32),
                   draw(u32), draw(st.integers(0, 255)), draw(u16),
                   TcpOptions(timestamp=(draw(u32), draw(u32))),
                   draw(st.binary(max_size=1600)), draw(u16), draw(st.integers(0, 255)),
                   draw(st.integers(0, 255)), draw(u16))


# -- encode ---------------------------------------------------------------------------------


@settings(max_examples=400)
@given(ts_segments())
def test_timestamp_only_encode_matches_the_general_path(seg: Segment) -> None:
    frame = wire.encode(seg)
    assert frame == general_encode(seg)
    assert frame[40:52] == encode_options(seg.options)
    assert wire.decode(frame) == replace(seg, options=wire.decode(frame).options)


@pytest.mark.parametrize("change", [
    {"sport": 65536}, {"seq": -1}, {"ack": 1 << 32}, {"window": 1 << 16}, {"ttl": 256},
    {"options": TcpOptions(timestamp=(1 << 32, 0))}, {"options": TcpOptions(timestamp=(0, -1))},
    {"payload": bytes(65536 - 52)},
])
def test_timestamp_only_encode_rejects_as_the_general_path(change: dict[str, object]) -> None:
    seg = replace(Segment("10.0.0.1", 1, "10.0.0.2", 2, 3, options=TcpOptions(timestamp=(1, 2))),
                  **change)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        wire.encode(seg)
    with pytest.raises(ValueError):
        general_encode(seg)


def test_other_option_sets_still_take_the_general_path() -> None:
    base = Segment("10.0.0.1", 1, "10.0.0.2", 2, 3, payload=b"abc")
    for opts in (TcpOptions(), TcpOptions(mss=1460, timestamp=(1, 0)),
                 TcpOptions(sack_blocks=((5, 9),), timestamp=(1, 2)), timestamp_only((7, 8))):
        seg = replace(base, options=opts)
        assert wire.encode(seg) == general_encode(seg)


# -- decode ---------------------------------------------------------------------------------


def mutations(frame: bytes) -> list[bytes]:
    """Every single-byte change and every truncation of ``frame``, and padding."""
    out = [frame[:n] for n in range(len(frame))] + [frame + b"\0\0\0"]
    for i in range(len(frame)):
        for mask in (0x01, 0x80, 0xFF):
            changed = bytearray(frame)
            changed[i] ^= mask
            out.append(bytes(changed))
    return out


@pytest.mark.parametrize("opts", [TcpOptions(), TcpOptions(timestamp=(5, 6)),
                                  TcpOptions(mss=1460, sack_permitted=True, wscale=7,
                                             timestamp=(1, 0)),
                                  TcpOptions(sack_blocks=((1, 2), (3, 4)), timestamp=(9, 9))])
def test_decode_matches_the_two_steps_on_good_and_broken_frames(opts: TcpOptions) -> None:
    seg = Segment("10.0.0.2", 5001, "10.0.0.1", 40001, 77, 1234, TcpFlags.ACK | TcpFlags.PSH,
                  2000, opts, b"payload!")
    frames = [wire.encode(seg), wire.encode(replace(seg, payload=b"odd"))]
    frames += [wire.encode_with(seg, frag_off=f) for f in (0, 0x2000, 0x0001, 0x8000)]
    frames += [wire.encode_with(seg, protocol=17), wire.encode_with(seg, doff=4),
               wire.encode_with(seg, doff=15), wire.encode_with(seg, total_length=30),
               wire.encode_with(seg, total_length=10), wire.encode_with(seg, ip_options=bytes(4))]
    for frame in frames:
        for variant in mutations(frame):
            for verify in (True, False):
                fast = outcome(lambda f, v: wire.decode(f, verify_checksum=v), variant, verify)
                slow = outcome(two_step_decode, variant, verify)
                assert repr(fast) == repr(slow), variant.hex()
                if isinstance(fast, Segment):
                    assert isinstance(slow, Segment)
                    assert fast.options.wire_len == slow.options.wire_len
                    assert fast.options.layout == slow.options.layout


def test_decode_of_other_buffer_types_is_unchanged() -> None:
    frame = wire.encode(Segment("10.0.0.2", 1, "10.0.0.1", 2, 3, options=TcpOptions(
        timestamp=(1, 2))))
    assert wire.decode(bytearray(frame)) == wire.decode(memoryview(frame)) == wire.decode(frame)


# -- NIC ------------------------------------------------------------------------------------


def general_rss_input(frame: bytes) -> bytes | None:
    """rss_input without its plain-frame shortcut (the reference)."""
    if len(frame) < 20 or frame[0] >> 4 != 4:
        return None
    ihl = (frame[0] & 0x0F) * 4
    if ihl < 20 or len(frame) < ihl:
        return None
    frag = int.from_bytes(frame[6:8], "big")
    if frame[9] == 6 and not frag & 0x3FFF and len(frame) >= ihl + 4:
        return frame[12:20] + frame[ihl:ihl + 4]
    return frame[12:20]


@settings(max_examples=300)
@given(st.binary(min_size=0, max_size=60), st.sampled_from([0x45, 0x46, 0x44, 0x55]),
       st.sampled_from([6, 17]), st.sampled_from([0, 0x4000, 0x2000, 0x0001, 0x8000]))
def test_rss_input_shortcut_matches_the_reference(tail: bytes, vihl: int, proto: int,
                                                  frag: int) -> None:
    head = struct.pack("!BBHHHBBH", vihl, 0, 40, 1, frag, 64, proto, 0)
    for frame in (head + tail, (head + tail)[:21], tail):
        assert rss_input(frame) == general_rss_input(frame)


@given(st.binary(min_size=0, max_size=36))
def test_memoised_toeplitz_matches_the_reference(data: bytes) -> None:
    table = Toeplitz(MICROSOFT_RSS_KEY)
    expected = toeplitz_hash(MICROSOFT_RSS_KEY, data)
    assert table.hash(data) == expected
    assert table.hash(data) == expected  # from the memo
    assert table.hash(bytearray(data)) == expected  # type: ignore[arg-type]  # not memoised


def test_toeplitz_memo_stays_bounded() -> None:
    table = Toeplitz(MICROSOFT_RSS_KEY)
    for i in range(10_000):
        table.hash(i.to_bytes(12, "big"))
    assert len(table._memo) <= 4096
    assert table.hash((9_999).to_bytes(12, "big")) == toeplitz_hash(
        MICROSOFT_RSS_KEY, (9_999).to_bytes(12, "big"))


def frame(sport: int) -> bytes:
    return wire.encode(Segment("10.0.0.1", sport, "10.0.0.2", 5001, sport,
                               options=TcpOptions(timestamp=(1, 2)), payload=b"x" * 100))


def test_rx_burst_equals_frames_received_one_by_one() -> None:
    """A burst's DMA writes, interrupts, drops and counters are what the same frames
    arriving one at a time (rx_frame) produce, grouped per ring in arrival order."""
    frames = [frame(40000 + i % 7) for i in range(40)] + [b"\x45short", b""]
    for rx_usecs, rx_frames in ((0, 0), (50, 4), (50, 0)):
        burst, single = (Nic(3, 8, rx_usecs=rx_usecs, rx_frames=rx_frames) for _ in range(2))
        ids = list(range(len(frames)))
        for step in range(3):
            now = step * 20 * US
            got = burst.rx_burst(frames, now, ids)
            writes: dict[int, DmaWrite] = {}
            irqs: list[RaiseIrq] = []
            for f in frames:
                for o in single.rx_frame(f, now):
                    if isinstance(o, Dma):
                        writes.setdefault(o.queue, DmaWrite(o.queue, o.cpu, [])).frames.append(f)
                    elif isinstance(o, RaiseIrq):
                        irqs.append(o)
            assert got == [*writes.values(), *irqs]
            assert burst.ethtool_stats() == single.ethtool_stats()
            assert burst.queues == single.queues
            for q in range(3):
                burst.refill(q, 3, now)
                single.refill(q, 3, now)
                assert burst.unmask(q, now) == single.unmask(q, now)


# -- peer deadlines -------------------------------------------------------------------------

maybe_time = st.one_of(st.none(), st.integers(0, 10**12))


@given(st.lists(st.tuples(maybe_time, maybe_time, maybe_time, st.booleans(),
                          st.integers(0, 10**9)), min_size=0, max_size=4),
       st.one_of(st.none(), st.integers(0, 10**9)))
def test_peer_next_deadline_is_the_earliest_of_its_parts(
        flows: list[tuple[int | None, int | None, int | None, bool, int]],
        t0: int | None) -> None:
    peer = Peer(ack_impairments=WireImpairments.ack_path())
    for i, (rto, probe, tw, opened, start) in enumerate(flows):
        sender = TcpSender(i + 1, "10.0.0.1", 40000 + i, "10.0.0.2", 5001, 1000,
                           random.Random(i))
        sender._rto_at, sender._probe_at, sender._tw_at = rto, probe, tw
        sender.opened = opened
        peer.add(sender, start_ns=start)
        present = [t for t in (rto, probe, tw) if t is not None]
        assert sender.next_deadline() == (min(present) if present else None)
    peer._t0 = t0
    expected = [t for s in peer.flows.values() if (t := s.next_deadline()) is not None]
    if t0 is not None:
        expected += [t0 + at for at, _, s in peer._starts if not s.opened]
    assert peer.next_deadline() == (min(expected) if expected else None)
