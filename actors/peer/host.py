"""The remote host: every flow's :class:`~actors.peer.sender.TcpSender` and the wire
between it and the NIC, both directions.

:class:`Peer` takes frames from the receiver (the NIC's TX) and timer firings and
returns the frames to put on the wire towards the NIC *now*: frames the data-path
impairments delay, and ACKs the ACK-path impairments delay, wait in the
:class:`~actors.peer.impairments.WireLink` of their direction, and
:meth:`Peer.next_deadline` says when the next one (or the next flow start or sender
timer) is due.
"""

from __future__ import annotations

from collections.abc import Iterable

from actors.peer.impairments import WireImpairments, WireLink
from actors.peer.sender import SENDER_COUNTERS, FlowKey, TcpSender
from protocol import wire
from protocol.segment import Segment


class Peer:
    """Every flow of one remote host, plus the wire impairments on both directions."""

    def __init__(self, senders: Iterable[TcpSender] = (), *,
                 impairments: WireImpairments | None = None,
                 ack_impairments: WireImpairments | None = None) -> None:
        self.flows: dict[FlowKey, TcpSender] = {}
        self.names: dict[FlowKey, str] = {}
        self.wire = WireLink(impairments)  # towards the NIC
        self.ack_wire = WireLink(ack_impairments) if ack_impairments is not None else None
        self._starts: list[tuple[int, TcpSender]] = []  # (offset from start(), sender)
        self._t0: int | None = None
        self._reported_done = False
        self.counters: dict[str, int] = dict.fromkeys(
            ("frames_in", "bad_frames", "unknown_flow"), 0)
        for sender in senders:
            self.add(sender)

    @property
    def impairments(self) -> WireImpairments:
        return self.wire.impairments

    @property
    def ack_impairments(self) -> WireImpairments | None:
        return None if self.ack_wire is None else self.ack_wire.impairments

    def add(self, sender: TcpSender, *, start_ns: int = 0, name: str | None = None) -> None:
        """A flow that :meth:`start` opens ``start_ns`` after the host starts."""
        key = sender.four_tuple
        if key in self.flows:
            raise ValueError(f"a flow with 4-tuple {key} already exists")
        self.flows[key] = sender
        self.names[key] = name if name is not None else f"flow{sender.flow_id}"
        self._starts.append((start_ns, sender))

    def route(self, seg: Segment) -> TcpSender | None:
        """The flow a segment from the receiver belongs to (its 4-tuple reversed)."""
        return self.flows.get((seg.dst, seg.dport, seg.src, seg.sport))

    @property
    def done(self) -> bool:
        """Every flow has finished (delivered everything, or been aborted)."""
        return all(s.finished for s in self.flows.values())

    def newly_done(self) -> bool:
        """True once: the first time it is asked after every flow finished."""
        if self._reported_done or not self.done:
            return False
        self._reported_done = True
        return True

    def outcomes(self) -> dict[str, str]:
        """Each flow's end: ``"ok"`` or the error that aborted it."""
        return {self.names[k]: s.error or "ok" for k, s in self.flows.items()}

    # -- events ------------------------------------------------------------------------------

    def start(self, now: int) -> list[bytes]:
        """The host starts: flows open at their start offsets from ``now``."""
        self._t0 = now
        out: list[bytes] = []
        self._open_due(now, out)
        return out

    def connect(self, now: int) -> list[bytes]:
        """Open every flow that has not been opened, now."""
        out: list[bytes] = []
        for sender in self.flows.values():
            if not sender.opened:
                self._xmit(sender.connect(now), now, out)
        return out

    def on_frames(self, frames: Iterable[bytes], now: int) -> list[bytes]:
        """Frames from the receiver (the NIC's TX) reached this host's wire."""
        out: list[bytes] = []
        for frame in frames:
            self._arrive(frame, now, out)
        return out

    def on_frame(self, frame: bytes, now: int) -> list[bytes]:
        out: list[bytes] = []
        self._arrive(frame, now, out)
        return out

    def on_segment(self, seg: Segment, now: int) -> list[bytes]:
        """A decoded segment from the receiver (no ACK-path impairment applied)."""
        out: list[bytes] = []
        self._deliver(seg, now, out)
        return out

    def on_timer(self, now: int) -> list[bytes]:
        """Frames whose delivery time came, flows due to open, delayed ACKs, flow timers."""
        out: list[bytes] = []
        self.wire.due(now, out)
        self._open_due(now, out)
        if self.ack_wire is not None:
            arrived: list[bytes] = []
            self.ack_wire.due(now, arrived)
            for frame in arrived:
                self._handle_frame(frame, now, out)
        for sender in self.flows.values():
            deadline = sender.next_deadline()
            if deadline is not None and deadline <= now:
                self._xmit(sender.on_timer(now), now, out)
        return out

    def next_deadline(self) -> int | None:
        # The actor loop asks before every wait: one pass, no lists.
        best = self.wire.next_deadline()
        if self.ack_wire is not None:
            t = self.ack_wire.next_deadline()
            if t is not None and (best is None or t < best):
                best = t
        for sender in self.flows.values():
            t = sender.next_deadline()
            if t is not None and (best is None or t < best):
                best = t
        if self._t0 is not None:
            for at, sender in self._starts:
                if not sender.opened and (best is None or self._t0 + at < best):
                    best = self._t0 + at
        return best

    def flush(self, now: int) -> list[bytes]:
        """End of run: every frame still on the wire towards the NIC, held ones included."""
        return self.wire.flush(now)

    # -- counters ----------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Peer counters, the sum of every flow's counters, and the impairments' counts."""
        out = dict(self.counters)
        out["frames_out"] = self.wire.delivered
        out["acks_delayed"] = 0 if self.ack_wire is None else self.ack_wire.delayed
        for sender in self.flows.values():
            for name in SENDER_COUNTERS:
                out[name] = out.get(name, 0) + sender.counters[name]
        out["flows"] = len(self.flows)
        out["flows_done"] = sum(s.done for s in self.flows.values())
        out["flows_aborted"] = sum(s.aborted for s in self.flows.values())
        for name, value in self.impairments.stats().items():
            out[f"wire_{name}"] = value
        if self.ack_impairments is not None:
            for name, value in self.ack_impairments.stats().items():
                out[f"ackpath_{name}"] = value
        return out

    def flow_stats(self) -> dict[FlowKey, dict[str, int]]:
        return {key: sender.stats() for key, sender in self.flows.items()}

    def stats_by_name(self) -> dict[str, dict[str, int]]:
        return {self.names[key]: sender.stats() for key, sender in self.flows.items()}

    # -- internals ---------------------------------------------------------------------------

    def _open_due(self, now: int, out: list[bytes]) -> None:
        if self._t0 is None:
            return
        for at, sender in self._starts:
            if not sender.opened and now >= self._t0 + at:
                self._xmit(sender.connect(now), now, out)

    def _arrive(self, frame: bytes, now: int, out: list[bytes]) -> None:
        self.counters["frames_in"] += 1
        if self.ack_wire is None:
            self._handle_frame(frame, now, out)
            return
        arrived: list[bytes] = []
        self.ack_wire.send(frame, now, arrived)
        for f in arrived:
            self._handle_frame(f, now, out)

    def _handle_frame(self, frame: bytes, now: int, out: list[bytes]) -> None:
        try:
            seg = wire.decode(frame)
        except wire.MalformedPacket:
            self.counters["bad_frames"] += 1
            return
        self._deliver(seg, now, out)

    def _deliver(self, seg: Segment, now: int, out: list[bytes]) -> None:
        sender = self.route(seg)
        if sender is None:
            self.counters["unknown_flow"] += 1
            return
        self._xmit(sender.on_segment(seg, now), now, out)

    def _xmit(self, segments: Iterable[Segment], now: int, out: list[bytes]) -> None:
        """Encode segments and put them on the wire towards the NIC."""
        link = self.wire
        for seg in segments:
            link.send(wire.encode(seg), now, out)
