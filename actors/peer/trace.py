"""The peer's trace: run-unique flow ids for the frames it puts on the wire, a slice per
wire send, and the ACKs' end point when they come back."""

from __future__ import annotations

from collections.abc import Callable

from actors.peer.congestion import TCP_INFINITE_SSTHRESH
from actors.peer.host import Peer
from actors.runtime.trace import HOP_END, HOP_SOURCE, ORIGIN_PEER, FlowIds, TraceWriter
from protocol.wire import MalformedPacket, decode_ipv4, decode_tcp

# What the wire did, in words (the impairments' counter names are for counting).
_WIRE_WORDS = {"scripted_dropped": "dropped (scripted)", "scripted_duplicated":
               "duplicated (scripted)", "scripted_corrupted": "corrupted (scripted)",
               "scripted_delayed": "delayed (scripted)"}


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

    def wire_decisions(self, decisions: list[tuple[int, bytes, tuple[str, ...]]]) -> None:
        """A zero-length slice per frame the wire impaired (lost, duplicated, corrupted,
        reordered, held), naming the segment, so a segment's story can say what the wire
        did to it (``rxpath explain``). Impaired frames are few: this stays cheap."""
        for t, frame, what in decisions:
            words = [_WIRE_WORDS.get(w, w) for w in what]
            args: dict[str, object] = {"wire": words}
            try:
                seg = decode_tcp(decode_ipv4(frame), verify_checksum=False)
                args.update(sport=seg.sport, seq=seg.seq, len=len(seg.payload))
            except MalformedPacket:
                pass
            self.trace.complete("wire: " + ", ".join(words), t, t, "wire", args=args)
            if "lost" in what or "scripted_dropped" in what:
                self.trace.instant("drop: wire " + words[0], t, "drops", args=args)
        decisions.clear()

    def sender_samples(self, peer: Peer, now: int) -> None:
        """Each flow's sender state as counter tracks (``<flow> cwnd``, ``ssthresh``, ``in
        flight``, ``srtt``), sampled when it changed: the sender panel of ``rxpath report``.
        ssthresh is left out while it is still "infinite" (before the first loss). Only
        the flows that handled an event since the last call can have changed."""
        for key, sender in peer.take_touched():
            if not sender.opened:
                continue
            values: dict[str, int] = {"cwnd/segments": sender.cc.cwnd,
                                      "in flight/segments": sender.sb.in_flight,
                                      "srtt/us": sender.rtt.srtt // 1000}
            if sender.cc.ssthresh < TCP_INFINITE_SSTHRESH:
                values["ssthresh/segments"] = sender.cc.ssthresh
            self.trace.counter(peer.names[key], now, values)
