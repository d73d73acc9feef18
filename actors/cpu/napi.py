"""One CPU's hardirq and NET_RX softirq as a pure state machine.

The RX rings of the queues this CPU owns live here (host memory): the nic's DMA
appends frames to a ring, its IRQ runs :meth:`Softirq.hardirq` (``napi_schedule``),
and ``net_rx_action`` walks the per-CPU ``poll_list`` calling ``napi_poll`` for
each scheduled NAPI.

A poll is two steps because the frames are handed to the stack actor as one batch
and the softirq is busy until the stack answers:

* :meth:`Softirq.start_poll` takes up to ``weight`` frames off the next NAPI's
  ring (starting a new ``net_rx_action`` run with a fresh budget and time limit
  if none is in progress) and returns them as a :class:`Poll`;
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
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from actors.cpu.softnet import SoftnetData, format_softnet_line
from actors.profiles import US, Profile, Sysctls


@dataclass(frozen=True, slots=True)
class Poll:
    """One ``napi_poll`` in flight: the batch of frames handed to the stack."""

    queue: int
    frames: tuple[bytes, ...]
    weight: int
    run: int  # which net_rx_action run this poll belongs to (1-based)
    budget_left: int  # the run's remaining budget before this poll
    time_limit: int  # the run's deadline (ns)
    started_at: int
    epoch: int  # Softirq.reset() generation; a poll from before a reset is stale

    @property
    def work(self) -> int:
        return len(self.frames)


@dataclass(frozen=True, slots=True)
class Refill:
    """The driver posted ``n`` fresh descriptors on ``queue``: ``n`` credits back to the nic."""

    queue: int
    n: int


@dataclass(frozen=True, slots=True)
class Unmask:
    """``napi_complete_done`` succeeded: the driver re-enables ``queue``'s interrupt."""

    queue: int


CpuOutput = Refill | Unmask


@dataclass(slots=True)
class Napi:
    """The ``napi_struct`` of one RX queue plus that queue's ring contents."""

    queue: int
    ring: deque[bytes] = field(default_factory=deque)  # DMA'd, not yet polled
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
    ) -> None:
        """``weight`` defaults to ``sysctls.dev_weight`` (64, NAPI_POLL_WEIGHT).

        ``rescan_poll_list``: modern ``net_rx_action`` goes back to ``start`` (same
        budget, same time limit) when its list and repoll list are empty but new NAPIs
        were scheduled meanwhile; legacy (4.13) ends the run and lets the re-raised
        softirq start a new one.
        """
        self.cpu = cpu
        self.ring_size = ring_size
        self.weight = sysctls.dev_weight if weight is None else weight
        self.netdev_budget = sysctls.netdev_budget
        self.netdev_budget_usecs = sysctls.netdev_budget_usecs
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
        self.frames_lost_in_reset = 0

    # -- from the nic -----------------------------------------------------------------------

    def _napi(self, queue: int) -> Napi:
        try:
            return self.napis[queue]
        except KeyError:
            raise ValueError(f"cpu {self.cpu} does not own RX queue {queue}") from None

    def dma(self, queue: int, frame: bytes, now: int) -> bool:
        """The nic wrote ``frame`` into the next descriptor of ``queue``'s ring."""
        napi = self._napi(queue)
        if len(napi.ring) + napi.in_flight >= self.ring_size:
            self.dma_overruns += 1
            return False
        napi.ring.append(frame)
        return True

    def hardirq(self, queue: int, now: int) -> bool:
        """The queue's IRQ handler: ``napi_schedule``. True if the NAPI was newly scheduled.

        The nic masked the vector when it raised it (MSI-X auto-mask), so there is
        nothing to mask here.
        """
        napi = self._napi(queue)
        napi.irqs += 1
        self.irqs += 1
        return self._napi_schedule(napi)

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

    def start_poll(self, now: int) -> Poll | None:
        """Begin the next ``napi_poll``; None when no NAPI is scheduled.

        A poll with no frames (a spurious interrupt) is still a poll: finish it at once.
        """
        if self._current is not None:
            raise RuntimeError("a napi_poll is already in flight; call finish_poll first")
        if not self.in_run:
            if not self.poll_list:
                return None
            self._begin_run(now)
        queue = self._run_list.popleft()
        napi = self.napis[queue]
        n = min(self.weight, len(napi.ring))
        frames = tuple(napi.ring.popleft() for _ in range(n))
        napi.in_flight += n
        napi.polls += 1
        napi.frames_polled += n
        self.polls += 1
        # processed is bumped in __netif_receive_skb_core, i.e. as each frame goes up.
        self.softnet.processed += n
        poll = Poll(
            queue=queue, frames=frames, weight=self.weight, run=self.net_rx_action_runs,
            budget_left=self._budget, time_limit=self._time_limit, started_at=now,
            epoch=self._epoch,
        )
        self._current = poll
        return poll

    def finish_poll(self, poll: Poll, now: int) -> list[CpuOutput]:
        """The stack has answered for ``poll``: refill, complete or repoll, check budget/time."""
        if self._current is None or poll != self._current:
            self.stale_finishes += 1
            return []
        self._current = None
        napi = self.napis[poll.queue]
        work = poll.work
        napi.in_flight -= work
        out: list[CpuOutput] = []
        if work:
            out.append(Refill(poll.queue, work))
        if work < poll.weight:
            out.extend(self._napi_complete_done(napi))
        else:
            # Whole weight used: the NAPI stays scheduled and is polled again in a later run.
            self._repoll.append(poll.queue)
            self.repolls += 1
        self._budget -= work
        if self._budget <= 0 or now >= self._time_limit:
            self.softnet.time_squeeze += 1
            self._end_run()
        elif not self._run_list:
            if not self._repoll and self.rescan_poll_list and self.poll_list:
                # Modern: `goto start` — NAPIs scheduled during the run join it.
                self._run_list.extend(self.poll_list)
                self.poll_list.clear()
            else:
                self._end_run()
        return out

    def _napi_complete_done(self, napi: Napi) -> list[CpuOutput]:
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
        # The kernel converts to jiffies; the model keeps the limit in ns.
        self._time_limit = now + self.netdev_budget_usecs * US
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
