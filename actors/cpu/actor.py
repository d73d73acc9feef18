"""A cpu process: decodes the nic's DMA writes and interrupts and the stack's answers,
hands them to the softirq model (:mod:`actors.cpu.napi`), and sends what it returns."""

from __future__ import annotations

from typing import Any

from actors.cpu.napi import CpuOutput, RcvBatch, Refill, Softirq, Spend, Unmask
from actors.cpu.trace import SoftirqTrace
from actors.runtime.actor import Actor, ActorSettings, RejectMessage, handles
from actors.runtime.costs import spend
from actors.scenario import Scenario
from protocol import messages as msg
from protocol.envelope import Envelope, MalformedMessage

NIC = "nic"
STACK = "stack"
INCARNATION_BATCHES = 1_000_000_000  # batch ids each incarnation may use


class CpuActor(Actor):
    role = "cpu"

    def __init__(self, settings: ActorSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        sc = Scenario.from_dict(self.config["scenario"])
        self.profile = sc.kernel_profile
        self.softirq = Softirq(
            self.instance, [q for q, c in enumerate(sc.queue_to_cpu) if c == self.instance],
            sc.nic.ring_size, sc.sysctl, rescan_poll_list=self.profile.net_rx_action_rescan,
            local_addrs=frozenset({sc.stack.address}),
            cost=(sc.cpu.cost_per_segment_us, sc.cpu.cost_per_byte_ns),
            batch_base=settings.incarnation * INCARNATION_BATCHES,
            gro=sc.nic.gro and sc.nic.device != "tun",
            observer=SoftirqTrace(self.trace, self.clock) if self.trace.on else None)

    def _send(self, outputs: list[CpuOutput]) -> None:
        for out in outputs:
            if isinstance(out, RcvBatch):
                body: dict[str, Any] = {"batch": out.batch, "frames": out.frames}
                if out.ids is not None:
                    body["ids"] = out.ids
                if out.gso is not None:
                    body["gso"] = out.gso
                if out.segs is not None:
                    body["segs"] = out.segs
                self.send(STACK, msg.RCV_BATCH, body)
            elif isinstance(out, Refill):
                self.send(NIC, msg.REFILL, {"queue": out.queue, "n": out.n})
            elif isinstance(out, Unmask):
                self.send(NIC, msg.UNMASK, {"queue": out.queue})
            elif isinstance(out, Spend):
                spend(out.ns)

    @handles(msg.DMA)
    def on_dma(self, env: Envelope, now: int) -> None:
        body = env.body
        try:
            msg.check_ids(body.get("ids"), len(body["frames"]))
            self.softirq.rx_dma(body["queue"], body["frames"], now, body.get("ids"),
                                body.get("gso"))
        except MalformedMessage as exc:
            raise RejectMessage(str(exc)) from None

    @handles(msg.IRQ)
    def on_irq(self, env: Envelope, now: int) -> None:
        try:
            outputs = self.softirq.rx_irq(env.body["queue"], now)
        except MalformedMessage as exc:
            raise RejectMessage(str(exc)) from None
        self._send(outputs)

    @handles(msg.RCV_DONE)
    def on_rcv_done(self, env: Envelope, now: int) -> None:
        self._send(self.softirq.rcv_done(env.body["batch"], now))

    def on_peer_event(self, actor: str, role: str, event: str, now: int) -> None:
        if role == "stack" and event == "exited":
            self._send(self.softirq.stack_lost(now))

    def counters(self) -> dict[str, Any]:
        return self.softirq.stats(self.profile)
