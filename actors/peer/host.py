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

import bisect
from collections.abc import Iterable
from heapq import heappop, heappush

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
        # (offset from start(), order added, sender), sorted; flows before _next_start
        # have opened.
        self._starts: list[tuple[int, int, TcpSender]] = []
        self._next_start = 0
        self._t0: int | None = None
        self._reported_done = False
        # Flows that handled an event since take_touched() (the trace samples them) and
        # since the last stats() (their counters are read again): only these can have
        # changed, so neither walks every flow.
        self._touched: dict[FlowKey, TcpSender] = {}
        self._changed: dict[FlowKey, TcpSender] = {}
        self._flow_stats: dict[FlowKey, dict[str, int]] = {}
        self._totals: dict[str, int] = dict.fromkeys((*SENDER_COUNTERS, "done", "aborted"), 0)
        self._order: list[TcpSender] = []  # for done: flows finish for good
        self._unfinished_from = 0
        # Each flow's timer deadline as (deadline, index in _order), pushed when the flow
        # handled an event (_rearm) and dropped once the flow's deadline moved: a flow's
        # deadline changes only when it handles one.
        self._timer_heap: list[tuple[int, int]] = []
        self._index: dict[FlowKey, int] = {}
        self._rearm: dict[int, TcpSender] = {}
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
        self._index[key] = len(self._order)
        self._order.append(sender)
        self._changed[key] = sender
        self._rearm[self._index[key]] = sender
        self.names[key] = name if name is not None else f"flow{sender.flow_id}"
        bisect.insort(self._starts, (start_ns, len(self._order), sender),
                      key=lambda entry: entry[:2])

    def route(self, seg: Segment) -> TcpSender | None:
        """The flow a segment from the receiver belongs to (its 4-tuple reversed)."""
        return self.flows.get((seg.dst, seg.dport, seg.src, seg.sport))

    @property
    def done(self) -> bool:
        """Every flow has finished (delivered everything, or been aborted)."""
        order, i = self._order, self._unfinished_from
        while i < len(order) and order[i].finished:  # a finished flow stays finished
            i += 1
        self._unfinished_from = i
        return i == len(order)

    def _touch(self, sender: TcpSender) -> None:
        key = sender.four_tuple
        self._touched[key] = sender
        self._changed[key] = sender
        self._rearm[self._index[key]] = sender

    def _arm(self) -> None:
        """Push the deadlines of the flows that handled an event since the last call."""
        heap = self._timer_heap
        for i, sender in self._rearm.items():
            t = sender.next_deadline()
            if t is not None:
                heappush(heap, (t, i))
        self._rearm.clear()

    def _timer_top(self) -> int | None:
        """The earliest flow timer deadline, stale heap entries dropped."""
        self._arm()
        heap, order = self._timer_heap, self._order
        while heap:
            t, i = heap[0]
            if order[i].next_deadline() == t:
                return t
            heappop(heap)
        return None

    def newly_done(self) -> bool:
        """True once: the first time it is asked after every flow finished."""
        if self._reported_done or not self.done:
            return False
        self._reported_done = True
        return True

    def take_touched(self) -> list[tuple[FlowKey, TcpSender]]:
        """The flows that opened, took a segment or ran a timer since last asked."""
        touched = list(self._touched.items())
        self._touched.clear()
        return touched

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
                self._touch(sender)
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
        self._arm()
        heap, order, due = self._timer_heap, self._order, set()
        while heap and heap[0][0] <= now:
            t, i = heappop(heap)
            if order[i].next_deadline() == t:
                due.add(i)
        for i in sorted(due):  # in the order the flows were added
            sender = order[i]
            self._touch(sender)
            self._xmit(sender.on_timer(now), now, out)
        return out

    def next_deadline(self) -> int | None:
        # The actor loop asks before every wait: one pass, no lists.
        best = self.wire.next_deadline()
        if self.ack_wire is not None:
            t = self.ack_wire.next_deadline()
            if t is not None and (best is None or t < best):
                best = t
        t = self._timer_top()
        if t is not None and (best is None or t < best):
            best = t
        if self._t0 is not None:
            starts, i = self._starts, self._next_start
            while i < len(starts) and starts[i][2].opened:
                i += 1
            self._next_start = i
            if i < len(starts):
                at = self._t0 + starts[i][0]
                if best is None or at < best:
                    best = at
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
        self._refresh()
        totals = self._totals
        for name in SENDER_COUNTERS:
            out[name] = totals[name]
        out["flows"] = len(self.flows)
        out["flows_done"] = totals["done"]
        out["flows_aborted"] = totals["aborted"]
        for name, value in self.impairments.stats().items():
            out[f"wire_{name}"] = value
        if self.ack_impairments is not None:
            for name, value in self.ack_impairments.stats().items():
                out[f"ackpath_{name}"] = value
        return out

    def flow_stats(self) -> dict[FlowKey, dict[str, int]]:
        return {key: sender.stats() for key, sender in self.flows.items()}

    def stats_by_name(self) -> dict[str, dict[str, int]]:
        self._refresh()
        return {self.names[key]: dict(st) for key, st in self._flow_stats.items()}

    def _refresh(self) -> None:
        """Read again the stats of the flows that changed, and keep the totals over every
        flow up to date by their difference."""
        totals, cache = self._totals, self._flow_stats
        for key, sender in self._changed.items():
            new = sender.stats()
            old = cache.get(key)
            for name in totals:
                totals[name] += new[name] - (old[name] if old is not None else 0)
            cache[key] = new
        self._changed.clear()

    # -- internals ---------------------------------------------------------------------------

    def _open_due(self, now: int, out: list[bytes]) -> None:
        if self._t0 is None:
            return
        starts, i = self._starts, self._next_start
        while i < len(starts):
            at, _, sender = starts[i]
            if not sender.opened:
                if now < self._t0 + at:
                    break
                self._touch(sender)
                self._xmit(sender.connect(now), now, out)
            i += 1
        self._next_start = i

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
        self._touch(sender)
        self._xmit(sender.on_segment(seg, now), now, out)

    def _xmit(self, segments: Iterable[Segment], now: int, out: list[bytes]) -> None:
        """Encode segments and put them on the wire towards the NIC."""
        link = self.wire
        for seg in segments:
            link.send(wire.encode(seg), now, out)
