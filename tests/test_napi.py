"""hardirq + NAPI softirq: net_rx_action budget, time limit, weight, repoll, softnet_stat."""

from __future__ import annotations

import ipaddress
import struct
from collections import deque

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from actors.cpu.napi import Poll, RcvBatch, Refill, Softirq, Spend, Unmask
from actors.cpu.softnet import SoftnetData, format_softnet_line, parse_softnet_line
from actors.nic import Dma, Nic, RaiseIrq, RxDrop
from actors.profiles import LEGACY, MODERN, US, Sysctls
from protocol.envelope import MalformedMessage
from protocol.segment import Segment
from protocol.wire import encode as wire_encode

SYSCTLS = Sysctls()  # netdev_budget 300, netdev_budget_usecs 2000, dev_weight 64


def frame(n: int, queue: int = 0) -> bytes:
    """An opaque frame tagged with its queue and a sequence number (the cpu never parses)."""
    return struct.pack("!II", queue, n)


def fill(sirq: Softirq, queue: int, count: int, start: int = 0) -> None:
    for i in range(count):
        assert sirq.dma(queue, frame(start + i, queue), now=0)


def run_poll(sirq: Softirq, now: int, finish_at: int | None = None) -> tuple[Poll, list]:
    poll = sirq.start_poll(now)
    assert poll is not None
    return poll, sirq.finish_poll(poll, now if finish_at is None else finish_at)


# -- hardirq and a single poll -------------------------------------------------------------


def test_hardirq_schedules_once_and_poll_takes_frames_in_order() -> None:
    sirq = Softirq(cpu=0, queues=[0], ring_size=256, sysctls=SYSCTLS)
    assert sirq.start_poll(0) is None  # nothing scheduled
    fill(sirq, 0, 10)
    assert sirq.hardirq(0, now=0) is True
    assert sirq.scheduled(0) and sirq.softirq_pending
    poll = sirq.start_poll(now=1)
    assert poll is not None
    assert poll.queue == 0 and poll.weight == 64 and poll.run == 1 and poll.budget_left == 300
    assert poll.frames == tuple(frame(i) for i in range(10))
    assert sirq.busy and sirq.in_flight(0) == 10 and sirq.ring_len(0) == 0
    with pytest.raises(RuntimeError):
        sirq.start_poll(now=2)
    out = sirq.finish_poll(poll, now=3)
    # work 10 < weight 64: napi_complete_done, then the driver unmasks.
    assert out == [Refill(0, 10), Unmask(0)]
    assert not sirq.scheduled(0) and not sirq.softirq_pending and not sirq.busy
    assert sirq.in_flight(0) == 0
    assert sirq.softnet.processed == 10
    assert sirq.softnet.time_squeeze == 0
    assert sirq.irqs == 1 and sirq.napis[0].irqs == 1


def test_full_weight_poll_stays_scheduled_without_unmask() -> None:
    sirq = Softirq(cpu=0, queues=[0], ring_size=256, sysctls=SYSCTLS, weight=4)
    fill(sirq, 0, 4)
    sirq.hardirq(0, 0)
    poll, out = run_poll(sirq, 0)
    assert poll.work == 4
    assert out == [Refill(0, 4)]  # no napi_complete_done: work == weight
    assert sirq.scheduled(0) and sirq.softirq_pending and not sirq.in_run
    assert sirq.repolls == 1
    # The repoll finds the ring empty: work 0 < weight completes and unmasks; no refill.
    poll, out = run_poll(sirq, 10)
    assert poll.work == 0 and poll.run == 2
    assert out == [Unmask(0)]
    assert not sirq.scheduled(0)


def test_napi_complete_done_only_when_work_below_weight() -> None:
    sirq = Softirq(cpu=0, queues=[0], ring_size=256, sysctls=SYSCTLS, weight=8)
    fill(sirq, 0, 8 + 8 + 3)
    sirq.hardirq(0, 0)
    results = []
    while (poll := sirq.start_poll(0)) is not None:
        results.append((poll.work, sirq.finish_poll(poll, 0)))
    assert results == [
        (8, [Refill(0, 8)]),
        (8, [Refill(0, 8)]),
        (3, [Refill(0, 3), Unmask(0)]),
    ]
    assert sirq.napis[0].completions == 1


