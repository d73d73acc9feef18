"""The peer process: every flow's TCP sender, and the impaired wire towards the NIC."""

from __future__ import annotations

import heapq
import itertools
import random
from typing import Any

from actors.peer.sender import Peer, SenderConfig, TcpSender
from actors.runtime.actor import Actor, ActorSettings, handles
from actors.runtime.trace import HOP_END, HOP_SOURCE, ORIGIN_PEER, FlowIds
from actors.scenario import Scenario
from protocol import messages as msg
from protocol.envelope import Envelope

NIC = "nic"


class PeerActor(Actor):
    role = "peer"

    def __init__(self, settings: ActorSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        sc = Scenario.from_dict(self.config["scenario"])
        self.scenario = sc
        pc = sc.peer
        cfg = SenderConfig(mss=pc.mss, wscale=pc.wscale, sack=pc.sack, timestamps=pc.timestamps,
                           probe_style=pc.probe_style, resegment=pc.resegment)
        self.peer = Peer(impairments=sc.wire_impairments(),
                         ack_impairments=sc.ack_wire_impairments())
        self.starts: list[tuple[int, TcpSender]] = []
        for i, flow in enumerate(sc.flows):
            src, sport, dst, dport = sc.four_tuple(flow.name)
            sender = TcpSender(i + 1, src, sport, dst, dport, flow.bytes,
                               random.Random(sc.seed_for("flow:" + flow.name)), cfg)
            self.peer.add(sender)
            self.starts.append((flow.start_ns, sender))
        self.names = {s.four_tuple: f.name for f, (_, s) in zip(sc.flows, self.starts,
                                                                 strict=True)}
        self._due: list[tuple[int, int, bytes]] = []
        self._order = itertools.count()
        self._t0 = 0
        self._reported_done = False
        self.flow_ids = FlowIds(ORIGIN_PEER, settings.incarnation)

    def on_start(self, now: int) -> None:
        self._t0 = now
        self._open(now)

    def _open(self, now: int) -> None:
        for start, sender in self.starts:
            if not sender.opened and now >= self._t0 + start:
                self._emit(self.peer.frames_out(sender.connect(now), now), now)

    def _emit(self, deliveries: list[tuple[int, bytes]], now: int) -> None:
        batch = []
        for at, frame in deliveries:
            if at <= now:
                batch.append(frame)
            else:
                heapq.heappush(self._due, (at, next(self._order), frame))
        if batch:
            self._send_wire(batch)

    def _send_wire(self, frames: list[bytes]) -> None:
        if not self.trace.on:
            self.send(NIC, msg.WIRE, {"frames": frames})
            return
        ids = self.flow_ids.take(len(frames))
        start = self.clock()
        self.send(NIC, msg.WIRE, {"frames": frames, "ids": ids})
        self.trace.complete("wire xmit", start, self.clock(), "wire",
                            args={"frames": len(frames)}, flows=[[HOP_SOURCE, ids]])

    @handles(msg.WIRE)
    def on_wire(self, env: Envelope, now: int) -> None:
        out: list[tuple[int, bytes]] = []
        for frame in env.body["frames"]:
            out += self.peer.on_frame(frame, now)
        if self.trace.on:
            ids = env.body.get("ids")
            self.trace.complete("ACKs received", now, self.clock(), "wire",
                                args={"frames": len(env.body["frames"])},
                                flows=[[HOP_END, ids]] if ids else None)
        self._emit(out, now)
        self._check_done()

    def next_deadline(self) -> int | None:
        times = [d for d in (self.peer.next_deadline(),) if d is not None]
        if self._due:
            times.append(self._due[0][0])
        times += [self._t0 + s for s, sender in self.starts if not sender.opened]
        return min(times) if times else None

    def on_timer(self, now: int) -> None:
        self._open(now)
        batch = []
        while self._due and self._due[0][0] <= now:
            batch.append(heapq.heappop(self._due)[2])
        if batch:
            self._send_wire(batch)
        self._emit(self.peer.on_timer(now), now)
        self._check_done()

    def _check_done(self) -> None:
        if not self._reported_done and self.peer.done:
            self._reported_done = True
            self.notify("info", "peer_done", flows={
                self.names[k]: s.error or "ok" for k, s in self.peer.flows.items()})

    def counters(self) -> dict[str, Any]:
        return {"peer": self.peer.stats(),
                "flows": {self.names[k]: s.stats() for k, s in self.peer.flows.items()}}
