"""One CPU's hardirq and NET_RX softirq as a pure state machine.

The RX rings of the queues this CPU owns live here (host memory): the nic's DMA
appends frames to a ring, its IRQ runs :meth:`Softirq.hardirq` (``napi_schedule``),
and ``net_rx_action`` walks the per-CPU ``poll_list`` calling ``napi_poll`` for
each scheduled NAPI.

A poll is two steps because the frames are handed to the stack actor as one batch
and the softirq is busy until the stack answers:

* :meth:`Softirq.start_poll` takes up to ``weight`` frames off the next NAPI's
  ring (starting a new ``net_rx_action`` run with a fresh budget and time limit
  if none is in progress), runs each through ``ip_rcv`` (:mod:`actors.cpu.ip_rcv`,
  counting into this CPU's IP MIB) and returns them as a :class:`Poll`: the frames
  taken, those delivered to ``tcp_v4_rcv`` and the drops;
* :meth:`Softirq.finish_poll`, called with ``now`` once the stack has answered,
  refills the descriptors (``Refill``: credits back to the nic), and either calls
  ``napi_complete_done`` and re-enables the queue's IRQ (``Unmask``) when the poll
  used less than its weight, or leaves the NAPI scheduled for a repoll. It then
  applies ``net_rx_action``'s exit test: budget spent (``budget <= 0``) or time
  limit reached → ``time_squeeze++`` and the run ends with the rest put back on
  ``poll_list`` (the softirq is re-raised: the next ``start_poll`` begins a new run).

As in the kernel, a poll always gets the NAPI's full weight, even when less
budget remains, so a run may overshoot ``netdev_budget`` by up to ``weight - 1``;
and a NAPI that used its whole weight goes on the run's ``repoll`` list, which is
put back behind everything else only when the run ends: a run polls each NAPI at
most once.

The message-level entry points drive those steps the way the cpu process needs:
:meth:`Softirq.rx_dma`, :meth:`Softirq.rx_irq`, :meth:`Softirq.rcv_done` and
:meth:`Softirq.stack_lost` return what to send (:class:`Spend` the emulated cost,
:class:`RcvBatch` to the stack, :class:`Refill` / :class:`Unmask` to the nic), and
``net_rx_action`` keeps polling until a batch is with the stack or nothing is
scheduled. Trace ids, when the nic sent them, travel with their frames through the
ring; an optional :class:`SoftirqObserver` hears what happened (the trace).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from actors.cpu.gro import napi_gro_receive
from actors.cpu.ip_rcv import ip_rcv
from actors.cpu.softnet import SoftnetData, format_softnet_line
from actors.mib import Mib
from actors.profiles import Profile, Sysctls, jiffy_ns, usecs_to_jiffies
from protocol.envelope import MalformedMessage
from protocol.messages import check_gso

NO_TRACE_ID = -1  # a frame whose sender gave it no trace id


def net_rx_action_time_limit(now: int, budget_usecs: int, hz: int) -> int:
    """net_rx_action's ``time_limit = jiffies + usecs_to_jiffies(netdev_budget_usecs)``
    (4.12+, so 4.13 and 6.18 alike), as the ns at which that jiffy begins: the run is
    squeezed once ``time_after_eq(jiffies, time_limit)``. usecs_to_jiffies rounds up, so
    at HZ=250 4.13's 2000 us is one jiffy, which lasts from a moment to 4 ms depending on
    where in its jiffy the run began; 6.18's 2 jiffies, 4 to 8 ms."""
    j = jiffy_ns(hz)
    return (now // j + usecs_to_jiffies(budget_usecs, hz)) * j


@dataclass(frozen=True, slots=True, eq=False)
class Poll:
    """One ``napi_poll`` in flight: the frames taken off the ring and what ip_rcv made of
    them. Compared by identity: a poll is one event, not a value."""

    queue: int
    frames: tuple[bytes, ...]
    weight: int
    run: int  # which net_rx_action run this poll belongs to (1-based)
    budget_left: int  # the run's remaining budget before this poll
    time_limit: int  # the run's deadline (ns)
    started_at: int
    epoch: int  # Softirq.reset() generation; a poll from before a reset is stale
    delivered: list[bytes] = field(default_factory=list)  # passed ip_rcv: for tcp_v4_rcv
    drops: list[tuple[int, str]] = field(default_factory=list)  # (index in frames, reason)
    ids: list[int] | None = None  # trace ids of ``frames``, when the nic sent them
    gso: list[int] | None = None  # GSO sizes of ``frames`` (0: none), when any has one
    batch: int = 0  # the rcv_batch id of ``delivered`` (0: nothing delivered)
    cost_ns: int = 0  # emulated softirq work for these frames
    # With GRO, per delivered skb: the wire frames it holds (NAPI_GRO_CB(skb)->count),
    # its trace id and GSO size; and the ids of frames merged into another's.
    up_segs: list[int] | None = None  # None: one wire frame per delivered skb (no GRO)
    up_ids: list[int] | None = None
    up_gso: list[int] | None = None
    merged: list[int] | None = None

    @property
    def wire_frames_up(self) -> int:
        """Wire frames handed to the stack (a merged skb carries several)."""
        return len(self.delivered) if self.up_segs is None else sum(self.up_segs)

    def delivered_segs(self) -> list[int] | None:
        """Wire frames per delivered skb; None when each is one."""
        segs = self.up_segs
        return segs if segs is not None and max(segs, default=1) > 1 else None

    @property
    def work(self) -> int:
        return len(self.frames)

    def delivered_ids(self) -> list[int]:
        """Trace ids of the delivered frames (tracing only)."""
        if self.ids is None:
            return []
        if self.up_ids is not None:
            return self.up_ids
        if not self.drops:
            return self.ids
        dropped = {i for i, _ in self.drops}
        return [fid for i, fid in enumerate(self.ids) if i not in dropped]

    def dropped_ids(self) -> list[int]:
        return [] if self.ids is None else [self.ids[i] for i, _ in self.drops]

    def merged_ids(self) -> list[int]:
        """Trace ids of frames GRO merged into an skb that went up under another's id."""
        return [] if self.ids is None or not self.merged else [self.ids[i] for i in self.merged]

    def delivered_gso(self) -> list[int] | None:
        """GSO sizes of the delivered frames; None when none of them has one."""
        if self.up_gso is not None:
            return self.up_gso if any(self.up_gso) else None
        if self.gso is None:
            return None
        gso = self.gso
        if self.drops:
            dropped = {i for i, _ in self.drops}
            gso = [g for i, g in enumerate(gso) if i not in dropped]
        return gso if any(gso) else None


@dataclass(frozen=True, slots=True)
class Refill:
    """The driver posted ``n`` fresh descriptors on ``queue``: ``n`` credits back to the nic."""

    queue: int
    n: int


@dataclass(frozen=True, slots=True)
class Unmask:
    """``napi_complete_done`` succeeded: the driver re-enables ``queue``'s interrupt."""

    queue: int


@dataclass(frozen=True, slots=True)
class RcvBatch:
    """Hand a poll's delivered frames to the stack (``tcp_v4_rcv`` each, in order); the
    softirq stays busy until the stack answers ``batch``."""

    batch: int
    frames: list[bytes]
    ids: list[int] | None = None  # trace ids, when tracing
    gso: list[int] | None = None  # GSO sizes (0: none), when some frame has one
    segs: list[int] | None = None  # wire frames per frame, when some GRO skb holds several


@dataclass(frozen=True, slots=True)
class Spend:
    """Burn ``ns`` of CPU: the configured cost of the softirq work just done."""

    ns: int


ToNic = Refill | Unmask
CpuOutput = ToNic | RcvBatch | Spend


class SoftirqObserver(Protocol):
    """What a trace of the softirq hears (the model calls these only when one is set)."""

    def dma(self, queue: int, overrun_ids: list[int], ring_len: int, now: int) -> None: ...

    def hardirq(self, queue: int, now: int) -> None: ...

    def poll_started(self, poll: Poll, new_run: bool, budget: int, ring_len: int,
                     now: int) -> None: ...

    def poll_finished(self, poll: Poll, completed: bool, run_ended: bool,
                      squeezed: bool, now: int) -> None: ...


@dataclass(slots=True)
class Napi:
    """The ``napi_struct`` of one RX queue plus that queue's ring contents."""

    queue: int
    ring: deque[bytes] = field(default_factory=deque)  # DMA'd, not yet polled
    ring_ids: deque[int] = field(default_factory=deque)  # their trace ids, when traced
    # GSO sizes of frames in the ring, by position (frames ever put in the ring before
    # it): sparse, so frames without one cost nothing.
    ring_gso: dict[int, int] = field(default_factory=dict)
    ring_in: int = 0  # frames ever put in the ring
    ring_out: int = 0  # frames ever taken off it
    in_flight: int = 0  # polled and handed up; descriptors not yet refilled
    scheduled: bool = False  # NAPI_STATE_SCHED
    missed: bool = False  # NAPI_STATE_MISSED: scheduled again while already scheduled
    irqs: int = 0
    polls: int = 0
    frames_polled: int = 0
    completions: int = 0  # successful napi_complete_done


class Softirq:
    """hardirq + ``net_rx_action``/``napi_poll`` for the RX queues one CPU owns."""

    def __init__(
        self,
        cpu: int,
        queues: Iterable[int],
        ring_size: int,
        sysctls: Sysctls,
        *,
        weight: int | None = None,
        rescan_poll_list: bool = True,
        local_addrs: frozenset[str] = frozenset(),
        cost: tuple[float, float] = (0.0, 0.0),
        batch_base: int = 0,
        gro: bool = False,
        observer: SoftirqObserver | None = None,
    ) -> None:
        """``weight`` defaults to ``sysctls.dev_weight`` (64, NAPI_POLL_WEIGHT).

        ``rescan_poll_list``: modern ``net_rx_action`` goes back to ``start`` (same
        budget, same time limit) when its list and repoll list are empty but new NAPIs
        were scheduled meanwhile; legacy (4.13) ends the run and lets the re-raised
        softirq start a new one.

        ``local_addrs`` are the host's addresses (``ip_rcv`` delivers only to them);
        ``cost`` is (µs per frame, ns per byte) of emulated softirq work; batch ids
        start after ``batch_base``, so two incarnations of a cpu never share one (an
        answer meant for the previous life cannot match a batch of this one). ``gro``:
        the device has generic receive offload on (:mod:`actors.cpu.gro`).
        """
        self.cpu = cpu
        self.ring_size = ring_size
        self.weight = sysctls.dev_weight if weight is None else weight
        self.netdev_budget = sysctls.netdev_budget
        self.netdev_budget_usecs = sysctls.netdev_budget_usecs
        self.hz = sysctls.hz
        self.rescan_poll_list = rescan_poll_list
        if ring_size < 1 or self.weight < 1 or self.netdev_budget < 1:
            raise ValueError("ring_size, weight and netdev_budget must be >= 1")
        if self.netdev_budget_usecs < 0:
            raise ValueError("netdev_budget_usecs must be >= 0")
        self.napis: dict[int, Napi] = {q: Napi(q) for q in queues}
        if not self.napis:
            raise ValueError("a cpu needs at least one RX queue")
        self.softnet = SoftnetData(cpu)
        self.poll_list: deque[int] = deque()  # softnet_data.poll_list (queue numbers)
        # The current net_rx_action run (its local `list` and `repoll`).
        self.in_run = False
        self._run_list: deque[int] = deque()
        self._repoll: list[int] = []
        self._budget = 0
        self._time_limit = 0
        self._current: Poll | None = None
        self._epoch = 0
        # Counters beyond softnet_stat (plain names: not kernel counters).
        self.irqs = 0
        self.net_rx_action_runs = 0
        self.polls = 0
        self.repolls = 0
        self.dma_overruns = 0  # DMA into a full ring: cannot happen while credits are honoured
        self.stale_finishes = 0  # finish_poll for a poll that is not the one in flight
        self.stale_rcv_done = 0  # rcv_done for a batch that is not the one in flight
        self.frames_lost_in_reset = 0
        self.frames_in = 0  # DMA'd to this cpu (accepted or not)
        self.frames_to_stack = 0  # delivered by ip_rcv, handed to the stack
        self.frames_abandoned = 0  # handed to a stack that died before answering
        # The IP layer: ip_rcv counts into the IP MIB; drops by SKB_DROP_REASON name.
        self.local_addrs = local_addrs
        self.mib = Mib()
        self.ip_drops: dict[str, int] = {}
        self._cost_us, self._cost_per_byte_ns = cost
        self._batches = itertools.count(batch_base + 1)
        self.gro = gro
        self.gro_merged = 0  # frames that went up inside another frame's GRO skb
        self.observer = observer

    # -- from the nic -----------------------------------------------------------------------

    def _napi(self, queue: int) -> Napi:
        try:
            return self.napis[queue]
        except KeyError:
            raise MalformedMessage(
                "foreign_queue", f"cpu {self.cpu} does not own RX queue {queue}") from None

    def rx_dma(self, queue: int, frames: Sequence[bytes], now: int,
               ids: Sequence[int] | None = None, gso: Sequence[int] | None = None) -> int:
        """The nic wrote ``frames`` into the next descriptors of ``queue``'s ring; returns
        how many fitted (the rest overran the ring). ``ids``: their trace ids; ``gso``:
        their GSO sizes (0: none), kept with each frame up to the stack. A ``gso`` list
        that does not give one size per frame raises MalformedMessage, ring untouched."""
        napi = self._napi(queue)
        n = len(frames)
        check_gso(gso, n)
        self.frames_in += n
        room = max(self.ring_size - len(napi.ring) - napi.in_flight, 0)
        taken = min(n, room)
        napi.ring.extend(frames if taken == n else frames[:taken])
        if gso is not None:
            base = napi.ring_in
            for i in range(taken):
                if gso[i]:
                    napi.ring_gso[base + i] = gso[i]
        napi.ring_in += taken
        if taken < n:
            self.dma_overruns += n - taken
        obs = self.observer
        if obs is not None:
            tags = list(ids) if ids is not None and len(ids) == n else [NO_TRACE_ID] * n
            napi.ring_ids.extend(tags[:taken])
            obs.dma(queue, tags[taken:], len(napi.ring), now)
        return taken

    def dma(self, queue: int, frame: bytes, now: int) -> bool:
        """The nic wrote ``frame`` into the next descriptor of ``queue``'s ring."""
        return self.rx_dma(queue, (frame,), now) == 1

    def hardirq(self, queue: int, now: int) -> bool:
        """The queue's IRQ handler: ``napi_schedule``. True if the NAPI was newly scheduled.

        The nic masked the vector when it raised it (MSI-X auto-mask), so there is
        nothing to mask here.
        """
        napi = self._napi(queue)
        napi.irqs += 1
        self.irqs += 1
        if self.observer is not None:
            self.observer.hardirq(queue, now)
        return self._napi_schedule(napi)

    def rx_irq(self, queue: int, now: int) -> list[CpuOutput]:
        """The queue's interrupt: hardirq, then the raised softirq runs."""
        self.hardirq(queue, now)
        return self.net_rx_action(now)

    def _napi_schedule(self, napi: Napi) -> bool:
        if napi.scheduled:
            # napi_schedule_prep: already SCHED → set MISSED so that napi_complete_done
            # reschedules instead of completing.
            napi.missed = True
            return False
        napi.scheduled = True
        self.poll_list.append(napi.queue)
        return True

    # -- net_rx_action ----------------------------------------------------------------------

    @property
    def softirq_pending(self) -> bool:
        """NET_RX_SOFTIRQ is raised: a run is in progress or NAPIs wait on poll_list."""
        return self.in_run or bool(self.poll_list)

    @property
    def busy(self) -> bool:
        """A poll's batch is with the stack and finish_poll has not been called."""
        return self._current is not None

    @property
    def budget_left(self) -> int:
        return self._budget if self.in_run else self.netdev_budget

    def net_rx_action(self, now: int) -> list[CpuOutput]:
        """Poll until a batch is with the stack or nothing is scheduled.

        A poll that delivers nothing (a spurious interrupt, or every frame dropped by
        ip_rcv) is finished at once, its cost counted as time passing.
        """
        out: list[CpuOutput] = []
        while self._current is None and self.softirq_pending:
            poll = self.start_poll(now)
            if poll is None:
                break
            if poll.cost_ns:
                out.append(Spend(poll.cost_ns))
                now += poll.cost_ns
            if poll.batch:
                out.append(RcvBatch(poll.batch, poll.delivered,
                                    None if poll.ids is None else poll.delivered_ids(),
                                    poll.delivered_gso(), poll.delivered_segs()))
                break
            out += self.finish_poll(poll, now)
        return out

    def rcv_done(self, batch: int, now: int) -> list[CpuOutput]:
        """The stack ran ``tcp_v4_rcv`` on every frame of ``batch``: the poll ends and the
        softirq goes on. An answer for any other batch is stale (the stack restarted, or
        it answers a previous life of this cpu) and is counted."""
        poll = self._current
        if poll is None or poll.batch != batch:
            self.stale_rcv_done += 1
            return []
        out: list[CpuOutput] = [*self.finish_poll(poll, now)]
        out += self.net_rx_action(now)
        return out

    def stack_lost(self, now: int) -> list[CpuOutput]:
        """The stack died with our batch: it will never answer. Its frames are lost (TCP
        retransmits them); the descriptors are refilled as after any poll."""
        poll = self._current
        if poll is None:
            return []
        self.frames_abandoned += poll.wire_frames_up
        out: list[CpuOutput] = [*self.finish_poll(poll, now)]
        out += self.net_rx_action(now)
        return out

    def start_poll(self, now: int) -> Poll | None:
        """Begin the next ``napi_poll``: take up to ``weight`` frames and run ``ip_rcv``
        on each; None when no NAPI is scheduled.

        A poll with no frames (a spurious interrupt) is still a poll: finish it at once.
        """
        if self._current is not None:
            raise RuntimeError("a napi_poll is already in flight; call finish_poll first")
        new_run = not self.in_run
        if new_run:
            if not self.poll_list:
                return None
            self._begin_run(now)
        queue = self._run_list.popleft()
        napi = self.napis[queue]
        n = min(self.weight, len(napi.ring))
        ring = napi.ring
        frames = tuple(ring.popleft() for _ in range(n))
        gso: list[int] | None = None
        if napi.ring_gso:
            first, pop = napi.ring_out, napi.ring_gso.pop
            gso = [pop(first + i, 0) for i in range(n)]
        napi.ring_out += n
        napi.in_flight += n
        napi.polls += 1
        napi.frames_polled += n
        self.polls += 1
        if self.gro:
            return self._start_gro_poll(now, new_run, queue, napi, frames, gso)
        # processed is bumped in __netif_receive_skb_core, i.e. as each frame goes up.
        self.softnet.processed += n
        delivered: list[bytes] = []
        drops: list[tuple[int, str]] = []
        mib = self.mib
        local = self.local_addrs
        for i, frame in enumerate(frames):
            res = ip_rcv(frame, mib, local)
            if res.packet is not None:
                delivered.append(frame)
            else:
                self._ip_drop(drops, (i,), res.drop_reason)
        return self._begin_poll(now, new_run, queue, napi, frames, gso, delivered, drops)

    def _start_gro_poll(self, now: int, new_run: bool, queue: int, napi: Napi,
                        frames: tuple[bytes, ...], gso: list[int] | None) -> Poll:
        """start_poll with GRO: napi_gro_receive merges the frames into skbs, and each
        skb goes through ip_rcv (and counts as processed) as it leaves GRO."""
        skbs = napi_gro_receive(frames, None if gso is None else [bool(g) for g in gso])
        self.softnet.processed += len(skbs)
        delivered: list[bytes] = []
        drops: list[tuple[int, str]] = []
        up_gso: list[int] = []
        up_first: list[int] = []
        up_segs: list[int] = []
        merged: list[int] = []
        mib, local = self.mib, self.local_addrs
        for skb in skbs:
            res = ip_rcv(skb.frame, mib, local)
            first = skb.indices[0]
            if res.packet is not None:
                delivered.append(skb.frame)
                up_gso.append(skb.gso_size or (gso[first] if gso is not None else 0))
                up_first.append(first)
                up_segs.append(len(skb.indices))
                merged += skb.indices[1:]
            else:  # every wire frame of a dropped skb is a drop
                self._ip_drop(drops, skb.indices, res.drop_reason)
        self.gro_merged += len(merged)
        return self._begin_poll(now, new_run, queue, napi, frames, gso, delivered, drops,
                                up_segs=up_segs, up_gso=up_gso, up_first=up_first,
                                merged=merged)

    def _ip_drop(self, drops: list[tuple[int, str]], indices: Sequence[int],
                 reason: str | None) -> None:
        """ip_rcv dropped the frames at ``indices`` of the poll: counted by reason."""
        reason = reason or "IP"
        self.ip_drops[reason] = self.ip_drops.get(reason, 0) + len(indices)
        drops.extend((i, reason) for i in indices)

    def _begin_poll(self, now: int, new_run: bool, queue: int, napi: Napi,
                    frames: tuple[bytes, ...], gso: list[int] | None, delivered: list[bytes],
                    drops: list[tuple[int, str]], *, up_segs: list[int] | None = None,
                    up_gso: list[int] | None = None, up_first: list[int] | None = None,
                    merged: list[int] | None = None) -> Poll:
        """The poll's cost, trace ids and batch id; it becomes the one in flight."""
        n = len(frames)
        ring = napi.ring
        cost = 0
        if self._cost_us or self._cost_per_byte_ns:
            per_frame = self._cost_us * 1000
            per_byte = self._cost_per_byte_ns
            cost = sum(int(per_frame + per_byte * len(f)) for f in frames)
        ids: list[int] | None = None
        if self.observer is not None:
            tags = napi.ring_ids
            ids = [tags.popleft() if tags else NO_TRACE_ID for _ in range(n)]
        up_ids = None if ids is None or up_first is None else [ids[i] for i in up_first]
        batch = next(self._batches) if delivered else 0
        poll = Poll(
            queue=queue, frames=frames, weight=self.weight, run=self.net_rx_action_runs,
            budget_left=self._budget, time_limit=self._time_limit, started_at=now,
            epoch=self._epoch, delivered=delivered, drops=drops, ids=ids, gso=gso,
            batch=batch, cost_ns=cost, up_segs=up_segs, up_ids=up_ids, up_gso=up_gso,
            merged=merged,
        )
        self.frames_to_stack += poll.wire_frames_up
        self._current = poll
        if self.observer is not None:
            self.observer.poll_started(poll, new_run, self.netdev_budget, len(ring), now)
        return poll

    def finish_poll(self, poll: Poll, now: int) -> list[ToNic]:
        """The stack has answered for ``poll``: refill, complete or repoll, check budget/time."""
        if self._current is None or poll is not self._current:
            self.stale_finishes += 1
            return []
        self._current = None
        napi = self.napis[poll.queue]
        work = poll.work
        napi.in_flight -= work
        out: list[ToNic] = []
        if work:
            out.append(Refill(poll.queue, work))
        if work < poll.weight:
            out.extend(self._napi_complete_done(napi))
        else:
            # Whole weight used: the NAPI stays scheduled and is polled again in a later run.
            self._repoll.append(poll.queue)
            self.repolls += 1
        self._budget -= work
        squeezed = False
        if self._budget <= 0 or now >= self._time_limit:
            self.softnet.time_squeeze += 1
            squeezed = True
            self._end_run()
        elif not self._run_list:
            if not self._repoll and self.rescan_poll_list and self.poll_list:
                # Modern: `goto start` — NAPIs scheduled during the run join it.
                self._run_list.extend(self.poll_list)
                self.poll_list.clear()
            else:
                self._end_run()
        if self.observer is not None:
            completed = any(isinstance(o, Unmask) for o in out)
            self.observer.poll_finished(poll, completed, not self.in_run, squeezed, now)
        return out

    def _napi_complete_done(self, napi: Napi) -> list[ToNic]:
        if napi.missed:
            # An IRQ came while we polled: stay SCHED, go back on poll_list, keep masked.
            napi.missed = False
            self.poll_list.append(napi.queue)
            return []
        napi.scheduled = False
        napi.completions += 1
        return [Unmask(napi.queue)]

    def _begin_run(self, now: int) -> None:
        self.in_run = True
        self.net_rx_action_runs += 1
        self._budget = self.netdev_budget
        self._time_limit = net_rx_action_time_limit(now, self.netdev_budget_usecs, self.hz)
        self._run_list = self.poll_list
        self.poll_list = deque()
        self._repoll = []

    def _end_run(self) -> None:
        # list_splice_tail_init(poll_list, list); list_splice_tail(repoll, list):
        # unpolled NAPIs first, then those scheduled during the run, then the repolls.
        remaining = self._run_list
        remaining.extend(self.poll_list)
        remaining.extend(self._repoll)
        self.poll_list = remaining
        self._run_list = deque()
        self._repoll = []
        self.in_run = False

    # -- crash ------------------------------------------------------------------------------

    def reset(self) -> int:
        """The CPU restarted: rings and NAPI state are gone. Returns the frames discarded.

        Counters are kept so that a run's totals still add up; the nic must be told to
        reset the same queues (all credits back).
        """
        lost = 0
        for napi in self.napis.values():
            lost += len(napi.ring)
            napi.ring.clear()
            napi.ring_ids.clear()
            napi.ring_gso.clear()
            napi.ring_out = napi.ring_in
            napi.in_flight = 0
            napi.scheduled = False
            napi.missed = False
        self.frames_lost_in_reset += lost
        self.poll_list = deque()
        self._run_list = deque()
        self._repoll = []
        self.in_run = False
        self._current = None
        self._epoch += 1
        return lost

    # -- introspection ----------------------------------------------------------------------

    def ring_len(self, queue: int) -> int:
        return len(self._napi(queue).ring)

    def in_flight(self, queue: int) -> int:
        return self._napi(queue).in_flight

    def frames_in_rings(self) -> int:
        return sum(len(n.ring) for n in self.napis.values())

    def scheduled(self, queue: int) -> bool:
        return self._napi(queue).scheduled

    def softnet_stat(self, profile: Profile) -> list[int]:
        """This CPU's ``/proc/net/softnet_stat`` columns for ``profile`` (11 or 15)."""
        return self.softnet.columns(profile)

    def softnet_stat_line(self, profile: Profile) -> str:
        return format_softnet_line(self.softnet_stat(profile))

    def stats(self, profile: Profile) -> dict[str, object]:
        """Every counter of this cpu: the IP MIB, softnet_stat, ip_rcv drops by reason and
        the frame accounting the run's conservation check adds up."""
        current = self._current
        return {
            "mib": dict(self.mib.nonzero()),
            "softnet_stat": self.softnet_stat(profile),
            "irqs": self.irqs, "polls": self.polls,
            "net_rx_action_runs": self.net_rx_action_runs, "repolls": self.repolls,
            "ip_drops": dict(self.ip_drops),
            "frames_in": self.frames_in, "frames_to_stack": self.frames_to_stack,
            "frames_abandoned": self.frames_abandoned,
            "gro_merged": self.gro_merged,
            "dma_overruns": self.dma_overruns, "frames_lost_in_reset": self.frames_lost_in_reset,
            "stale_rcv_done": self.stale_rcv_done,
            "ring_frames": self.frames_in_rings(),
            "in_flight_frames": current.wire_frames_up if current is not None else 0,
        }