def test_irq_while_scheduled_sets_missed_and_reschedules_instead_of_unmasking() -> None:
    sirq = Softirq(cpu=0, queues=[0], ring_size=256, sysctls=SYSCTLS)
    fill(sirq, 0, 2)
    sirq.hardirq(0, 0)
    poll = sirq.start_poll(0)
    assert poll is not None
    assert sirq.hardirq(0, 1) is False  # already SCHED: MISSED
    fill(sirq, 0, 1, start=2)
    assert sirq.finish_poll(poll, 2) == [Refill(0, 2)]  # no Unmask
    assert sirq.scheduled(0)
    poll, out = run_poll(sirq, 3)
    assert poll.frames == (frame(2),)
    assert out == [Refill(0, 1), Unmask(0)]


# -- net_rx_action: budget, time limit, repoll order ---------------------------------------


def test_budget_300_with_five_busy_queues_squeezes() -> None:
    sirq = Softirq(cpu=0, queues=range(6), ring_size=1024, sysctls=SYSCTLS)
    for q in range(6):
        fill(sirq, q, 200)
        sirq.hardirq(q, 0)
    polled = []
    budgets = []
    while True:
        poll = sirq.start_poll(0)
        assert poll is not None
        polled.append((poll.queue, poll.work))
        budgets.append(poll.budget_left)
        sirq.finish_poll(poll, 0)
        if not sirq.in_run:
            break
    # Four polls leave 44 of the 300; the 5th still gets its full weight of 64 (the
    # kernel passes n->weight, not the remaining budget), the budget goes to -20, and
    # net_rx_action punts: time_squeeze++, queue 5 is not polled in this run.
    assert polled == [(0, 64), (1, 64), (2, 64), (3, 64), (4, 64)]
    assert budgets == [300, 236, 172, 108, 44]
    assert sirq.softnet.time_squeeze == 1
    assert sirq.softnet.processed == 320
    # Unpolled NAPIs first, then the repolls in the order they were polled.
    assert list(sirq.poll_list) == [5, 0, 1, 2, 3, 4]
    # The re-raised softirq is a new run with a fresh budget.
    poll = sirq.start_poll(1)
    assert poll is not None
    assert (poll.queue, poll.run, poll.budget_left) == (5, 2, 300)


def test_budget_exhausted_by_last_poll_still_counts_a_squeeze() -> None:
    # The kernel tests budget after every napi_poll, before looking at the list.
    sysctls = Sysctls(netdev_budget=10)
    sirq = Softirq(cpu=0, queues=[0], ring_size=64, sysctls=sysctls)
    fill(sirq, 0, 10)
    sirq.hardirq(0, 0)
    _, out = run_poll(sirq, 0)
    assert out == [Refill(0, 10), Unmask(0)]
    assert sirq.softnet.time_squeeze == 1
    assert not sirq.softirq_pending


def test_time_limit_cuts_a_run() -> None:
    """net_rx_action: time_limit = jiffies + usecs_to_jiffies(netdev_budget_usecs),
    squeeze on time_after_eq(jiffies, time_limit); at HZ=250 4.13's 2000 us is one
    4 ms jiffy, so a run begun 5 us into jiffy 0 ends at the start of jiffy 1."""
    sirq = Softirq(cpu=0, queues=[0, 1, 2], ring_size=256, sysctls=SYSCTLS)
    for q in range(3):
        fill(sirq, q, 10)
        sirq.hardirq(q, 0)
    t0 = 5 * US
    limit = 4000 * US
    poll = sirq.start_poll(t0)
    assert poll is not None and poll.time_limit == limit
    # The stack took a while: the poll ends 1 ns before the limit, the run goes on.
    sirq.finish_poll(poll, limit - 1)
    assert sirq.in_run and sirq.softnet.time_squeeze == 0
    poll = sirq.start_poll(limit - 1)
    assert poll is not None and poll.queue == 1 and poll.run == 1
    # This one ends at the limit: time_after_eq → squeeze, queue 2 waits for the next run.
    out = sirq.finish_poll(poll, limit)
    assert out == [Refill(1, 10), Unmask(1)]  # the poll itself still completes normally
    assert not sirq.in_run and sirq.softnet.time_squeeze == 1
    assert list(sirq.poll_list) == [2]
    poll = sirq.start_poll(t0 + 6000 * US)
    assert poll is not None and (poll.queue, poll.run, poll.budget_left) == (2, 2, 300)
    assert poll.time_limit == 8000 * US


