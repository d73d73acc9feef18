"""The nic model: Toeplitz RSS, descriptor credits, coalescing and MSI-X auto-masking."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.cpu.napi import Spend
from actors.nic import (
    MICROSOFT_RSS_KEY,
    Dma,
    Nic,
    RaiseIrq,
    RxDrop,
    Toeplitz,
    rss_input,
    toeplitz_hash,
)
from actors.nic.model import DmaWrite, WireTx
from actors.profiles import US
from protocol.envelope import MalformedMessage


def ipv4_tcp(src: str, sport: int, dst: str, dport: int, payload: bytes = b"",
             ihl: int = 5, proto: int = 6, frag: int = 0) -> bytes:
    """A minimal IPv4 (+TCP) frame; checksums are irrelevant to the NIC model."""
    options = b"\x01" * ((ihl - 5) * 4)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, 0x10, 65535, 0, 0)
    total = ihl * 4 + len(tcp) + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 0, frag, 64, proto, 0,
                     ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return ip + options + tcp + payload


# Microsoft "Verifying the RSS Hash Calculation": (dst, dport, src, sport, ipv4, ipv4+tcp)
RSS_VECTORS = [
    ("161.142.100.80", 1766, "66.9.149.187", 2794, 0x323E8FC2, 0x51CCC178),
    ("65.69.140.83", 4739, "199.92.111.2", 14230, 0xD718262A, 0xC626B0EA),
    ("12.22.207.184", 38024, "24.19.198.95", 12898, 0xD2D0A5DE, 0x5C2B394A),
    ("209.142.163.6", 2217, "38.27.205.30", 48228, 0x82989176, 0xAFC7327F),
    ("202.188.127.2", 1303, "153.39.163.191", 44251, 0x5D1809C5, 0x10E828A2),
]


def frame_for_queue(nic: Nic, queue: int, start: int = 0) -> bytes:
    """A TCP frame that RSS steers to ``queue`` (search over source ports)."""
    for sport in range(1024 + start, 65536):
        frame = ipv4_tcp("10.0.0.2", sport, "10.0.0.1", 80)
        if nic.rss_queue(frame) == queue:
            return frame
    raise AssertionError("no port maps to that queue")


# -- Toeplitz / RSS ------------------------------------------------------------------------


@pytest.mark.parametrize(("dst", "dport", "src", "sport", "h_ip", "h_tcp"), RSS_VECTORS)
def test_toeplitz_matches_microsoft_vectors(dst: str, dport: int, src: str, sport: int,
                                            h_ip: int, h_tcp: int) -> None:
    addrs = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
    ports = struct.pack("!HH", sport, dport)
    table = Toeplitz(MICROSOFT_RSS_KEY)
    assert table.hash(addrs) == h_ip
    assert table.hash(addrs + ports) == h_tcp
    assert toeplitz_hash(MICROSOFT_RSS_KEY, addrs + ports) == h_tcp
    assert toeplitz_hash(MICROSOFT_RSS_KEY, addrs) == h_ip


@pytest.mark.parametrize(("dst", "dport", "src", "sport", "h_ip", "h_tcp"), RSS_VECTORS)
def test_nic_hashes_frames_like_the_vectors(dst: str, dport: int, src: str, sport: int,
                                            h_ip: int, h_tcp: int) -> None:
    nic = Nic(num_queues=4, ring_size=8)
    tcp = ipv4_tcp(src, sport, dst, dport, b"data")
    assert nic.rss_hash(tcp) == h_tcp
    assert nic.rss_queue(tcp) == (h_tcp & 127) % 4
    # IP options move the TCP header; the hash must follow ihl.
    assert nic.rss_hash(ipv4_tcp(src, sport, dst, dport, ihl=7)) == h_tcp
    # Non-TCP and fragments hash the addresses only.
    assert nic.rss_hash(ipv4_tcp(src, sport, dst, dport, proto=17)) == h_ip
    assert nic.rss_hash(ipv4_tcp(src, sport, dst, dport, frag=0x2000)) == h_ip
    assert nic.rss_hash(ipv4_tcp(src, sport, dst, dport, frag=5)) == h_ip


@given(st.binary(min_size=0, max_size=12))
def test_table_driven_hash_equals_bit_serial(data: bytes) -> None:
    assert Toeplitz(MICROSOFT_RSS_KEY).hash(data) == toeplitz_hash(MICROSOFT_RSS_KEY, data)


def test_unparsable_frames_go_to_queue_0() -> None:
    nic = Nic(num_queues=4, ring_size=8)
    good = frame_for_queue(nic, 3)
    assert nic.rss_queue(good) == 3
    assert rss_input(b"") is None
    assert nic.rss_queue(b"") == 0
    assert nic.rss_queue(good[:19]) == 0  # truncated IPv4 header
    assert nic.rss_queue(bytes([0x60]) + good[1:]) == 0  # IPv6 version nibble
    assert nic.rss_queue(bytes([0x44]) + good[1:]) == 0  # ihl < 5
    assert nic.rss_queue(bytes([0x4F]) + good[1:40]) == 0  # ihl beyond the frame
    # TCP header cut before the ports: falls back to the 2-tuple hash.
    assert rss_input(good[:22]) == good[12:20]


def test_indirection_table_round_robin_and_spread() -> None:
    nic = Nic(num_queues=3, ring_size=8)
    assert len(nic.indirection_table) == 128
    assert nic.indirection_table[:7] == (0, 1, 2, 0, 1, 2, 0)
    seen = {nic.rss_queue(ipv4_tcp("10.0.0.2", p, "10.0.0.1", 80)) for p in range(2000, 2100)}
    assert seen == {0, 1, 2}
    one = Nic(num_queues=1, ring_size=8)
    assert all(one.rss_queue(ipv4_tcp("10.0.0.2", p, "10.0.0.1", 80)) == 0
               for p in range(2000, 2050))


def test_rss_key_too_short_rejected() -> None:
    with pytest.raises(ValueError):
        Nic(num_queues=2, ring_size=8, rss_key=b"\x00" * 12)


# -- credits and ring overflow -------------------------------------------------------------


def test_ring_overflow_drops_exactly_the_frames_beyond_credits() -> None:
    nic = Nic(num_queues=2, ring_size=4, queue_to_cpu=[0, 1])
    frame = frame_for_queue(nic, 1)
    outs = [nic.rx_frame(frame, now=i * US) for i in range(7)]
    dmas = [o for batch in outs for o in batch if isinstance(o, Dma)]
    drops = [o for batch in outs for o in batch if isinstance(o, RxDrop)]
    assert len(dmas) == 4 and all(d.queue == 1 and d.cpu == 1 and d.frame == frame for d in dmas)
    assert drops == [RxDrop(1, 1, len(frame))] * 3
    # The drops are exactly the last three arrivals.
    assert [any(isinstance(o, RxDrop) for o in batch) for batch in outs] == [False] * 4 + [True] * 3
    assert nic.credits(1) == 0 and nic.credits(0) == 4
    stats = nic.ethtool_stats()
    assert stats["rx_missed_errors"] == 3
    assert stats["rx_no_buffer_count"] == 3
    assert stats["rx_queue_1_drops"] == 3 and stats["rx_queue_0_drops"] == 0
    assert stats["rx_packets"] == 4 and stats["rx_queue_1_packets"] == 4
    assert stats["rx_bytes"] == 4 * len(frame) and stats["rx_queue_1_bytes"] == 4 * len(frame)


def test_refill_restores_credits() -> None:
    nic = Nic(num_queues=1, ring_size=3)
    frame = ipv4_tcp("10.0.0.2", 5000, "10.0.0.1", 80)
    for i in range(3):
        nic.rx_frame(frame, i)
    assert isinstance(nic.rx_frame(frame, 3)[0], RxDrop)
    assert nic.refill(0, 2, now=4) == []
    assert nic.credits(0) == 2
    assert isinstance(nic.rx_frame(frame, 5)[0], Dma)
    assert isinstance(nic.rx_frame(frame, 6)[0], Dma)
    assert isinstance(nic.rx_frame(frame, 7)[0], RxDrop)
    assert nic.rx_missed_errors == 2


def test_refill_never_exceeds_ring_size() -> None:
    nic = Nic(num_queues=1, ring_size=3)
    nic.rx_frame(ipv4_tcp("10.0.0.2", 5000, "10.0.0.1", 80), 0)
    nic.refill(0, 5, now=1)
    assert nic.credits(0) == 3
    assert nic.stale_refills == 1
    with pytest.raises(ValueError):
        nic.refill(0, -1, now=2)


# -- interrupts: auto-mask, unmask, coalescing ---------------------------------------------


def test_immediate_irq_auto_masks_and_unmask_reraises_for_pending() -> None:
    nic = Nic(num_queues=2, ring_size=16, queue_to_cpu=[5, 7])
    frame = frame_for_queue(nic, 1)
    first = nic.rx_frame(frame, 0)
    assert first == [Dma(1, 7, frame), RaiseIrq(1, 7)]
    assert nic.masked(1)
    # Masked: frames are DMA'd but nothing is raised, however many arrive.
    for i in range(1, 10):
        assert nic.rx_frame(frame, i * US) == [Dma(1, 7, frame)]
    assert nic.pending(1) == 9
    # Unmask with frames DMA'd but not signalled: raise at once (and mask again).
    assert nic.unmask(1, 20 * US) == [RaiseIrq(1, 7)]
    assert nic.masked(1) and nic.pending(1) == 0
    # Unmask with nothing pending: quiet; the next frame raises.
    assert nic.unmask(1, 30 * US) == []
    assert not nic.masked(1)
    assert nic.rx_frame(frame, 31 * US) == [Dma(1, 7, frame), RaiseIrq(1, 7)]
    assert nic.ethtool_stats()["rx_queue_1_irqs"] == 3
    assert nic.ethtool_stats()["rx_queue_0_irqs"] == 0


def test_masked_queue_ignores_timer_until_unmask() -> None:
    nic = Nic(num_queues=1, ring_size=16, rx_usecs=10)
    frame = ipv4_tcp("10.0.0.2", 5000, "10.0.0.1", 80)
    nic.mask(0)
    nic.rx_frame(frame, 0)
    assert nic.next_deadline() is None
    assert nic.on_timer(1_000 * US) == []
    # The held frame arrived long ago: unmask raises at once.
    assert nic.unmask(0, 1_000 * US) == [RaiseIrq(0, 0)]


def test_coalescing_by_frames() -> None:
    nic = Nic(num_queues=1, ring_size=64, rx_usecs=100, rx_frames=4)
    frame = ipv4_tcp("10.0.0.2", 5000, "10.0.0.1", 80)
    for i in range(3):
        assert nic.rx_frame(frame, i * US) == [Dma(0, 0, frame)]
    assert nic.next_deadline() == 100 * US
    assert nic.rx_frame(frame, 3 * US) == [Dma(0, 0, frame), RaiseIrq(0, 0)]
    assert nic.next_deadline() is None
    # After the unmask the count starts again from zero.
    assert nic.unmask(0, 4 * US) == []
    for i in range(3):
        assert nic.rx_frame(frame, (5 + i) * US) == [Dma(0, 0, frame)]
    assert nic.rx_frame(frame, 8 * US)[-1] == RaiseIrq(0, 0)


def test_coalescing_by_usecs_timer() -> None:
    nic = Nic(num_queues=1, ring_size=64, rx_usecs=50)
    frame = ipv4_tcp("10.0.0.2", 5000, "10.0.0.1", 80)
    assert nic.next_deadline() is None
    assert nic.rx_frame(frame, 1_000) == [Dma(0, 0, frame)]
    # The delay runs from the first unsignalled frame, not from later ones.
    assert nic.rx_frame(frame, 30 * US) == [Dma(0, 0, frame)]
    assert nic.next_deadline() == 1_000 + 50 * US
    assert nic.on_timer(1_000 + 50 * US - 1) == []
    assert nic.on_timer(1_000 + 50 * US) == [RaiseIrq(0, 0)]
    assert nic.next_deadline() is None and nic.masked(0)
    # A frame arriving after the window but with the queue unmasked and idle: the
    # window restarts from that frame.
    nic.unmask(0, 100 * US)
    assert nic.rx_frame(frame, 200 * US) == [Dma(0, 0, frame)]
    assert nic.next_deadline() == 250 * US
    # A frame that arrives at or after the deadline raises in the same step.
    assert nic.rx_frame(frame, 250 * US) == [Dma(0, 0, frame), RaiseIrq(0, 0)]


def test_unmask_within_coalescing_window_arms_the_timer() -> None:
    nic = Nic(num_queues=1, ring_size=64, rx_usecs=50)
    frame = ipv4_tcp("10.0.0.2", 5000, "10.0.0.1", 80)
    nic.rx_frame(frame, 0)
    nic.on_timer(50 * US)  # raised and masked
    nic.rx_frame(frame, 60 * US)  # pending while masked
    assert nic.unmask(0, 70 * US) == []
    assert nic.next_deadline() == 110 * US
    assert nic.on_timer(110 * US) == [RaiseIrq(0, 0)]


def test_rx_frames_one_means_immediate_even_with_usecs() -> None:
    nic = Nic(num_queues=1, ring_size=8, rx_usecs=100, rx_frames=1)
    frame = ipv4_tcp("10.0.0.2", 5000, "10.0.0.1", 80)
    assert nic.rx_frame(frame, 0)[-1] == RaiseIrq(0, 0)


def test_coalescing_settings_validated() -> None:
    with pytest.raises(ValueError):
        Nic(num_queues=1, ring_size=8, rx_usecs=0, rx_frames=8)
    with pytest.raises(ValueError):
        Nic(num_queues=1, ring_size=8, rx_usecs=-1)
    with pytest.raises(ValueError):
        Nic(num_queues=2, ring_size=8, queue_to_cpu=[0])
    with pytest.raises(ValueError):
        Nic(num_queues=0, ring_size=8)


def test_timers_are_per_queue() -> None:
    nic = Nic(num_queues=2, ring_size=8, rx_usecs=20)
    f0, f1 = frame_for_queue(nic, 0), frame_for_queue(nic, 1)
    nic.rx_frame(f0, 0)
    nic.rx_frame(f1, 5 * US)
    assert nic.next_deadline() == 20 * US
    assert nic.on_timer(20 * US) == [RaiseIrq(0, 0)]
    assert nic.next_deadline() == 25 * US
    assert nic.on_timer(25 * US) == [RaiseIrq(1, 1)]


# -- reset, TX, stats ----------------------------------------------------------------------


def test_reset_cpu_returns_all_credits_and_forgets_pending() -> None:
    nic = Nic(num_queues=4, ring_size=4, queue_to_cpu=[0, 1, 0, 1])
    assert nic.queues_of_cpu(1) == [1, 3]
    frames = {q: frame_for_queue(nic, q) for q in range(4)}
    for q in range(4):
        for i in range(3):
            nic.rx_frame(frames[q], i)
    nic.reset_cpu(1)
    assert [nic.credits(q) for q in range(4)] == [1, 4, 1, 4]
    assert nic.pending(1) == 0 and not nic.masked(1)
    assert nic.masked(0) and nic.pending(0) == 2
    # The fresh ring interrupts on its first frame.
    assert nic.rx_frame(frames[3], 10)[-1] == RaiseIrq(3, 1)


def test_tx_counters_and_ethtool_names() -> None:
    nic = Nic(num_queues=2, ring_size=4)
    nic.tx_frame(b"\x00" * 40, 0)
    nic.tx_frame(b"\x00" * 52, 1)
    stats = nic.ethtool_stats()
    assert stats["tx_packets"] == 2 and stats["tx_bytes"] == 92
    assert list(stats) == [
        "rx_packets", "rx_bytes", "rx_missed_errors", "rx_no_buffer_count",
        "tx_packets", "tx_bytes",
        "rx_queue_0_packets", "rx_queue_0_bytes", "rx_queue_0_drops", "rx_queue_0_irqs",
        "rx_queue_1_packets", "rx_queue_1_bytes", "rx_queue_1_drops", "rx_queue_1_irqs",
    ]


# -- bursts: what the nic process sends ----------------------------------------------------


class Heard:
    """A NicObserver that keeps what it heard."""

    def __init__(self) -> None:
        self.bursts: list[tuple[int, list[int], list[int], int]] = []
        self.ring_samples = 0
        self.tx_ids: list[int] = []

    def rx_burst(self, frames: int, dma_ids: list[int], missed_ids: list[int], irqs: int,
                 now: int) -> None:
        self.bursts.append((frames, dma_ids, missed_ids, irqs))

    def rings(self, queues: object, now: int) -> None:
        self.ring_samples += 1

    def tx(self, ids: list[int], now: int) -> None:
        self.tx_ids += ids


def test_a_burst_is_one_dma_write_per_ring_then_the_interrupts() -> None:
    heard = Heard()
    nic = Nic(num_queues=2, ring_size=2, queue_to_cpu=[0, 1], cost_per_frame_ns=500,
              observer=heard)
    f0, f1 = frame_for_queue(nic, 0), frame_for_queue(nic, 1)
    out = nic.rx_burst([f0, f1, f0, f1, f0], 0, ids=[10, 11, 12, 13, 14])
    assert out == [Spend(2500), DmaWrite(0, 0, [f0, f0], [10, 12]),
                   DmaWrite(1, 1, [f1, f1], [11, 13]), RaiseIrq(0, 0), RaiseIrq(1, 1)]
    assert heard.bursts == [(5, [10, 11, 12, 13], [14], 2)] and heard.ring_samples == 1
    assert nic.rx_missed_errors == 1
    # Untraced: no ids travel; a burst of nothing costs nothing.
    assert Nic(num_queues=1, ring_size=2).rx_burst([f0], 0, ids=[1]) == [
        DmaWrite(0, 0, [f0], None), RaiseIrq(0, 0)]
    assert nic.rx_burst([], 1) == []
    assert nic.tx_burst([b"ack"], 2, ids=[99]) == [WireTx([b"ack"], [99])]
    assert heard.tx_ids == [99] and nic.tx_packets == 1


def test_refills_and_unmasks_for_a_queue_the_nic_lacks_are_malformed() -> None:
    nic = Nic(num_queues=2, ring_size=4)
    for call in (lambda: nic.refill(2, 1, 0), lambda: nic.refill(-1, 1, 0),
                 lambda: nic.refill(0, -1, 0), lambda: nic.unmask(5, 0)):
        with pytest.raises(MalformedMessage):
            call()
    assert [nic.credits(q) for q in range(2)] == [4, 4] and nic.stale_refills == 0
    nic.reset_cpu(0)
    assert nic.stats()["cpu_resets"] == 1


@given(
    ring_size=st.integers(1, 8),
    ops=st.lists(st.tuples(st.sampled_from(["rx", "refill", "unmask", "timer"]),
                           st.integers(0, 3), st.integers(0, 5)), max_size=80),
)
def test_credits_stay_in_bounds_and_frames_are_accounted(
    ring_size: int, ops: list[tuple[str, int, int]]
) -> None:
    nic = Nic(num_queues=4, ring_size=ring_size, rx_usecs=5, rx_frames=3)
    frames = [frame_for_queue(nic, q) for q in range(4)]
    consumed = [0] * 4  # descriptors filled and not yet given back
    now = 0
    arrived = dmad = 0
    for op, q, n in ops:
        now += US
        if op == "rx":
            arrived += 1
            outs = nic.rx_frame(frames[q], now)
            dmad += sum(isinstance(o, Dma) for o in outs)
            consumed[q] += sum(isinstance(o, Dma) for o in outs)
        elif op == "refill":
            n = min(n, consumed[q])
            nic.refill(q, n, now)
            consumed[q] -= n
        elif op == "unmask":
            nic.unmask(q, now)
        else:
            nic.on_timer(now)
        for i in range(4):
            assert 0 <= nic.credits(i) <= ring_size
            assert nic.credits(i) + consumed[i] == ring_size
        assert arrived == dmad + nic.rx_missed_errors
        assert nic.rx_missed_errors == nic.rx_no_buffer_count
