"""The NIC's trace: a :class:`~actors.nic.model.NicObserver` that records each received
burst (its DMA writes and rx_missed drops as flow points), ring occupancy, and TX."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from actors.nic.model import RxQueue
from actors.runtime.trace import HOP_END, HOP_NIC, TraceWriter


class NicTrace:
    """Records the NIC into ``trace`` (only built when tracing is on)."""

    def __init__(self, trace: TraceWriter, clock: Callable[[], int]) -> None:
        self.trace = trace
        self.clock = clock

    def rx_burst(self, frames: int, dma_ids: list[int], missed_ids: list[int], irqs: int,
                 now: int) -> None:
        flows: list[list[object]] = [[hop, ids] for hop, ids in
                                     ((HOP_NIC, dma_ids), (HOP_END, missed_ids)) if ids]
        self.trace.complete("rx: DMA to ring", now, self.clock(), "rx",
                            args={"frames": frames, "rx_missed": len(missed_ids),
                                  "irqs": irqs}, flows=flows)
        for fid in missed_ids:  # no descriptor free: each lost frame is its own moment
            self.trace.instant("drop: rx_missed_errors", now, "drops",
                               args={"reason": "rx_missed_errors (ring full)", "id": fid})

    def rings(self, queues: Sequence[RxQueue], now: int) -> None:
        self.trace.counter("rx ring", now, {f"q{q.index}/descriptors in use":
                                            q.ring_size - q.credits for q in queues})

    def tx(self, ids: list[int], now: int) -> None:
        self.trace.complete("tx", now, self.clock(), "tx", args={"frames": len(ids)},
                            flows=[[HOP_NIC, ids]])