def test_budget_usecs_from_sysctls() -> None:
    """usecs_to_jiffies(100) is one jiffy: a run begun at 0 is squeezed at 1 ms with
    HZ=1000, at 4 ms with HZ=250."""
    for hz, jiffy_us in ((1000, 1000), (250, 4000)):
        sirq = Softirq(cpu=0, queues=[0, 1], ring_size=64,
                       sysctls=Sysctls(netdev_budget_usecs=100, hz=hz))
        for q in range(2):
            fill(sirq, q, 1)
            sirq.hardirq(q, 0)
        run_poll(sirq, 0, finish_at=jiffy_us * US - 1)
        assert sirq.softnet.time_squeeze == 0
        run_poll(sirq, jiffy_us * US - 1, finish_at=jiffy_us * US)
        assert sirq.softnet.time_squeeze == 1


def test_round_robin_repoll_order() -> None:
    sirq = Softirq(cpu=0, queues=[0, 1, 2], ring_size=256, sysctls=SYSCTLS, weight=4)
    for q in (2, 0, 1):  # scheduling order decides the first round
        fill(sirq, q, 10)
        sirq.hardirq(q, 0)
    order = []
    runs = []
    while (poll := sirq.start_poll(0)) is not None:
        order.append((poll.queue, poll.work))
        runs.append(poll.run)
        sirq.finish_poll(poll, 0)
    assert order == [(2, 4), (0, 4), (1, 4), (2, 4), (0, 4), (1, 4), (2, 2), (0, 2), (1, 2)]
    # Each run polls each NAPI at most once; repolls wait for the next run.
    assert runs == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert sirq.softnet.time_squeeze == 0
    assert sirq.softnet.processed == 30


@pytest.mark.parametrize(("rescan", "expected_run"), [(True, 1), (False, 2)])
def test_napi_scheduled_during_a_run(rescan: bool, expected_run: int) -> None:
    sirq = Softirq(cpu=0, queues=[0, 1], ring_size=64, sysctls=SYSCTLS,
                   rescan_poll_list=rescan)
    fill(sirq, 0, 3)
    sirq.hardirq(0, 0)
    poll = sirq.start_poll(0)
    assert poll is not None
    fill(sirq, 1, 2)
    sirq.hardirq(1, 1)  # arrives while the stack works on queue 0's batch
    sirq.finish_poll(poll, 2)
    assert sirq.in_run is rescan
    poll = sirq.start_poll(3)
    assert poll is not None and poll.queue == 1 and poll.run == expected_run
    # Modern's `goto start` keeps the run's budget; legacy starts a fresh one.
    assert poll.budget_left == (297 if rescan else 300)


def test_new_napi_goes_before_repolls() -> None:
    sirq = Softirq(cpu=0, queues=[0, 1, 2], ring_size=256, sysctls=SYSCTLS, weight=4)
    fill(sirq, 0, 8)
    fill(sirq, 1, 8)
    sirq.hardirq(0, 0)
    sirq.hardirq(1, 0)
    poll = sirq.start_poll(0)
    assert poll is not None
    fill(sirq, 2, 1)
    sirq.hardirq(2, 0)
    sirq.finish_poll(poll, 0)  # queue 0 used its weight → repoll
    poll, _ = run_poll(sirq, 0)  # queue 1 used its weight → repoll; the run ends
    assert not sirq.in_run
    assert list(sirq.poll_list) == [2, 0, 1]


# -- rings, reset, softnet_stat ------------------------------------------------------------


