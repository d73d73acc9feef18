"""The peer's trace: run-unique flow ids for the frames it puts on the wire, a slice per
wire send, and the ACKs' end point when they come back."""

from __future__ import annotations

from collections.abc import Callable

from actors.runtime.trace import HOP_END, HOP_SOURCE, ORIGIN_PEER, FlowIds, TraceWriter


class PeerTrace:
    """Records the peer's wire into ``trace`` (only built when tracing is on)."""

    def __init__(self, trace: TraceWriter, clock: Callable[[], int],
                 incarnation: int) -> None:
        self.trace = trace
        self.clock = clock
        self.flow_ids = FlowIds(ORIGIN_PEER, incarnation)

    def new_ids(self, frames: int) -> list[int]:
        """Ids for frames about to leave: they travel with the frames (``ids``)."""
        return self.flow_ids.take(frames)

    def wire_xmit(self, ids: list[int], start: int) -> None:
        self.trace.complete("wire xmit", start, self.clock(), "wire",
                            args={"frames": len(ids)}, flows=[[HOP_SOURCE, ids]])

    def acks_received(self, frames: int, ids: list[int] | None, now: int) -> None:
        self.trace.complete("ACKs received", now, self.clock(), "wire",
                            args={"frames": frames},
                            flows=[[HOP_END, ids]] if ids else None)
