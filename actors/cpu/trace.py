"""The cpu's trace: a :class:`~actors.cpu.napi.SoftirqObserver` that turns the softirq's
events into trace records (hardirq and dma-overrun slices, ``net_rx_action`` and
``napi_poll`` slices carrying each frame's flow point, ring occupancy counters).

Slices end at the process clock when the record is made, so a slice shows the real time
the work took in this process (the model itself only sees the ``now`` it is given).
"""

from __future__ import annotations

from collections.abc import Callable

from actors.cpu.napi import Poll
from actors.runtime.trace import HOP_END, HOP_NAPI, TraceWriter

TID = "cpu"
_RUN = "net_rx_action"
_POLL = "napi_poll"


class SoftirqTrace:
    """Records one cpu's softirq into ``trace`` (only built when tracing is on)."""

    def __init__(self, trace: TraceWriter, clock: Callable[[], int]) -> None:
        self.trace = trace
        self.clock = clock

    def dma(self, queue: int, overrun_ids: list[int], ring_len: int, now: int) -> None:
        if overrun_ids:
            self.trace.complete("dma overrun", now, self.clock(), TID,
                                args={"queue": queue, "frames": len(overrun_ids)},
                                flows=[[HOP_END, overrun_ids]])
            for fid in overrun_ids:
                self.trace.instant("drop: dma overrun", now, "drops",
                                   args={"reason": "ring overrun", "queue": queue, "id": fid})
        self.trace.counter(f"ring q{queue}", now, {"frames to poll": ring_len})

    def hardirq(self, queue: int, now: int) -> None:
        self.trace.complete("hardirq", now, self.clock(), TID, args={"queue": queue})

    def poll_started(self, poll: Poll, new_run: bool, budget: int, ring_len: int,
                     now: int) -> None:
        t = self.clock()
        trace = self.trace
        if new_run:
            trace.begin(_RUN, _RUN, t, TID, args={"budget": budget})
        args: dict[str, object] = {"queue": poll.queue, "work": poll.work,
                                   "weight": poll.weight}
        merged = poll.merged_ids()
        if merged:
            # Their journey ends here as frames: each goes up inside a GRO skb that
            # carries an earlier frame's id.
            args["gro_skbs"] = len(poll.delivered)
            args["gro_merged"] = merged
        trace.begin(_POLL, _POLL, t, TID, args=args)
        trace.counter(f"ring q{poll.queue}", t, {"frames to poll": ring_len})
        trace.add_flows(_POLL, HOP_NAPI, poll.delivered_ids())
        trace.add_flows(_POLL, HOP_END, poll.dropped_ids())
        trace.add_flows(_POLL, HOP_END, merged)
        for i, reason in poll.drops:  # ip_rcv's drops, one instant each
            trace.instant("drop: " + reason, t, "drops", args={
                "reason": "SKB_DROP_REASON_" + reason,
                "id": poll.ids[i] if poll.ids is not None else None})

    def poll_finished(self, poll: Poll, completed: bool, run_ended: bool, squeezed: bool,
                      now: int) -> None:
        t = self.clock()
        self.trace.end(_POLL, t, args={"napi_complete_done": completed})
        if run_ended:
            self.trace.end(_RUN, t, args={"time_squeeze": squeezed})