def test_dma_into_a_full_ring_is_refused() -> None:
    sirq = Softirq(cpu=0, queues=[0], ring_size=2, sysctls=SYSCTLS)
    assert sirq.dma(0, b"a", 0) and sirq.dma(0, b"b", 0)
    assert not sirq.dma(0, b"c", 0)
    assert sirq.dma_overruns == 1
    sirq.hardirq(0, 0)
    poll = sirq.start_poll(0)
    assert poll is not None
    # Polled but not yet refilled: the descriptors are still in use.
    assert not sirq.dma(0, b"d", 0)
    sirq.finish_poll(poll, 0)
    assert sirq.dma(0, b"e", 0)
    with pytest.raises(ValueError):
        sirq.dma(3, b"x", 0)


def test_reset_discards_rings_and_ignores_the_stale_poll() -> None:
    sirq = Softirq(cpu=1, queues=[1, 3], ring_size=128, sysctls=SYSCTLS)
    fill(sirq, 1, 70)
    fill(sirq, 3, 5)
    sirq.hardirq(1, 0)
    sirq.hardirq(3, 0)
    poll = sirq.start_poll(0)
    assert poll is not None and poll.work == 64
    assert sirq.reset() == 6 + 5
    assert sirq.frames_lost_in_reset == 11
    assert not sirq.softirq_pending and not sirq.busy
    assert sirq.finish_poll(poll, 1) == []
    assert sirq.stale_finishes == 1
    assert sirq.softnet.processed == 64  # handed up before the crash
    # The fresh ring works from scratch.
    fill(sirq, 3, 2)
    sirq.hardirq(3, 2)
    _, out = run_poll(sirq, 3)
    assert out == [Refill(3, 2), Unmask(3)]


