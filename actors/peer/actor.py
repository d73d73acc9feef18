"""The peer process: decodes the NIC's transmissions, hands them and timer firings to
the remote host's model (:class:`~actors.peer.host.Peer`: every flow's TCP sender and
the impaired wire), and sends the frames it says are due now."""

from __future__ import annotations

import random
from typing import Any

from actors.peer.host import Peer
from actors.peer.sender import SenderConfig, TcpSender
from actors.peer.trace import PeerTrace
from actors.runtime.actor import Actor, ActorSettings, RejectMessage, handles
from actors.scenario import Scenario
from protocol import messages as msg
from protocol.envelope import Envelope, MalformedMessage

NIC = "nic"


class PeerActor(Actor):
    role = "peer"

    def __init__(self, settings: ActorSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        sc = Scenario.from_dict(self.config["scenario"])
        pc = sc.peer
        cfg = SenderConfig(mss=pc.mss, wscale=pc.wscale, sack=pc.sack, timestamps=pc.timestamps,
                           probe_style=pc.probe_style, resegment=pc.resegment)
        self.peer = Peer(impairments=sc.wire_impairments(),
                         ack_impairments=sc.ack_wire_impairments())
        for i, flow in enumerate(sc.flows):
            src, sport, dst, dport = sc.four_tuple(flow.name)
            sender = TcpSender(i + 1, src, sport, dst, dport, flow.bytes,
                               random.Random(sc.seed_for("flow:" + flow.name)), cfg)
            self.peer.add(sender, start_ns=flow.start_ns, name=flow.name)
        self.tracer = (PeerTrace(self.trace, self.clock, settings.incarnation)
                       if self.trace.on else None)
        if self.tracer is not None:
            self.peer.impairments.decisions = []

    def _send_wire(self, frames: list[bytes]) -> None:
        decisions = self.peer.impairments.decisions
        if decisions and self.tracer is not None:
            self.tracer.wire_decisions(decisions)
        if not frames:
            return
        if self.tracer is None:
            self.send(NIC, msg.WIRE, {"frames": frames})
            return
        ids = self.tracer.new_ids(len(frames))
        start = self.clock()
        self.send(NIC, msg.WIRE, {"frames": frames, "ids": ids})
        self.tracer.wire_xmit(ids, start)
        self.tracer.sender_samples(self.peer, start)

    def _report_done(self) -> None:
        if self.peer.newly_done():
            self.notify("info", "peer_done", flows=self.peer.outcomes())

    def on_start(self, now: int) -> None:
        self._send_wire(self.peer.start(now))

    @handles(msg.WIRE)
    def on_wire(self, env: Envelope, now: int) -> None:
        frames = env.body["frames"]
        try:
            msg.check_ids(env.body.get("ids"), len(frames))
        except MalformedMessage as exc:
            raise RejectMessage(str(exc)) from None
        out = self.peer.on_frames(frames, now)
        if self.tracer is not None:
            self.tracer.acks_received(len(frames), env.body.get("ids"), now)
            self.tracer.sender_samples(self.peer, now)
        self._send_wire(out)
        self._report_done()

    def next_deadline(self) -> int | None:
        return self.peer.next_deadline()

    def on_timer(self, now: int) -> None:
        self._send_wire(self.peer.on_timer(now))
        self._report_done()

    def counters(self) -> dict[str, Any]:
        return {"peer": self.peer.stats(), "flows": self.peer.stats_by_name()}
