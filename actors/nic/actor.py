"""The NIC process: decodes frames from the wire, the cpus' refills and unmasks and the
stack's TX, hands them to the NIC model (:mod:`actors.nic.model`), sends what it returns,
and records the wire, both directions, in a pcap."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from actors.cpu.napi import Spend
from actors.nic.model import DmaWrite, Nic, NicAction, NicOutput, RaiseIrq, WireTx
from actors.nic.trace import NicTrace
from actors.runtime.actor import Actor, ActorSettings, RejectMessage, handles
from actors.runtime.costs import spend
from actors.scenario import Scenario
from protocol import messages as msg
from protocol.envelope import Envelope, MalformedMessage
from protocol.pcap import PcapWriter

PEER = "peer"


def cpu_name(i: int) -> str:
    return f"cpu{i}"


class NicActor(Actor):
    role = "nic"

    def __init__(self, settings: ActorSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        sc = Scenario.from_dict(self.config["scenario"])
        nc = sc.nic
        self.nic = Nic(nc.queues, nc.ring_size, rx_usecs=nc.rx_usecs, rx_frames=nc.rx_frames,
                       rss_key=nc.rss_key, queue_to_cpu=sc.queue_to_cpu,
                       cost_per_frame_ns=int(nc.cost_per_frame_us * 1000),
                       observer=NicTrace(self.trace, self.clock) if self.trace.on else None)
        # The wire as the NIC sees it, both directions (a restarted NIC starts a new file).
        suffix = f".{settings.incarnation}" if settings.incarnation else ""
        self.pcap = PcapWriter(settings.run_dir / f"wire{suffix}.pcap")
        # Who is on the other end of the wire: the peer actor, or whoever the topology
        # names (``rxpath drill --pipeline`` plays the peer in the launcher).
        self.wire_peer = str(self.config.get("wire_peer", PEER))

    def _send(self, actions: Sequence[NicAction | NicOutput]) -> None:
        for a in actions:
            if isinstance(a, DmaWrite):
                body: dict[str, Any] = {"queue": a.queue, "frames": a.frames}
                if a.ids is not None:
                    body["ids"] = a.ids
                if a.gso is not None:
                    body["gso"] = a.gso
                self.send(cpu_name(a.cpu), msg.DMA, body)
            elif isinstance(a, RaiseIrq):
                self.send(cpu_name(a.cpu), msg.IRQ, {"queue": a.queue})
            elif isinstance(a, WireTx):
                body = {"frames": a.frames}
                if a.ids is not None:
                    body["ids"] = a.ids
                if a.xmit_ns is not None:
                    body["xmit_ns"] = a.xmit_ns
                self.send(self.wire_peer, msg.WIRE, body)
            elif isinstance(a, Spend):
                spend(a.ns)

    def _record(self, frames: list[bytes]) -> None:
        self.pcap.write_many(frames, time.time_ns())

    @handles(msg.WIRE)
    def on_wire(self, env: Envelope, now: int) -> None:
        frames = env.body["frames"]
        try:
            msg.check_ids(env.body.get("ids"), len(frames))
            actions = self.nic.rx_burst(frames, now, env.body.get("ids"), env.body.get("gso"))
        except MalformedMessage as exc:
            raise RejectMessage(str(exc)) from None
        self._record(frames)
        self._send(actions)

    @handles(msg.TX)
    def on_tx(self, env: Envelope, now: int) -> None:
        frames = env.body["frames"]
        try:
            msg.check_ids(env.body.get("ids"), len(frames))
        except MalformedMessage as exc:
            raise RejectMessage(str(exc)) from None
        self._record(frames)
        self._send(self.nic.tx_burst(frames, now, env.body.get("ids"), env.ts_ns))

    @handles(msg.REFILL)
    def on_refill(self, env: Envelope, now: int) -> None:
        try:
            self._send(self.nic.refill(env.body["queue"], env.body["n"], now))
        except MalformedMessage as exc:
            raise RejectMessage(str(exc)) from None

    @handles(msg.UNMASK)
    def on_unmask(self, env: Envelope, now: int) -> None:
        try:
            self._send(self.nic.unmask(env.body["queue"], now))
        except MalformedMessage as exc:
            raise RejectMessage(str(exc)) from None

    def on_peer_event(self, actor: str, role: str, event: str, now: int) -> None:
        if role == "cpu" and event == "restarted":
            # A cpu is named cpu<N> and owns some of this nic's queues.
            if not (actor.startswith("cpu") and actor[3:].isdecimal()
                    and self.nic.queues_of_cpu(int(actor[3:]))):
                raise RejectMessage(f"no cpu {actor!r:.40} behind this nic")
            self.nic.reset_cpu(int(actor[3:]))

    def next_deadline(self) -> int | None:
        return self.nic.next_deadline()

    def on_timer(self, now: int) -> None:
        self._send(self.nic.on_timer(now))

    def on_stop(self, now: int) -> None:
        self.pcap.close()

    def counters(self) -> dict[str, Any]:
        self.pcap.flush()
        return {**self.nic.stats(), "pcap_frames": self.pcap.frames}