def test_softnet_stat_columns_per_profile() -> None:
    sirq = Softirq(cpu=3, queues=[0], ring_size=256, sysctls=Sysctls(netdev_budget=64))
    fill(sirq, 0, 100)
    sirq.hardirq(0, 0)
    run_poll(sirq, 0)  # 64 frames, budget gone: squeeze
    legacy = sirq.softnet_stat(LEGACY)
    modern = sirq.softnet_stat(MODERN)
    assert len(legacy) == 11 and len(modern) == 15
    assert legacy == [64, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert modern == [64, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0]
    assert sirq.softnet_stat_line(LEGACY) == (
        "00000040 00000000 00000001 00000000 00000000 00000000 "
        "00000000 00000000 00000000 00000000 00000000"
    )
    assert sirq.softnet_stat_line(MODERN).endswith("00000000 00000003 00000000 00000000")
    assert parse_softnet_line(sirq.softnet_stat_line(MODERN)) == modern


def test_softnet_backlog_columns_and_wrap() -> None:
    sd = SoftnetData(cpu=1, processed=2**32 + 5, dropped=7, received_rps=2,
                     flow_limit_count=1, input_qlen=3, process_qlen=4)
    assert sd.columns(MODERN)[9:] == [2, 1, 7, 1, 3, 4]
    assert sd.line(LEGACY).split()[0] == "00000005"  # %08x of an unsigned int
    assert format_softnet_line([255, 16]) == "000000ff 00000010"


def test_softirq_validates_config() -> None:
    with pytest.raises(ValueError):
        Softirq(cpu=0, queues=[], ring_size=8, sysctls=SYSCTLS)
    with pytest.raises(ValueError):
        Softirq(cpu=0, queues=[0], ring_size=8, sysctls=SYSCTLS, weight=0)
    sirq = Softirq(cpu=0, queues=[0], ring_size=8, sysctls=SYSCTLS)
    with pytest.raises(ValueError):
        sirq.hardirq(1, 0)


# -- nic + cpu together --------------------------------------------------------------------


def tcp_frame(sport: int, n: int) -> bytes:
    """IPv4+TCP header from 10.0.0.2:sport to 10.0.0.1:80 with a 4-byte tag as payload."""
    tcp = struct.pack("!HHIIBBHHH", sport, 80, n, 0, 5 << 4, 0x18, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 44, 0, 0, 64, 6, 0,
                     ipaddress.IPv4Address("10.0.0.2").packed,
                     ipaddress.IPv4Address("10.0.0.1").packed)
    return ip + tcp + struct.pack("!I", n)


def frame_tag(f: bytes) -> int:
    return struct.unpack("!I", f[-4:])[0]


class Machine:
    """A nic and its cpus wired with in-order channels (as the actors' sockets are)."""

    def __init__(self, nic: Nic, cpus: dict[int, Softirq]) -> None:
        self.nic = nic
        self.cpus = cpus
        self.to_cpu: dict[int, deque[Dma | RaiseIrq]] = {c: deque() for c in cpus}
        self.to_nic: deque[tuple[int, Refill | Unmask]] = deque()
        self.in_poll: dict[int, Poll] = {}
        self.handed_up: dict[int, list[bytes]] = {q: [] for q in range(nic.num_queues)}
        self.now = 0

    def send(self, outs: list) -> None:
        for o in outs:
            if isinstance(o, Dma | RaiseIrq):
                self.to_cpu[o.cpu].append(o)

    def arrive(self, f: bytes) -> list:
        outs = self.nic.rx_frame(f, self.now)
        self.send(outs)
        return outs

    def deliver_to_cpu(self, cpu: int) -> None:
        msg = self.to_cpu[cpu].popleft()
        if isinstance(msg, Dma):
            self.cpus[cpu].dma(msg.queue, msg.frame, self.now)
        else:
            self.cpus[cpu].hardirq(msg.queue, self.now)

    def deliver_to_nic(self) -> None:
        _, msg = self.to_nic.popleft()
        if isinstance(msg, Refill):
            self.send(self.nic.refill(msg.queue, msg.n, self.now))
        else:
            self.send(self.nic.unmask(msg.queue, self.now))

    def start(self, cpu: int) -> Poll | None:
        poll = self.cpus[cpu].start_poll(self.now)
        if poll is not None:
            self.in_poll[cpu] = poll
            self.handed_up[poll.queue].extend(poll.frames)
        return poll

    def finish(self, cpu: int) -> None:
        poll = self.in_poll.pop(cpu)
        for o in self.cpus[cpu].finish_poll(poll, self.now):
            self.to_nic.append((cpu, o))

    def settle(self) -> None:
        """Run everything to quiescence, advancing time only to fire coalescing timers."""
        for _ in range(100_000):
            if any(self.to_cpu.values()):
                for c, chan in self.to_cpu.items():
                    while chan:
                        self.deliver_to_cpu(c)
            elif self.in_poll:
                for c in list(self.in_poll):
                    self.finish(c)
            elif self.to_nic:
                self.deliver_to_nic()
            elif any(s.softirq_pending for s in self.cpus.values()):
                for c, s in self.cpus.items():
                    if s.softirq_pending and not s.busy:
                        self.start(c)
            elif (deadline := self.nic.next_deadline()) is not None:
                self.now = max(self.now, deadline)
                self.send(self.nic.on_timer(self.now))
            else:
                return
        raise AssertionError("did not settle")


def test_five_busy_queues_end_to_end() -> None:
    nic = Nic(num_queues=5, ring_size=256, queue_to_cpu=[0] * 5)
    sirq = Softirq(cpu=0, queues=range(5), ring_size=256, sysctls=SYSCTLS)
    m = Machine(nic, {0: sirq})
    ports: dict[int, int] = {}
    for sport in range(1024, 65536):
        ports.setdefault(nic.rss_queue(tcp_frame(sport, 0)), sport)
        if len(ports) == 5:
            break
    for sport in ports.values():
        for n in range(100):
            m.arrive(tcp_frame(sport, n))
    # Each queue raised exactly once (auto-mask holds the rest).
    assert [nic.ethtool_stats()[f"rx_queue_{q}_irqs"] for q in range(5)] == [1] * 5
    m.settle()
    assert sirq.softnet.time_squeeze == 1  # first run: 5 x 64 > 300
    assert sirq.softnet.processed == 500
    for q in range(5):
        assert [frame_tag(f) for f in m.handed_up[q]] == list(range(100))
        assert nic.credits(q) == 256 and not nic.masked(q)


def test_ring_overrun_end_to_end_counts_rx_missed_errors() -> None:
    nic = Nic(num_queues=1, ring_size=8)
    sirq = Softirq(cpu=0, queues=[0], ring_size=8, sysctls=SYSCTLS)
    m = Machine(nic, {0: sirq})
    outs = [m.arrive(tcp_frame(5000, n)) for n in range(12)]
    assert sum(isinstance(o[0], RxDrop) for o in outs) == 4
    m.settle()
    assert [frame_tag(f) for f in m.handed_up[0]] == list(range(8))
    assert nic.ethtool_stats()["rx_missed_errors"] == 4
    assert sirq.softnet_stat(MODERN)[:3] == [8, 0, 0]  # NIC drops never reach softnet_stat
    for n in range(12, 20):
        m.arrive(tcp_frame(5000, n))
    m.settle()
    assert [frame_tag(f) for f in m.handed_up[0]][8:] == list(range(12, 20))


class NicCpuMachine(RuleBasedStateMachine):
    """Random interleavings of arrivals, message deliveries, polls, timers and cpu crashes."""

    RING = 6

    @initialize(rx_usecs=st.sampled_from([0, 0, 20]), rx_frames=st.sampled_from([0, 1, 3]),
                weight=st.integers(1, 5), budget=st.integers(1, 12), rescan=st.booleans())
    def setup(self, rx_usecs: int, rx_frames: int, weight: int, budget: int,
              rescan: bool) -> None:
        if rx_usecs == 0:
            rx_frames = min(rx_frames, 1)
        nic = Nic(num_queues=4, ring_size=self.RING, rx_usecs=rx_usecs, rx_frames=rx_frames,
                  queue_to_cpu=[0, 1, 0, 1])
        sysctls = Sysctls(netdev_budget=budget, netdev_budget_usecs=50)
        cpus = {c: Softirq(cpu=c, queues=nic.queues_of_cpu(c), ring_size=self.RING,
                           sysctls=sysctls, weight=weight, rescan_poll_list=rescan)
                for c in (0, 1)}
        self.m = Machine(nic, cpus)
        self.sports: list[int] = []
        for q in range(4):
            for sport in range(1024, 65536):
                if nic.rss_queue(tcp_frame(sport, 0)) == q:
                    self.sports.append(sport)
                    break
        self.seq = 0
        self.frames_in = 0
        self.lost_in_transit = 0

    @rule(q=st.integers(0, 3), count=st.integers(1, 4))
    def arrive(self, q: int, count: int) -> None:
        for _ in range(count):
            self.frames_in += 1
            self.m.arrive(tcp_frame(self.sports[q], self.seq))
            self.seq += 1

    @rule(dt=st.integers(1, 30))
    def tick(self, dt: int) -> None:
        self.m.now += dt * US
        self.m.send(self.m.nic.on_timer(self.m.now))

    @rule(cpu=st.sampled_from([0, 1]))
    def deliver_to_cpu(self, cpu: int) -> None:
        if self.m.to_cpu[cpu]:
            self.m.deliver_to_cpu(cpu)

    @precondition(lambda self: bool(self.m.to_nic))
    @rule()
    def deliver_to_nic(self) -> None:
        self.m.deliver_to_nic()

    @rule(cpu=st.sampled_from([0, 1]))
    def start_poll(self, cpu: int) -> None:
        if not self.m.cpus[cpu].busy:
            self.m.start(cpu)

    @rule(cpu=st.sampled_from([0, 1]))
    def finish_poll(self, cpu: int) -> None:
        if cpu in self.m.in_poll:
            self.m.finish(cpu)

    @rule(cpu=st.sampled_from([0, 1]))
    def crash_cpu(self, cpu: int) -> None:
        # The restarted cpu has a fresh ring; whatever was in flight to it is gone,
        # and what the dead process had queued for the nic never arrives.
        self.m.cpus[cpu].reset()
        self.m.nic.reset_cpu(cpu)
        chan = self.m.to_cpu[cpu]
        self.lost_in_transit += sum(isinstance(o, Dma) for o in chan)
        chan.clear()
        self.m.to_nic = deque(x for x in self.m.to_nic if x[0] != cpu)
        self.m.in_poll.pop(cpu, None)

    def _in_transit(self, q: int) -> tuple[int, int]:
        cpu = self.m.nic.queues[q].cpu
        dmas = sum(isinstance(o, Dma) and o.queue == q for o in self.m.to_cpu[cpu])
        refills = sum(o.n for _, o in self.m.to_nic if isinstance(o, Refill) and o.queue == q)
        return dmas, refills

    @invariant()
    def credits_account_for_every_descriptor(self) -> None:
        if not hasattr(self, "m"):
            return
        for q in range(4):
            credits = self.m.nic.credits(q)
            assert 0 <= credits <= self.RING
            sirq = self.m.cpus[self.m.nic.queues[q].cpu]
            dmas, refills = self._in_transit(q)
            assert credits + sirq.ring_len(q) + sirq.in_flight(q) + dmas + refills == self.RING

    @invariant()
    def every_frame_is_accounted(self) -> None:
        if not hasattr(self, "m"):
            return
        handed_up = sum(len(v) for v in self.m.handed_up.values())
        in_rings = sum(s.frames_in_rings() for s in self.m.cpus.values())
        dmas = sum(self._in_transit(q)[0] for q in range(4))
        lost = sum(s.frames_lost_in_reset for s in self.m.cpus.values()) + self.lost_in_transit
        assert self.frames_in == (handed_up + self.m.nic.rx_missed_errors + in_rings + dmas
                                  + lost)
        assert handed_up == sum(s.softnet.processed for s in self.m.cpus.values())
        assert all(s.dma_overruns == 0 for s in self.m.cpus.values())

    @invariant()
    def each_queue_hands_up_in_order_without_duplicates(self) -> None:
        if not hasattr(self, "m"):
            return
        for frames in self.m.handed_up.values():
            tags = [frame_tag(f) for f in frames]
            assert tags == sorted(set(tags))

    def teardown(self) -> None:
        if not hasattr(self, "m"):
            return
        # Liveness: once arrivals stop, every DMA'd frame gets polled; no lost interrupt.
        self.m.settle()
        for q in range(4):
            assert self.m.nic.credits(q) == self.RING
            assert not self.m.nic.masked(q) and self.m.nic.pending(q) == 0
        for s in self.m.cpus.values():
            assert s.frames_in_rings() == 0
            assert not s.softirq_pending
            assert not any(s.scheduled(q) for q in s.napis)
        self.every_frame_is_accounted()


NicCpuMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=60,
                                           deadline=None)
