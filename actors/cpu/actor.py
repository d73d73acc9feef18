"""A cpu process: hardirq, the NET_RX softirq (NAPI within budget and time), ip_rcv, and the
hand-off of each poll's frames to the stack, which keeps this softirq busy until it answers."""

from __future__ import annotations

import itertools
from typing import Any

from actors.cpu.ip_rcv import ip_rcv
from actors.cpu.napi import Poll, Refill, Softirq, Unmask
from actors.mib import Mib
from actors.runtime.actor import Actor, ActorSettings, handles
from actors.runtime.costs import cost_ns, spend
from cli.config import Scenario
from protocol import messages as msg
from protocol.envelope import Envelope

NIC = "nic"
STACK = "stack"


class CpuActor(Actor):
    role = "cpu"

    def __init__(self, settings: ActorSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        sc = Scenario.from_dict(self.config["scenario"])
        self.profile = sc.kernel_profile
        queues = [q for q, c in enumerate(sc.queue_to_cpu) if c == self.instance]
        self.softirq = Softirq(self.instance, queues, sc.nic.ring_size, sc.sysctl,
                               rescan_poll_list=self.profile.modern_autotune)
        self.mib = Mib()
        self.local = frozenset({sc.stack.address})
        self.cost = (sc.cpu.cost_per_segment_us, sc.cpu.cost_per_byte_ns)
        self.batches = itertools.count(1)
        self.in_flight: tuple[int, Poll] | None = None
        self.ip_drops: dict[str, int] = {}

    @handles(msg.DMA)
    def on_dma(self, env: Envelope, now: int) -> None:
        queue = env.body["queue"]
        for frame in env.body["frames"]:
            self.softirq.dma(queue, frame, now)

    @handles(msg.IRQ)
    def on_irq(self, env: Envelope, now: int) -> None:
        self.softirq.hardirq(env.body["queue"], now)
        self._run(now)

    @handles(msg.RCV_DONE)
    def on_rcv_done(self, env: Envelope, now: int) -> None:
        if self.in_flight is None or self.in_flight[0] != env.body["batch"]:
            return  # a stale answer (the stack restarted meanwhile)
        poll = self.in_flight[1]
        self.in_flight = None
        self._finish(poll, now)
        self._run(now)

    def _finish(self, poll: Poll, now: int) -> None:
        for out in self.softirq.finish_poll(poll, now):
            if isinstance(out, Refill):
                self.send(NIC, msg.REFILL, {"queue": out.queue, "n": out.n})
            elif isinstance(out, Unmask):
                self.send(NIC, msg.UNMASK, {"queue": out.queue})

    def _run(self, now: int) -> None:
        """net_rx_action: poll until a batch is with the stack or nothing is scheduled."""
        while self.in_flight is None and self.softirq.softirq_pending:
            poll = self.softirq.start_poll(now)
            if poll is None:
                return
            frames = []
            for frame in poll.frames:
                spend(cost_ns(*self.cost, len(frame)))
                res = ip_rcv(frame, self.mib, self.local)
                if res.delivered:
                    frames.append(frame)
                else:
                    reason = res.drop_reason or "IP"
                    self.ip_drops[reason] = self.ip_drops.get(reason, 0) + 1
            if frames:
                batch = next(self.batches)
                self.in_flight = (batch, poll)
                self.send(STACK, msg.RCV_BATCH, {"batch": batch, "frames": frames})
                return
            self._finish(poll, self.clock())

    def next_deadline(self) -> int | None:
        return None

    def counters(self) -> dict[str, Any]:
        s = self.softirq
        return {
            "mib": dict(self.mib.nonzero()),
            "softnet_stat": s.softnet_stat(self.profile),
            "irqs": s.irqs, "polls": s.polls, "net_rx_action_runs": s.net_rx_action_runs,
            "repolls": s.repolls, "ip_drops": self.ip_drops,
        }
