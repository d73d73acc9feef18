"""Seeded wire impairments (actors/peer/impairments.py): determinism, rates, scripted events,
and corruption that the receiver's checksum check catches."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.peer.impairments import ScriptedEvent, WireImpairments, WireLink, parse_frame
from actors.peer.payload import payload_bytes
from actors.profiles import MS, US
from protocol import wire
from protocol.segment import Segment, TcpFlags, TcpOptions

FLOW_A = ("10.0.0.2", 40000, "10.0.0.1", 5001)
FLOW_B = ("10.0.0.2", 40001, "10.0.0.1", 5001)


def data_frame(n: int, flow: tuple[str, int, str, int] = FLOW_A, size: int = 100) -> bytes:
    """Data segment number ``n`` of a flow (its payload identifies it)."""
    seg = Segment(*flow, seq=1000 + n * size, ack=1, flags=TcpFlags.ACK | TcpFlags.PSH,
                  options=TcpOptions(timestamp=(n, 0)), payload=payload_bytes(n, 0, size))
    return wire.encode(seg)


def ack_frame(n: int, flow: tuple[str, int, str, int] = FLOW_A) -> bytes:
    seg = Segment(*flow, seq=1, ack=1000 + n, flags=TcpFlags.ACK)
    return wire.encode(seg)


def run(imp: WireImpairments, frames: list[bytes], step: int = 10 * US) -> list[list]:
    """Apply each frame at ``i * step``; one list of deliveries per frame."""
    return [imp.apply(f, i * step) for i, f in enumerate(frames)]


def frame_index(frame: bytes, frames: list[bytes]) -> int:
    return frames.index(frame)


# --------------------------------------------------------------------------- basics


def test_default_is_a_perfect_wire() -> None:
    imp = WireImpairments()
    assert not imp.active
    f = data_frame(0)
    assert imp.apply(f, 123) == [(123, f)]
    assert imp.stats()["frames_in"] == 1 and imp.stats()["frames_out"] == 1


def test_rates_are_validated() -> None:
    for bad in ({"loss": 1.5}, {"duplicate": -0.1}, {"corrupt": 2.0}, {"delay_ns": -1},
                {"jitter_ns": -5}, {"reorder_gap_ns": -1}):
        with pytest.raises(ValueError):
            WireImpairments(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ScriptedEvent("drop", nth=0)
    with pytest.raises(ValueError):
        ScriptedEvent("explode", nth=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ScriptedEvent("drop", nth=1, match="acks")  # type: ignore[arg-type]


def test_parse_frame_finds_flow_and_payload() -> None:
    f = data_frame(3, size=77)
    info = parse_frame(f)
    assert info.flow == FLOW_A and info.payload_len == 77
    assert f[info.payload_start:info.payload_end] == payload_bytes(3, 0, 77)
    eth = bytes(12) + b"\x08\x00" + f
    info = parse_frame(eth)
    assert info.flow == FLOW_A and info.payload_start == 14 + 20 + 32
    assert parse_frame(b"garbage").flow is None
    assert parse_frame(ack_frame(1)).payload_len == 0


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_decisions() -> None:
    frames = [data_frame(i) for i in range(300)]
    cfg = {"loss": 0.2, "duplicate": 0.1, "reorder": 0.1, "jitter_ns": 50 * US,
           "delay_ns": 100 * US, "corrupt": 0.05}
    first = run(WireImpairments(seed=11, **cfg), frames)  # type: ignore[arg-type]
    again = run(WireImpairments(seed=11, **cfg), frames)  # type: ignore[arg-type]
    other = run(WireImpairments(seed=12, **cfg), frames)  # type: ignore[arg-type]
    assert first == again
    assert first != other


def test_changing_one_rate_does_not_reshuffle_the_others() -> None:
    frames = [data_frame(i) for i in range(500)]

    def lost(**extra: float) -> list[int]:
        out = run(WireImpairments(loss=0.3, seed=5, **extra), frames)  # type: ignore[arg-type]
        return [i for i, d in enumerate(out) if not d]

    base = lost()
    assert base == lost(duplicate=0.5) == lost(corrupt=0.5) == lost(reorder=0.7)


# --------------------------------------------------------------------------- rates


@pytest.mark.parametrize("name", ["loss", "duplicate", "reorder", "corrupt"])
def test_rates_are_roughly_honoured(name: str) -> None:
    n, p = 4000, 0.15
    imp = WireImpairments(seed=21, **{name: p})  # type: ignore[arg-type]
    run(imp, [data_frame(i % 50) for i in range(n)])
    key = {"loss": "lost", "duplicate": "duplicated", "reorder": "reordered",
           "corrupt": "corrupted"}[name]
    count = imp.stats()[key]
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(count - n * p) < 4 * sigma, (name, count)


def test_loss_and_duplication_change_frame_counts() -> None:
    imp = WireImpairments(loss=0.1, duplicate=0.1, seed=3)
    out = run(imp, [data_frame(i) for i in range(1000)])
    st_ = imp.stats()
    assert sum(len(d) for d in out) == st_["frames_out"] == 1000 - st_["lost"] + \
        st_["duplicated"]
    assert all(len(d) == 2 for d in out if len(d) > 1)
    assert all(d[0][1] == d[1][1] for d in out if len(d) == 2)  # identical copies


# --------------------------------------------------------------------------- timing


def test_delay_and_jitter_stay_in_bounds() -> None:
    imp = WireImpairments(delay_ns=500 * US, jitter_ns=200 * US, seed=8)
    times = []
    for i in range(500):
        now = i * US
        (at, _), = imp.apply(data_frame(i), now)
        assert now + 300 * US <= at <= now + 700 * US
        times.append(at - now)
    assert len(set(times)) > 100  # really jittered
    # Jitter larger than the delay never delivers before the frame was sent.
    imp = WireImpairments(delay_ns=10 * US, jitter_ns=500 * US, seed=8)
    assert all(imp.apply(data_frame(i), 1000)[0][0] >= 1000 for i in range(300))


def test_a_reordered_frame_is_overtaken() -> None:
    imp = WireImpairments(reorder=0.3, reorder_gap_ns=1 * MS, delay_ns=10 * US, seed=2)
    frames = [data_frame(i) for i in range(200)]
    deliveries = [d for ds in run(imp, frames, step=10 * US) for d in ds]
    assert imp.stats()["reordered"] > 20
    arrival = [frame_index(f, frames) for _, f in sorted(deliveries, key=lambda d: d[0])]
    assert arrival != sorted(arrival)
    for i, ds in enumerate(run(WireImpairments(reorder=1.0, reorder_gap_ns=MS), frames[:3])):
        assert ds[0][0] == i * 10 * US + MS


# --------------------------------------------------------------------------- corruption


@settings(max_examples=50)
@given(seed=st.integers(0, 2**32 - 1), size=st.sampled_from([0, 1, 10, 1448]))
def test_corruption_is_caught_by_the_checksum(seed: int, size: int) -> None:
    frame = data_frame(1, size=size) if size else ack_frame(1)
    imp = WireImpairments(corrupt=1.0, seed=seed)
    ((_, bad),) = imp.apply(frame, 0)
    assert len(bad) == len(frame)
    assert sum(a != b for a, b in zip(bad, frame, strict=True)) == 1
    info = parse_frame(frame)
    pos = next(i for i, (a, b) in enumerate(zip(bad, frame, strict=True)) if a != b)
    if size:
        assert info.payload_start <= pos < info.payload_end  # the payload was hit
    with pytest.raises(wire.MalformedPacket):
        wire.decode(bad)
    wire.decode(frame)  # the original was fine


def test_a_duplicate_can_be_corrupted_independently() -> None:
    imp = WireImpairments(duplicate=1.0, corrupt=0.5, seed=4)
    mixed = 0
    for i in range(200):
        a, b = imp.apply(data_frame(i), 0)
        ok = []
        for _, f in (a, b):
            try:
                wire.decode(f)
                ok.append(True)
            except wire.MalformedPacket:
                ok.append(False)
        mixed += ok[0] != ok[1]
    assert mixed > 40


# --------------------------------------------------------------------------- scripted


def test_scripted_drop_counts_data_frames_of_one_flow() -> None:
    imp = WireImpairments(events=(ScriptedEvent("drop", nth=2, flow=FLOW_A),))
    assert imp.apply(ack_frame(0), 0)  # not a data frame: not counted
    assert imp.apply(data_frame(0), 1)
    assert imp.apply(data_frame(0, flow=FLOW_B), 2)  # another flow
    assert imp.apply(data_frame(1), 3) == []  # A's second data frame
    assert imp.apply(data_frame(1), 4)  # fires once: its retransmission passes
    assert imp.stats()["scripted_dropped"] == 1


def test_scripted_event_for_every_flow_counts_each_flow_separately() -> None:
    imp = WireImpairments(events=(ScriptedEvent("drop", nth=1),))
    assert imp.apply(data_frame(0), 0) == []
    assert imp.apply(data_frame(0, flow=FLOW_B), 0) == []
    assert imp.apply(data_frame(1), 0)
    imp = WireImpairments(events=(ScriptedEvent("drop", nth=2, match="any"),))
    assert imp.apply(ack_frame(0), 0)
    assert imp.apply(ack_frame(1), 0) == []


def test_scripted_duplicate_corrupt_and_delay() -> None:
    imp = WireImpairments(events=(
        ScriptedEvent("duplicate", nth=1), ScriptedEvent("corrupt", nth=2),
        ScriptedEvent("delay", nth=3, delay_ns=5 * MS)))
    f0, f1, f2 = data_frame(0), data_frame(1), data_frame(2)
    assert imp.apply(f0, 0) == [(0, f0), (0, f0)]
    ((_, bad),) = imp.apply(f1, 0)
    with pytest.raises(wire.TcpChecksumError):
        wire.decode(bad)
    assert imp.apply(f2, 100) == [(100 + 5 * MS, f2)]
    st_ = imp.stats()
    assert (st_["scripted_duplicated"], st_["scripted_corrupted"], st_["scripted_delayed"]) \
        == (1, 1, 1)


def test_scripted_hold_releases_after_later_frames() -> None:
    imp = WireImpairments(events=(ScriptedEvent("hold", nth=1, hold_segments=2),))
    frames = [data_frame(i) for i in range(4)]
    assert imp.apply(frames[0], 0) == []
    assert imp.stats()["holding"] == 1
    assert imp.apply(ack_frame(0), 1) != []  # ACKs do not count for a data hold
    assert imp.apply(frames[1], 2) == [(2, frames[1])]
    # The second data frame after it releases it, delivered right behind that frame.
    assert imp.apply(frames[2], 3) == [(3, frames[2]), (3, frames[0])]
    assert imp.stats()["released"] == 1 and imp.stats()["holding"] == 0


def test_scripted_hold_with_a_time_limit_and_flush() -> None:
    imp = WireImpairments(events=(
        ScriptedEvent("hold", nth=1, hold_segments=10, max_hold_ns=4 * MS),
        ScriptedEvent("hold", nth=2, hold_segments=10)))
    f0, f1 = data_frame(0), data_frame(1)
    assert imp.apply(f0, 1000) == [] and imp.apply(f1, 2000) == []
    assert imp.active and imp.next_deadline() == 1000 + 4 * MS
    assert imp.on_timer(1000 + 4 * MS - 1) == []
    assert imp.on_timer(1000 + 4 * MS) == [(1000 + 4 * MS, f0)]
    assert imp.next_deadline() is None
    assert imp.flush(9 * MS) == [(9 * MS, f1)]
    assert imp.stats()["holding"] == 0


def test_ack_path_constructor() -> None:
    imp = WireImpairments.ack_path(loss=0.5, delay_ns=3 * MS, seed=1)
    assert (imp.loss, imp.delay_ns, imp.duplicate, imp.corrupt) == (0.5, 3 * MS, 0.0, 0.0)
    out = run(imp, [ack_frame(i) for i in range(400)])
    assert 150 < sum(not d for d in out) < 250
    assert all(d[0][0] == i * 10 * US + 3 * MS for i, d in enumerate(out) if d)


# --------------------------------------------------------------------------- the wire link


def test_a_perfect_link_delivers_at_once() -> None:
    link = WireLink()
    out: list[bytes] = []
    link.send(data_frame(0), 5, out)
    assert out == [data_frame(0)] and len(link) == 0 and link.next_deadline() is None


def test_a_link_keeps_delayed_frames_until_they_are_due_in_time_then_send_order() -> None:
    link = WireLink(WireImpairments(delay_ns=3 * MS, reorder=1.0, reorder_gap_ns=1 * MS,
                                    events=(ScriptedEvent("delay", nth=2, delay_ns=-3 * MS),)))
    frames = [data_frame(i) for i in range(3)]
    out: list[bytes] = []
    link.send(frames[0], 0, out)  # due at 4 ms (delay + reorder gap)
    link.send(frames[1], 0, out)  # due at 1 ms: the scripted event takes the delay back
    link.send(frames[2], 1, out)  # due at 4 ms + 1 ns
    assert out == [] and len(link) == 3 and link.next_deadline() == 1 * MS
    link.due(1 * MS - 1, out)
    assert out == []
    link.due(1 * MS, out)
    assert out == [frames[1]] and link.next_deadline() == 4 * MS
    # A frame sent after others fell due goes behind them.
    link.send(data_frame(9), 5 * MS, out)
    assert out == [frames[1], frames[0], frames[2]] and len(link) == 1
    assert link.delivered == 4 and link.delayed == 4
    assert link.flush(5 * MS) == [data_frame(9)] and len(link) == 0


def test_a_link_releases_held_frames_at_their_time_limit() -> None:
    link = WireLink(WireImpairments(events=(
        ScriptedEvent("hold", nth=1, hold_segments=5, max_hold_ns=2 * MS),)))
    out: list[bytes] = []
    link.send(data_frame(0), 0, out)
    link.send(data_frame(1), 0, out)
    assert out == [data_frame(1)] and link.next_deadline() == 2 * MS
    link.due(2 * MS, out)
    assert out == [data_frame(1), data_frame(0)] and link.next_deadline() is None