TestNicCpu = NicCpuMachine.TestCase


# -- ip_rcv in the poll, and the message-level entry points --------------------------------

LOCAL = "10.0.0.1"


def wire_frame(n: int, src: str = "10.0.0.2", dst: str = LOCAL) -> bytes:
    return wire_encode(Segment(src, 40000, dst, 5001, seq=n, payload=struct.pack("!I", n)))


def test_poll_runs_ip_rcv_and_counts_drops_under_linux_names() -> None:
    sirq = Softirq(cpu=0, queues=[0], ring_size=64, sysctls=SYSCTLS,
                   local_addrs=frozenset({LOCAL}))
    good = [wire_frame(i) for i in range(3)]
    bad_csum = bytearray(wire_frame(9))
    bad_csum[10] ^= 0xFF  # IP header checksum
    foreign = wire_frame(10, dst="10.9.9.9")
    frames = [good[0], bytes(bad_csum), good[1], foreign, good[2]]
    assert sirq.rx_dma(0, frames, 0) == 5
    out = sirq.rx_irq(0, 0)
    assert len(out) == 1 and isinstance(out[0], RcvBatch)
    assert out[0].frames == good and out[0].ids is None
    assert sirq.ip_drops == {"IP_CSUM": 1, "IP_INADDRERRORS": 1}
    mib = dict(sirq.mib.nonzero())
    assert mib["IpInReceives"] == 5 and mib["IpInDelivers"] == 3
    assert mib["IpInHdrErrors"] == 1 and mib["IpExtInCsumErrors"] == 1
    assert mib["IpInAddrErrors"] == 1
    stats = sirq.stats(MODERN)
    assert (stats["frames_in"], stats["frames_to_stack"], stats["in_flight_frames"]) == (5, 3, 3)
    # Nothing more happens until the stack answers this batch; a stale answer is counted.
    assert sirq.rcv_done(out[0].batch + 1, 1) == [] and sirq.stale_rcv_done == 1
    assert sirq.rcv_done(out[0].batch, 2) == [Refill(0, 5), Unmask(0)]
    assert not sirq.busy and sirq.stats(MODERN)["in_flight_frames"] == 0


def test_a_poll_that_delivers_nothing_finishes_at_once_and_the_run_goes_on() -> None:
    sirq = Softirq(cpu=0, queues=[0, 1], ring_size=64, sysctls=SYSCTLS, weight=2,
                   local_addrs=frozenset({LOCAL}), cost=(10.0, 0.0), batch_base=7000)
    sirq.rx_dma(0, [b"junk", b"junk"], 0)
    sirq.rx_dma(1, [wire_frame(1)], 0)
    sirq.hardirq(0, 0)
    out = sirq.rx_irq(1, 0)
    # Queue 0: both frames dropped (truncated), its full-weight poll stays scheduled;
    # queue 1: one frame to the stack, under the first batch id after batch_base.
    assert out[0] == Spend(20_000) and out[1] == Refill(0, 2)
    assert out[2] == Spend(10_000)
    assert isinstance(out[3], RcvBatch) and out[3].batch == 7001 and len(out) == 4
    assert sirq.ip_drops == {"IP_INHDR": 2}
    # Then the re-raised softirq repolls queue 0: an empty ring completes and unmasks.
    assert sirq.stack_lost(5) == [Refill(1, 1), Unmask(1), Unmask(0)]
    assert sirq.frames_abandoned == 1 and not sirq.softirq_pending


def test_dma_and_irq_for_a_queue_this_cpu_does_not_own_are_malformed() -> None:
    sirq = Softirq(cpu=0, queues=[0], ring_size=4, sysctls=SYSCTLS)
    with pytest.raises(MalformedMessage):
        sirq.rx_dma(1, [b"x"], 0)
    with pytest.raises(MalformedMessage):
        sirq.rx_irq(2, 0)
    assert sirq.frames_in == 0 and sirq.irqs == 0


class Recorder:
    """A SoftirqObserver that keeps what it heard."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def dma(self, queue: int, overrun_ids: list[int], ring_len: int, now: int) -> None:
        self.events.append(("dma", queue, overrun_ids, ring_len))

    def hardirq(self, queue: int, now: int) -> None:
        self.events.append(("hardirq", queue))

    def poll_started(self, poll: Poll, new_run: bool, budget: int, ring_len: int,
                     now: int) -> None:
        self.events.append(("poll", poll.delivered_ids(), poll.dropped_ids(), new_run))

    def poll_finished(self, poll: Poll, completed: bool, run_ended: bool, squeezed: bool,
                      now: int) -> None:
        self.events.append(("done", completed, run_ended, squeezed))


def test_trace_ids_follow_their_frames_through_the_ring() -> None:
    rec = Recorder()
    sirq = Softirq(cpu=0, queues=[0], ring_size=3, sysctls=SYSCTLS,
                   local_addrs=frozenset({LOCAL}), observer=rec)
    assert sirq.rx_dma(0, [wire_frame(1), b"bad"], 0, ids=[11, 12]) == 2
    assert sirq.rx_dma(0, [wire_frame(2), wire_frame(3)], 0, ids=[13, 14]) == 1
    out = sirq.rx_irq(0, 0)
    assert isinstance(out[0], RcvBatch) and out[0].ids == [11, 13]
    assert sirq.rcv_done(out[0].batch, 1) == [Refill(0, 3), Unmask(0)]
    assert rec.events == [
        ("dma", 0, [], 2), ("dma", 0, [14], 3), ("hardirq", 0),
        ("poll", [11, 13], [12], True), ("done", True, True, False)]
